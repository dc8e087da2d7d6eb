"""Normalisation: batch normalisation over the channel axis (axis 0 of the per-sample shape)."""
from __future__ import annotations

from dataclasses import dataclass

from .graph import FLOAT_DTYPES, REAL, Node, ValueType, param, register


@register
@dataclass(frozen=True, kw_only=True)
class BatchNorm(Node):
    """``y = (x - mu) / sqrt(var + eps) * gamma + beta`` per channel ``c`` (axis 0 of ``[C, ...]``).

    Eval mode: ``mu, var`` = ``running_mean, running_var``.  Training mode: the biased mean and variance
    of ``x`` pooled over every axis but the channel, i.e. over ``T*B*H*W`` for a per-step value (the
    source model runs BN on ``[T*B, C, H, W]``).  ``weight`` = gamma, ``bias`` = beta (optional,
    absent when ``affine=False``); ``num_batches_tracked`` is carried only so weights map back.
    """

    op = "batchnorm"
    weight: str | None = param(optional=True)
    bias: str | None = param(optional=True)
    running_mean: str = param()
    running_var: str = param()
    num_batches_tracked: str | None = param(optional=True)
    eps: float = 1e-5
    momentum: float | None = 0.1

    def infer(self, ins, graph):
        x = ins[0]
        if x.dtype not in FLOAT_DTYPES:
            raise self.fail(f"input {self.inputs[0]!r} has dtype {x.dtype}; a floating-point value is required")
        if not x.shape:
            raise self.fail(f"input {self.inputs[0]!r} has no channel axis (shape [])")
        C = x.shape[0]
        for fld in ("weight", "bias", "running_mean", "running_var"):
            if getattr(self, fld) is not None and self.param_shape(graph, fld) != (C,):
                raise self.fail(f"shape mismatch: {fld} {getattr(self, fld)!r} has shape "
                                f"{list(self.param_shape(graph, fld))}, input {self.inputs[0]!r} has {C} channels")
        if self.num_batches_tracked is not None:
            self.param_shape(graph, "num_batches_tracked")
        if not self.eps > 0:
            raise self.fail(f"eps must be > 0, got {self.eps}")
        return ValueType(x.shape, x.dtype, REAL, x.timing)
