"""Normalisation over the channel axis (axis 0 of the per-sample shape): batch and group normalisation."""

from __future__ import annotations

from dataclasses import dataclass

from .families import TIME_INVARIANT
from .graph import FLOAT_DTYPES, PER_STEP, REAL, Node, ValueType, param, register


def _channel_input(node: Node, ins, graph, fields: tuple[str, ...]) -> tuple[ValueType, int]:
    """The float input of a normalisation node and its channel count ``C`` (axis 0); every parameter named in
    ``fields`` that is set must have shape ``[C]`` and ``eps`` must be positive."""
    x = ins[0]
    if x.dtype not in FLOAT_DTYPES:
        raise node.fail(f"input {node.inputs[0]!r} has dtype {x.dtype}; a floating-point value is required")
    if not x.shape:
        raise node.fail(f"input {node.inputs[0]!r} has no channel axis (shape [])")
    C = x.shape[0]
    for fld in fields:
        if getattr(node, fld) is not None and node.param_shape(graph, fld) != (C,):
            raise node.fail(
                f"shape mismatch: {fld} {getattr(node, fld)!r} has shape "
                f"{list(node.param_shape(graph, fld))}, input {node.inputs[0]!r} has {C} channels"
            )
    if not node.eps > 0:
        raise node.fail(f"eps must be > 0, got {node.eps}")
    return x, C


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
    families = (TIME_INVARIANT,)
    weight: str | None = param(optional=True)
    bias: str | None = param(optional=True)
    running_mean: str = param()
    running_var: str = param()
    num_batches_tracked: str | None = param(optional=True)
    eps: float = 1e-5
    momentum: float | None = 0.1

    def infer(self, ins, graph):
        x, _ = _channel_input(self, ins, graph, ("weight", "bias", "running_mean", "running_var"))
        if self.num_batches_tracked is not None:
            self.param_shape(graph, "num_batches_tracked")
        return ValueType(x.shape, x.dtype, REAL, x.timing)


@register
@dataclass(frozen=True, kw_only=True)
class GroupNorm(Node):
    """``y = (x - mu) / sqrt(var + eps) * weight[c] + bias[c]`` (``nn.GroupNorm``): ``mu, var`` are the biased
    mean and variance of each group of ``C / num_groups`` channels over its channels and positions, per
    sample and, for a per-step value, per step.

    ``running`` (per-step input only; sdmc's conversion option): the statistics of step ``t`` are those of
    the running mean ``x̄[t] = mean_{s<=t} x[s]``, applied to ``x[t]``.
    """

    op = "groupnorm"
    weight: str | None = param(optional=True)
    bias: str | None = param(optional=True)
    num_groups: int = 32
    eps: float = 1e-5
    running: bool = False

    def infer(self, ins, graph):
        x, C = _channel_input(self, ins, graph, ("weight", "bias"))
        if int(self.num_groups) < 1 or C % int(self.num_groups):
            raise self.fail(f"num_groups={self.num_groups} does not divide the {C} channels of {self.inputs[0]!r}")
        if self.running and x.timing != PER_STEP:
            raise self.fail(f"running statistics need a per-step input; {self.inputs[0]!r} is static")
        return ValueType(x.shape, x.dtype, REAL, x.timing)
