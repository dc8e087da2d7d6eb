"""2-d pooling of ``[C, H, W]`` values, applied at every step (per-step values pool each step alone).

With ``k = kernel``, ``s = stride``, ``p = padding`` and ``xpad`` the input padded by ``p`` on each side
(``-inf`` for max, 0 otherwise), output position ``(i, j)`` reads the window ``W(i, j)`` of ``kh x kw``
positions starting at ``(i*sh, j*sw)``::

    max   y[c, i, j] = max_{(u, v) in W(i, j)} xpad[c, u, v]
    sum   y[c, i, j] = sum_{(u, v) in W(i, j)} xpad[c, u, v]
    avg   y[c, i, j] = sum / (kh * kw)                                   count_include_pad (torch default)
          y[c, i, j] = sum / #{(u, v) in W(i, j) inside the unpadded input}   otherwise

    Ho = floor((H + 2 ph - kh) / sh) + 1   (likewise Wo)

torch: ``MaxPool2d`` / ``AvgPool2d`` (``AvgPool2d(divisor_override=1)`` is sum pooling).  Kinds: max keeps
the input kind (max of spikes is a spike); sum and avg of spikes are ``graded``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .families import TIME_INVARIANT
from .graph import FLOAT_DTYPES, GRADED, SPIKE, Node, ValueType, pair_attr, register
from .linear import conv_out

POOL_MODES = ("max", "avg", "sum")


@register
@dataclass(frozen=True, kw_only=True)
class Pool2d(Node):
    """Max / average / sum pooling (see the module docstring for the maths)."""

    op = "pool2d"
    families = (TIME_INVARIANT,)
    mode: str = "max"
    kernel: tuple[int, int] = pair_attr((2, 2))
    stride: tuple[int, int] = pair_attr((2, 2))
    padding: tuple[int, int] = pair_attr((0, 0))
    count_include_pad: bool = True

    def infer(self, ins, graph):
        x = ins[0]
        if self.mode not in POOL_MODES:
            raise self.fail(f"mode {self.mode!r} is not one of {POOL_MODES}")
        if x.dtype not in FLOAT_DTYPES:
            raise self.fail(f"input {self.inputs[0]!r} has dtype {x.dtype}; a floating-point value is required")
        if len(x.shape) != 3:
            raise self.fail(f"input {self.inputs[0]!r} must have shape [C, H, W], got {list(x.shape)}")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0:
            raise self.fail(f"kernel {self.kernel} and stride {self.stride} must be >= 1, padding >= 0")
        if ph > kh // 2 or pw > kw // 2:
            raise self.fail(f"padding {self.padding} must be at most half the kernel {self.kernel}")
        C, H, W = x.shape
        Ho, Wo = conv_out(H, kh, sh, ph, 1), conv_out(W, kw, sw, pw, 1)
        if Ho < 1 or Wo < 1:
            raise self.fail(f"shape mismatch: kernel {kh}x{kw} does not fit input {H}x{W} with padding {self.padding}")
        kind = x.kind if self.mode == "max" else GRADED if x.kind == SPIKE else x.kind
        return ValueType((C, Ho, Wo), x.dtype, kind, x.timing)
