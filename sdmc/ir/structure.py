"""Structure ops: graph inputs and outputs, concatenation, nearest upsampling, reshape, repeat over T,
embedding lookup and the membrane-potential read-out."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .families import ROUTING, TIME_INVARIANT
from .graph import (
    DTYPES,
    FLOAT_DTYPES,
    GRADED,
    KINDS,
    PER_STEP,
    REAL,
    STATIC,
    TIMINGS,
    Node,
    ValueType,
    param,
    register,
    timing_of,
)


@register
@dataclass(frozen=True, kw_only=True)
class Input(Node):
    """A graph input of the declared type (per-sample ``shape``; arrays are ``[B, *shape]`` when static,
    ``[T, B, *shape]`` when per-step).  No inputs."""

    op = "input"
    arity = 0
    shape: tuple[int, ...] = ()
    dtype: str = "float32"
    kind: str = REAL
    timing: str = STATIC

    def infer(self, ins, graph):
        if self.kind not in KINDS or self.timing not in TIMINGS or self.dtype not in DTYPES:
            raise self.fail(f"bad declaration: kind={self.kind!r} timing={self.timing!r} dtype={self.dtype!r}")
        return ValueType(self.shape, self.dtype, self.kind, self.timing)


@register
@dataclass(frozen=True, kw_only=True)
class Output(Node):
    """A graph output: ``y = x``.  Graph outputs are the output nodes in insertion order."""

    op = "output"

    def infer(self, ins, graph):
        return ins[0]


@register
@dataclass(frozen=True, kw_only=True)
class Concat(Node):
    """``y = cat(x_1, ..., x_n, axis)`` along a per-sample axis (0 = channels).  Static operands are
    repeated over T when another is per-step.  Kind: common kind if all agree, else ``real`` when one is
    real, else ``graded``."""

    op = "concat"
    families = (
        TIME_INVARIANT,
        ROUTING,
    )
    arity = None
    axis: int = 0

    def infer(self, ins, graph):
        ref = ins[0]
        rank = len(ref.shape)
        if not -rank <= self.axis < rank:
            raise self.fail(f"axis {self.axis} out of range for rank-{rank} inputs")
        ax = self.axis % rank
        for name, t in zip(self.inputs, ins):
            if t.dtype != ref.dtype:
                raise self.fail(f"dtype mismatch: {name!r} is {t.dtype}, {self.inputs[0]!r} is {ref.dtype}")
            if len(t.shape) != rank or any(a != b for i, (a, b) in enumerate(zip(t.shape, ref.shape)) if i != ax):
                raise self.fail(
                    f"shape mismatch: {name!r} {list(t.shape)} and {self.inputs[0]!r} "
                    f"{list(ref.shape)} differ outside axis {self.axis}"
                )
        kinds = {t.kind for t in ins}
        kind = kinds.pop() if len(kinds) == 1 else REAL if REAL in kinds else GRADED
        shape = list(ref.shape)
        shape[ax] = sum(t.shape[ax] for t in ins)
        return ValueType(tuple(shape), ref.dtype, kind, timing_of(*ins))


@register
@dataclass(frozen=True, kw_only=True)
class Upsample(Node):
    """Nearest-neighbour upsampling of ``[C, H, W]`` by an integer ``scale``:
    ``y[c, i, j] = x[c, i // scale, j // scale]``."""

    op = "upsample"
    families = (
        TIME_INVARIANT,
        ROUTING,
    )
    scale: int = 2
    mode: str = "nearest"

    def infer(self, ins, graph):
        x = ins[0]
        if self.mode != "nearest":
            raise self.fail(f"mode {self.mode!r} is not supported (only 'nearest')")
        if int(self.scale) != self.scale or self.scale < 1:
            raise self.fail(f"scale must be a positive integer, got {self.scale}")
        if len(x.shape) != 3:
            raise self.fail(f"input {self.inputs[0]!r} must have shape [C, H, W], got {list(x.shape)}")
        C, H, W = x.shape
        return ValueType((C, H * self.scale, W * self.scale), x.dtype, x.kind, x.timing)


@register
@dataclass(frozen=True, kw_only=True)
class Reshape(Node):
    """Reshape each sample (row-major): ``y = x.reshape(B, *shape)`` (per step when per-step)."""

    op = "reshape"
    families = (
        TIME_INVARIANT,
        ROUTING,
    )
    shape: tuple[int, ...] = ()

    def infer(self, ins, graph):
        x = ins[0]
        if math.prod(self.shape) != math.prod(x.shape) or any(s < 1 for s in self.shape):
            raise self.fail(f"shape mismatch: cannot reshape {self.inputs[0]!r} {list(x.shape)} to {list(self.shape)}")
        return ValueType(self.shape, x.dtype, x.kind, x.timing)


@register
@dataclass(frozen=True, kw_only=True)
class Repeat(Node):
    """Static to per-step: ``y[t] = x`` for ``t = 0..T-1`` (the source's ``x.unsqueeze(0).expand(T, ...)``)."""

    op = "repeat"

    def infer(self, ins, graph):
        x = ins[0]
        if x.timing != STATIC:
            raise self.fail(f"timing mismatch: input {self.inputs[0]!r} is already per-step")
        return ValueType(x.shape, x.dtype, x.kind, PER_STEP)


@register
@dataclass(frozen=True, kw_only=True)
class Embedding(Node):
    """Table lookup: ``y = weight[i]`` for an integer index ``i`` (``weight`` ``[N, D]``).  Static."""

    op = "embedding"
    weight: str = param()

    def infer(self, ins, graph):
        i = ins[0]
        if i.dtype in FLOAT_DTYPES:
            raise self.fail(
                f"kind mismatch: index input {self.inputs[0]!r} has dtype {i.dtype}; an integer index is required"
            )
        w = self.param_shape(graph, "weight")
        if len(w) != 2:
            raise self.fail(f"weight {self.weight!r} must be 2-d [N, D], got {list(w)}")
        dtype = str(graph.params[self.weight].dtype)
        return ValueType(i.shape + (w[1],), dtype if dtype in FLOAT_DTYPES else "float32", REAL, i.timing)


@register
@dataclass(frozen=True, kw_only=True)
class MembraneReadout(Node):
    """Non-firing leaky integrator read-out (``MembraneOutputLayer``):
    ``y = sum_t decay**(T-1-t) * x[t]``; per-step in, static ``real`` out."""

    op = "membrane_readout"
    decay: float = 0.8

    def infer(self, ins, graph):
        x = ins[0]
        if x.timing != PER_STEP:
            raise self.fail(f"timing mismatch: input {self.inputs[0]!r} is static; a per-step input is required")
        if x.dtype not in FLOAT_DTYPES:
            raise self.fail(f"input {self.inputs[0]!r} has dtype {x.dtype}; floating point is required")
        return ValueType(x.shape, x.dtype, REAL, STATIC)
