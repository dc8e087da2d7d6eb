"""One error family for sdmc.

Every user-facing failure is an :class:`SdmcError` (or a subclass) whose message names *what* went wrong
and *where* (a file, a parameter key, a graph node, a module path).  The CLI prints the message and exits
with status 2 instead of a traceback.
"""

from __future__ import annotations


class SdmcError(Exception):
    """Base class: a clear, user-facing error."""


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message (a third-party error wrapped into an sdmc one-line message), or its type
    name when the message is empty."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class CheckpointError(SdmcError):
    """A checkpoint file is unreadable, truncated, foreign or inconsistent."""


class ConfigError(SdmcError):
    """An invalid model / run configuration (bad channel multiplier, wrong image size, ...)."""


class DataError(SdmcError):
    """A dataset could not be found or read."""


class IRError(SdmcError):
    """The spiking graph IR is malformed; the message names the node."""


class UnsupportedOpError(SdmcError):
    """The frontend met an op it cannot represent; the message names the module path and the op."""


class OutputError(SdmcError):
    """An output cannot be written safely: it would replace what sdmc did not create or an input of the run,
    its name leaves the output directory, or another process is writing it."""


class TrainingError(SdmcError):
    """Training cannot go on (non-finite loss, ...); the last good checkpoint is kept."""


class LimitError(SdmcError):
    """A file or option asks for more than a resource limit allows (:data:`sdmc.validate.LIMITS`); the message
    says what was asked and the limit."""
