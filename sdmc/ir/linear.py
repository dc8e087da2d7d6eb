"""Linear ops: 2-d convolution, the time-separable Conv3d, dense layers and the TSM per-step scale.

Convolutions and dense layers act on every step independently (``[T*B, ...]`` folded), so their output
has the timing of their input; their output is ``real`` whatever the input kind.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .families import CONV, CONV2D, PER_STEP_PARAMS, SYNAPTIC, TIME_INVARIANT
from .graph import FLOAT_DTYPES, GRADED, PER_STEP, REAL, SPIKE, Node, ValueType, pair_attr, param, register


def conv_out(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    """Output length of a convolution: ``floor((size + 2 pad - dil (k - 1) - 1) / stride) + 1``."""
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _check_float(node: Node, t: ValueType) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise node.fail(f"input {node.inputs[0]!r} has dtype {t.dtype}; a floating-point value is required")


def _conv_type(
    node: Node,
    x: ValueType,
    graph,
    wshape: tuple[int, ...],
    groups: int,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> ValueType:
    _check_float(node, x)
    if len(x.shape) != 3:
        raise node.fail(f"input {node.inputs[0]!r} must have shape [C, H, W], got {list(x.shape)}")
    C, H, W = x.shape
    O, I, kh, kw = wshape[:4]
    if groups < 1 or C % groups or O % groups:
        raise node.fail(f"groups={groups} must divide in_channels={C} and out_channels={O}")
    if I * groups != C:
        raise node.fail(
            f"shape mismatch: weight {node.weight!r} {list(wshape)} expects {I * groups} input "
            f"channels, input {node.inputs[0]!r} has {C} (shape {list(x.shape)})"
        )
    if node.bias is not None and node.param_shape(graph, "bias") != (O,):
        raise node.fail(
            f"shape mismatch: bias {node.bias!r} has shape {list(node.param_shape(graph, 'bias'))}, expected [{O}]"
        )
    Ho = conv_out(H, kh, stride[0], padding[0], dilation[0])
    Wo = conv_out(W, kw, stride[1], padding[1], dilation[1])
    if Ho < 1 or Wo < 1:
        raise node.fail(f"shape mismatch: kernel {kh}x{kw} does not fit input {H}x{W} with padding {padding}")
    return ValueType((O, Ho, Wo), x.dtype, REAL, x.timing)


@register
@dataclass(frozen=True, kw_only=True)
class Conv2d(Node):
    """2-d convolution applied at every step: ``y[t] = conv2d(x[t], W, stride, padding, dilation, groups) + b``.

    ``weight`` ``[O, C/groups, kh, kw]``; ``bias`` ``[O]`` or none.  ``x``: ``[C, H, W]`` per sample.
    """

    op = "conv2d"
    families = (SYNAPTIC, CONV, CONV2D, TIME_INVARIANT)
    weight: str = param()
    bias: str | None = param(optional=True)
    stride: tuple[int, int] = pair_attr((1, 1))
    padding: tuple[int, int] = pair_attr((0, 0))
    dilation: tuple[int, int] = pair_attr((1, 1))
    groups: int = 1

    def infer(self, ins, graph):
        w = self.param_shape(graph, "weight")
        if len(w) != 4:
            raise self.fail(f"weight {self.weight!r} must be 4-d [O, C/groups, kh, kw], got {list(w)}")
        return _conv_type(self, ins[0], graph, w, self.groups, self.stride, self.padding, self.dilation)


@register
@dataclass(frozen=True, kw_only=True)
class Conv3d(Node):
    """torch ``Conv3d`` with kernel ``(kh, kw, 1)`` on ``x`` laid out ``[B, C, H, W, T]``: no mixing over T.

    Equivalent per step: ``y[t] = conv2d(x[t], W[..., 0], stride, padding) + b`` with ``weight``
    ``[O, C, kh, kw, 1]`` (the source model's parameter, kept as is) and ``bias`` ``[O]``.
    """

    op = "conv3d"
    families = (SYNAPTIC, CONV, TIME_INVARIANT)
    weight: str = param()
    bias: str | None = param(optional=True)
    stride: tuple[int, int] = pair_attr((1, 1))
    padding: tuple[int, int] = pair_attr((0, 0))

    def infer(self, ins, graph):
        w = self.param_shape(graph, "weight")
        if len(w) != 5 or w[4] != 1:
            raise self.fail(f"weight {self.weight!r} must be [O, C, kh, kw, 1], got {list(w)}")
        return _conv_type(self, ins[0], graph, w, 1, self.stride, self.padding, (1, 1))


@register
@dataclass(frozen=True, kw_only=True)
class Linear(Node):
    """Dense layer on the last axis: ``y = x @ W.T + b``; ``weight`` ``[O, I]``, ``bias`` ``[O]`` or none."""

    op = "linear"
    families = (SYNAPTIC, TIME_INVARIANT)
    weight: str = param()
    bias: str | None = param(optional=True)

    def infer(self, ins, graph):
        x = ins[0]
        _check_float(self, x)
        w = self.param_shape(graph, "weight")
        if len(w) != 2:
            raise self.fail(f"weight {self.weight!r} must be 2-d [O, I], got {list(w)}")
        if not x.shape or x.shape[-1] != w[1]:
            raise self.fail(
                f"shape mismatch: weight {self.weight!r} {list(w)} expects last axis {w[1]}, "
                f"input {self.inputs[0]!r} has shape {list(x.shape)}"
            )
        if self.bias is not None and self.param_shape(graph, "bias") != (w[0],):
            raise self.fail(
                f"shape mismatch: bias {self.bias!r} has shape "
                f"{list(self.param_shape(graph, 'bias'))}, expected [{w[0]}]"
            )
        return ValueType(x.shape[:-1] + (w[0],), x.dtype, REAL, x.timing)


@register
@dataclass(frozen=True, kw_only=True)
class TSMScale(Node):
    """Temporal-wise spiking mechanism (SDM Eq. 16): ``y[t] = p[t] * x[t]``, one scalar per step.

    ``scale`` has ``T`` entries (the source's ``tsmp`` of shape ``[T, 1, 1, 1, 1]``).  A static input
    becomes per-step.  Spike inputs give graded outputs.
    """

    op = "tsm_scale"
    families = (PER_STEP_PARAMS,)
    scale: str = param()

    def infer(self, ins, graph):
        x = ins[0]
        _check_float(self, x)
        s = self.param_shape(graph, "scale")
        n = 1
        for d in s:
            n *= d
        if not s or s[0] != graph.T or n != graph.T:
            raise self.fail(
                f"shape mismatch: scale {self.scale!r} has shape {list(s)}, expected T={graph.T} "
                f"scalars ([{graph.T}, 1, 1, 1, 1] or [{graph.T}])"
            )
        return ValueType(x.shape, x.dtype, GRADED if x.kind == SPIKE else x.kind, PER_STEP)


@register
@dataclass(frozen=True, kw_only=True)
class ScaledConv2d(Node):
    """A conv with per-step weights and biases (fused TSM conv + BN): ``y[t] = scale[t] * conv2d(x[t], W) + b[t]``,
    i.e. per-step weights ``W_t = scale[t] * W``.

    ``weight`` ``[O, C/groups, kh, kw]``; ``scale`` ``T`` scalars (any shape holding ``T`` entries) or none
    (all 1); ``bias`` ``[T, O]`` (per step), ``[O]`` or none.  A static input is convolved once and
    the output is per-step.
    """

    op = "scaled_conv2d"
    families = (SYNAPTIC, CONV, CONV2D, PER_STEP_PARAMS)
    weight: str = param()
    scale: str | None = param(optional=True)
    bias: str | None = param(optional=True)
    stride: tuple[int, int] = pair_attr((1, 1))
    padding: tuple[int, int] = pair_attr((0, 0))
    dilation: tuple[int, int] = pair_attr((1, 1))
    groups: int = 1

    def infer(self, ins, graph):
        w = self.param_shape(graph, "weight")
        if len(w) != 4:
            raise self.fail(f"weight {self.weight!r} must be 4-d [O, C/groups, kh, kw], got {list(w)}")
        if self.scale is not None:
            s = self.param_shape(graph, "scale")
            n = 1
            for d in s:
                n *= d
            if not s or s[0] != graph.T or n != graph.T:
                raise self.fail(
                    f"shape mismatch: scale {self.scale!r} has shape {list(s)}, expected T={graph.T} "
                    f"scalars ([{graph.T}] or [{graph.T}, 1, 1, 1, 1])"
                )
        if self.bias is not None and self.param_shape(graph, "bias") not in ((graph.T, w[0]), (w[0],)):
            raise self.fail(
                f"shape mismatch: bias {self.bias!r} has shape {list(self.param_shape(graph, 'bias'))}, "
                f"expected [{graph.T}, {w[0]}] (per step) or [{w[0]}]"
            )
        probe = dataclasses.replace(self, bias=None)  # bias checked above
        t = _conv_type(probe, ins[0], graph, w, self.groups, self.stride, self.padding, self.dilation)
        return ValueType(t.shape, t.dtype, REAL, PER_STEP)
