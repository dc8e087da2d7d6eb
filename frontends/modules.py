"""Lowering rules for modules, keyed by module type (looked up along the class's MRO, so subclasses such as
spikingjelly's ``layer.Conv2d`` use torch's ``nn.Conv2d`` rule).

A rule ``rule(lw, where, m, path, x) -> V`` lowers module ``m`` at ``path`` applied to traced value ``x``.
Stateless spikingjelly layers in multi-step mode (``step_mode='m'``, input ``[T, B, ...]``) run their rule
on the folded ``[T*B, ...]`` view, as spikingjelly does.  Neurons (any ``BaseNode`` of known dynamics,
:mod:`.neurons`) need a per-step ``[T, B, ...]`` input: multi-step mode, or single-step mode driven over T
by ``MultiStepContainer`` / ``functional.multi_step_forward``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from spikingjelly.activation_based import layer as sj_layer
from torch import nn

from sdmc import ir
from sdmc.convert import IFNeuron, RunningGroupNorm

from .layouts import LEAD, V
from .neurons import NEURON_BASES, NotANeuron, neuron_node

if TYPE_CHECKING:  # the rules take the Lowering that calls them: a type, not an import cycle
    from .lowering import Lowering

Rule = Callable[["Lowering", str, nn.Module, str, V], V]
MODULE_RULES: dict[type, Rule] = {}


def rule(*types: type) -> Callable[[Rule], Rule]:
    """Register a lowering rule for module ``types``."""

    def deco(fn: Rule) -> Rule:
        for t in types:
            MODULE_RULES[t] = fn
        return fn

    return deco


def find_rule(cls: type) -> Rule | None:
    return next((MODULE_RULES[c] for c in cls.__mro__ if c in MODULE_RULES), None)


def has_rule(m: nn.Module) -> bool:
    """Whether ``m`` is lowered as one unit (a leaf of the capture)."""
    return isinstance(m, NEURON_BASES) or find_rule(type(m)) is not None


def _multi_step(m: nn.Module) -> bool:
    return getattr(m, "step_mode", "s") == "m"


def lower_module(lw: Lowering, where: str, m: nn.Module, path: str, x: V, driven: bool = False) -> V:
    """Lower module ``m`` (at ``path``) on ``x``; ``driven``: a single-step module run once per step."""
    if isinstance(m, NEURON_BASES):
        return neuron(lw, where, m, path, x, driven)
    r = find_rule(type(m))
    if r is None:
        cls = type(m)
        raise lw.unsupported(
            where,
            f"module {cls.__module__}.{cls.__qualname__}",
            "supported: Conv2d, Conv3d (kh, kw, 1), Linear, BatchNorm1d/2d, GroupNorm, MaxPool2d, AvgPool2d, "
            "AdaptiveAvgPool2d, Flatten, Dropout, Identity, Upsample (nearest), Embedding, SiLU, Sigmoid, "
            "spikingjelly IF/LIF/ParametricLIF neurons, SeqToANNContainer, MultiStepContainer, "
            "sdmc.convert IFNeuron / RunningGroupNorm",
        )
    if (_multi_step(m) or driven) and not isinstance(m, _CONTAINERS) and x.layout == "TB":
        y = r(lw, where, m, path, x.relayout("F"))
        return y.relayout("TB") if y.layout == "F" else y
    if _multi_step(m) and not isinstance(m, _CONTAINERS) and x.layout != "TB":
        raise lw.unsupported(where, f"multi-step {type(m).__name__}", f"input laid out as {x.layout}, expected TB")
    return r(lw, where, m, path, x)


# ---------------------------------------------------------------------------------------------- neurons
def neuron(lw: Lowering, where: str, m: nn.Module, path: str, x: V, driven: bool) -> V:
    name = type(m).__name__
    if not _multi_step(m) and not driven:
        raise lw.unsupported(
            where, f"{name} in single-step mode", "use step_mode='m' on [T, B, ...] inputs, or MultiStepContainer"
        )
    x = lw.layout(where, x, ("TB",), name)
    try:
        node = neuron_node(m, path, lw.value(where, x, name), lw.key(path, "w", optional=True))
    except NotANeuron as e:
        raise lw.unsupported(where, str(e)) from None
    return lw.v(lw.add(node), "TB")


@rule(sj_layer.SeqToANNContainer)
def seq_to_ann(lw, where, m, path, x):
    """``SeqToANNContainer(*layers)``: the layers on the folded ``[T*B, ...]`` sequence."""
    x = lw.layout(where, x, ("TB",), "SeqToANNContainer")
    y = x.relayout("F")
    for i, sub in enumerate(m):
        y = lower_module(lw, where, sub, f"{path}.{i}", y)
    return y.relayout("TB") if y.layout == "F" else y


@rule(sj_layer.MultiStepContainer)
def multi_step_container(lw, where, m, path, x):
    """``MultiStepContainer(*layers)``: single-step layers applied at every step of ``[T, B, ...]``."""
    x = lw.layout(where, x, ("TB",), "MultiStepContainer")
    for i, sub in enumerate(m):
        x = lower_module(lw, where, sub, f"{path}.{i}", x, driven=True)
    return x


_CONTAINERS = (sj_layer.SeqToANNContainer, sj_layer.MultiStepContainer)


# ---------------------------------------------------------------------------------------------- torch layers
@rule(nn.Identity, nn.Dropout, nn.Dropout2d, sj_layer.Dropout)
def identity(lw, where, m, path, x):
    """Identity, and dropout (the IR describes inference: dropout is the identity)."""
    return x


@rule(nn.Conv2d)
def conv2d(lw, where, m, path, x):
    if isinstance(m.padding, str) or m.padding_mode != "zeros":
        raise lw.unsupported(
            where,
            f"Conv2d(padding={m.padding!r}, padding_mode={m.padding_mode!r})",
            "only explicit zero padding is supported",
        )
    x = lw.layout(where, x, ("F", "S"), "Conv2d")
    node = ir.Conv2d(
        name=path,
        inputs=(lw.value(where, x, "Conv2d"),),
        weight=lw.key(path, "weight"),
        bias=lw.key(path, "bias", optional=True),
        stride=tuple(m.stride),
        padding=tuple(m.padding),
        dilation=tuple(m.dilation),
        groups=int(m.groups),
    )
    return lw.v(lw.add(node), x.layout)


@rule(nn.Conv3d)
def conv3d(lw, where, m, path, x):
    x = lw.layout(where, x, ("TBL",), "Conv3d")
    if (
        m.kernel_size[2] != 1
        or m.stride[2] != 1
        or isinstance(m.padding, str)
        or m.padding[2] != 0
        or tuple(m.dilation) != (1, 1, 1)
        or m.groups != 1
        or m.padding_mode != "zeros"
    ):
        raise lw.unsupported(
            where,
            f"Conv3d(kernel={m.kernel_size}, stride={m.stride}, padding={m.padding})",
            "only kernels (kh, kw, 1) over the time-last axis, no time padding/stride",
        )
    node = ir.Conv3d(
        name=path,
        inputs=(lw.value(where, x, "Conv3d"),),
        weight=lw.key(path, "weight"),
        bias=lw.key(path, "bias", optional=True),
        stride=tuple(m.stride[:2]),
        padding=tuple(m.padding[:2]),
    )
    return lw.v(lw.add(node), "TBL")


@rule(nn.BatchNorm1d, nn.BatchNorm2d)
def batchnorm(lw, where, m, path, x):
    if not m.track_running_stats or m.running_mean is None:
        raise lw.unsupported(where, "BatchNorm without running statistics", "use track_running_stats=True")
    x = lw.layout(where, x, ("F", "S"), type(m).__name__)
    node = ir.BatchNorm(
        name=path,
        inputs=(lw.value(where, x, type(m).__name__),),
        weight=lw.key(path, "weight", True),
        bias=lw.key(path, "bias", True),
        running_mean=lw.key(path, "running_mean"),
        running_var=lw.key(path, "running_var"),
        num_batches_tracked=lw.key(path, "num_batches_tracked", True),
        eps=float(m.eps),
        momentum=None if m.momentum is None else float(m.momentum),
    )
    return lw.v(lw.add(node), x.layout)


def _group_norm(lw, where, m, path, x, running: bool):
    node = ir.GroupNorm(
        name=path,
        inputs=(lw.value(where, x, "GroupNorm"),),
        weight=lw.key(path, "weight", True),
        bias=lw.key(path, "bias", True),
        num_groups=int(m.num_groups),
        eps=float(m.eps),
        running=running,
    )
    return lw.v(lw.add(node), x.layout)


@rule(nn.GroupNorm)
def group_norm(lw, where, m, path, x):
    return _group_norm(lw, where, m, path, lw.layout(where, x, ("F", "S"), "GroupNorm"), False)


@rule(RunningGroupNorm)
def running_group_norm(lw, where, m, path, x):
    """sdmc's converted GroupNorm with running statistics over the steps."""
    lw.need_T(where, m.steps, "RunningGroupNorm")
    return _group_norm(lw, where, m, path, lw.layout(where, x, ("F", "TB"), "RunningGroupNorm"), True)


@rule(IFNeuron)
def converted_if(lw, where, m, path, x):
    """sdmc's converted QANN neuron: IF, soft reset, ``v[-1] = theta/2``, output spikes times theta."""
    lw.need_T(where, m.steps, "IFNeuron")
    x = lw.layout(where, x, ("F", "TB"), "IFNeuron")
    th = float(m.alpha)
    s_ = lw.add(
        ir.IF(
            name=path,
            inputs=(lw.value(where, x, "IFNeuron"),),
            threshold=th,
            v_reset=None,
            v_init=0.5 * th,
            signed=m.signed,
        )
    )
    return lw.v(lw.add(ir.Scale(name=f"{path}.out", inputs=(s_,), factor=th)), x.layout)


@rule(nn.Linear)
def linear(lw, where, m, path, x):
    """A dense layer on the last axis, for static values and sequences alike."""
    x = lw.layout(where, x, ("S", "F", "TB", "S1"), "Linear")
    node = ir.Linear(
        name=path,
        inputs=(lw.value(where, x, "Linear"),),
        weight=lw.key(path, "weight"),
        bias=lw.key(path, "bias", optional=True),
    )
    return lw.v(lw.add(node), x.layout)


@rule(nn.Embedding)
def embedding(lw, where, m, path, x):
    if m.max_norm is not None:
        raise lw.unsupported(where, "Embedding(max_norm=...)", "renormalising lookups are not supported")
    x = lw.layout(where, x, ("S", "F"), "Embedding")
    node = ir.Embedding(name=path, inputs=(lw.value(where, x, "Embedding"),), weight=lw.key(path, "weight"))
    return lw.v(lw.add(node), x.layout)


@rule(nn.Upsample)
def upsample_module(lw, where, m, path, x):
    return upsample(lw, where, x, m.scale_factor, m.mode, m.size, path)


def upsample(lw: Lowering, where, x: V, scale, mode, size, name: str) -> V:
    if mode != "nearest" or size is not None or scale is None:
        raise lw.unsupported(where, f"interpolate(mode={mode!r}, size={size})", "only nearest with an integer scale")
    s = scale if isinstance(scale, (int, float)) else scale[0]
    if isinstance(scale, (tuple, list)) and len(set(scale)) != 1 or float(s) != int(s):
        raise lw.unsupported(where, f"interpolate(scale_factor={scale})", "only one integer scale for H and W")
    x = lw.layout(where, x, ("F", "S"), "interpolate")
    node = ir.Upsample(name=name, inputs=(lw.value(where, x, "interpolate"),), scale=int(s), mode="nearest")
    return lw.v(lw.add(node), x.layout)


@rule(nn.SiLU)
def silu(lw, where, m, path, x):
    return lw.v(lw.add(ir.Swish(name=path, inputs=(lw.value(where, x, "SiLU"),))), x.layout)


@rule(nn.Sigmoid)
def sigmoid(lw, where, m, path, x):
    return lw.v(lw.add(ir.Sigmoid(name=path, inputs=(lw.value(where, x, "Sigmoid"),))), x.layout)


# ---------------------------------------------------------------------------------------------- pooling
def pool2d(
    lw: Lowering,
    where,
    x: V,
    name: str,
    mode: str,
    kernel,
    stride,
    padding,
    *,
    dilation=1,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
) -> V:
    """Max / avg / sum pooling (``divisor_override=1`` makes an average pool a sum pool)."""
    what = f"{mode}_pool2d(kernel={kernel}, stride={stride}, padding={padding})"
    if ceil_mode:
        raise lw.unsupported(where, f"{what} with ceil_mode=True", "use ceil_mode=False")
    if dilation not in (1, (1, 1), [1, 1]):
        raise lw.unsupported(where, f"{what} with dilation={dilation}", "only dilation 1")
    if mode == "avg" and divisor_override is not None:
        if int(divisor_override) != 1:
            raise lw.unsupported(where, f"{what} with divisor_override={divisor_override}", "only 1 (sum pooling)")
        mode = "sum"
    x = lw.layout(where, x, ("F", "S"), what)
    stride = kernel if stride is None or stride == [] or stride == () else stride
    node = ir.Pool2d(
        name=name,
        inputs=(lw.value(where, x, what),),
        mode=mode,
        kernel=kernel,
        stride=stride,
        padding=padding,
        count_include_pad=bool(count_include_pad),
    )
    try:
        return lw.v(lw.add(node), x.layout)
    except ir.IRError as e:
        raise lw.unsupported(where, what, str(e)) from None


@rule(nn.MaxPool2d)
def max_pool(lw, where, m, path, x):
    if m.return_indices:
        raise lw.unsupported(where, "MaxPool2d(return_indices=True)")
    return pool2d(
        lw, where, x, path, "max", m.kernel_size, m.stride, m.padding, dilation=m.dilation, ceil_mode=m.ceil_mode
    )


@rule(nn.AvgPool2d)
def avg_pool(lw, where, m, path, x):
    return pool2d(
        lw,
        where,
        x,
        path,
        "avg",
        m.kernel_size,
        m.stride,
        m.padding,
        ceil_mode=m.ceil_mode,
        count_include_pad=m.count_include_pad,
        divisor_override=m.divisor_override,
    )


@rule(nn.AdaptiveAvgPool2d)
def adaptive_avg_pool(lw, where, m, path, x):
    return adaptive_avg_pool2d(lw, where, x, path, m.output_size)


def adaptive_avg_pool2d(lw: Lowering, where, x: V, name: str, output_size) -> V:
    """``AdaptiveAvgPool2d`` whose output size divides the input: an average pool with kernel = stride."""
    x = lw.layout(where, x, ("F", "S"), "AdaptiveAvgPool2d")
    H, W = x.shape[-2:]
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    oh, ow = oh or H, ow or W
    if H % oh or W % ow:
        raise lw.unsupported(where, f"AdaptiveAvgPool2d({output_size}) on {H}x{W}", "the output must divide the input")
    k = (H // oh, W // ow)
    return pool2d(lw, where, x, name, "avg", k, k, 0)


# ---------------------------------------------------------------------------------------------- reshapes
@rule(nn.Flatten)
def flatten_module(lw, where, m, path, x):
    return flatten(lw, where, x, m.start_dim, m.end_dim)


def flatten(lw: Lowering, where, x: V, start: int, end: int) -> V:
    """``flatten(start, end)`` over per-sample axes only (a view; no node until an op needs the shape)."""
    lead = LEAD[x.layout]
    rank = lead + len(x.shape)
    s, e = start % rank, end % rank
    if x.layout == "TBL" or s < lead or e < s:
        raise lw.unsupported(
            where,
            f"flatten({start}, {end}) of a tensor laid out as {x.layout}",
            "only flattening per-sample axes (T and the batch stay)",
        )
    f = x.shape
    i, j = s - lead, e - lead
    n = 1
    for d in f[i : j + 1]:
        n *= d
    return x.view(f[:i] + (n,) + f[j + 1 :])
