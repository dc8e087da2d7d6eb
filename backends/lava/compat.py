"""Make lava-nc 0.10 / lava-dl 0.6 importable on Python 3.11 without editing installed files.

Three source-level fixes are applied by an import hook (a ``sys.meta_path`` finder that rewrites the module's
source text before it is compiled), so they also hold in Lava's forked worker processes:

(a) ``lava.magma.compiler.var_model``: Python 3.11 rejects dataclass defaults whose class is unhashable
    (``x: ByteEncoder = ByteEncoder()``); rewritten to ``field(default_factory=ByteEncoder)``.
(b) ``lava.lib.dl.slayer``: ``from . import object_detection as obd`` needs torchvision + cv2; made
    optional (``obd = None`` when that import fails).
(c) ``lava.magma.runtime.message_infrastructure.multiprocessing`` calls ``mp.set_start_method('fork')``,
    which raises "context has already been set" once anything in the process has used multiprocessing
    (e.g. a DataLoader earlier in a test session); it now sets 'fork' only when no method is set yet and
    fails with a clear message if another method was chosen.

Each rewrite checks that it found the text it expects, so a different Lava version fails loudly
(:class:`LavaUnavailable`) instead of being patched wrongly.  Also here: :func:`use_fast_conv`, a numpy
replacement for Lava's per-channel-pair scipy convolution (identical results, ~10x faster).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys

import numpy as np

from ...errors import SdmcError


class LavaUnavailable(SdmcError):
    """Lava (lava-nc 0.10 + lava-dl 0.6) is not installed or cannot be imported."""


def _fix_var_model(src: str) -> str:
    n_defaults = src.count("ByteEncoder = ByteEncoder()")
    if "from dataclasses import dataclass, InitVar\n" not in src or n_defaults == 0:
        raise LavaUnavailable(
            "lava.magma.compiler.var_model: unexpected source (not lava-nc 0.10.0?); "
            "cannot apply the Python 3.11 dataclass fix"
        )
    src = src.replace(
        "from dataclasses import dataclass, InitVar\n", "from dataclasses import dataclass, InitVar, field\n", 1
    )
    return src.replace("ByteEncoder = ByteEncoder()", "ByteEncoder = field(default_factory=ByteEncoder)")


def _fix_slayer_init(src: str) -> str:
    pat = re.compile(r"^from \. import object_detection as obd[ \t]*$", re.M)
    if not pat.search(src):
        raise LavaUnavailable(
            "lava.lib.dl.slayer/__init__.py: unexpected source (not lava-dl 0.6.0?); "
            "cannot make object_detection optional"
        )
    return pat.sub("try:\n    from . import object_detection as obd\nexcept ImportError:\n    obd = None", src, count=1)


_FORK_CALL = "    mp.set_start_method('fork')\n"
_FORK_FIX = """    if mp.get_start_method(allow_none=True) is None:
        mp.set_start_method('fork')
    elif mp.get_start_method() != 'fork':
        raise RuntimeError("Lava needs the 'fork' multiprocessing start method, but it is already set to "
                           f"{mp.get_start_method()!r}; import Lava first or set it to 'fork' (force=True)")
"""


def _fix_lava_multiprocessing(src: str) -> str:
    if src.count(_FORK_CALL) != 1:
        raise LavaUnavailable(
            "lava.magma.runtime.message_infrastructure.multiprocessing: unexpected source "
            "(not lava-nc 0.10.0?); cannot make its start-method call re-entrant"
        )
    return src.replace(_FORK_CALL, _FORK_FIX)


FIXES = {
    "lava.magma.compiler.var_model": _fix_var_model,
    "lava.lib.dl.slayer": _fix_slayer_init,
    "lava.magma.runtime.message_infrastructure.multiprocessing": _fix_lava_multiprocessing,
}


class _RewritingLoader(importlib.machinery.SourceFileLoader):
    """SourceFileLoader whose source passes through one rewrite; bytecode caching is bypassed."""

    def __init__(self, fullname, path, rewrite):
        super().__init__(fullname, path)
        self._rewrite = rewrite

    def get_code(self, fullname):
        src = self.get_data(self.path).decode("utf-8")
        return compile(self._rewrite(src), self.path, "exec", dont_inherit=True)


class _LavaFixFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        rewrite = FIXES.get(fullname)
        if rewrite is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return spec
        loader = _RewritingLoader(fullname, spec.origin, rewrite)
        new = importlib.util.spec_from_file_location(
            fullname, spec.origin, loader=loader, submodule_search_locations=spec.submodule_search_locations
        )
        return new


def install_import_fixes() -> None:
    """Put the rewriting finder first on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, _LavaFixFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _LavaFixFinder())


def lava_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("lava-nc", "lava-dl"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "missing"
    return out


def import_lava():
    """Import and return ``lava.lib.dl.netx`` with the fixes; :class:`LavaUnavailable` if that fails."""
    import logging

    install_import_fixes()
    # slayer imports torch.utils.cpp_extension, which logs "No CUDA runtime is found" on CPU-only machines
    ext_log = logging.getLogger("torch.utils.cpp_extension")
    level = ext_log.level
    ext_log.setLevel(logging.ERROR)
    try:
        import lava.lib.dl.netx as netx  # noqa: F401
    except ImportError as e:
        raise LavaUnavailable(
            f"Lava is not importable ({e}); install it with `python -m sdmc.backends.lava.install`"
        ) from e
    finally:
        ext_log.setLevel(level)
    return netx


def conv_numpy(input_, weight, kernel_size, stride, padding, dilation, groups):
    """Lava's ``lava.proc.conv.utils.conv`` semantics with one tensordot per group.

    ``input_`` (W, H, Cin); ``weight`` (Cout, kW, kH, Cin/groups) as Lava stores it (already flipped by netx
    so that Lava's convolution equals torch's cross-correlation); returns (W', H', Cout), computed in float64
    and cast to ``weight.dtype`` exactly as the stock function does.
    """
    w_in, h_in, c_in = input_.shape
    c_out = weight.shape[0]
    kx, ky = kernel_size
    sx, sy = stride
    px, py = padding
    dx, dy = dilation
    x = np.zeros((w_in + 2 * px, h_in + 2 * py, c_in), dtype=np.float64)
    x[px : px + w_in, py : py + h_in] = input_
    ekx, eky = dx * (kx - 1) + 1, dy * (ky - 1) + 1
    w_out = (w_in + 2 * px - ekx) // sx + 1
    h_out = (h_in + 2 * py - eky) // sy + 1
    win = np.lib.stride_tricks.sliding_window_view(x, (ekx, eky), axis=(0, 1))  # (W', H', Cin, ekx, eky)
    win = win[::sx, ::sy][:w_out, :h_out, :, ::dx, ::dy]  # (W', H', Cin, kx, ky)
    # Lava's scipy path is a true convolution (convolve2d): correlation with the spatially flipped kernel.
    w = weight[:, ::-1, ::-1, :].astype(np.float64)  # (Cout, kx, ky, Cin/g)
    cig, cog = c_in // groups, c_out // groups
    out = np.empty((w_out, h_out, c_out), dtype=np.float64)
    for g in range(groups):
        out[..., g * cog : (g + 1) * cog] = np.tensordot(
            win[:, :, g * cig : (g + 1) * cig], w[g * cog : (g + 1) * cog], axes=([2, 3, 4], [3, 1, 2])
        )
    return out.astype(weight.dtype)


def use_fast_conv() -> None:
    """Replace ``lava.proc.conv.utils.conv`` by :func:`conv_numpy` (call in the parent, before ``run``)."""
    import_lava()
    import lava.proc.conv.utils as cu

    if getattr(cu.conv, "__sdmc_fast__", False):
        return
    original = cu.conv

    def conv(input_, weight, kernel_size, stride, padding, dilation, groups):
        return conv_numpy(input_, weight, kernel_size, stride, padding, dilation, groups)

    conv.__sdmc_fast__ = True
    conv.__wrapped__ = original
    cu.conv = conv
    # modules that did `from ...utils import conv` hold their own reference
    for name, mod in list(sys.modules.items()):
        if name.startswith("lava.") and getattr(mod, "conv", None) is original:
            mod.conv = conv
