"""NIR import: a NIR graph (a ``.nir`` file or a ``nir.NIRGraph``) into the sdmc IR.

    >>> from sdmc.frontends.nir import from_nir
    >>> g = from_nir("snntorch_model.nir", T=8)          # then torch executor, energy report, Loihi export

The NIR graph is read with the discretisation of :mod:`sdmc.sim.nir` (forward Euler, step ``dt``, default
1e-4 or the ``dt`` sdmc recorded at export) and translated node by node by :data:`IMPORT`; a node with
several incoming edges reads their sum (``add`` nodes).  Mapping (``a = dt / tau``)::

    Input           per-step input (static when sdmc exported it so)
    Affine/Linear   linear                    Scale   scale (uniform), else a diagonal linear / 1x1 conv
    Conv2d          conv2d                    SumPool2d / AvgPool2d   pool2d sum / avg (count_include_pad)
    Flatten         reshape                   Delay   identity when the delay is 0 steps
    IF              scale(dt r) -> if(threshold = nextafter(v_threshold, +inf), v_reset)
    LIF             [scale(r)] -> lif(tau = 1/a, v_reset = v_leak)        (needs v_leak == v_reset)
    CubaLIF         as LIF with input weight w_in, when its synaptic current does not persist (dt = tau_syn)
    LI / I          membrane_readout(decay = 1 - a | 1) when only stateless nodes read it (the value at
                    the last step), with scale(a r | dt r)
    sdmc's soft-reset subgraphs and extension nodes come back as the IR nodes they were exported from.

NIR fires on ``v > v_threshold`` and the IR on ``v >= threshold``: ``threshold = nextafter(v_threshold,
+inf)`` fires on exactly the same float64 potentials.  NIR states start at 0: a non-zero ``v_reset``
imports with ``v_init = 0``.  Everything else -- per-neuron parameters, leaks toward a potential other than
the reset, non-trivial synaptic filters, delays, recurrent edges, Conv1d, bare Threshold nodes -- is
refused with the node's name and the reason.  A file is validated before use (one
:class:`~sdmc.errors.SdmcError` naming the file and the problem).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import h5py
import nir
import numpy as np

from sdmc import ir
from sdmc.backends.nir import extension_node, sdmc_meta
from sdmc.errors import SdmcError, UnsupportedOpError
from sdmc.passes.rewrite import _new_param
from sdmc.sim import nir as nirsim

DT = nirsim.DT
MAX_BYTES = 4 << 30  # what read_nir agrees to load (HDF5 compresses: a small file can declare huge arrays)


def read_nir(path) -> nir.NIRGraph:
    """``nir.read`` with validation: one :class:`SdmcError` naming ``path`` for a missing, foreign, corrupt or
    ill-typed file."""
    path = Path(path)
    if not path.is_file():
        raise SdmcError(f"{path}: no such file")
    if not h5py.is_hdf5(str(path)):
        raise SdmcError(f"{path}: not a NIR file (not HDF5)")
    try:
        with h5py.File(str(path), "r") as f:
            if "node" not in f or "type" not in f["node"]:
                raise SdmcError(f"{path}: not a NIR file (no 'node' group with a 'type')")
            kind = f["node"]["type"][()]
            sizes: list[int] = []
            f.visititems(lambda _, o: sizes.append(o.size * o.dtype.itemsize) if isinstance(o, h5py.Dataset) else None)
            if sum(sizes) > MAX_BYTES:
                raise SdmcError(f"{path}: declares {sum(sizes) / 2**30:.1f} GiB of arrays (over {MAX_BYTES >> 30} GiB)")
        if (kind.decode() if isinstance(kind, bytes) else str(kind)) != "NIRGraph":
            raise SdmcError(f"{path}: the top-level NIR node is a {kind!r}, not a NIRGraph")
        return nir.read(str(path))
    except SdmcError:
        raise
    except AssertionError as e:  # nir's dispatcher asserts on unknown node types
        raise SdmcError(
            f"{path}: not a valid NIR graph (unknown node type or missing field{': ' + str(e) if str(e) else ''})"
        ) from None
    except Exception as e:  # noqa: BLE001 - h5py / nir raise many types on corrupt content
        raise SdmcError(
            f"{path}: not a valid NIR graph ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None


def _uniform(k: str, n, field: str, value) -> float:
    """The one value of a NIR parameter array (the IR's neurons and scales share one value per node)."""
    a = np.asarray(value, np.float64)
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise _refuse(k, n, f"{field} must be finite, got {a.ravel()[:4]}")
    if not np.all(a == a.reshape(-1)[0]):
        raise _refuse(k, n, f"per-neuron {field} values (the IR's neurons share one {field})")
    return float(a.reshape(-1)[0])


def _hint(node) -> dict:
    meta = getattr(node, "metadata", None)
    raw = meta.get("sdmc") if isinstance(meta, dict) else None
    if raw is None:
        return {}
    try:
        h = json.loads(raw if isinstance(raw, str) else bytes(raw).decode())
        return h if isinstance(h, dict) else {}
    except (ValueError, TypeError):
        return {}


class _Ctx:
    def __init__(self, graph: nir.NIRGraph, T: int, dt: float, dtype: str) -> None:
        self.nir, self.dt, self.dtype = graph, dt, dtype
        self.g = ir.Graph(T, meta={"source": "nir"})
        self.values: dict[str, str] = {}  # NIR node -> IR value
        self.base: dict[str, str] = {}  # NIR node -> IR name to use (sdmc's record, else the NIR name)
        self.preds: dict[str, list[str]] = {}  # NIR node -> the nodes with an edge into it
        self.repeats: dict[str, str] = {}  # static IR value -> its repeat

    def name(self, k: str, suffix: str = "") -> str:
        base = re.sub(r"[^A-Za-z0-9_.]", "_", self.base.get(k, k)) + suffix
        return self.g.fresh_name(base if base[:1].isalpha() or base[:1] == "_" else "n_" + base)

    def param(self, base: str, value) -> str:
        return _new_param(self.g, base, np.asarray(value, dtype=self.dtype))

    def add(self, node: ir.Node) -> str:
        self.g.add(node)
        node.meta["type"] = node.infer([self.g.nodes[i].type for i in node.inputs], self.g)
        return node.name

    def type(self, value: str) -> ir.ValueType:
        return self.g.nodes[value].type

    def scaled(self, k: str, x: str, factor: float) -> str:
        return x if factor == 1.0 else self.add(ir.Scale(name=self.name(k, ".in_scale"), inputs=(x,), factor=factor))

    def per_step(self, k: str, x: str) -> str:
        """``x`` as a per-step value: a static one is repeated over T (one ``repeat`` per static value)."""
        if self.type(x).per_step:
            return x
        if x not in self.repeats:
            self.repeats[x] = self.add(ir.Repeat(name=self.name(k, ".repeat"), inputs=(x,)))
        return self.repeats[x]


def _refuse(name: str, node, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"NIR import: node {name!r} ({type(node).__name__}): {why}")


# ------------------------------------------------------------------------------------------ importers
def _im_affine(c: _Ctx, k: str, n, x: str) -> str:
    w = np.asarray(n.weight)
    if w.ndim != 2:
        raise _refuse(k, n, f"weight of rank {w.ndim} (only [out, in])")
    bias = c.param(f"{c.base.get(k, k)}.bias", n.bias) if isinstance(n, nir.Affine) else None
    return c.add(ir.Linear(name=c.name(k), inputs=(x,), weight=c.param(f"{c.base.get(k, k)}.weight", w), bias=bias))


def _im_scale(c: _Ctx, k: str, n, x: str) -> str:
    s = np.asarray(n.scale, np.float64)
    h = _hint(n)
    if h.get("op") == "add" and np.all(s == 2.0) and len(c.preds[k]) == 1:  # sdmc's x + x
        return c.add(ir.Add(name=c.name(k), inputs=(x, x)))
    if s.size and np.all(s == s.reshape(-1)[0]):
        f = float(s.reshape(-1)[0])
        keep = h.get("op") == "scale"  # sdmc's scale node, even by 1
        return x if f == 1.0 and not keep else c.add(ir.Scale(name=c.name(k), inputs=(x,), factor=f))
    shape = c.type(x).shape
    if s.ndim == 1:
        return c.add(ir.Linear(name=c.name(k), inputs=(x,), weight=c.param(f"{c.base.get(k, k)}.weight", np.diag(s))))
    if s.ndim == 3 and np.all(s == s[:, :1, :1]):
        C = shape[0]
        w = np.diag(s[:, 0, 0]).reshape(C, C, 1, 1)
        return c.add(ir.Conv2d(name=c.name(k), inputs=(x,), weight=c.param(f"{c.base.get(k, k)}.weight", w)))
    raise _refuse(k, n, "a per-position (not per-channel) scale of a [C, H, W] value has no IR op")


def _padding(k: str, n, kernel, dilation) -> tuple[int, int]:
    p = n.padding.decode() if isinstance(n.padding, bytes) else n.padding
    if isinstance(p, str):
        if p == "valid":
            return (0, 0)
        tot = [d * (kk - 1) for d, kk in zip(dilation, kernel)]
        if p != "same" or any(t % 2 for t in tot):
            raise _refuse(k, n, f"padding {p!r} is not symmetric")
        return (tot[0] // 2, tot[1] // 2)
    return nirsim.int_tuple(p, 2)


def _im_conv2d(c: _Ctx, k: str, n, x: str) -> str:
    w = np.asarray(n.weight)
    stride, dil = nirsim.int_tuple(n.stride, 2), nirsim.int_tuple(n.dilation, 2)
    b = np.asarray(n.bias)
    bias = None if not np.any(b) and _hint(n).get("bias") is not True else c.param(f"{c.base.get(k, k)}.bias", b)
    node = ir.Conv2d(
        name=c.name(k),
        inputs=(x,),
        weight=c.param(f"{c.base.get(k, k)}.weight", w),
        bias=bias,
        stride=stride,
        padding=_padding(k, n, w.shape[2:], dil),
        dilation=dil,
        groups=int(np.asarray(n.groups)),
    )
    return c.add(node)


def _im_pool(c: _Ctx, k: str, n, x: str) -> str:
    """SumPool2d / AvgPool2d (zero padding, ``/ kh kw``) -> ``pool2d`` sum / avg with ``count_include_pad``; a
    padding wider than half the window (which ``pool2d`` refuses, as torch does) -> the same sums as a
    depthwise conv of ones."""
    (kh, kw), stride = nirsim.int_tuple(n.kernel_size, 2), nirsim.int_tuple(n.stride, 2)
    padding = nirsim.int_tuple(n.padding, 2)
    avg = isinstance(n, nir.AvgPool2d)
    if padding[0] <= kh // 2 and padding[1] <= kw // 2:
        mode = "avg" if avg else "sum"
        return c.add(ir.Pool2d(name=c.name(k), inputs=(x,), mode=mode, kernel=(kh, kw), stride=stride, padding=padding))
    C = c.type(x).shape[0]
    w = np.ones((C, 1, kh, kw)) / (kh * kw if avg else 1)
    node = ir.Conv2d(
        name=c.name(k),
        inputs=(x,),
        weight=c.param(f"{c.base.get(k, k)}.weight", w),
        stride=stride,
        padding=padding,
        groups=C,
    )
    return c.add(node)


def _im_flatten(c: _Ctx, k: str, n, x: str) -> str:
    shape = c.type(x).shape
    rank = len(shape)
    a, b = int(n.start_dim) % rank, int(n.end_dim) % rank
    out = shape[:a] + (int(np.prod(shape[a : b + 1])),) + shape[b + 1 :]
    return c.add(ir.Reshape(name=c.name(k), inputs=(x,), shape=out))


def _neuron_attrs(h: dict, op: str, thr: float, vr: float) -> dict:
    """Threshold / reset / initial potential of a hard-reset IR neuron for NIR ``v_threshold``/``v_reset``: sdmc's
    record of the exported IR node when it reproduces them exactly, else ``threshold = nextafter(thr, +inf)``
    (``>`` -> ``>=`` on the same float64 potentials) and ``v_init = 0`` when ``v_reset != 0`` (NIR starts at 0)."""
    if (
        h.get("op") == op
        and isinstance(h.get("threshold"), (int, float))
        and isinstance(h.get("v_reset"), (int, float))
    ):
        v0 = float(h["v_init"]) if isinstance(h.get("v_init"), (int, float)) else float(h["v_reset"])
        if np.nextafter(float(h["threshold"]) - v0, -np.inf) == thr and float(h["v_reset"]) - v0 == vr:
            return dict(threshold=float(h["threshold"]), v_reset=float(h["v_reset"]), v_init=h.get("v_init"))
    return dict(threshold=float(np.nextafter(thr, np.inf)), v_reset=vr, v_init=None if vr == 0.0 else 0.0)


def _im_if(c: _Ctx, k: str, n, x: str) -> str:
    r = _uniform(k, n, "r", n.r)
    thr, vr = _uniform(k, n, "v_threshold", n.v_threshold), _uniform(k, n, "v_reset", n.v_reset)
    x = c.scaled(k, c.per_step(k, x), c.dt * r)
    return c.add(ir.IF(name=c.name(k), inputs=(x,), **_neuron_attrs(_hint(n), "if", thr, vr)))


def _lif(c: _Ctx, k: str, n, x: str, a: float, r: float, v_leak: float) -> str:
    """``v += a ((v_leak - v) + r x)`` then fire / reset, as an IR LIF (``tau = 1/a``)."""
    thr, vr = _uniform(k, n, "v_threshold", n.v_threshold), _uniform(k, n, "v_reset", n.v_reset)
    if not 0.0 < a < 1.0:
        raise _refuse(k, n, f"dt/tau = {a} (the IR's LIF needs 0 < dt/tau < 1, i.e. tau > dt)")
    if v_leak != vr:
        raise _refuse(k, n, f"it leaks toward v_leak={v_leak}, not toward v_reset={vr} as the IR's LIF does")
    x = c.per_step(k, x)
    h = _hint(n)
    tau, decay_input = 1.0 / a, True
    if h.get("op") == "lif" and isinstance(h.get("tau"), (int, float)) and c.dt / (float(h["tau"]) * c.dt) == a:
        tau, decay_input = float(h["tau"]), bool(h.get("decay_input", True))
    x = c.scaled(k, x, r if decay_input else r / tau)  # IR: decay_input adds x / tau, else x
    attrs = _neuron_attrs(h, "lif", thr, vr)
    return c.add(ir.LIF(name=c.name(k), inputs=(x,), tau=tau, decay_input=decay_input, **attrs))


def _im_lif(c: _Ctx, k: str, n, x: str) -> str:
    a = c.dt / _uniform(k, n, "tau", n.tau)
    return _lif(c, k, n, x, a, _uniform(k, n, "r", n.r), _uniform(k, n, "v_leak", n.v_leak))


def _im_cubalif(c: _Ctx, k: str, n, x: str) -> str:
    if c.dt / _uniform(k, n, "tau_syn", n.tau_syn) != 1.0:
        raise _refuse(k, n, "its synaptic current persists across steps (dt != tau_syn): the IR has no synaptic filter")
    r = _uniform(k, n, "r", n.r) * _uniform(k, n, "w_in", n.w_in)
    return _lif(c, k, n, x, c.dt / _uniform(k, n, "tau_mem", n.tau_mem), r, _uniform(k, n, "v_leak", n.v_leak))


def _readers_stateless(c: _Ctx, k: str) -> bool:
    """Only stateless nodes (and Outputs) are downstream of NIR node ``k``."""
    seen, stack = set(), [b for a, b in c.nir.edges if a == k]
    while stack:
        u = stack.pop()
        if u in seen:
            continue
        seen.add(u)
        if type(c.nir.nodes[u]).__name__ in nirsim.STATEFUL or isinstance(c.nir.nodes[u], nir.NIRGraph):
            return False
        stack += [b for a, b in c.nir.edges if a == u]
    return True


def _im_integrator(c: _Ctx, k: str, n, x: str) -> str:
    if not _readers_stateless(c, k):
        raise _refuse(
            k, n, "its potential is read by stateful nodes; the IR reads a leaky integrator only at the last step"
        )
    if isinstance(n, nir.I):
        decay, gain = 1.0, c.dt * _uniform(k, n, "r", n.r)
    else:
        if _uniform(k, n, "v_leak", n.v_leak) != 0.0:
            raise _refuse(k, n, "a read-out leaking toward a non-zero potential has no IR form")
        a = c.dt / _uniform(k, n, "tau", n.tau)
        if not 0.0 < a <= 1.0:
            raise _refuse(k, n, f"dt/tau = {a} outside (0, 1]")
        decay, gain = 1.0 - a, a * _uniform(k, n, "r", n.r)
        h = _hint(n)
        if h.get("op") == "membrane_readout" and isinstance(h.get("decay"), (int, float)):
            if abs(float(h["decay"]) - decay) < 1e-12 and abs(gain - 1.0) < 1e-12:
                decay, gain = float(h["decay"]), 1.0  # sdmc's exact decay (1 - a rounds)
    x = c.scaled(k, c.per_step(k, x), gain)
    return c.add(ir.MembraneReadout(name=c.name(k), inputs=(x,), decay=decay))


def _im_delay(c: _Ctx, k: str, n, x: str) -> str:
    d = np.asarray(n.delay, np.float64) / c.dt
    if np.all(np.abs(d) < 1e-9):
        return x
    raise _refuse(k, n, f"a delay of {np.unique(np.round(d, 6))[:4]} steps: the IR has no delay op")


SOFT_EDGES = sorted([("input", "v"), ("v", "spike"), ("spike", "reset"), ("reset", "v"), ("spike", "output")])


def _im_soft(c: _Ctx, k: str, n: nir.NIRGraph, x: str) -> str:
    """sdmc's soft-reset subgraph ``I|LI -> Threshold -> Scale(f) -> (next step) I|LI``, checked against its record."""
    h, nodes = _hint(n), n.nodes
    op = h.get("op")
    ok = (
        op in ("if", "lif")
        and set(nodes) == {"input", "v", "spike", "reset", "output"}
        and sorted(map(tuple, n.edges)) == SOFT_EDGES
        and isinstance(nodes["v"], nir.I if op == "if" else nir.LI)
        and isinstance(nodes["spike"], nir.Threshold)
        and isinstance(nodes["reset"], nir.Scale)
        and isinstance(h.get("threshold"), (int, float))
    )
    if not ok:
        raise _refuse(k, n, "a nested graph: only sdmc's soft-reset neurons are imported (the IR has no recurrence)")
    thr, f = _uniform(k, n, "threshold", nodes["spike"].threshold), _uniform(k, n, "reset scale", nodes["reset"].scale)
    th = float(h["threshold"])
    v0 = float(h["v_init"]) if isinstance(h.get("v_init"), (int, float)) else 0.0
    v = nodes["v"]
    x = c.per_step(k, x)
    if op == "if":
        ok = np.nextafter(th - v0, -np.inf) == thr and f == -th
        x = c.scaled(k, x, c.dt * _uniform(k, n, "r", v.r))
        node = ir.IF(name=c.name(k), inputs=(x,), threshold=th, v_reset=None, v_init=h.get("v_init"))
    else:
        tau, decay_input = float(h.get("tau", 0.0)), bool(h.get("decay_input", True))
        a, r = c.dt / _uniform(k, n, "tau", v.tau), _uniform(k, n, "r", v.r)
        ok = (
            tau > 1.0
            and a == c.dt / (tau * c.dt)
            and np.nextafter(th, -np.inf) == thr
            and r == (1.0 if decay_input else tau)
        )
        ok = ok and _uniform(k, n, "v_leak", v.v_leak) == 0.0 and np.isclose(f, -th * (1 - a) / (a * r), rtol=1e-12)
        node = ir.LIF(name=c.name(k), inputs=(x,), threshold=th, v_reset=None, tau=tau, decay_input=decay_input)
    if not ok:
        raise _refuse(k, n, "a soft-reset subgraph whose parameters disagree with its sdmc record")
    return c.add(node)


IMPORT: dict[str, Callable[[_Ctx, str, object, str], str]] = {
    "Affine": _im_affine,
    "Linear": _im_affine,
    "Scale": _im_scale,
    "Conv2d": _im_conv2d,
    "SumPool2d": _im_pool,
    "AvgPool2d": _im_pool,
    "Flatten": _im_flatten,
    "IF": _im_if,
    "LIF": _im_lif,
    "CubaLIF": _im_cubalif,
    "LI": _im_integrator,
    "I": _im_integrator,
    "Delay": _im_delay,
    "NIRGraph": _im_soft,
}
"""NIR node type -> importer ``(ctx, name, node, input value) -> IR value``."""

WHY_NOT = {
    "Conv1d": "the IR has no 1-d convolution",
    "CubaLI": "the IR has no synaptic-filter read-out",
    "Threshold": "a bare Heaviside step (the IR's neurons fire from a membrane potential)",
}


def _order(nodes: dict, edges: list[tuple[str, str]]) -> list[str]:
    order, back = nirsim.order(nodes, edges, [k for k, v in nodes.items() if isinstance(v, nir.Input)])
    if back:
        a, b = sorted(back)[0]
        raise UnsupportedOpError(f"NIR import: edge {a!r} -> {b!r} closes a cycle: the IR has no recurrent connections")
    return order


def from_nir(
    graph_or_path, T: int | None = None, dt: float | None = None, dtype: str | None = None, input_kind: str = ir.REAL
) -> ir.Graph:
    """Translate a NIR graph (or a ``.nir`` file) into a checked IR graph with ``T`` SNN steps.

    ``T``/``dt`` default to what sdmc recorded at export (``dt`` else 1e-4; ``T`` must then be given).
    ``dtype``: the parameters' dtype (default: the Input's recorded dtype, else float32); ``input_kind``:
    ``real`` or ``spike``, what Input nodes without sdmc's record carry.
    """
    src = graph_or_path
    where = f"{src}: " if isinstance(src, (str, Path)) else ""
    graph = read_nir(src) if isinstance(src, (str, Path)) else src
    if not isinstance(graph, nir.NIRGraph):
        raise SdmcError(f"NIR import: expected a nir.NIRGraph or a .nir path, got {type(graph).__name__}")
    try:
        meta = sdmc_meta(graph) or {}
        T = int(T or meta.get("T") or 0)
        if T < 1:
            raise SdmcError("NIR import: give the number of SNN steps T (a NIR graph does not record it)")
        dt = float(dt or meta.get("dt") or DT)
        if not (np.isfinite(dt) and dt > 0):
            raise SdmcError(f"NIR import: dt must be a positive number, got {dt}")
        if input_kind not in (ir.REAL, ir.SPIKE):
            raise SdmcError(f"NIR import: input_kind must be 'real' or 'spike', got {input_kind!r}")
        return _translate(graph, meta, T, dt, dtype, input_kind)
    except SdmcError as e:
        raise type(e)(where + str(e)) from None


def _translate(graph: nir.NIRGraph, meta: dict, T: int, dt: float, dtype: str | None, input_kind: str) -> ir.Graph:
    if dtype is None:
        recorded = (_hint(v).get("dtype") for v in graph.nodes.values() if isinstance(v, nir.Input))
        dtype = next((d for d in recorded if d in ir.graph.FLOAT_DTYPES), "float32")
    c = _Ctx(graph, T, dt, dtype)
    ext = {e["node"]: e for e in meta.get("extensions", [])}
    ports = {p: e["node"] for e in ext.values() for p in e["inputs"]}
    params = graph.metadata.get("sdmc_params", {}) if isinstance(graph.metadata, dict) else {}
    preds: dict[str, list[str]] = {k: [] for k in graph.nodes}
    edges = [tuple(e) for e in graph.edges]
    for a, b in edges:
        if a not in graph.nodes or b not in graph.nodes:
            raise SdmcError(f"NIR import: edge ({a!r}, {b!r}) names an unknown node")
        preds[b].append(a)
    for k in list(ext) + list(ports):
        if k not in graph.nodes:
            raise SdmcError(f"NIR import: sdmc extension port {k!r} is not a node of the graph")
    c.preds = preds
    for k, n in graph.nodes.items():
        c.base[k] = _hint(n).get("ir_name") or k
    rec = meta.get("order")
    nodes = (
        {k: graph.nodes[k] for k in rec}
        if isinstance(rec, list) and sorted(rec) == sorted(graph.nodes)
        else graph.nodes
    )
    for k in _order(nodes, edges + [(p, e) for p, e in ports.items()]):
        if k in ports:  # an extension's input port: read through by the extension itself
            continue
        n = graph.nodes[k]
        if k in ext:
            ins = [c.values[preds[p][0]] for p in ext[k]["inputs"] if preds[p]]
            if len(ins) != len(ext[k]["inputs"]):
                raise SdmcError(f"NIR import: sdmc extension {k!r}: an input port has no incoming edge")
            timings = [it.get("timing") for it in ext[k].get("input_types", [])]
            ins = [c.per_step(k, v) if tm == ir.PER_STEP else v for v, tm in zip(ins, timings + [None] * len(ins))]
            c.values[k] = c.add(extension_node(ext[k], params, c.name(k), tuple(ins), lambda base, a: c.param(base, a)))
            continue
        try:
            c.values[k] = _import_node(c, k, n, [c.values[p] for p in preds[k]], input_kind)
        except (ValueError, AssertionError, TypeError, IndexError) as e:
            raise SdmcError(f"NIR import: node {k!r} ({type(n).__name__}): {e}") from None
    try:
        return ir.check(c.g)
    except SdmcError as e:
        raise SdmcError(f"NIR import: the translated graph is invalid: {e}") from None


def _import_node(c: _Ctx, k: str, n, ins: list[str], input_kind: str) -> str:
    h = _hint(n)
    if isinstance(n, nir.Input):
        shape = tuple(int(s) for s in np.asarray(n.input_type["input"]).reshape(-1))
        timing = ir.STATIC if h.get("timing") == ir.STATIC else ir.PER_STEP
        kind = h.get("kind") if h.get("kind") in ir.KINDS else input_kind
        return c.add(ir.Input(name=c.name(k), shape=shape, dtype=c.dtype, kind=kind, timing=timing))
    if not ins:
        raise _refuse(k, n, "no incoming edge")
    x = ins[0]
    junction = isinstance(n, nir.Scale) and np.all(np.asarray(n.scale) == 1.0) and h.get("op") != "scale"
    for j, y in enumerate(ins[1:], 1):  # fan-in: the sum of the incoming edges
        last = j == len(ins) - 1
        x = c.add(ir.Add(name=c.name(k, "" if last and junction else f".sum{j}"), inputs=(x, y)))
    if isinstance(n, nir.Output):
        if h.get("timing") == ir.PER_STEP:
            x = c.per_step(k, x)
        return c.add(ir.Output(name=c.name(k), inputs=(x,)))
    kind = type(n).__name__
    if kind not in IMPORT:
        raise _refuse(k, n, WHY_NOT.get(kind, "no IR counterpart"))
    return IMPORT[kind](c, k, n, x)
