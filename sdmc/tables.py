"""Tables printed to the terminal (rich): one builder for every report's tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def rich_table(
    title: str, head: Sequence[str], rows: Iterable[Sequence[str]], *, left: int = 1, no_wrap_first: bool = False
):
    """A ``rich.table.Table`` titled ``title`` with columns ``head`` (the first ``left`` left-justified, the rest
    right-justified, numbers' way; ``no_wrap_first`` keeps the first column on one line) and ``rows``."""
    from rich.table import Table

    t = Table(title=title)
    for i, h in enumerate(head):
        t.add_column(h, justify="left" if i < left else "right", no_wrap=no_wrap_first and i == 0)
    for r in rows:
        t.add_row(*r)
    return t


__all__ = ["rich_table"]
