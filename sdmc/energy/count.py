"""Operation counting: exact synaptic operations of spike-driven layers, dense MACs, and the static
per-node cost structure of an IR graph.

Pure tensor functions come first (``fanout_map``, ``conv_sops``, ``linear_sops``); ``count_graph``
annotates every IR node with its cost class from the value kinds; ``count_module_macs`` is an
independent, hook-based dense MAC counter for eager modules (works on the ``meta`` device).

Conventions (per network call, one sample)::

    dense MACs(conv)  = O * Ho * Wo * (C / groups) * kh * kw        per execution, padding taps included
    SOPs(conv)        = sum_{c,y,x} s[c,y,x] * (O / groups) * F[y,x]  F[y,x] = #output positions reached
    SOPs(linear)      = nnz(x) * O
    executions        = T for a per-step input, 1 for a static one (or a hoisted repeat of one)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SdmcError
from ..ir import CONV, NEURON, SYNAPTIC, pair


# ---------------------------------------------------------------------------------- pure functions
@functools.lru_cache(maxsize=256)
def _fanout_cached(H: int, W: int, kh: int, kw: int, stride: tuple, padding: tuple, dilation: tuple) -> torch.Tensor:
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if Ho < 1 or Wo < 1:
        raise SdmcError(f"fanout_map: kernel {kh}x{kw} (padding {padding}) does not fit a {H}x{W} input")
    base_h = (Ho - 1) * sh - 2 * ph + dh * (kh - 1) + 1
    base_w = (Wo - 1) * sw - 2 * pw + dw * (kw - 1) + 1
    # H - base_h = (H + 2·ph - dh·(kh-1) - 1) mod sh, in 0..sh-1: always a valid output_padding (< max(sh, dh))
    out_pad = (H - base_h, W - base_w)
    assert 0 <= out_pad[0] < sh and 0 <= out_pad[1] < sw, (out_pad, stride)
    ones_out = torch.ones(1, 1, Ho, Wo, dtype=torch.float64)
    ones_k = torch.ones(1, 1, kh, kw, dtype=torch.float64)
    fmap = F.conv_transpose2d(
        ones_out, ones_k, stride=stride, padding=padding, output_padding=out_pad, dilation=dilation
    )
    return fmap[0, 0]


def fanout_map(H: int, W: int, kernel, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """``F[y, x]``: the number of output positions of a conv whose receptive field contains input
    position ``(y, x)`` (per output channel), borders and strides exact.  float64 ``[H, W]``.

    Computed as the transposed convolution of an all-ones output map with an all-ones kernel.
    """
    k = pair(kernel, "fanout_map: kernel")
    s, p, d = (
        pair(v, f"fanout_map: {n}") for v, n in ((stride, "stride"), (padding, "padding"), (dilation, "dilation"))
    )
    if min(*k, *s, *d) < 1 or min(p) < 0:
        raise SdmcError(f"fanout_map: kernel {k}, stride {s} and dilation {d} must be >= 1 and padding {p} >= 0")
    return _fanout_cached(int(H), int(W), *k, s, p, d)


def event_map(x: torch.Tensor) -> torch.Tensor:
    """Non-zero events of ``x`` ``[k, B, C, H, W]`` summed over ``k`` and channels: ``[B, H, W]`` float64."""
    return (x != 0).sum(dim=(0, 2), dtype=torch.float64)


def conv_sops(
    x: torch.Tensor, out_channels: int, kernel, stride=1, padding=0, dilation=1, groups: int = 1
) -> torch.Tensor:
    """Exact synaptic operations per sample of a conv driven by events ``x`` ``[k, B, C, H, W]`` (k = steps):
    ``sum_{t,c,y,x} [x != 0] * (O / groups) * F[y, x]``.  Returns float64 ``[B]``."""
    if x.dim() != 5:
        raise SdmcError(f"conv_sops: expected events [k, B, C, H, W], got shape {list(x.shape)}")
    fmap = fanout_map(x.shape[-2], x.shape[-1], kernel, stride, padding, dilation).to(x.device)
    return (event_map(x) * fmap).sum(dim=(1, 2)) * (out_channels // groups)


def linear_sops(x: torch.Tensor, out_features: int) -> torch.Tensor:
    """Synaptic operations per sample of a dense layer on events ``x`` ``[k, B, ..., I]``: ``nnz * O``."""
    nz = (x != 0).transpose(0, 1).reshape(x.shape[1], -1).sum(1, dtype=torch.float64)
    return nz * out_features


def conv_macs(in_shape, out_shape, kernel, groups: int = 1) -> int:
    """Dense MACs of one conv execution on one sample: ``O * Ho * Wo * C/groups * kh * kw``."""
    kh, kw = pair(kernel, "conv_macs: kernel")
    C = in_shape[0]
    O, Ho, Wo = out_shape
    return int(O * Ho * Wo * (C // groups) * kh * kw)


# ------------------------------------------------------------------------------------ IR cost table
@dataclass
class NodeCost:
    """Static cost structure of one IR node (per network call, one sample).

    ``cls``: ``synapse`` (conv / linear), ``neuron``, ``norm`` (BN), ``scale`` (TSM), ``readout``,
    ``add``, ``pool`` (``pool2d``: one add or compare per window tap, ``Ho*Wo*C*kh*kw``) or ``free``.
    ``executions``: how many times the node runs per call (T or 1).
    ``per_exec``: dense MACs (synapses), elements (everything else) of one execution.
    ``input_kind``: kind of the (first) input value.  ``folded``: a BN / TSM scale a pass folds into the
    preceding conv (no cost in the faithful convention).  ``reads_image``: a synapse on the static
    graph input (the paper's Conv1).
    """

    name: str
    op: str
    cls: str
    input: str | None
    input_kind: str | None
    timing: str
    executions: int
    per_exec: int
    fanout: int = 0
    folded: bool = False
    reads_image: bool = False
    eager_executions: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


def _source(graph, name: str, through=("repeat", "reshape")) -> Any:
    n = graph.nodes[name]
    while n.op in through:
        n = graph.nodes[n.inputs[0]]
    return n


def count_graph(graph) -> dict[str, NodeCost]:
    """Annotate every node of a checked IR graph with its :class:`NodeCost` (``node.meta['energy_cost']``; the
    pass ``sdmc.passes.cost`` writes its own synapse counts under ``node.meta['cost']``).

    Classification comes from the IR's value kinds and timings; nothing is run.
    """
    from ..ir import check

    check(graph)
    T = graph.T
    out: dict[str, NodeCost] = {}
    for node in graph.order():
        if node.op in ("input", "output"):
            continue
        ty = node.type
        ins = [graph.nodes[i].type for i in node.inputs]
        x = ins[0] if ins else None
        numel = math.prod(ty.shape)
        per_step_in = x is not None and x.per_step
        hoisted = node.inputs and graph.nodes[node.inputs[0]].op == "repeat"
        execs = T if per_step_in and not hoisted else 1
        eager = T if per_step_in else 1
        kw: dict[str, Any] = dict(
            name=node.name,
            op=node.op,
            input=node.inputs[0] if node.inputs else None,
            input_kind=x.kind if x is not None else None,
            timing=ty.timing,
            executions=execs,
            eager_executions=eager,
        )
        prod = graph.nodes[node.inputs[0]] if node.inputs else None
        if node.op in SYNAPTIC and prod.op == "scale" and graph.nodes[prod.inputs[0]].type.kind == "spike":
            kw["input_kind"] = "spike"  # scaled spikes (converted QANN: s * theta): the scale folds into the weights
        if node.op in CONV:
            w = graph.params[node.weight].shape
            groups = int(getattr(node, "groups", 1))
            kw.update(
                cls="synapse", per_exec=conv_macs(x.shape, ty.shape, (w[2], w[3]), groups), fanout=int(w[0]) // groups
            )
            src = _source(graph, node.inputs[0])
            kw["reads_image"] = src.op == "input" and src.type.timing == "static"
            kw["meta"] = dict(
                in_shape=tuple(x.shape),
                kernel=(int(w[2]), int(w[3])),
                stride=node.stride,
                padding=node.padding,
                dilation=getattr(node, "dilation", (1, 1)),
                groups=groups,
                out_channels=int(w[0]),
            )
        elif node.op == "linear":
            w = graph.params[node.weight].shape
            rows = math.prod(x.shape[:-1])
            kw.update(cls="synapse", per_exec=int(rows * w[0] * w[1]), fanout=int(w[0]))
            src = _source(graph, node.inputs[0])
            kw["reads_image"] = src.op == "input" and src.type.timing == "static" and src.type.dtype.startswith("float")
            kw["meta"] = dict(in_shape=tuple(x.shape), out_features=int(w[0]))
        elif node.op in NEURON:
            kw.update(cls="neuron", per_exec=numel, executions=T, eager_executions=T)
        elif node.op in ("batchnorm", "tsm_scale"):
            prod = graph.nodes[node.inputs[0]]
            conv_like = prod.op in CONV or (prod.op == "tsm_scale" and graph.nodes[prod.inputs[0]].op in CONV)
            folded = conv_like and len(graph.users(prod.name)) == 1
            if node.op == "tsm_scale":
                execs = eager = T
            kw.update(
                cls="norm" if node.op == "batchnorm" else "scale",
                per_exec=numel,
                folded=folded,
                executions=execs,
                eager_executions=eager,
            )
        elif node.op == "membrane_readout":
            kw.update(cls="readout", per_exec=math.prod(x.shape), executions=T, eager_executions=T)
        elif node.op == "pool2d":  # one accumulate (sum/avg) or compare (max) per window tap
            kh, kw_ = node.kernel
            kw.update(cls="pool", per_exec=numel * kh * kw_)
        elif node.op == "add" and ty.kind == "real":
            execs = T if ty.per_step else 1
            kw.update(cls="add", per_exec=numel, executions=execs, eager_executions=execs)
        else:
            kw.update(cls="free", per_exec=0)
        cost = NodeCost(**kw)
        node.meta["energy_cost"] = cost
        out[node.name] = cost
    return out


def uniform_sops(c: NodeCost, rate: float) -> float:
    """Expected SOPs per call of synapse ``c`` when every input fires independently with probability ``rate``:
    ``rate * n_exec * sum_{c,y,x} (O / groups) * F[y, x]`` (conv) or ``rate * n_exec * I_rows * O`` (linear)."""
    shape = c.meta["in_shape"]
    if c.op == "linear":
        return rate * c.executions * math.prod(shape) * c.fanout
    C, H, W = shape
    f = fanout_map(H, W, c.meta["kernel"], c.meta["stride"], c.meta["padding"], c.meta["dilation"])
    return rate * c.executions * C * c.fanout * float(f.sum())


def eager_dense_macs(costs: dict[str, NodeCost]) -> int:
    """Dense MACs per call as the eager model runs it (no hoisting: the head conv runs T times),
    synapses plus the membrane read-out: what ``FlopCounterMode`` reports as FLOPs / 2."""
    return sum(c.per_exec * c.eager_executions for c in costs.values() if c.cls in ("synapse", "readout"))


# --------------------------------------------------------------------- independent eager MAC counter
def count_module_macs(model: nn.Module, *inputs: torch.Tensor) -> dict[str, int]:
    """Dense MACs per module path of one forward of ``model`` on ``inputs`` (all samples together), by
    forward hooks: Conv2d / Conv3d / Linear from their output shapes, pytorch-ddpm attention
    (``q k^T`` and ``w v`` batched products), and the membrane read-out (one MAC per element and step).
    Runs on the ``meta`` device too, so full-size models are counted without computing anything."""
    from ..models.ann_unet import AttnBlock
    from ..models.spiking_unet import MembraneOutputLayer

    macs: dict[str, int] = {}
    hooks = []

    def hook(name):
        def fn(mod, args, out):
            x = args[0]
            if isinstance(mod, (nn.Conv2d, nn.Conv3d)):
                k = math.prod(mod.kernel_size)
                n = out.numel() * (mod.in_channels // mod.groups) * k
            elif isinstance(mod, nn.Linear):
                n = out.numel() * mod.in_features
            elif isinstance(mod, AttnBlock):
                B, C, H, W = x.shape
                n = 2 * B * (H * W) ** 2 * C
            else:  # MembraneOutputLayer
                n = x.numel()
            macs[name] = macs.get(name, 0) + int(n)

        return fn

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear, AttnBlock, MembraneOutputLayer)):
            hooks.append(m.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return macs


def ann_counterpart(cfg) -> Any:
    """The pytorch-ddpm ANN UNet config of the same width as spiking ``cfg`` (a :class:`ModelConfig`)."""
    from ..config import ModelConfig

    g = math.gcd(32, cfg.ch)  # GroupNorm(32) where it divides: every normalised width (ch, ch * m, sums) is k * ch
    return ModelConfig(
        arch="ann",
        ch=cfg.ch,
        ch_mult=cfg.ch_mult,
        num_res_blocks=cfg.num_res_blocks,
        img_ch=cfg.img_ch,
        img_size=cfg.img_size,
        diffusion_steps=cfg.diffusion_steps,
        dropout=0.0,
        attn=(),
        norm_groups=g,
    )


def model_macs(cfg, batch: int = 1) -> int:
    """Dense MACs per call of a freshly built model of ``cfg`` for ``batch`` images (meta device)."""
    from ..models import build_model

    with torch.device("meta"):
        model = build_model(cfg).eval()
        x = torch.empty(batch, cfg.img_ch, cfg.img_size, cfg.img_size)
        t = torch.zeros(batch, dtype=torch.long)
    return sum(count_module_macs(model, x, t).values())
