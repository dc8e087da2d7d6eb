"""How a traced torch tensor lays out the SNN steps T and the batch B, and the traced-value record :class:`V`.

The IR knows two timings (static ``[B, *f]`` and per-step ``[T, B, *f]``); model code moves T around freely.
Every traced tensor carries one of these layouts, which says where T and B sit in its torch shape::

    S    [B, *f]       static            S1   [1, B, *f]  static, unit time axis
    TB   [T, B, *f]    per-step          F    [T*B, *f]   per-step, T folded into the batch
    TBL  [B, *f, T]    per-step, time last (input of a kernel-(kh,kw,1) Conv3d)

Moving between S1/S, TB/F and TB/TBL changes no value, so it adds no IR node.  ``f`` (:attr:`V.shape`) is
the per-sample shape torch sees; reshapes of ``f`` are kept as views and become one ``reshape`` node only
when an op needs the new shape (so ``unsqueeze(-1).unsqueeze(-1)`` and ``[..., None, None]`` give the same
IR).  A tensor expanded or repeated over unit axes (``repeat(1, 1, H, W)`` before an add) keeps the
unexpanded IR value in :attr:`V.pre`: elementwise ops broadcast it; any other op refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LAYOUTS = ("S", "S1", "TB", "F", "TBL")
PER_STEP_LAYOUTS = ("TB", "F", "TBL")
LEAD = {"S": 1, "S1": 2, "TB": 2, "F": 1, "TBL": 1}  # leading torch axes before the per-sample shape


@dataclass(frozen=True)
class V:
    """A traced tensor: the IR value ``name`` holds it, laid out as ``layout``, with per-sample torch shape
    ``shape``; ``pre`` is the shape before a broadcast (expand/repeat over unit axes), else ``None``."""

    name: str
    layout: str
    shape: tuple[int, ...]
    pre: tuple[int, ...] | None = None

    def relayout(self, layout: str) -> V:
        """The same value under another T/B layout (no IR node)."""
        return V(self.name, layout, self.shape, self.pre)

    def view(self, shape: tuple[int, ...], layout: str | None = None) -> V:
        """A per-sample reshape of this value (materialised lazily)."""
        return V(self.name, layout or self.layout, tuple(int(s) for s in shape))


@dataclass(frozen=True)
class Const:
    """A constant tensor reached by the trace: a parameter or buffer (``key``: its ``state_dict`` name) or a
    value the model computed from constants (``key`` is ``None``: ``torch.arange(...)``, ``.to(x.device)``)."""

    value: torch.Tensor
    key: str | None = None


def sample_shape(val: torch.Tensor, layout: str) -> tuple[int, ...]:
    """The per-sample shape ``f`` of a torch value ``val`` laid out as ``layout``."""
    s = tuple(int(d) for d in val.shape)
    return s[1:-1] if layout == "TBL" else s[LEAD[layout] :]


def torch_shape(layout: str, f: tuple[int, ...], T: int, B: int) -> tuple[int, ...]:
    """The torch shape of a value with per-sample shape ``f`` laid out as ``layout``."""
    return {
        "S": (B,) + f,
        "S1": (1, B) + f,
        "TB": (T, B) + f,
        "F": (T * B,) + f,
        "TBL": (B,) + f + (T,),
    }[layout]
