"""NIR export: the IR as a NIR 1.0 graph (``nir.NIRGraph``, written with ``nir.write``).

    >>> from sdmc.backends import nir as sdmc_nir
    >>> g = sdmc_nir.to_nir(graph, t=500)                       # the diffusion step folded into biases
    >>> sdmc_nir.save_nir(graph, "model.nir", t=500, extensions=True)
    >>> out = sdmc_nir.simulate(nir.read("model.nir"), {"x": x})   # sdmc's NIR interpreter + host ops

First :func:`prepare` brings the graph to a form that maps node for node (exact rewrites, checked IR):
BatchNorm folded into the conv before it (else a 1x1 depthwise conv), concatenations split
(``IF(cat(a, b)) = cat(IF(a), IF(b))``, ``conv(cat(a, b)) = conv_a(a) + conv_b(b)``), the Conv3d read-out
as a Conv2d, PLIF as LIF, and -- with ``t`` -- everything that depends only on the diffusion step (the time
embedding MLP) evaluated once and added to the biases of the convs it feeds.  Then :data:`EXPORT` maps each
op; what NIR cannot express is refused with the node and the reason, or, with ``extensions=True``, cut out
of the graph as an **sdmc extension node**: the op's inputs leave through Output nodes ``<node>__in<j>``
and its result comes back through an Input node ``<node>``; the graph metadata ``sdmc`` (JSON) records the
op, attributes and parameters (``sdmc_params``), so sdmc (:func:`simulate`, the importer) closes the loop
each step, while any other NIR tool sees a valid graph with extra I/O it must drive -- never a silently
wrong one.

Conventions (also in the metadata):
  * time: forward Euler with step ``dt`` (default 1e-4 as in SpikingJelly/nirtorch): IF ``r = 1/dt``;
    LIF ``tau = tau_IR * dt``, ``r = 1`` (decay_input) or ``tau_IR``, ``v_leak = v_reset``.
  * threshold: NIR fires on ``v > v_threshold``, the IR on ``v >= threshold``; the exported
    ``v_threshold = nextafter(threshold - v0, -inf)`` (float64) fires on exactly the same float64
    potentials.  ``v0`` = the IR's initial potential (``v_init`` or ``v_reset``); NIR states start at 0, so
    potentials are exported shifted by ``-v0`` (``v_reset``, ``v_leak`` likewise).
  * soft reset (``v_reset=None``, converted QANNs): a nested graph ``I|LI -> Threshold -> Scale(f) -> I|LI``
    whose recurrent edge subtracts ``theta`` at the next step (``f = -theta`` for IF).
  * the membrane read-out ``y = sum_t decay^(T-1-t) x[t]`` is an LI (``I`` for decay 1) whose value at the
    last step is the output; static IR outputs are read at step T-1.
  * a sum (IR ``add``) is a ``Scale(1)`` node with two incoming edges (NIR fan-in = sum).
  * pooling: sum -> ``SumPool2d``, average -> ``AvgPool2d`` (``/ kh kw``, so padded average pooling only with
    ``count_include_pad``); max pooling has no NIR node (refused, or an extension).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import nir
import numpy as np
from scipy.special import expit

from sdmc import ir, passes
from sdmc.errors import SdmcError
from sdmc.passes.rewrite import _new_param
from sdmc.sim import golden
from sdmc.sim import nir as nirsim
from sdmc.utils import check_file_replaceable, replace_file

DT = nirsim.DT
FORMAT = "sdmc-nir/1"
PIPELINE = ("fold_bn", "hoist_static", "dead_code", "split_concat", "hoist_static", "dead_code")

THRESHOLD_NOTE = (
    "NIR fires on v > v_threshold, the sdmc IR on v >= threshold; exported v_threshold = "
    "nextafter(threshold - v0, -inf) in float64 (v0: the IR's initial potential, potentials shifted by -v0), "
    "so spikes are identical for float64 potentials"
)


class Refused(SdmcError):
    """A node NIR cannot carry (the message names the node, its op and the reason)."""


def refuse(n: ir.Node, why: str) -> Refused:
    return Refused(f"NIR export: node {n.name!r} ({n.op}): {why}")


# ------------------------------------------------------------------------------------------ prepare
def _rewrite_bn(g: ir.Graph, n: ir.BatchNorm) -> ir.Node:
    """Eval BatchNorm as ``x * s + (beta - mean * s)``, ``s = gamma / sqrt(var + eps)``: a 1x1 conv (``[C, H, W]``
    values) or a linear (``[C]``) with the diagonal weight ``diag(s)`` (NIR's type rules miscount the
    input channels of grouped convs, so no depthwise conv)."""
    mean, var = (np.asarray(g.params[k], np.float64) for k in (n.running_mean, n.running_var))
    s = 1.0 / np.sqrt(var + n.eps)
    if n.weight is not None:
        s = s * np.asarray(g.params[n.weight], np.float64)
    b = -mean * s + (np.asarray(g.params[n.bias], np.float64) if n.bias is not None else 0.0)
    C, like = s.size, n.running_mean
    bias = _new_param(g, f"{n.name}.bias.nir", b, like)
    rank = len(n.type.shape)
    if rank == 3:
        w = _new_param(g, f"{n.name}.weight.nir", np.diag(s).reshape(C, C, 1, 1), like)
        return ir.Conv2d(name=n.name, inputs=n.inputs, weight=w, bias=bias)
    if rank == 1:
        return ir.Linear(
            name=n.name, inputs=n.inputs, weight=_new_param(g, f"{n.name}.weight.nir", np.diag(s), like), bias=bias
        )
    raise refuse(n, f"BatchNorm over a rank-{rank} value has no NIR form (only [C] and [C, H, W])")


def _rewrite_local(g: ir.Graph) -> None:
    """Exact one-node rewrites: BatchNorm -> conv / linear, Conv3d -> Conv2d, PLIF -> LIF, a grouped conv ->
    its block-diagonal dense conv (``nir.Conv2d`` infers its input channels as ``weight.shape[1]``), unpadded
    average pooling with ``count_include_pad`` (the one form NIR and the importer know)."""
    for n in list(g.order()):
        if n.op == "conv2d" and int(n.groups) > 1:
            w = np.asarray(g.params[n.weight])
            G, (O, Cg) = int(n.groups), w.shape[:2]
            dense = np.zeros((O, Cg * G) + w.shape[2:], w.dtype)
            for k in range(G):
                dense[k * (O // G) : (k + 1) * (O // G), k * Cg : (k + 1) * Cg] = w[k * (O // G) : (k + 1) * (O // G)]
            new = n.replace(weight=_new_param(g, f"{n.name}.weight.dense", dense, n.weight), groups=1)
        elif n.op == "batchnorm":
            new = _rewrite_bn(g, n)
        elif n.op == "conv3d":
            w = _new_param(g, f"{n.name}.weight.nir", np.asarray(g.params[n.weight])[..., 0], n.weight)
            new = ir.Conv2d(name=n.name, inputs=n.inputs, weight=w, bias=n.bias, stride=n.stride, padding=n.padding)
        elif n.op == "pool2d" and n.mode == "avg" and not any(n.padding) and not n.count_include_pad:
            new = n.replace(count_include_pad=True)  # no padded windows: the same divisor kh kw
        elif n.op == "plif":
            tau = 1.0 / float(expit(np.float64(np.asarray(g.params[n.w]).reshape(()))))
            if not tau > 1.0:
                raise refuse(n, f"1/sigmoid(w) = {tau} is not a LIF time constant > 1")
            keep = {k: getattr(n, k) for k in ("threshold", "v_reset", "surrogate", "alpha", "detach_reset", "v_init")}
            new = ir.LIF(name=n.name, inputs=n.inputs, tau=tau, decay_input=n.decay_input, **keep)
        else:
            continue
        g.nodes[n.name] = new
    ir.infer_types(g)


def _fold_fixed(g: ir.Graph, t: int | None) -> dict:
    """Evaluate everything that depends only on the integer inputs (the diffusion step) at ``t`` and add each
    such constant to the bias of the conv / linear it is summed with.  Returns what was folded."""
    fixed = [n.name for n in g.input_nodes if n.dtype not in ir.graph.FLOAT_DTYPES]
    if not fixed:
        return {}
    if t is None:
        raise SdmcError(
            f"NIR export: graph input(s) {fixed} (the diffusion step) must be fixed: NIR has no integer inputs "
            "or table lookups; give t (--t STEP) to fold the time embedding into the biases, one graph per step"
        )
    const: set[str] = set()
    for n in g.order():
        if n.name in fixed or (n.op != "input" and n.inputs and all(i in const for i in n.inputs)):
            const.add(n.name)
    boundary = [k for k in const if any(u not in const for u in g.users(k))]
    inputs = {}
    for n in g.input_nodes:
        shape = n.type.full_shape(g.T, 1)
        inputs[n.name] = np.full(shape, int(t), np.int64) if n.name in fixed else np.zeros(shape)
    vals = golden.run(g, inputs, keep=boundary)
    folded = []
    for c in boundary:
        value = np.asarray(vals[c], np.float64)
        if g.nodes[c].type.per_step:
            if not np.all(value == value[:1]):
                raise refuse(
                    g.nodes[c], "depends only on the diffusion step but varies over the SNN steps (no constant bias)"
                )
            value = value[0]
        value = value[0]  # batch 1
        for u in g.users(c):
            un = g.nodes[u]
            other = [i for i in un.inputs if i != c]
            prod = _absorber(g, other[0], u) if un.op == "add" and len(other) == 1 else None
            if prod is None:
                raise refuse(
                    un,
                    f"reads {c!r}, which depends only on the diffusion step; NIR has no constant source, and it "
                    "folds only into the bias of a conv / linear summed by this add and read by nothing else",
                )
            C = prod.type.shape[0] if prod.op == "conv2d" else prod.type.shape[-1]
            if value.size != C or (prod.op == "conv2d" and value.shape[1:] != (1,) * (value.ndim - 1)):
                raise refuse(
                    un, f"constant {c!r} of shape {list(value.shape)} is not one value per channel of {prod.name!r}"
                )
            b = np.asarray(g.params[prod.bias], np.float64) if prod.bias is not None else 0.0
            bias = _new_param(g, f"{prod.name}.bias.t{t}", b + value.reshape(-1), prod.weight)
            g.nodes[prod.name] = prod.replace(bias=bias)
            g.replace_uses(u, other[0])
            g.remove(u)
            ir.infer_types(g)
            folded.append([c, prod.name])
    for k in [n.name for n in reversed(g.order()) if n.name in const]:
        g.remove(k)  # every reader of the constants is folded by now
    return {"t": int(t), "folded": folded}


def _drop_repeats(g: ir.Graph) -> None:
    """A sum / product / concat that has a per-step operand broadcasts a static one over T itself: read the static
    value directly, so ``repeat`` remains only where a per-step value is required (neurons, read-outs), which is
    where the importer puts it back (NIR streams carry no static/per-step distinction)."""
    for r in [n for n in g.order() if n.op == "repeat"]:
        for u in g.users(r.name):
            un = g.nodes[u]
            if un.op in ("add", "mul", "concat") and any(g.nodes[i].type.per_step for i in un.inputs if i != r.name):
                g.nodes[u] = un.replace(inputs=tuple(r.inputs[0] if i == r.name else i for i in un.inputs))
        ir.infer_types(g)
        if not g.users(r.name):
            g.remove(r.name)


def _canonical_repeats(g: ir.Graph) -> None:
    """One ``repeat`` per static value, placed right before its first reader (the importer's order)."""
    first: dict[str, str] = {}
    for r in [n for n in g.order() if n.op == "repeat"]:
        src = r.inputs[0]
        if src in first:
            g.replace_uses(r.name, first[src])
            g.remove(r.name)
        else:
            first[src] = r.name
    order: list[str] = []
    for n in g.order():
        if n.op == "repeat":
            continue
        order += [i for i in n.inputs if g.nodes[i].op == "repeat" and i not in order]
        order.append(n.name)
    order += [k for k in g.nodes if k not in order]  # unread repeats (dead code)
    g.nodes = {k: g.nodes[k] for k in order}


def _absorber(g: ir.Graph, v: str, reader: str) -> ir.Node | None:
    """A conv / linear whose output reaches ``v`` only through adds, each read by nothing else (so a
    constant added to ``v`` can go into its bias)."""
    n = g.nodes[v]
    if g.users(v) != [reader]:
        return None
    if n.op in ("conv2d", "linear"):
        return n
    if n.op == "add":
        for i in n.inputs:
            if g.nodes[i].type.shape == n.type.shape:
                hit = _absorber(g, i, v)
                if hit is not None:
                    return hit
    return None


def prepare(graph: ir.Graph, t: int | None = None) -> ir.Graph:
    """The IR form the exporter maps node for node (see the module docstring); a new checked graph whose
    ``meta['nir_prepare']`` says what was folded.  ``golden.run`` on it is the reference the exported
    graph is simulated against."""
    ir.check(graph)
    g = passes.run(graph, PIPELINE)
    g = g.copy()
    ir.infer_types(g)
    _rewrite_local(g)
    _drop_repeats(g)
    info = _fold_fixed(g, t)
    g = passes.run(ir.check(g), ["dead_code"])
    _canonical_repeats(g)
    g.meta["nir_prepare"] = info
    return g


# ------------------------------------------------------------------------------------------ export
class _Ctx:
    def __init__(self, g: ir.Graph, dt: float, extensions: bool) -> None:
        self.g, self.dt, self.extensions = g, float(dt), extensions
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []
        self.names: dict[str, str] = {}  # IR value -> NIR node producing it
        self.ext: list[dict] = []
        self.params: dict[str, np.ndarray] = {}

    def name(self, ir_name: str) -> str:
        base = re.sub(r"\W", "_", ir_name)
        k, i = base, 0
        while k in self.nodes:
            i += 1
            k = f"{base}_{i}"
        return k

    def src(self, value: str) -> str:
        return self.names[value]

    def add(self, n: ir.Node, node: nir.NIRNode, hint: dict | None = None) -> str:
        k = self.name(n.name)
        node.metadata = {"sdmc": json.dumps({"ir_name": n.name, **(hint or {})})}
        self.nodes[k] = node
        self.names[n.name] = k
        for i in n.inputs:
            self.edges.append((self.src(i), k))
        return k


def _full(shape, v) -> np.ndarray:
    return np.full(tuple(shape), float(v), dtype=np.float64)


def _attrs(n: ir.Node) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in n.attrs().items()}


def _ex_input(c: _Ctx, n: ir.Input) -> str:
    if n.dtype not in ir.graph.FLOAT_DTYPES:
        raise refuse(n, f"a {n.dtype} input has no NIR form (NIR streams are real-valued)")
    return c.add(n, nir.Input(input_type=np.array(n.shape)), {"timing": n.timing, "kind": n.kind, "dtype": n.dtype})


def _ex_output(c: _Ctx, n: ir.Output) -> str:
    t = n.type
    return c.add(n, nir.Output(output_type=np.array(t.shape)), {"timing": t.timing})


def _ex_conv(c: _Ctx, n: ir.Conv2d) -> str:
    w = np.asarray(c.g.params[n.weight])
    b = np.asarray(c.g.params[n.bias]) if n.bias is not None else np.zeros(w.shape[0], w.dtype)
    H, W = c.g.nodes[n.inputs[0]].type.shape[1:]
    node = nir.Conv2d(
        input_shape=(H, W),
        weight=w,
        stride=tuple(n.stride),
        padding=tuple(n.padding),
        dilation=tuple(n.dilation),
        groups=int(n.groups),
        bias=b,
    )
    return c.add(n, node, {"bias": n.bias is not None})


def _ex_linear(c: _Ctx, n: ir.Linear) -> str:
    if len(n.type.shape) != 1:
        raise refuse(n, f"a dense layer over the last axis of a rank-{len(n.type.shape)} value (NIR Affine is 1-d)")
    w = np.asarray(c.g.params[n.weight])
    node = nir.Affine(weight=w, bias=np.asarray(c.g.params[n.bias])) if n.bias is not None else nir.Linear(weight=w)
    return c.add(n, node)


def _ex_add(c: _Ctx, n: ir.Add) -> str:
    shapes = [c.g.nodes[i].type.shape for i in n.inputs]
    if any(s != n.type.shape for s in shapes):
        raise refuse(n, f"a broadcasting sum of shapes {[list(s) for s in shapes]} (NIR fan-in sums equal shapes)")
    if c.src(n.inputs[0]) == c.src(n.inputs[1]):  # x + x: NIR has no parallel edges, so 2 * x
        k = c.add(n.replace(inputs=n.inputs[:1]), nir.Scale(scale=_full(n.type.shape, 2.0)), {"op": "add"})
        return k
    return c.add(n, nir.Scale(scale=_full(n.type.shape, 1.0)), {"op": "add"})


def _ex_reshape(c: _Ctx, n: ir.Reshape) -> str:
    src = c.g.nodes[n.inputs[0]].type.shape
    if len(n.shape) != 1:
        raise refuse(n, f"reshape {list(src)} -> {list(n.shape)}: NIR has only Flatten")
    return c.add(n, nir.Flatten(input_type={"input": np.array(src)}, start_dim=0, end_dim=-1))


def _ex_pool(c: _Ctx, n: ir.Pool2d) -> str:
    """Sum pooling -> ``SumPool2d``; average pooling -> ``AvgPool2d`` (window sums / kh kw: with padding only for
    ``count_include_pad``); NIR has no max pooling."""
    if n.mode == "max":
        raise refuse(n, "NIR has no max pooling (only SumPool2d / AvgPool2d)")
    if n.mode == "avg" and not n.count_include_pad and any(n.padding):
        raise refuse(n, "NIR AvgPool2d divides padded windows by kh*kw; this node divides by the in-bounds count")
    cls = nir.SumPool2d if n.mode == "sum" else nir.AvgPool2d
    return c.add(n, cls(kernel_size=np.array(n.kernel), stride=np.array(n.stride), padding=np.array(n.padding)))


def _ex_neuron(c: _Ctx, n: ir.NeuronNode) -> str:
    if getattr(n, "signed", False):
        raise refuse(n, "signed spikes (-1 / 0 / 1) are not NIR events")
    shape, dt = n.type.shape, c.dt
    th = float(n.threshold)
    v0 = float(n.v_init) if n.v_init is not None else float(n.v_reset or 0.0)
    thr = _full(shape, np.nextafter(th - v0, -np.inf))
    tau = float(getattr(n, "tau", 1.0))
    r = 1.0 if getattr(n, "decay_input", True) else tau
    hint = {"op": n.op, "threshold": th, "v_reset": n.v_reset, "v_init": n.v_init}
    if n.op == "lif":
        hint.update(tau=tau, decay_input=bool(n.decay_input))
    if n.v_reset is not None:  # hard reset to v_reset (shifted by -v0)
        vr = float(n.v_reset) - v0
        if n.op == "if":
            node = nir.IF(r=_full(shape, 1.0 / dt), v_threshold=thr, v_reset=_full(shape, vr))
        else:
            node = nir.LIF(
                tau=_full(shape, tau * dt),
                r=_full(shape, r),
                v_leak=_full(shape, vr),
                v_threshold=thr,
                v_reset=_full(shape, vr),
            )
        return c.add(n, node, hint)
    # soft reset: integrate, threshold, and subtract theta through a recurrent edge (next step)
    if n.op == "if":
        integ, f = nir.I(r=_full(shape, 1.0 / dt)), -th
    else:
        if v0 != 0.0:
            raise refuse(n, "a soft-reset LIF with a non-zero initial potential has no exact NIR form")
        a = 1.0 / tau
        integ, f = (
            nir.LI(tau=_full(shape, tau * dt), r=_full(shape, r), v_leak=_full(shape, 0.0)),
            -th * (1 - a) / (a * r),
        )
    sub = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type=np.array(shape)),
            "v": integ,
            "spike": nir.Threshold(threshold=thr),
            "reset": nir.Scale(scale=_full(shape, f)),
            "output": nir.Output(output_type=np.array(shape)),
        },
        edges=[("input", "v"), ("v", "spike"), ("spike", "reset"), ("reset", "v"), ("spike", "output")],
        metadata={},
    )
    return c.add(n, sub, hint)


def _ex_readout(c: _Ctx, n: ir.MembraneReadout) -> str:
    shape, d = n.type.shape, float(n.decay)
    if not 0.0 <= d <= 1.0:
        raise refuse(n, f"decay {d} outside [0, 1] has no LI form")
    if d == 1.0:
        node = nir.I(r=_full(shape, 1.0 / c.dt))
    else:
        a = 1.0 - d
        node = nir.LI(tau=_full(shape, c.dt / a), r=_full(shape, 1.0 / a), v_leak=_full(shape, 0.0))
    return c.add(n, node, {"op": "membrane_readout", "decay": d})


WHY_NOT: dict[str, str] = {
    "tsm_scale": "per-step gains p[t] (TSM): NIR parameters do not change with time",
    "scaled_conv2d": "per-step weights (fused TSM): NIR parameters do not change with time",
    "swish": "NIR has no Swish / SiLU nonlinearity",
    "sigmoid": "NIR has no sigmoid nonlinearity",
    "mul": "NIR has no product of two signals",
    "groupnorm": "NIR has no normalisation by data statistics",
    "concat": "NIR has no concatenation (split_concat could not push it into its readers)",
    "upsample": "NIR has no upsampling (nor a transposed conv to express it)",
    "embedding": "NIR has no table lookup (fold the diffusion step with t)",
    "batchnorm": "batch statistics",
    "conv3d": "",
    "plif": "",
    "repeat": "",
}
"""Why the ops NIR lacks are refused (or cut out as extension nodes)."""

EXPORT: dict[str, Callable[[_Ctx, ir.Node], str]] = {
    "input": _ex_input,
    "output": _ex_output,
    "conv2d": _ex_conv,
    "linear": _ex_linear,
    "add": _ex_add,
    "scale": lambda c, n: c.add(n, nir.Scale(scale=_full(n.type.shape, n.factor)), {"op": "scale"}),
    "reshape": _ex_reshape,
    "if": _ex_neuron,
    "lif": _ex_neuron,
    "membrane_readout": _ex_readout,
    "pool2d": _ex_pool,
}
"""IR op -> NIR node.  ``repeat`` is an identity (a static value is a constant stream); ``batchnorm``,
``conv3d`` and ``plif`` never reach the table (:func:`prepare` rewrites them)."""


def _ex_extension(c: _Ctx, n: ir.Node, why: str) -> str:
    """Cut ``n`` out of the graph: Output ports for its inputs, an Input node for its value."""
    if not c.extensions:
        raise refuse(n, f"{why}; export with extensions=True (--nir-ext) to keep it as an sdmc extension node")
    k = c.name(n.name)
    ports = []
    for j, i in enumerate(n.inputs):
        p = c.name(f"{k}__in{j}")
        c.nodes[p] = nir.Output(output_type=np.array(c.g.nodes[i].type.shape))
        c.edges.append((c.src(i), p))
        ports.append(p)
    c.nodes[k] = nir.Input(input_type=np.array(n.type.shape))
    c.names[n.name] = k
    params = {}
    for fld, key in n.param_refs().items():
        pk = f"p{len(c.params)}"
        c.params[pk] = np.asarray(c.g.params[key])
        params[fld] = pk
    types = [c.g.nodes[i].type for i in n.inputs]
    c.ext.append(
        {
            "node": k,
            "ir_name": n.name,
            "op": n.op,
            "attrs": {a: v for a, v in _attrs(n).items() if a not in params},
            "params": params,
            "inputs": ports,
            "input_types": [{"shape": list(t.shape), "kind": t.kind, "timing": t.timing} for t in types],
            "why": why,
        }
    )
    for p in ports:
        c.nodes[p].metadata = {"sdmc": json.dumps({"extension_port": k})}
    c.nodes[k].metadata = {"sdmc": json.dumps({"extension": n.op, "ir_name": n.name})}
    return k


def to_nir(graph: ir.Graph, t: int | None = None, dt: float = DT, extensions: bool = False) -> nir.NIRGraph:
    """Export ``graph`` as a NIR graph (see the module docstring); ``t`` fixes the diffusion step."""
    if not (isinstance(dt, (int, float)) and np.isfinite(dt) and dt > 0):
        raise SdmcError(f"NIR export: dt must be a positive number, got {dt!r}")
    return export_prepared(prepare(graph, t), dt, extensions)


def export_prepared(g: ir.Graph, dt: float = DT, extensions: bool = False) -> nir.NIRGraph:
    """The NIR graph of a graph :func:`prepare` returned (mapped node for node)."""
    c = _Ctx(g, dt, extensions)
    for n in g.order():
        if n.op == "repeat":
            c.names[n.name] = c.src(n.inputs[0])
        elif n.op in EXPORT:
            try:
                EXPORT[n.op](c, n)
            except Refused as e:
                if n.op in ("input", "output"):
                    raise
                _ex_extension(c, n, str(e).split(": ", 2)[-1])  # without extensions: refused, saying how to keep it
        else:
            _ex_extension(c, n, WHY_NOT.get(n.op) or f"NIR has no {n.op} op")
    meta = {
        "format": FORMAT,
        "T": g.T,
        "dt": float(dt),
        "t": g.meta.get("nir_prepare", {}).get("t"),
        "threshold_convention": THRESHOLD_NOTE,
        "readout": "static outputs are the Output values at the last step T-1",
        "extensions": c.ext,
        "order": list(c.nodes),  # HDF5 lists groups by name; this keeps sdmc's node order for the importer
        "model_config": g.meta.get("model_config"),
    }
    metadata = {"sdmc": json.dumps(meta)}
    if c.params:
        metadata["sdmc_params"] = dict(c.params)
    try:
        return nir.NIRGraph(nodes=c.nodes, edges=c.edges, metadata=metadata)
    except (ValueError, AssertionError, NotImplementedError) as e:
        raise SdmcError(f"NIR export: the nir package rejects the graph: {e}") from e


def is_sdmc_nir(path) -> bool:
    """Whether file ``path`` is a NIR graph sdmc wrote (HDF5 whose graph metadata has sdmc's record)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "node/metadata/sdmc" in f
    except (OSError, ValueError, KeyError):
        return False


def save_nir(graph: ir.Graph | nir.NIRGraph, path, *, force: bool = False, protect=(), **kwargs) -> Path:
    """Export ``graph`` (an IR graph, see :func:`to_nir`; or a ready NIR graph) and write it with ``nir.write``
    atomically (a failure leaves any previous file in place).

    An existing ``path`` is replaced only if sdmc wrote it (:func:`is_sdmc_nir`) or ``force``; never when it is
    one of ``protect`` (the run's inputs): see :func:`sdmc.utils.replace_file`."""
    path = Path(path)
    check_file_replaceable(path, is_sdmc_nir, force=force, protect=protect)  # before the work
    ng = graph if isinstance(graph, nir.NIRGraph) else to_nir(graph, **kwargs)
    with replace_file(path, is_sdmc_nir, force=force, protect=protect) as tmp:
        nir.write(str(tmp), ng)
    return path


# ------------------------------------------------------------------------------------------ sdmc metadata
def sdmc_meta(graph: nir.NIRGraph) -> dict | None:
    """sdmc's graph metadata of an exported NIR graph (None for a foreign graph)."""
    meta = graph.metadata if isinstance(graph.metadata, dict) else {}
    raw = meta.get("sdmc")
    if raw is None:
        return None
    try:
        m = json.loads(raw if isinstance(raw, str) else bytes(raw).decode())
        if m.get("format") != FORMAT:
            raise ValueError(f"format {m.get('format')!r}, expected {FORMAT!r}")
        for e in m.get("extensions", []):
            if not (isinstance(e, dict) and e.get("op") in ir.OPS and isinstance(e.get("inputs"), list)):
                raise ValueError(f"bad extension record {str(e)[:80]}")
        return m
    except (ValueError, TypeError, AttributeError) as e:
        raise SdmcError(f"NIR graph: sdmc metadata is malformed ({e})") from None


def extension_node(
    e: dict, params: dict, name: str, inputs: tuple[str, ...], add_param: Callable[[str, np.ndarray], str]
) -> ir.Node:
    """The IR node an extension record stands for; ``add_param(suggested name, array) -> stored name`` stores
    its parameters."""
    cls = ir.OPS[e["op"]]
    fields = {f.name for f in cls.attr_fields()}
    attrs = {k: v for k, v in e.get("attrs", {}).items() if k in fields}
    for fld, key in e.get("params", {}).items():
        if fld not in fields or key not in params:
            raise SdmcError(f"NIR graph: extension {e.get('node')!r}: parameter {fld!r} ({key!r}) is missing")
        attrs[fld] = add_param(f"{name}.{fld}", np.asarray(params[key]))
    try:
        return cls(name=name, inputs=inputs, **attrs)
    except TypeError as err:
        raise SdmcError(f"NIR graph: extension {e.get('node')!r} ({e['op']}): {err}") from None


class _HostOp(nirsim.HostOp):
    """One sdmc extension node run by the golden simulator at every step (inputs kept over the steps so
    per-step and running ops see their history)."""

    def __init__(self, e: dict, params: dict, T: int) -> None:
        self.ports, self.T = tuple(e["inputs"]), T
        self.types = [ir.ValueType(tuple(it["shape"]), "float64", it["kind"], ir.PER_STEP) for it in e["input_types"]]
        g = ir.Graph(T)
        names = []
        for j, vt in enumerate(self.types):
            names.append(
                g.add(ir.Input(name=f"in{j}", shape=vt.shape, dtype="float64", kind=vt.kind, timing=ir.PER_STEP))
            )
        g.add(extension_node(e, params, "op", tuple(names), g.add_param))
        g.add(ir.Output(name="out", inputs=("op",)))
        self.graph, self.hist = ir.check(g), None

    def __call__(self, t: int, values: dict) -> np.ndarray:
        xs = [np.asarray(values[p], np.float64) for p in self.ports]
        if t == 0 or self.hist is None:
            self.hist = [np.zeros((self.T,) + x.shape) for x in xs]
        for h, x in zip(self.hist, xs):
            h[t] = x
        out = golden.run(self.graph, {f"in{j}": h for j, h in enumerate(self.hist)})["out"]
        return out[t] if self.graph["op"].type.per_step else out


def host_ops(graph: nir.NIRGraph, T: int | None = None) -> dict[str, nirsim.HostOp]:
    """``{Input node: host op}`` for the sdmc extension nodes of ``graph`` (empty for a foreign graph)."""
    m = sdmc_meta(graph)
    if not m:
        return {}
    params = graph.metadata.get("sdmc_params", {})
    return {e["node"]: _HostOp(e, params, int(T or m["T"])) for e in m.get("extensions", [])}


def simulate(
    graph: nir.NIRGraph, inputs: dict, T: int | None = None, dt: float | None = None, record: bool = False
) -> dict:
    """Run an exported graph in sdmc's NIR interpreter (:func:`sdmc.sim.nir.run`), extension nodes included;
    ``T`` and ``dt`` default to those recorded at export."""
    m = sdmc_meta(graph) or {}
    T = T or m.get("T")
    return nirsim.run(graph, inputs, T=T, dt=dt or m.get("dt", DT), record=record, host=host_ops(graph, T))
