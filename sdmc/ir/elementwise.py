"""Elementwise ops.  Binary ops broadcast per-sample shapes numpy-style (right-aligned) and a static
operand broadcasts over T; the result is per-step if any operand is."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .families import TIME_INVARIANT
from .graph import FLOAT_DTYPES, GRADED, REAL, SPIKE, Node, ValueType, register, timing_of


def _binary_shape(node: Node, a: ValueType, b: ValueType) -> tuple[int, ...]:
    for i, t in enumerate((a, b)):
        if t.dtype not in FLOAT_DTYPES:
            raise node.fail(f"input {node.inputs[i]!r} has dtype {t.dtype}; floating point is required")
    if a.dtype != b.dtype:
        raise node.fail(f"dtype mismatch: {node.inputs[0]!r} is {a.dtype}, {node.inputs[1]!r} is {b.dtype}")
    try:
        return tuple(np.broadcast_shapes(a.shape, b.shape))
    except ValueError:
        raise node.fail(
            f"shape mismatch: {node.inputs[0]!r} {list(a.shape)} and {node.inputs[1]!r} "
            f"{list(b.shape)} do not broadcast"
        ) from None


@register
@dataclass(frozen=True, kw_only=True)
class Add(Node):
    """``y = a + b``.  Kind: ``real`` if an operand is real, else ``graded`` (a sum of spikes)."""

    op = "add"
    families = (TIME_INVARIANT,)
    arity = 2

    def infer(self, ins, graph):
        a, b = ins
        kind = REAL if REAL in (a.kind, b.kind) else GRADED
        return ValueType(_binary_shape(self, a, b), a.dtype, kind, timing_of(a, b))


@register
@dataclass(frozen=True, kw_only=True)
class Mul(Node):
    """``y = a * b``.  Kind: ``spike`` if both are spikes (AND), ``real`` if one is real, else ``graded``."""

    op = "mul"
    families = (TIME_INVARIANT,)
    arity = 2

    def infer(self, ins, graph):
        a, b = ins
        kind = SPIKE if a.kind == b.kind == SPIKE else REAL if REAL in (a.kind, b.kind) else GRADED
        return ValueType(_binary_shape(self, a, b), a.dtype, kind, timing_of(a, b))


@dataclass(frozen=True, kw_only=True)
class _Unary(Node):
    def infer(self, ins, graph):
        x = ins[0]
        if x.dtype not in FLOAT_DTYPES:
            raise self.fail(f"input {self.inputs[0]!r} has dtype {x.dtype}; floating point is required")
        return ValueType(x.shape, x.dtype, self._kind(x.kind), x.timing)

    def _kind(self, k: str) -> str:
        return REAL


@register
@dataclass(frozen=True, kw_only=True)
class Swish(_Unary):
    """``y = x * sigmoid(x)`` (SiLU)."""

    op = "swish"
    families = (TIME_INVARIANT,)


@register
@dataclass(frozen=True, kw_only=True)
class Sigmoid(_Unary):
    """``y = 1 / (1 + exp(-x))``."""

    op = "sigmoid"
    families = (TIME_INVARIANT,)


@register
@dataclass(frozen=True, kw_only=True)
class Scale(_Unary):
    """``y = factor * x`` (a constant).  A scaled spike is ``graded``."""

    op = "scale"
    families = (TIME_INVARIANT,)
    factor: float = 1.0

    def _kind(self, k: str) -> str:
        return GRADED if k == SPIKE else k
