"""Compile a spiking UNet IR graph into a :class:`~sdmc.sim.loihi.LoihiNet` plus the host part around it.

The graph goes through the ``neuromorphic`` pass pipeline (fold BN, fuse TSM, hoist static work, split
concat, compose the residual stream, partition).  Then, with the ``partition`` metadata:

- every neuromorphic neuron (IF; LIF with a leak ``4096 / tau`` that is an integer) is a Population;
- the current a neuron reads is expanded through adds into summands: a conv / linear on spikes (after an
  optional nearest upsample, kept as ``upsample`` on the projection) is a Projection from the spiking
  population; every host value (the static head conv, the time-embedding bias, TSM head convs) is summed on
  the host into one graded Source per population with an ``identity`` projection; static learned biases
  become the population's ``bias`` (or join the host current when they overflow the 13-bit bias);
- depth = longest path (sources 0), shorter paths get ``delay`` so ``dst.depth == depth(src) + 1 + delay``;
- populations whose spikes host ops read are ``outputs``; the host tail recomputes from them.

Quantisation, one scale ``S`` per population shared by every projection into it, its bias, its threshold
and its host current (LIF: currents also carry the gain ``g = 1/tau``)::

    W_int = round(S g W) in [-128, 127]    b_int = round(S g b)    theta_int = round(S theta) >= 1
    vth = theta_int - 1 (Lava fires on v > vth)   I_host = clip(round(S g x), +-(2^(bits-1) - 1))

``S = 127 / max |g W|`` (largest power of two below it with ``pow2``), lowered if ``theta_int`` would pass
the 17-bit threshold; the worst per-step current ``sum_proj max(sum W_int+, sum |W_int-|)`` plus the host
current's bound must stay within ``MAX_CURRENT`` (2^17, Lava's 24-bit current register): ``on_overflow``
``'error'`` raises naming the population, ``'rescale'`` lowers ``S``.  Threshold-guidance resolution:
``theta_int / S`` is the realised threshold, a step of ``1 / S``.

SDM's TSM convs (``y[t] = p[t] conv(x[t])``) have no static synapse.  ``tsm='reject'`` raises naming the
node; ``tsm='mean'`` uses ``mean_t p[t] W`` and records per node the relative spread
``max_t |p[t] - mean p| / |mean p|``; with calibration inputs the report also gives the float output error
this approximation alone causes.  Host-side TSM convs (the head) stay exact: host currents are per step.
A population fed only by the host gets ``S = (2^(bits-1) - 1) / (HOST_RANGE theta)``.

Running (:func:`run_hybrid`): the host computes the current terms with the golden interpreter, quantises
them, the LoihiNet runs (``sim.loihi.run_net`` or Lava's ``run_lava_net``), and the host tail reads the
output populations' spikes (``golden.run(..., overrides=spikes)``).  Per-step spike graph inputs become
unary Sources of the same name.  Export (:func:`export_dir` / :func:`load_export` / :func:`check_export`):
see :func:`export_dir`.  Resources (:func:`resources`): counted from shapes, nothing dense is built.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ... import ir
from ...errors import SdmcError, UnsupportedOpError
from ...sim import loihi as lm
from ...utils import atomic_dir
from .export import _pair
from .quantize import LayerQuant, QuantReport, mean_tsm

HOST_BITS = 16
TSM_PER_NODE_MAX = 64  # evaluate() measures each TSM node's own output error up to this many nodes
HOST_RANGE = 16  # a population fed only by the host: its current spans +-16 thresholds before clipping

# Loihi 2 per-core and per-chip limits used by :func:`resources` (assumptions stated with their source).
CORES_PER_CHIP = 128  # Intel Loihi 2 brief: 128 neuromorphic cores per chip
NEURONS_PER_CHIP = 1_000_000  # Intel Loihi 2 brief: up to 1 M neurons per chip
SYNAPSES_PER_CHIP = 120_000_000  # Intel Loihi 2 brief: up to 120 M synapses per chip
NEURONS_PER_CORE = 8192  # assumption: chip maximum / 128 cores (2^13; the brief's 1 M / 128)
SYNAPSES_PER_CORE = SYNAPSES_PER_CHIP // CORES_PER_CHIP  # assumption: chip maximum spread evenly (937 500)


# ============================================================================================ host plan
@dataclass(frozen=True)
class HostCurrent:
    """The graded current a host sends into ``population``: ``sum(terms) (+ bias)`` times ``scale``
    (``S g``), rounded and clipped to ``bits``.  ``terms`` are IR node names evaluated on the host;
    ``bias`` (per channel, float) is the static bias moved here when it overflows the neuron's bias."""

    source: str
    population: str
    terms: tuple[str, ...]
    scale: float
    bits: int = HOST_BITS
    bias: tuple[float, ...] | None = None
    shape: tuple[int, ...] | None = None  # the population's shape (the host graph need not hold it)

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "population": self.population,
            "terms": list(self.terms),
            "scale": self.scale,
            "bits": self.bits,
            "bias": None if self.bias is None else list(self.bias),
            "shape": None if self.shape is None else list(self.shape),
        }

    @classmethod
    def from_json(cls, d: dict) -> HostCurrent:
        return cls(
            d["source"],
            d["population"],
            tuple(d["terms"]),
            float(d["scale"]),
            int(d["bits"]),
            None if d.get("bias") is None else tuple(float(b) for b in d["bias"]),
            None if d.get("shape") is None else tuple(int(x) for x in d["shape"]),
        )


@dataclass(eq=False)
class HostPlan:
    """What runs on the host around the LoihiNet: ``graph`` (the compiled IR graph, or after
    :func:`load_export` only its host part, :func:`host_graph`), the ``currents`` it sends, ``outputs``
    (population name = IR neuron node whose spikes the host tail reads) and ``spike_inputs`` (per-step spike
    graph inputs sent unchanged as unary sources of the same name)."""

    graph: ir.Graph
    currents: tuple[HostCurrent, ...]
    outputs: tuple[str, ...]
    spike_inputs: tuple[str, ...] = ()
    _sub: ir.Graph | None = field(default=None, repr=False)

    def _head(self) -> ir.Graph:
        """The host graph that computes every current term (their ancestors plus one output each)."""
        if self._sub is None:
            g = self.graph
            terms = sorted({t for c in self.currents for t in c.terms})
            need = g.ancestors(terms)
            sub = ir.Graph(g.T, [g.nodes[k].replace() for k in g.nodes if k in need], params=g.params)
            for i, t in enumerate(terms):
                sub.add(ir.Output(name=f"hostcur_{i}", inputs=(t,)))
            self._sub = ir.check(sub)
        return self._sub

    def host_values(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Float64 values of every current term on ``inputs`` (graph inputs by name)."""
        from ...sim import golden

        if not self.currents:
            return {}
        sub = self._head()
        names = {n.name for n in sub.input_nodes}
        res = golden.run(sub, {k: v for k, v in inputs.items() if k in names})
        return {sub.nodes[o.name].inputs[0]: res[o.name] for o in sub.output_nodes}

    def float_currents(self, inputs: Mapping[str, np.ndarray], B: int) -> dict[str, np.ndarray]:
        """Per source, the float current ``[T, B, *shape]`` before scaling (sum of terms + moved bias)."""
        vals = self.host_values(inputs)
        T, out = self.graph.T, {}
        for c in self.currents:
            shape = c.shape if c.shape is not None else self.graph.nodes[c.population].type.shape
            acc = np.zeros((T, B) + tuple(shape))
            for t in c.terms:
                a = vals[t]
                if not self.graph.nodes[t].type.per_step:
                    a = a[None]
                acc = acc + _bcast_sample(a, len(shape))
            if c.bias is not None:
                acc = acc + np.asarray(c.bias).reshape((-1,) + (1,) * (len(shape) - 1))
            out[c.source] = acc
        return out

    def quantize_currents(self, cur: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """``clip(round(scale x))`` per source; returns the integer currents and the clipped fraction."""
        ints, clipped = {}, {}
        for c in self.currents:
            m = (1 << (c.bits - 1)) - 1
            q = np.rint(cur[c.source] * c.scale)
            clipped[c.source] = float(np.mean(np.abs(q) > m))
            ints[c.source] = np.clip(q, -m, m).astype(np.int64)
        return ints, clipped

    def readout(self, inputs: Mapping[str, np.ndarray], spikes: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph outputs with the output populations' spikes ``[T, B, *shape]`` taken from the chip."""
        from ...sim import golden

        over = {k: np.asarray(spikes[k], np.float64) for k in self.outputs}
        fed = {k: v for k, v in over.items() if self.graph.nodes[k].op == "input"}  # host graph: inputs
        over = {k: v for k, v in over.items() if k not in fed}
        return golden.run(self.graph, {**dict(inputs), **fed}, overrides=over)

    @property
    def host_only(self) -> bool:
        """True when ``graph`` is only the host part (a loaded export): no float reference of the chip part."""
        return bool(self.graph.meta.get(HOST_GRAPH_META))


HOST_GRAPH_META = "loihi_host_graph"


def host_graph(g: ir.Graph, currents: Sequence[HostCurrent], outputs: Sequence[str]) -> ir.Graph:
    """The part of the compiled graph ``g`` the host evaluates: every graph input, the ancestors of the host
    current terms (static head, time-embedding MLP, ...), and the ancestors of the graph outputs up to the
    output populations (the tail), which become per-step spike graph inputs of the same name and type.
    Nothing of the neuromorphic part is kept (its weights live in the export's h5 files); parameters are
    limited to the kept nodes.  Idempotent."""
    outs = set(outputs)
    need = g.ancestors([t for c in currents for t in c.terms] + [n.name for n in g.output_nodes], stop=outs)
    nodes = [n.replace() for n in g.input_nodes]  # graph inputs first: the batch is read from the first
    for k in outputs:
        n = g.nodes[k]
        if k in need and n.op != "input":
            t = n.type
            nodes.append(ir.Input(name=k, shape=tuple(t.shape), dtype=t.dtype, kind=t.kind, timing=t.timing))
    nodes += [n.replace() for n in g.order() if n.name in need and n.name not in outs and n.op != "input"]
    kept = {n.name for n in nodes}
    params = {}
    for n in nodes:
        for ref in n.param_refs().values():
            params[ref] = g.params[ref]
    meta = dict(g.meta)
    if isinstance(meta.get("partition"), dict):
        meta["partition"] = {k: v for k, v in meta["partition"].items() if k in kept}
    meta[HOST_GRAPH_META] = {"population_inputs": [k for k in outputs if k in kept]}
    return ir.check(ir.Graph(g.T, nodes, params=params, meta=meta))


def _bcast_sample(a: np.ndarray, rank: int) -> np.ndarray:
    """``[T, B, *s]`` with ``len(s) <= rank`` -> right-aligned broadcastable ``[T, B, 1.., *s]``."""
    s = a.shape[2:]
    return a.reshape(a.shape[:2] + (1,) * (rank - len(s)) + s)


# ============================================================================================ extraction
@dataclass
class _FProj:
    node: str
    src: str
    kind: str
    weight: np.ndarray
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    upsample: int = 1
    factor: float = 1.0  # the float weight is factor * weight (mean TSM scale); weight is the graph's array


@dataclass
class _FPop:
    name: str
    shape: tuple
    theta: float
    gain: float
    dv: int
    projs: list = field(default_factory=list)
    host: list = field(default_factory=list)
    bias: np.ndarray | None = None


def _neuron_params(n: ir.Node) -> tuple[float, int]:
    """``(gain, dv)`` of a neuromorphic neuron node or :class:`UnsupportedOpError`."""
    if n.v_reset is None:
        raise UnsupportedOpError(
            f"node {n.name!r} ({n.op}): soft reset (v -= theta) is not expressible with "
            "Loihi's CUBA neuron, which resets v to 0"
        )
    if float(n.v_reset) != 0.0:
        raise UnsupportedOpError(f"node {n.name!r} ({n.op}): reset to v_reset={n.v_reset}; Loihi resets to 0")
    if getattr(n, "v_init", None) not in (None, 0, 0.0):
        raise UnsupportedOpError(
            f"node {n.name!r} ({n.op}): initial potential v_init={n.v_init}; Loihi's reset "
            "starts every population at v = 0"
        )
    if getattr(n, "signed", False):
        raise UnsupportedOpError(f"node {n.name!r} ({n.op}): signed (inhibitory) spikes have no CUBA equivalent")
    if not float(n.threshold) > 0:
        raise UnsupportedOpError(f"node {n.name!r} ({n.op}): threshold {n.threshold} must be > 0")
    if n.op == "if":
        return 1.0, 0
    if n.op == "lif":
        dv = lm.DECAY_UNITY / float(n.tau)
        if abs(dv - round(dv)) > 1e-9:
            raise UnsupportedOpError(
                f"node {n.name!r} (lif): leak 1/tau = 1/{n.tau} is not a multiple of 1/4096 "
                "(Loihi's 12-bit decay); use a tau with 4096/tau an integer"
            )
        return (1.0 / float(n.tau) if n.decay_input else 1.0), int(round(dv))
    raise UnsupportedOpError(
        f"node {n.name!r} ({n.op}): parametric LIF (learned leak) is not supported on "
        "Loihi; export it as IF or LIF with a fixed tau"
    )


def _dependents_of_neurons(g: ir.Graph) -> set[str]:
    dep: set[str] = set()
    for n in g.order():
        if n.op in ir.NEURON_OPS or any(i in dep for i in n.inputs):
            dep.add(n.name)
    return dep


class _Extractor:
    def __init__(self, g: ir.Graph, tsm: str):
        self.g, self.tsm = g, tsm
        self.side = {k: v[0] for k, v in g.meta["partition"].items()}
        self.spiky = _dependents_of_neurons(g)
        self.tsm_spread: dict[str, float] = {}
        self.spike_inputs: dict[str, tuple] = {}  # per-step spike graph inputs read by synapses

    def host_term(self, v: str, pop: str) -> tuple:
        if v in self.spiky:
            raise UnsupportedOpError(
                f"node {v!r} ({self.g.nodes[v].op}): a host value computed from spikes feeds "
                f"neuron {pop!r}; a host round trip inside the time loop is not supported"
            )
        return ("host", v)

    def terms(self, v: str, pop: str) -> list[tuple]:
        g = self.g
        n = g.nodes[v]
        if self.side[v] == "host" or not n.type.per_step:
            return [self.host_term(v, pop)]
        if n.op == "add":
            out = []
            for i in n.inputs:
                if g.nodes[i].type.shape != n.type.shape:
                    if self.side[i] == "host" or not g.nodes[i].type.per_step:
                        out.append(self.host_term(i, pop))
                        continue
                    raise UnsupportedOpError(
                        f"node {v!r} (add): broadcast spike-driven operand {i!r} into neuron {pop!r} is not expressible"
                    )
                out += self.terms(i, pop)
            return out
        if n.op in ("conv2d", "scaled_conv2d", "linear"):
            return [self.projection(n, pop)]
        raise UnsupportedOpError(
            f"node {v!r} ({n.op}): the current of neuron {pop!r} must be a sum of spike-driven "
            "conv / linear synapses and host values; this op has no Loihi equivalent"
        )

    def projection(self, n: ir.Node, pop: str) -> tuple:
        g, P = self.g, self.g.params
        src, up = g.nodes[n.inputs[0]], 1
        if src.op == "upsample":
            up, src = int(src.scale), g.nodes[src.inputs[0]]
        if src.op == "reshape" and n.op == "linear":
            src = g.nodes[src.inputs[0]]
        if src.op == "input" and src.type.kind == ir.SPIKE and src.type.per_step:
            self.spike_inputs.setdefault(src.name, tuple(src.type.shape))
        elif src.op not in ir.NEURON_OPS:
            raise UnsupportedOpError(
                f"node {n.name!r} ({n.op}): reads {src.name!r} ({src.op}); a Loihi synapse "
                "must read a neuron's spikes (optionally upsampled)"
            )
        w = np.asarray(P[n.weight])  # no copy: converted per population while quantising
        b = None if n.bias is None else np.asarray(P[n.bias], np.float64)
        pm = 1.0
        if n.op == "scaled_conv2d":
            pm, b, spread = mean_tsm(g, n, self.tsm)
            self.tsm_spread[n.name] = spread
        if n.op == "linear":
            pr = _FProj(n.name, src.name, "dense", w, factor=pm)
        else:
            pr = _FProj(
                n.name,
                src.name,
                "conv",
                w,
                _pair(n.stride),
                _pair(n.padding),
                _pair(n.dilation),
                int(n.groups),
                up,
                factor=pm,
            )
        return ("proj", pr, b)

    def populations(self) -> list[_FPop]:
        g = self.g
        pops = []
        for n in g.order():
            if n.op not in ir.NEURON_OPS or self.side[n.name] != "neuromorphic":
                continue
            gain, dv = _neuron_params(n)
            fp = _FPop(n.name, tuple(n.type.shape), float(n.threshold), gain, dv)
            for t in self.terms(n.inputs[0], n.name):
                if t[0] == "host":
                    fp.host.append(t[1])
                    continue
                _, pr, b = t
                fp.projs.append(pr)
                if b is not None:
                    fp.bias = b if fp.bias is None else fp.bias + b
            if not fp.projs and not fp.host:
                raise UnsupportedOpError(f"node {n.name!r} ({n.op}): no input current found")
            pops.append(fp)
        return pops


def _outputs(g: ir.Graph, pops: set[str], side: Mapping[str, str]) -> list[str]:
    """Populations whose spikes host nodes read, directly or through neuromorphic synapses / routing."""
    out = []
    for p in pops:
        stack, seen, hit = list(g.users(p)), set(), False
        while stack and not hit:
            u = stack.pop()
            if u in seen:
                continue
            seen.add(u)
            if side[u] == "host":
                hit = True
            elif g.nodes[u].op not in ir.NEURON_OPS:
                stack.extend(g.users(u))
        if hit:
            out.append(p)
    return out


# ============================================================================================ quantisation
def _worst(w_int: np.ndarray) -> np.ndarray:
    """Per output channel: ``max(sum W+, sum |W-|)`` (the largest current one step of binary spikes can give)."""
    w = w_int.reshape(w_int.shape[0], -1).astype(np.int64)
    return np.maximum(np.clip(w, 0, None).sum(1), (-np.clip(w, None, 0)).sum(1))


def _quantize_pop(fp: _FPop, *, pow2: bool, on_overflow: str, host_bits: int):
    where = f"population {fp.name!r}"
    wf = [np.asarray(p.weight, np.float64) * p.factor for p in fp.projs]
    wmax = max((float(np.abs(w).max()) * fp.gain for w in wf if w.size), default=0.0)
    S = lm.WEIGHT_MAX / wmax if wmax > 0 else ((1 << (host_bits - 1)) - 1) / (HOST_RANGE * fp.theta)
    S = min(S, (lm.MAX_VTH + 1) / fp.theta)
    if pow2:
        S = float(2.0 ** np.floor(np.log2(S)))
    host_max = (1 << (host_bits - 1)) - 1 if fp.host else 0
    while True:
        ws = [np.rint(w * S * fp.gain).astype(np.int64) for w in wf]
        b_int = None if fp.bias is None else np.rint(fp.bias * S * fp.gain).astype(np.int64)
        bias_on_host = b_int is not None and int(np.abs(b_int).max()) > lm.MAX_BIAS
        hm = host_max if not bias_on_host else (1 << (host_bits - 1)) - 1
        worst = int(sum(_worst(w) for w in ws).max()) + hm if ws else hm
        if worst <= lm.MAX_CURRENT:
            break
        if on_overflow == "error":
            raise SdmcError(
                f"{where}: worst-case input current {worst} weight units per step (synapses + host "
                f"current bound {hm}) exceeds Loihi's 24-bit current register ({lm.MAX_CURRENT}) at "
                f"scale {S:.4g}; use on_overflow='rescale' or fewer host-current bits"
            )
        syn = worst - hm
        if syn <= 0 or hm >= lm.MAX_CURRENT:
            raise SdmcError(f"{where}: host current bound {hm} alone fills the current register; lower host_bits")
        S = S / 2.0 if pow2 else S * (lm.MAX_CURRENT - hm) / syn * 0.999
    th_int = int(np.rint(fp.theta * S))
    if th_int < 1:
        raise SdmcError(f"{where}: threshold {fp.theta} quantises to {th_int} (< 1) at scale {S:.4g}")
    for p, w in zip(fp.projs, ws):
        if w.size and not w.any():
            raise SdmcError(f"{where}: every weight of projection {p.node!r} quantises to 0 at scale {S:.4g}")
    werr = max((float(np.abs(w / (S * fp.gain) - f).max()) for f, w in zip(wf, ws) if w.size), default=0.0)
    berr = 0.0 if b_int is None or bias_on_host else float(np.abs(b_int / (S * fp.gain) - fp.bias).max())
    q = LayerQuant(
        name=fp.name,
        scale=S * fp.gain,
        weight_err=werr,
        theta=fp.theta,
        theta_int=th_int,
        bias_err=berr,
        worst_current=worst,
        bias_on_host=bias_on_host,
        projections=len(fp.projs) + (1 if fp.host or bias_on_host else 0),
    )
    return S, ws, (None if bias_on_host else b_int), bias_on_host, th_int, q


# ============================================================================================ compile
@dataclass
class CompileReport(QuantReport):
    """The quantisation report plus what the compiler decided: ``host`` (descriptions of the host parts),
    ``tsm_error`` (float output error of the mean-TSM approximation alone, with calibration inputs;
    ``tsm_node_error`` the same per node, each approximated alone, for up to ``TSM_PER_NODE_MAX`` nodes),
    ``output_error`` (relative output error of the hybrid fixed-point run vs float golden), ``host_clip``
    (clipped fraction per host source), ``passes`` (the pass log of the compiled graph)."""

    host: list = field(default_factory=list)
    tsm_error: float | None = None
    tsm_node_error: dict = field(default_factory=dict)
    max_current: dict = field(default_factory=dict)
    output_error: float | None = None
    host_clip: dict = field(default_factory=dict)
    passes: list = field(default_factory=list)

    def to_json(self) -> dict:
        layers = [
            {k: (v if not isinstance(v, np.generic) else v.item()) for k, v in vars(q).items()} for q in self.layers
        ]
        return {
            "populations": layers,
            "tsm_spread": dict(self.tsm_approx),
            "tsm_error": self.tsm_error,
            "max_current": dict(self.max_current),
            "tsm_node_error": dict(self.tsm_node_error),
            "output_error": self.output_error,
            "host_clip": dict(self.host_clip),
            "host": list(self.host),
        }

    def format(self) -> str:
        head = (
            f"{'population':<28}{'scale':>9}{'w err':>9}{'theta':>8}{'th_int':>7}{'|I|max':>8}{'proj':>5}"
            f"{'mismatch':>10}{'rate f/q':>13}"
        )
        rows = [head]
        for q in self.layers:
            mm = "-" if q.spike_mismatch is None else f"{q.spike_mismatch:.4f}"
            rt = "-" if q.rate_float is None else f"{q.rate_float:.3f}/{q.rate_fixed:.3f}"
            flag = " (bias on host)" if q.bias_on_host else ""
            rows.append(
                f"{q.name[-27:]:<28}{q.scale:>9.3f}{q.weight_err:>9.2e}{q.theta:>8.4f}{q.theta_int:>7d}"
                f"{q.worst_current:>8d}{q.projections:>5d}{mm:>10}{rt:>13}{flag}"
            )
        res = min((q.scale for q in self.layers), default=0.0)
        if res:
            err = max(abs(q.theta_int / q.scale - q.theta) for q in self.layers)
            rows.append(
                f"threshold resolution: coarsest 1/S = {1 / res:.4g}; realised thresholds theta_int/S "
                f"differ from theta by at most {err:.3g} (threshold-guidance steps finer than 1/S are lost)"
            )
        for k, v in self.tsm_approx.items():
            e = self.tsm_node_error.get(k)
            rows.append(
                f"TSM approximated by its mean at {k}: per-step scales deviate up to {100 * v:.1f}%"
                + (f"; output error of this node alone {e:.3g}" if e is not None else "")
            )
        if self.tsm_error is not None:
            rows.append(f"TSM mean approximation alone: float output relative error {self.tsm_error:.4g}")
        if self.host_clip:
            worst = max(self.host_clip.items(), key=lambda kv: kv[1])
            rows.append(f"host currents clipped: at most {100 * worst[1]:.3f}% of values ({worst[0]})")
        vs = [(q.max_abs_v, q.name) for q in self.layers if q.max_abs_v is not None]
        if vs:
            v, who = max(vs)
            sat = sum(1 for x, _ in vs if x >= lm.MAX_VOLTAGE)
            rows.append(
                f"state range on the inputs: max |v| {v} of {lm.MAX_VOLTAGE} weight units ({who}); "
                f"{sat} population(s) saturated"
            )
        if self.max_current:
            who, c = max(self.max_current.items(), key=lambda kv: kv[1])
            rows.append(f"per-step current on the inputs: max |a_in| {c} of {lm.MAX_CURRENT} ({who})")
        if self.output_error is not None:
            rows.append(f"hybrid fixed-point output vs float golden: relative error {self.output_error:.4g}")
        for h in self.host:
            rows.append(f"host: {h}")
        return "\n".join(rows)


def _pipeline(graph: ir.Graph) -> ir.Graph:
    from ... import passes

    log = [e.get("pass") for e in graph.meta.get("passes", [])]
    if log[-len(passes.PIPELINES["neuromorphic"]) :] == list(passes.PIPELINES["neuromorphic"]):
        return ir.check(graph)
    return passes.run(graph, "neuromorphic")


def _host_description(
    g: ir.Graph, side: Mapping[str, str], currents: Sequence[HostCurrent], outputs: Sequence[str]
) -> list[str]:
    host_ops = sorted({g.nodes[k].op for k, s in side.items() if s == "host"} - {"input", "output"})
    out = [
        f"graph inputs {[n.name for n in g.input_nodes]} and ops {host_ops} run on the host (the IR graph "
        "in the export)"
    ]
    for c in currents:
        out.append(
            f"{c.source}: graded current into {c.population} = ({' + '.join(c.terms) or '0'}"
            f"{' + bias' if c.bias is not None else ''}) x {c.scale:.4g}, {c.bits}-bit"
        )
    down = _downstream(g, outputs)
    tail = sorted({g.nodes[k].op for k, s in side.items() if s == "host" and k in down} - {"output"})
    out.append(
        f"read-out: the host reads the spikes of {len(outputs)} population(s) ({', '.join(outputs)}) and runs "
        f"the tail ops {tail}"
    )
    return out


def _downstream(g: ir.Graph, names: Sequence[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(names)
    while stack:
        k = stack.pop()
        if k not in seen:
            seen.add(k)
            stack.extend(g.users(k))
    return seen


def _with_threshold(g: ir.Graph, threshold: float) -> ir.Graph:
    """A checked copy of ``g`` with every neuron's threshold set to ``threshold`` (threshold guidance)."""
    g = g.copy()
    for n in list(g.nodes.values()):
        if n.op in ir.NEURON_OPS:
            g.nodes[n.name] = n.replace(threshold=float(threshold))
    return ir.check(g)


def compile_net(
    graph: ir.Graph,
    *,
    tsm: str = "reject",
    calib: Mapping[str, np.ndarray] | None = None,
    pow2: bool = False,
    on_overflow: str = "error",
    host_bits: int = HOST_BITS,
    threshold: float | None = None,
) -> tuple[lm.LoihiNet, HostPlan, CompileReport]:
    """Compile ``graph`` (traced, or already through the ``neuromorphic`` pipeline) for Loihi.

    Returns the integer :class:`~sdmc.sim.loihi.LoihiNet`, the :class:`HostPlan` around it and the
    :class:`CompileReport`.  ``calib`` (graph inputs by name, e.g. ``{"x": x, "t": t}``) fills the report's
    accuracy figures via :func:`evaluate`.  ``threshold``: threshold guidance, every neuron's threshold set
    to this value (in the host graph too, so the float reference uses it as well).
    """
    if tsm not in ("reject", "mean"):
        raise SdmcError(f"compile_net: tsm must be 'reject' or 'mean', got {tsm!r}")
    if on_overflow not in ("error", "rescale"):
        raise SdmcError(f"compile_net: on_overflow must be 'error' or 'rescale', got {on_overflow!r}")
    if not 2 <= int(host_bits) <= 24:
        raise SdmcError(f"compile_net: host_bits must lie in 2..24 (graded message bits), got {host_bits}")
    g = _pipeline(graph)
    if threshold is not None:
        if not float(threshold) > 0:
            raise SdmcError(f"compile_net: threshold must be > 0, got {threshold}")
        g = _with_threshold(g, threshold)
    ex = _Extractor(g, tsm)
    fpops = ex.populations()
    if not fpops:
        raise UnsupportedOpError("compile_net: the graph has no neuromorphic neurons (nothing to put on Loihi)")
    names = {fp.name for fp in fpops}
    depth: dict[str, int] = {k: 0 for k in ex.spike_inputs}
    sources = [lm.Source(k, shape, bits=0) for k, shape in ex.spike_inputs.items()]
    pops, projs, currents, qrep = [], [], [], []
    for fp in fpops:
        for pr in fp.projs:
            if pr.src not in names and pr.src not in ex.spike_inputs:
                raise UnsupportedOpError(f"node {pr.node!r}: reads neuron {pr.src!r}, which is not on the chip")
        d = max([depth[pr.src] + 1 for pr in fp.projs] + [1])
        depth[fp.name] = d
        S, ws, b_int, bias_on_host, th_int, q = _quantize_pop(
            fp, pow2=pow2, on_overflow=on_overflow, host_bits=host_bits
        )
        qrep.append(q)
        pops.append(lm.Population(fp.name, fp.shape, lm.Cuba(vth=th_int - 1, dv=fp.dv), bias=b_int, depth=d))
        for pr, w in zip(fp.projs, ws):  # 8-bit mantissas stored as int8 (the full CIFAR-10 UNet: 158 M of them)
            projs.append(
                lm.Projection(
                    pr.src,
                    fp.name,
                    pr.kind,
                    w.astype(np.int8),
                    pr.stride,
                    pr.padding,
                    pr.dilation,
                    pr.groups,
                    pr.upsample,
                    delay=d - depth[pr.src] - 1,
                    name=pr.node,
                )
            )
            pr.weight = None  # the float copy is no longer needed
        del ws
        if fp.host or bias_on_host:
            src = f"{fp.name}.host"
            sources.append(lm.Source(src, fp.shape, bits=host_bits))
            projs.append(lm.Projection(src, fp.name, "identity", delay=d - 1, name=f"{src}.identity"))
            bias = tuple(float(b) for b in np.asarray(fp.bias).reshape(-1)) if bias_on_host else None
            if bias is not None and len(bias) not in (1, fp.shape[0]):
                raise SdmcError(f"population {fp.name!r}: bias of {len(bias)} values does not match {fp.shape}")
            currents.append(HostCurrent(src, fp.name, tuple(fp.host), S * fp.gain, host_bits, bias, tuple(fp.shape)))
    side = {k: v[0] for k, v in g.meta["partition"].items()}
    outputs = _outputs(g, names, side)
    order = {fp.name: i for i, fp in enumerate(fpops)}
    outputs.sort(key=order.get)
    net = lm.LoihiNet(
        tuple(sources),
        tuple(pops),
        tuple(projs),
        tuple(outputs),
        meta={"T": g.T, "scales": {q.name: q.scale for q in qrep}, "thresholds": {fp.name: fp.theta for fp in fpops}},
    )
    lm.check_net(net)
    plan = HostPlan(g, tuple(currents), tuple(outputs), tuple(ex.spike_inputs))
    report = CompileReport(
        qrep,
        tsm_approx=dict(ex.tsm_spread),
        host=_host_description(g, side, currents, outputs),
        passes=list(g.meta.get("passes", [])),
    )
    if calib is not None:
        evaluate(net, plan, report, calib, tsm_graph=_mean_tsm_graph(g, ex.tsm_spread) if ex.tsm_spread else None)
    return net, plan, report


def _mean_tsm_graph(g: ir.Graph, nodes: Mapping[str, float]) -> ir.Graph:
    """``g`` with the named TSM convs using ``mean_t p[t]`` and ``mean_t b[t]`` (the static approximation)."""
    h = g.copy()
    for k in nodes:
        n = h.nodes[k]
        if n.scale is not None:
            p = np.asarray(h.params[n.scale], np.float64)
            h.add_param(f"{k}.scale.tsm_mean", np.full_like(p, p.mean()))
            n = n.replace(scale=f"{k}.scale.tsm_mean")
        if n.bias is not None and np.asarray(h.params[n.bias]).ndim == 2:
            b = np.asarray(h.params[n.bias], np.float64)
            h.add_param(f"{k}.bias.tsm_mean", np.broadcast_to(b.mean(0), b.shape).copy())
            n = n.replace(bias=f"{k}.bias.tsm_mean")
        h.nodes[k] = n
    return ir.check(h)


# ============================================================================================ running
def _batch(inputs: Mapping[str, np.ndarray], g: ir.Graph) -> int:
    n = g.input_nodes[0]
    a = np.asarray(inputs[n.name])
    return int(a.shape[1] if n.type.per_step else a.shape[0])


def run_loihi(
    net: lm.LoihiNet,
    currents: Mapping[str, np.ndarray],
    T: int,
    *,
    lava: bool = False,
    probe: Sequence[str] | None = None,
    ranges: bool = False,
) -> tuple[dict[str, np.ndarray], dict]:
    """Run ``net`` on integer source inputs ``{source: [T, B, *shape]}``.  Returns the spikes ``[T, B, *shape]``
    (bool, aligned to sample steps) of the ``probe`` populations (default: all with the numpy model, the
    outputs in Lava) and an info dict (wall times; with ``ranges``, numpy model only, ``max_abs_v`` and
    ``max_current`` per population in weight units, from the reset on).  ``lava``: Lava's CPU simulation
    (:func:`.net.run_lava_net`), else the bit-exact numpy model (:func:`sdmc.sim.loihi.run_net`)."""
    import time

    if lava:
        from .net import run_lava_net

        res = run_lava_net(net, dict(currents), probe=None if probe is None else tuple(probe))
        return {k: np.asarray(v).astype(bool) for k, v in res.spikes.items()}, dict(res.times)
    t0 = time.perf_counter()
    res = lm.run_net(net, dict(currents), record_v=ranges)
    spikes = lm.aligned_net_spikes(res, net, T)
    keep = spikes.keys() if probe is None else probe
    info: dict = {"run": time.perf_counter() - t0}
    if ranges:
        info["max_abs_v"] = {
            p.name: int(np.abs(res["v"][p.name][p.depth :]).max()) >> lm.ACT_SHIFT for p in net.populations
        }
        info["max_current"] = dict(res["max_current"])
    return {k: np.asarray(spikes[k]).astype(bool) for k in keep}, info


def run_hybrid(
    net: lm.LoihiNet,
    plan: HostPlan,
    inputs: Mapping[str, np.ndarray],
    *,
    lava: bool = False,
    probe: Sequence[str] | None = None,
    ranges: bool = False,
) -> dict:
    """Host currents -> LoihiNet -> host tail.  Returns ``{"outputs": {name: array}, "spikes": {pop: [T, B,
    ...]}, "host_clip": {source: fraction}, "times": {...}}``; ``probe`` as for :func:`run_loihi` (the
    outputs are always read)."""
    g = plan.graph
    B = _batch(inputs, g)
    ints, clip = plan.quantize_currents(plan.float_currents(inputs, B))
    ints.update({k: (np.asarray(inputs[k]) != 0).astype(np.int64) for k in plan.spike_inputs})
    if probe is not None:
        probe = tuple(dict.fromkeys(tuple(probe) + tuple(plan.outputs)))
    spikes, times = run_loihi(net, ints, g.T, lava=lava, probe=probe, ranges=ranges)
    return {"outputs": plan.readout(inputs, spikes), "spikes": spikes, "host_clip": clip, "times": times}


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / ||b||`` (0 when both are 0)."""
    d, n = float(np.linalg.norm(np.asarray(a) - b)), float(np.linalg.norm(b))
    return d / n if n > 0 else d


def spike_mismatch(
    spikes: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], pops: Sequence[str]
) -> dict[str, float]:
    """Per population ``p``: the fraction of (step, sample, neuron) entries where ``spikes[p]`` (fixed point)
    and ``ref[p]`` (float golden) disagree, ``mean(s != r)``."""
    return {p: float(np.mean(np.asarray(spikes[p]).astype(bool) != np.asarray(ref[p]).astype(bool))) for p in pops}


def check_hybrid(
    net: lm.LoihiNet,
    plan: HostPlan,
    inputs: Mapping[str, np.ndarray],
    *,
    reference: ir.Graph | None = None,
    lava: bool = False,
) -> dict:
    """Run ``net`` host/chip (:func:`run_hybrid`, every population probed) and the float golden simulator on
    ``reference`` (default ``plan.graph``; a loaded export's plan holds only the host part, so pass the compiled
    graph) on the same ``inputs``.  Returns ``{"hybrid": run_hybrid's dict, "golden": golden values by name,
    "spike_mismatch": {population: fraction}, "output_error": {output: ||hybrid - golden|| / ||golden||},
    "seconds": wall time of the hybrid run}``."""
    import time

    from ...sim import golden

    pops = [p.name for p in net.populations]
    ref = golden.run(reference if reference is not None else plan.graph, dict(inputs), keep=pops)
    t0 = time.perf_counter()
    hy = run_hybrid(net, plan, inputs, lava=lava, probe=pops)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "hybrid": hy,
        "golden": ref,
        "spike_mismatch": spike_mismatch(hy["spikes"], ref, pops),
        "output_error": {o: rel_error(v, ref[o]) for o, v in hy["outputs"].items()},
    }


def torch_reference(
    graph: ir.Graph, inputs: Mapping[str, np.ndarray], *, threshold: float | None = None
) -> dict[str, np.ndarray]:
    """The graph outputs from the compiled torch executor (``compile_torch(..., 'inference')``, float64) on
    ``inputs`` (graph inputs by name), with threshold guidance applied as :func:`compile_net` does: the
    torch backend's answer the Loihi run is compared with.  ``graph``: the traced graph (the executor runs
    its own ``inference`` pipeline)."""
    import torch

    from ..torch_exec import compile_torch

    if threshold is not None:
        graph = _with_threshold(graph, threshold)
    ex = compile_torch(graph, "inference", dtype=torch.float64, channels_last=False)
    args = []
    for n in graph.input_nodes:
        if n.name not in inputs:
            raise SdmcError(f"torch_reference: no value for graph input {n.name!r}")
        args.append(torch.from_numpy(np.asarray(inputs[n.name])))
    with torch.no_grad():
        y = ex(*args)
    ys = (y,) if isinstance(y, torch.Tensor) else tuple(y)
    return {n.name: v.numpy() for n, v in zip(graph.output_nodes, ys)}


def evaluate(
    net: lm.LoihiNet,
    plan: HostPlan,
    report: CompileReport,
    inputs: Mapping[str, np.ndarray],
    *,
    lava: bool = False,
    tsm_graph: ir.Graph | None = None,
) -> CompileReport:
    """Fill ``report`` with the accuracy cost on ``inputs``: per-population spike mismatch and firing rates
    (fixed point vs float golden), host-current clipping, output relative error, and (``tsm_graph``: the
    mean-TSM float graph) the error of the TSM approximation alone."""
    from ...sim import golden

    if plan.host_only:
        raise SdmcError(
            "evaluate: the plan holds only the host part of the graph (a loaded export); the float "
            "reference needs the compiled plan (compile_net)"
        )
    g = plan.graph
    pops = [p.name for p in net.populations]
    ref = golden.run(g, dict(inputs), keep=pops)
    hy = run_hybrid(net, plan, inputs, lava=lava, probe=pops, ranges=not lava)
    by = {q.name: q for q in report.layers}
    report.max_current = dict(hy["times"].get("max_current", {}))
    for p, v in hy["times"].get("max_abs_v", {}).items():
        by[p].max_abs_v = v
    for p in pops:
        f, q = ref[p].astype(bool), hy["spikes"][p]
        by[p].spike_mismatch = float(np.mean(f != q))
        by[p].rate_float, by[p].rate_fixed = float(f.mean()), float(q.mean())
    outs = [n.name for n in g.output_nodes]
    report.output_error = max(rel_error(hy["outputs"][o], ref[o]) for o in outs)
    report.host_clip = hy["host_clip"]
    if tsm_graph is not None:
        approx = golden.run(tsm_graph, dict(inputs))
        report.tsm_error = max(rel_error(approx[o], ref[o]) for o in outs)
        if len(report.tsm_approx) <= TSM_PER_NODE_MAX:
            for k in report.tsm_approx:
                one = golden.run(_mean_tsm_graph(g, {k: 0.0}), dict(inputs))
                report.tsm_node_error[k] = max(rel_error(one[o], ref[o]) for o in outs)
    return report


# ============================================================================================ resources
def _axis_fan(n_src: int, up: int, k: int, s: int, p: int, d: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis of a conv on the ``up``-times upsampled source: per output position the number of
    distinct source positions its in-bounds taps read, and per source position how many outputs read it."""
    fin, fout = np.zeros(n_out, np.int64), np.zeros(n_src, np.int64)
    for o in range(n_out):
        idx = {(o * s - p + t * d) // up for t in range(k) if 0 <= o * s - p + t * d < n_src * up}
        fin[o] = len(idx)
        for j in idx:
            fout[j] += 1
    return fin, fout


def projection_resources(net: lm.LoihiNet, pr: lm.Projection) -> dict:
    """Connections of one projection (distinct source -> target neuron pairs; padding taps cost nothing),
    its largest fan-in and fan-out per neuron, and the weights it stores (conv kernels are shared)."""
    src = tuple(net.node(pr.src).shape)
    dst = tuple(net.node(pr.dst).shape)
    if pr.kind == "identity":
        n = math.prod(dst)
        return {"synapses": n, "max_fan_in": 1, "max_fan_out": 1, "weights": 0}
    w = np.shape(pr.weight)
    if pr.kind == "dense":
        return {"synapses": w[0] * w[1], "max_fan_in": w[1], "max_fan_out": w[0], "weights": w[0] * w[1]}
    O, Cg, kh, kw = w
    fh, oh = _axis_fan(src[1], pr.upsample, kh, pr.stride[0], pr.padding[0], pr.dilation[0], dst[1])
    fw, ow = _axis_fan(src[2], pr.upsample, kw, pr.stride[1], pr.padding[1], pr.dilation[1], dst[2])
    og = O // pr.groups
    return {
        "synapses": int(O * Cg * fh.sum() * fw.sum()),
        "max_fan_in": int(Cg * fh.max() * fw.max()),
        "max_fan_out": int(og * oh.max() * ow.max()),
        "weights": int(O * Cg * kh * kw),
    }


def resources(net: lm.LoihiNet, graph: ir.Graph | None = None) -> dict:
    """Loihi 2 resource estimate of ``net``: per population neurons, incoming synapses, fan-in / fan-out and
    cores (``max(ceil(neurons / NEURONS_PER_CORE), ceil(synapses / SYNAPSES_PER_CORE))``); totals with
    chips (``CORES_PER_CHIP``); with ``graph`` the synapse blow-up the residual-stream composition caused
    (its pass log).  Counts only shapes: nothing dense is built."""
    projs = [
        dict(
            name=p.name,
            src=p.src,
            dst=p.dst,
            kind=p.kind,
            upsample=p.upsample,
            delay=p.delay,
            **projection_resources(net, p),
        )
        for p in net.projections
    ]
    pops = []
    for p in net.populations:
        inc = [r for r in projs if r["dst"] == p.name]
        out = [r for r in projs if r["src"] == p.name]
        n, syn = math.prod(p.shape), sum(r["synapses"] for r in inc)
        cores = max(math.ceil(n / NEURONS_PER_CORE), math.ceil(syn / SYNAPSES_PER_CORE), 1)
        pops.append(
            {
                "name": p.name,
                "shape": list(p.shape),
                "depth": p.depth,
                "neurons": n,
                "synapses_in": syn,
                "projections_in": len(inc),
                "fan_in": sum(r["max_fan_in"] for r in inc),
                "fan_out": sum(r["max_fan_out"] for r in out),
                "weights": sum(r["weights"] for r in inc),
                "cores": cores,
            }
        )
    cores = sum(p["cores"] for p in pops)
    tot = {
        "populations": len(pops),
        "projections": len(projs),
        "sources": len(net.sources),
        "neurons": sum(p["neurons"] for p in pops),
        "synapses": sum(r["synapses"] for r in projs),
        "weights": sum(r["weights"] for r in projs),
        "max_fan_in": max((p["fan_in"] for p in pops), default=0),
        "max_fan_out": max((p["fan_out"] for p in pops), default=0),
        "depth": net.max_depth,
        "delay_steps": sum(r["delay"] for r in projs),
        "cores": cores,
        "chips": math.ceil(cores / CORES_PER_CHIP),
        "upsample_projections": sum(1 for r in projs if r["upsample"] > 1),
    }
    res = {
        "populations": pops,
        "projections": projs,
        "totals": tot,
        "limits": {
            "cores_per_chip": CORES_PER_CHIP,
            "neurons_per_core": NEURONS_PER_CORE,
            "synapses_per_core": SYNAPSES_PER_CORE,
            "neurons_per_chip": NEURONS_PER_CHIP,
            "synapses_per_chip": SYNAPSES_PER_CHIP,
        },
    }
    if graph is not None:
        log = next((e for e in graph.meta.get("passes", []) if e.get("pass") == "compose_residual"), None)
        if log is not None:
            res["composition"] = {
                "spike_driven_synapses_before": log["synapses_before"]["spike_driven"],
                "spike_driven_synapses_after": log["synapses_after"]["spike_driven"],
                "max_projections_per_neuron": log["max_projections_per_neuron"],
            }
    return res


def _si(x: float) -> str:
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= f:
            return f"{x / f:.2f}{unit}"
    return str(int(x))


def format_resources(res: dict, *, top: int = 8) -> str:
    t = res["totals"]
    lim = res["limits"]
    rows = [
        f"Loihi 2 resources: {t['populations']} populations, {t['projections']} projections, {t['sources']} "
        f"host sources, depth {t['depth']} ({t['delay_steps']} delay steps in all)",
        f"  neurons {_si(t['neurons'])}, synapses {_si(t['synapses'])} (stored weights {_si(t['weights'])}), "
        f"max fan-in {_si(t['max_fan_in'])}, max fan-out {_si(t['max_fan_out'])}",
        f"  cores {t['cores']}, chips {t['chips']} (assumed per core: {lim['neurons_per_core']} neurons, "
        f"{_si(lim['synapses_per_core'])} synapses; {lim['cores_per_chip']} cores per chip)",
    ]
    c = res.get("composition")
    if c:
        b, a = c["spike_driven_synapses_before"], c["spike_driven_synapses_after"]
        rows.append(
            f"  residual-stream composition (pass log, dense counts incl. padding taps): spike-driven synapses {_si(b)} -> {_si(a)} "
            f"(x{a / max(b, 1):.2f}), up to {c['max_projections_per_neuron']} projections into one neuron"
        )
    rows.append(f"  {'population':<34}{'neurons':>9}{'synapses':>10}{'proj':>5}{'fan-in':>8}{'fan-out':>8}{'cores':>6}")
    for p in sorted(res["populations"], key=lambda p: -p["cores"])[:top]:
        rows.append(
            f"  {p['name'][-33:]:<34}{_si(p['neurons']):>9}{_si(p['synapses_in']):>10}"
            f"{p['projections_in']:>5}{_si(p['fan_in']):>8}{_si(p['fan_out']):>8}{p['cores']:>6}"
        )
    if len(res["populations"]) > top:
        rows.append(f"  ... {len(res['populations']) - top} more populations")
    return "\n".join(rows)


# ============================================================================================ export
EXPORT_FORMAT = "sdmc-loihi-net"
EXPORT_VERSION = 2  # 2: every population in one netx segment, projection roles; 1 (no longer read): chains >= 2 only
MANIFEST = "manifest.json"
PROJ_FILE = "projections.h5"
GRAPH_FILE = "graph.sdmc"


def main_projections(net: lm.LoihiNet) -> dict[str, lm.Projection | None]:
    """Per population the incoming projection its netx segment layer holds (its "main" one).

    Preferred, in this order: a conv / dense without upsample from a population on the longest path
    (``delay == 0``), then any conv / dense without upsample (from a source or delayed), then an identity
    host current (exact in netx as a depthwise 1x1 conv of unit weights on graded input).  netx has no
    upsample, so an upsampled projection is never a main one; a population fed only by upsampled
    projections gets ``None`` (its segment layer reads the summed current through a unit conv)."""
    out: dict[str, lm.Projection | None] = {}
    for p in net.populations:
        inc = net.incoming(p.name)
        syn = [pr for pr in inc if pr.kind in ("conv", "dense") and pr.upsample == 1]
        syn.sort(key=lambda pr: (pr.delay != 0, isinstance(net.node(pr.src), lm.Source)))
        ident = [pr for pr in inc if pr.kind == "identity"]
        out[p.name] = syn[0] if syn else (ident[0] if ident else None)
    return out


def _continues(net: lm.LoihiNet, pr: lm.Projection | None) -> bool:
    """A main projection that continues its source population's chain inside one netx file."""
    return (
        pr is not None
        and pr.kind in ("conv", "dense")
        and pr.delay == 0
        and isinstance(net.node(pr.src), lm.Population)
    )


def segments(net: lm.LoihiNet) -> list[list[str]]:
    """Partition of the populations into maximal netx chains along main projections
    (:func:`main_projections`): every population lies in exactly one segment.  Where several populations
    continue one population's chain, the one with the longest chain below it does (the rest start their
    own segments, whose input layer is that population's spikes)."""
    mains = main_projections(net)
    kids: dict[str, list[str]] = {}
    for p in net.populations:
        if _continues(net, mains[p.name]):
            kids.setdefault(mains[p.name].src, []).append(p.name)
    length: dict[str, int] = {}
    nxt: dict[str, str] = {}
    for p in reversed(net.populations):  # topological order reversed: children first
        best = max(kids.get(p.name, []), key=lambda c: length[c], default=None)
        length[p.name] = 1 + (length[best] if best is not None else 0)
        if best is not None:
            nxt[p.name] = best
    inner = set(nxt.values())
    out = []
    for p in net.populations:
        if p.name in inner:
            continue
        chain = [p.name]
        while chain[-1] in nxt:
            chain.append(nxt[chain[-1]])
        out.append(chain)
    return out


def _netx_bias(p: lm.Population) -> np.ndarray | None:
    """The bias a netx layer can hold (per channel); a full-shape bias stays in projections.h5."""
    return p.bias if p.bias is not None and np.ndim(p.bias) == 1 else None


def _unit_layer(p: lm.Population) -> tuple[str, np.ndarray, int]:
    """``(kind, weight, groups)`` of the one-to-one unit-weight synapse that stands for an identity projection."""
    if len(p.shape) == 3:
        return "conv", np.ones((p.shape[0], 1, 1, 1), np.int8), int(p.shape[0])
    return "dense", np.eye(p.shape[0], dtype=np.int8), 1


def _segment_chain(
    net: lm.LoihiNet, chain: list[str], mains: Mapping[str, lm.Projection | None]
) -> tuple[lm.LoihiChain, list[int], dict]:
    """The LoihiChain of a segment, per population its layer index in the netx file, and the segment's
    input description (``input``: the main source, or None for a summed current; ``input_kind``)."""
    head = net.node(chain[0])
    first = mains[chain[0]]
    if first is None or first.kind == "identity":
        shape = tuple(head.shape)
        bits = net.node(first.src).bits if first is not None else lm.STATE_BITS
        info = {"input": None if first is None else first.src, "input_kind": "current" if first is None else "graded"}
    else:
        src = net.node(first.src)
        shape, bits = tuple(src.shape), (src.bits if isinstance(src, lm.Source) else 0)
        info = {"input": first.src, "input_kind": "graded" if bits else "spikes"}
    in_shape = shape
    layers, idx, k = [], [], 1
    for name in chain:
        pr, p = mains[name], net.node(name)
        if pr is None or pr.kind == "identity":
            kind, w, groups = _unit_layer(p)
            kw = dict(groups=groups)
        else:
            kind, w = pr.kind, pr.weight
            kw = dict(stride=pr.stride, padding=pr.padding, dilation=pr.dilation, groups=pr.groups)
        if kind == "dense" and len(shape) > 1:
            k += 1  # write_netx puts a flatten layer first
        idx.append(k)
        k += 1
        layers.append(lm.LoihiLayer(kind=kind, weight=w, neuron=p.neuron, bias=_netx_bias(p), name=name, **kw))
        shape = tuple(p.shape)
    info["input_shape"] = list(in_shape)
    info["input_delay"] = 0 if first is None else int(first.delay)  # steps the input waits (delay alignment)
    return lm.LoihiChain(in_shape, tuple(layers), input_bits=bits), idx, info


def export_dir(
    net: lm.LoihiNet,
    plan: HostPlan,
    report: CompileReport | None,
    path: str | os.PathLike,
    *,
    resources: dict | None = None,
) -> Path:
    """Write the export directory atomically (a temporary directory renamed into place):

    ``segment_NN.h5``: plain netx files (``input`` + ``conv`` / ``dense`` CUBA layers, what stock
    ``netx.hdf5.Network`` loads).  :func:`segments` puts every population in exactly one of them, each layer
    holding the population's main incoming projection (:func:`main_projections`; an identity host current
    as a unit-weight depthwise 1x1 conv on graded input); the segment's input layer has the main source's
    shape.  ``projections.h5``: the weights of every other projection (the wiring netx cannot express:
    extra synapses into one neuron, split concat, upsampled sources) and full-shape biases.
    ``manifest.json`` (format, :data:`EXPORT_VERSION`, T, sources, populations, projections with their
    ``role`` (``segment`` / ``wiring``), delay and weight reference, segments, outputs, host plan,
    quantisation report, notes).  ``graph.sdmc``: only the host part of the compiled graph
    (:func:`host_graph`: inputs, host-current terms and their ancestors, the tail with the output populations
    as spike inputs); the chip's weights are in the h5 files alone.  ``resources``: a :func:`resources`
    report, whose ``totals`` and ``limits`` the manifest records.
    """
    import h5py

    from .export import write_netx

    lm.check_net(net)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SdmcError(f"export: {path} exists and is not a directory")
    with atomic_dir(path) as tmp:
        where: dict[tuple, dict] = {}  # ("population", name) / ("projection", index) -> {"file", "dataset"}
        pidx = {id(p): i for i, p in enumerate(net.projections)}  # names may repeat: one conv, two targets
        segs, role = [], {}  # role: projection index -> {"file", "layer"} of its segment layer
        mains = main_projections(net)
        for i, chain in enumerate(segments(net)):
            lc, idx, info = _segment_chain(net, chain, mains)
            fname = f"segment_{i:02d}.h5"
            write_netx(lc, tmp / fname, meta={"T": net.meta.get("T"), "populations": chain})
            main_idx = []
            for name, k in zip(chain, idx):
                pr = mains[name]
                main_idx.append(None if pr is None else pidx[id(pr)])
                if pr is not None:
                    role[pidx[id(pr)]] = {"file": fname, "layer": k}
                    if pr.kind != "identity":
                        where[("projection", pidx[id(pr)])] = {"file": fname, "dataset": f"layer/{k}/weight"}
                if _netx_bias(net.node(name)) is not None:
                    where[("population", name)] = {"file": fname, "dataset": f"layer/{k}/bias"}
            segs.append(
                {
                    "file": fname,
                    **info,
                    "populations": chain,
                    "layers": idx,
                    "main": main_idx,
                    "input_message_bits": lc.input_bits,
                }
            )
        with h5py.File(tmp / PROJ_FILE, "w") as f:
            for i, pr in enumerate(net.projections):
                if pr.weight is not None and ("projection", i) not in where:
                    ds = f"projection/{i}/weight"
                    f.create_dataset(ds, data=np.asarray(pr.weight).astype(np.int8))  # 8-bit (check_net)
                    where[("projection", i)] = {"file": PROJ_FILE, "dataset": ds}
            for i, p in enumerate(net.populations):
                if p.bias is not None and ("population", p.name) not in where:
                    ds = f"population/{i}/bias"
                    f.create_dataset(ds, data=np.asarray(p.bias).astype(np.int32))
                    where[("population", p.name)] = {"file": PROJ_FILE, "dataset": ds}
        ir.save(host_graph(plan.graph, plan.currents, plan.outputs), tmp / GRAPH_FILE)
        summary = None if resources is None else {k: resources[k] for k in ("totals", "limits")}
        manifest = _manifest(net, plan, report, where, segs, role, summary)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return path


def _notes(net: lm.LoihiNet, report: CompileReport | None, segs: list[dict]) -> list[str]:
    multi = [p.name for p in net.populations if len(net.incoming(p.name)) > 1]
    wired = len(net.projections) - sum(1 for sg in segs for i in sg["main"] if i is not None)
    ups = [p.name for p in net.projections if p.upsample > 1]
    dl = [p for p in net.projections if p.delay > 0]
    notes = [
        f"{len(segs)} netx segment file(s) hold every population once, each layer with its main incoming "
        f"projection (segments[].main; identity host currents as unit-weight depthwise 1x1 convs on graded "
        f"input); the other {wired} projection(s) (projections[].role == 'wiring') are extra synapses into a "
        "layer's a_in, with their weights in projections.h5; a segment's input is its main source's output "
        "(input_kind 'current': the layer's a_in is only the wiring's summed current)",
        f"{len(multi)} population(s) sum several projections (residual adds, split concat, host currents): "
        "several synapses into one CUBA a_in; netx chains cannot express this",
        f"{len(ups)} projection(s) read a nearest-upsampled source (upsample + conv; netx has no unpool / "
        "convT: a Sparse synapse in Lava)",
        f"{len(dl)} projection(s) are delayed ({sum(p.delay for p in dl)} steps in all) so that every path "
        "into a population has the same length (dst.depth = src.depth + 1 + delay)",
        "sources are graded host currents (head conv, time embedding, large biases), sent per step through "
        "identity projections; the tail (BN, Swish, conv3d, membrane read-out) runs on the host from the "
        "output populations' spikes (graph.sdmc)",
    ]
    if report is not None and report.tsm_approx:
        notes.append(
            f"TSM: {len(report.tsm_approx)} per-step-scaled conv(s) approximated by their mean scale; a "
            "static synapse cannot apply p[t] (see quantisation.tsm_spread / tsm_error)"
        )
    return notes


def _manifest(net, plan, report, where, segs, role, resources_summary) -> dict:
    def neuron(c: lm.Cuba) -> dict:
        return {"type": "CUBA", "vth": c.vth, "du": c.du, "dv": c.dv, "bias_exp": c.bias_exp}

    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "T": net.meta.get("T"),
        "sources": [{"name": s.name, "shape": list(s.shape), "bits": s.bits} for s in net.sources],
        "populations": [
            {
                "name": p.name,
                "shape": list(p.shape),
                "depth": p.depth,
                "neuron": neuron(p.neuron),
                "bias": where.get(("population", p.name)),
                "scale": net.meta.get("scales", {}).get(p.name),
                "theta": net.meta.get("thresholds", {}).get(p.name),
            }
            for p in net.populations
        ],
        "projections": [
            {
                "name": p.name,
                "src": p.src,
                "dst": p.dst,
                "kind": p.kind,
                "stride": list(p.stride),
                "padding": list(p.padding),
                "dilation": list(p.dilation),
                "groups": p.groups,
                "upsample": p.upsample,
                "delay": p.delay,
                "weight": where.get(("projection", i)),
                "role": "segment" if i in role else "wiring",
                "segment": role.get(i),
            }
            for i, p in enumerate(net.projections)
        ],
        "wiring": [i for i in range(len(net.projections)) if i not in role],
        "outputs": list(net.outputs),
        "segments": segs,
        "host": {
            "graph": GRAPH_FILE,
            "currents": [c.to_json() for c in plan.currents],
            "outputs": list(plan.outputs),
            "spike_inputs": list(plan.spike_inputs),
            "description": list(report.host) if report is not None else [],
        },
        "quantisation": report.to_json() if report is not None else None,
        "resources": resources_summary,
        "notes": _notes(net, report, segs),
        "meta": {k: v for k, v in net.meta.items() if k not in ("scales", "thresholds")},
    }


def check_export(path: str | os.PathLike) -> dict:
    """Read and validate an export directory; returns its manifest.  Checks the format and version (only
    :data:`EXPORT_VERSION` is read: a version-1 export predates per-population segments; export again),
    that every referenced file and dataset exists, that every population lies in exactly one segment and
    that each segment file is a netx chain (:func:`.export.read_netx`) whose input shape, layer shapes and
    neuron parameters match the manifest.  Problems raise one :class:`SdmcError` naming them."""
    import h5py

    from .export import read_netx

    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        raise SdmcError(f"{path}: no {MANIFEST}; not an sdmc Loihi export directory")
    try:
        m = json.loads(mf.read_text())
    except (OSError, ValueError) as e:
        raise SdmcError(f"{mf}: unreadable manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != EXPORT_FORMAT:
        raise SdmcError(f"{mf}: format {m.get('format') if isinstance(m, dict) else None!r} is not {EXPORT_FORMAT!r}")
    if m.get("version") != EXPORT_VERSION:
        hint = "; it predates per-population netx segments: export the model again" if m.get("version") == 1 else ""
        raise SdmcError(
            f"{mf}: version {m.get('version')!r} is not supported (this sdmc reads version {EXPORT_VERSION}){hint}"
        )
    for key in ("sources", "populations", "projections", "outputs", "host", "segments"):
        if key not in m:
            raise SdmcError(f"{mf}: missing key {key!r}")
    refs = [(f"population {p['name']!r} bias", p["bias"]) for p in m["populations"] if p.get("bias")]
    refs += [(f"projection {p['name']!r} weight", p["weight"]) for p in m["projections"] if p["kind"] != "identity"]
    files: dict[str, set] = {}
    for what, ref in refs:
        if not ref or "file" not in ref or "dataset" not in ref:
            raise SdmcError(f"{mf}: {what} has no file / dataset reference")
        files.setdefault(ref["file"], set()).add((what, ref["dataset"]))
    for fname, items in files.items():
        fp = path / fname
        if not fp.is_file():
            raise SdmcError(f"{path}: missing file {fname!r} (holds {sorted(items)[0][0]})")
        with h5py.File(fp, "r") as f:
            for what, ds in items:
                if ds not in f:
                    raise SdmcError(f"{fp}: missing dataset {ds!r} ({what})")
    _check_segments(path, m, read_netx)
    if not (path / m["host"]["graph"]).exists():
        raise SdmcError(f"{path}: missing host graph {m['host']['graph']!r}")
    return m


def _check_segments(path: Path, m: dict, read_netx) -> None:
    pops = {p["name"]: p for p in m["populations"]}
    shapes = {s["name"]: tuple(s["shape"]) for s in m["sources"]}
    shapes.update({k: tuple(p["shape"]) for k, p in pops.items()})
    seen: dict[str, str] = {}
    for sg in m["segments"]:
        fname = sg.get("file")
        fp = path / str(fname)
        if not fp.is_file():
            raise SdmcError(f"{path}: missing segment file {fname!r}")
        names, main = list(sg.get("populations", ())), list(sg.get("main", ()))
        if not names or len(main) != len(names):
            raise SdmcError(
                f"{fp}: manifest segment lists {len(names)} population(s) and {len(main)} main projection(s)"
            )
        try:
            chain = read_netx(fp)
            lm.check_chain(chain)
        except SdmcError as e:
            raise SdmcError(f"segment {fname!r}: {e}") from None
        if len(chain.layers) != len(names):
            raise SdmcError(
                f"{fp}: {len(chain.layers)} netx layer(s) for the {len(names)} population(s) the manifest lists"
            )
        head = sg.get("input")
        want_in = shapes.get(head) if sg.get("input_kind") != "current" else shapes.get(names[0])
        if want_in is None or tuple(chain.input_shape) != tuple(want_in):
            raise SdmcError(
                f"{fp}: input layer shape {list(chain.input_shape)} does not match its input "
                f"{head!r} ({None if want_in is None else list(want_in)})"
            )
        for name, got, L, i in zip(names, chain.shapes()[1:], chain.layers, main):
            if name not in pops:
                raise SdmcError(f"{fp}: segment names unknown population {name!r}")
            if name in seen:
                raise SdmcError(f"{path}: population {name!r} lies in two segments ({seen[name]!r}, {fname!r})")
            seen[name] = fname
            p = pops[name]
            n = p["neuron"]
            if tuple(got) != tuple(p["shape"]) or (L.neuron.vth, L.neuron.du, L.neuron.dv) != (
                n["vth"],
                n["du"],
                n["dv"],
            ):
                raise SdmcError(
                    f"{fp}: layer of population {name!r} (shape {list(got)}, vth {L.neuron.vth}, du "
                    f"{L.neuron.du}, dv {L.neuron.dv}) does not match the manifest (shape {p['shape']}, "
                    f"vth {n['vth']}, du {n['du']}, dv {n['dv']})"
                )
            if i is not None and (
                not isinstance(i, int) or not 0 <= i < len(m["projections"]) or m["projections"][i]["dst"] != name
            ):
                raise SdmcError(f"{fp}: main projection {i!r} of population {name!r} is not one of its projections")
    missing = [k for k in pops if k not in seen]
    if missing:
        raise SdmcError(f"{path}: population(s) {missing[:5]} lie in no netx segment")


def load_export(path: str | os.PathLike) -> tuple[lm.LoihiNet, HostPlan, dict]:
    """Read an export directory back: the LoihiNet, its HostPlan and the manifest."""
    import h5py

    path = Path(path)
    m = check_export(path)
    handles: dict[str, h5py.File] = {}

    def data(ref: dict) -> np.ndarray:
        if ref["file"] not in handles:
            handles[ref["file"]] = h5py.File(path / ref["file"], "r")
        return np.asarray(handles[ref["file"]][ref["dataset"]][()]).astype(np.int64)

    try:
        sources = tuple(lm.Source(s["name"], tuple(s["shape"]), int(s["bits"])) for s in m["sources"])
        pops = []
        for p in m["populations"]:
            n = p["neuron"]
            w = data(p["bias"]) if p.get("bias") else None
            pops.append(
                lm.Population(
                    p["name"],
                    tuple(p["shape"]),
                    lm.Cuba(vth=n["vth"], du=n["du"], dv=n["dv"], bias_exp=n["bias_exp"]),
                    bias=w,
                    depth=int(p["depth"]),
                )
            )
        projs = []
        for p in m["projections"]:
            w = data(p["weight"]) if p["kind"] != "identity" else None
            if w is not None and p["kind"] == "conv" and w.ndim == 5:
                w = w[..., 0]
            projs.append(
                lm.Projection(
                    p["src"],
                    p["dst"],
                    p["kind"],
                    w,
                    tuple(p["stride"]),
                    tuple(p["padding"]),
                    tuple(p["dilation"]),
                    int(p["groups"]),
                    int(p["upsample"]),
                    int(p["delay"]),
                    p["name"],
                )
            )
    finally:
        for f in handles.values():
            f.close()
    meta = dict(m.get("meta") or {})
    meta["scales"] = {p["name"]: p["scale"] for p in m["populations"]}
    meta["thresholds"] = {p["name"]: p["theta"] for p in m["populations"]}
    net = lm.LoihiNet(sources, tuple(pops), tuple(projs), tuple(m["outputs"]), meta=meta)
    lm.check_net(net)
    g = ir.check(ir.load(path / m["host"]["graph"]))
    plan = HostPlan(
        g,
        tuple(HostCurrent.from_json(c) for c in m["host"]["currents"]),
        tuple(m["host"]["outputs"]),
        tuple(m["host"].get("spike_inputs", ())),
    )
    for name in plan.outputs + tuple(t for c in plan.currents for t in c.terms):
        if name not in g.nodes:
            raise SdmcError(f"{path}: host plan names node {name!r}, which the host graph lacks")
    for name in plan.outputs:
        if tuple(g.nodes[name].type.shape) != tuple(net.node(name).shape):
            raise SdmcError(
                f"{path}: host graph node {name!r} has shape {list(g.nodes[name].type.shape)}, the "
                f"population {list(net.node(name).shape)}"
            )
    return net, plan, m
