"""Extraction: an IR graph's spiking core as float populations, the input of quantisation.

A :class:`FloatPopulation` is one neuromorphic neuron node (IF; LIF with a leak ``4096 / tau`` that is an
integer): threshold ``theta``, input gain ``g`` (``1 / tau`` for a LIF that decays its input, else 1), decay
``dv``, the float :class:`FloatProjection` s summed into its current, the host values summed into it and a
static bias.  :class:`Extractor` reads them from a graph through the ``neuromorphic`` pipeline (its
``partition`` metadata):

- the current a neuron reads is expanded through adds into summands: a conv / linear on spikes (after an
  optional nearest upsample, kept as ``upsample`` on the projection) is a projection from the spiking
  population; every host value (the static head conv, the time-embedding bias, TSM head convs) is a host
  term; static learned biases become the population's ``bias``;
- populations whose spikes host ops read are the outputs (:func:`output_populations`).

A sequential netx chain (:func:`.netx_chain.extract_chain`) is built from the same pieces
(:func:`float_projection`, :func:`neuron_params`) into a :class:`FloatChain`.

SDM's TSM convs (``y[t] = p[t] conv(x[t])``) have no static synapse: ``tsm='reject'`` raises naming the
node, ``tsm='mean'`` uses ``mean_t p[t] W`` (:func:`mean_tsm`; :func:`mean_tsm_graph` is the float graph of
that approximation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ... import ir
from ...errors import UnsupportedOpError
from .network import DECAY_UNITY

SYNAPSES = ir.CONV2D | {"linear"}  # the synaptic ops a Loihi projection holds: 2-d convs (4-d weight) and dense


@dataclass
class FloatProjection:
    """A float synapse ``src -> population``: ``kind`` ``conv`` (torch cross-correlation on the ``upsample``-times
    nearest-upsampled source) or ``dense``; the float weight is ``factor * weight`` (``factor``: the mean TSM
    scale; ``weight`` the graph's array, not copied).  ``node`` names the IR synapse node."""

    node: str
    src: str
    kind: str
    weight: np.ndarray | None
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    upsample: int = 1
    factor: float = 1.0

    def float_weight(self) -> np.ndarray:
        """``factor * weight`` in float64."""
        return np.asarray(self.weight, np.float64) * self.factor


@dataclass
class FloatPopulation:
    """Neurons ``name`` of ``shape`` firing on ``v >= theta`` (reset to 0), input gain ``gain``, Loihi decay
    ``dv`` (0: IF), fed by ``projs`` (summed), the host terms ``host`` (IR node names) and ``bias`` (float,
    per channel; folded BN and conv biases)."""

    name: str
    shape: tuple
    theta: float
    gain: float = 1.0
    dv: int = 0
    projs: list = field(default_factory=list)
    host: list = field(default_factory=list)
    bias: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class FloatChain:
    """``input [*input_shape] -> layers`` (each a :class:`FloatPopulation` with one projection from the one
    before); ``graded_input``: real-valued input (else binary spikes).  ``meta``: ``T``, ``tsm_approx``."""

    input_shape: tuple[int, ...]
    layers: tuple[FloatPopulation, ...]
    graded_input: bool = False
    meta: dict = field(default_factory=dict, compare=False)


def neuron_params(n: ir.Node) -> tuple[float, int]:
    """``(gain, dv)`` of a neuromorphic neuron node, or :class:`UnsupportedOpError` naming it: Loihi's CUBA
    neuron resets to 0, starts at 0, has no signed spikes and a 12-bit leak ``dv = 4096 / tau``."""
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
        dv = DECAY_UNITY / float(n.tau)
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


def mean_tsm(graph: ir.Graph, node: ir.Node, tsm: str) -> tuple[float, np.ndarray | None, float]:
    """The mean-TSM approximation of a ``scaled_conv2d`` (``y[t] = p[t] conv(x[t], W) + b[t]``), the only
    static synapse Loihi has for it: ``mean_t p[t] W`` and ``mean_t b[t]``.

    Returns ``(mean p, bias (per step averaged, float64) or None, spread)`` with the relative spread
    ``max(max_t |p[t] - mean p| / |mean p|, max |b[t] - mean b| / max |b|)`` (0: the export is exact).
    ``tsm='reject'`` raises :class:`UnsupportedOpError` naming the node instead.
    """
    if tsm == "reject":
        raise UnsupportedOpError(
            f"node {node.name!r} (scaled_conv2d): per-step (TSM) weights p[t] W have no static "
            "Loihi synapse; use tsm='mean' (--tsm mean) to approximate them by mean_t p[t] W"
        )
    P = graph.params
    p = np.ones(graph.T) if node.scale is None else np.asarray(P[node.scale], np.float64).reshape(-1)
    pm = float(p.mean())
    if pm == 0:
        raise UnsupportedOpError(f"node {node.name!r} (scaled_conv2d): mean TSM scale is 0")
    spread = float(np.abs(p - pm).max() / abs(pm))
    b = None if node.bias is None else np.asarray(P[node.bias], np.float64)
    if b is not None and b.ndim == 2:
        bm = b.mean(0)
        spread = max(spread, float(np.abs(b - bm).max()) / max(float(np.abs(b).max()), 1e-12))
        b = bm
    return pm, b, spread


def mean_tsm_graph(g: ir.Graph, nodes: Mapping[str, float]) -> ir.Graph:
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


def float_projection(
    g: ir.Graph, n: ir.Node, src: str, tsm: str, upsample: int = 1
) -> tuple[FloatProjection, np.ndarray | None, float | None]:
    """The synapse node ``n`` (``conv2d`` / ``scaled_conv2d`` / ``linear``) reading ``src``: its
    :class:`FloatProjection`, its float64 bias (TSM: averaged over steps) or None, and the TSM spread
    (:func:`mean_tsm`; None for a static synapse)."""
    w = np.asarray(g.params[n.weight])  # no copy: converted per population while quantising
    b = None if n.bias is None else np.asarray(g.params[n.bias], np.float64)
    pm, spread = 1.0, None
    if n.op == "scaled_conv2d":
        pm, b, spread = mean_tsm(g, n, tsm)
    if n.op == "linear":
        return FloatProjection(n.name, src, "dense", w, factor=pm), b, spread
    pr = FloatProjection(n.name, src, "conv", w, n.stride, n.padding, n.dilation, int(n.groups), upsample, factor=pm)
    return pr, b, spread


def _dependents_of_neurons(g: ir.Graph) -> set[str]:
    dep: set[str] = set()
    for n in g.order():
        if n.op in ir.NEURON or any(i in dep for i in n.inputs):
            dep.add(n.name)
    return dep


class Extractor:
    """Reads the float populations of a graph through the ``neuromorphic`` pipeline (``partition`` meta).
    After :meth:`populations`: ``spike_inputs`` (per-step spike graph inputs read by synapses, with their
    shapes) and ``tsm_spread`` (per TSM node approximated by its mean)."""

    def __init__(self, g: ir.Graph, tsm: str):
        self.g, self.tsm = g, tsm
        self.side = {k: v[0] for k, v in g.meta["partition"].items()}
        self.spiky = _dependents_of_neurons(g)
        self.tsm_spread: dict[str, float] = {}
        self.spike_inputs: dict[str, tuple] = {}

    def host_term(self, v: str, pop: str) -> tuple:
        if v in self.spiky:
            raise UnsupportedOpError(
                f"node {v!r} ({self.g.nodes[v].op}): a host value computed from spikes feeds "
                f"neuron {pop!r}; a host round trip inside the time loop is not supported"
            )
        return ("host", v)

    def terms(self, v: str, pop: str) -> list[tuple]:
        """The summands of value ``v`` in the current of ``pop``: ``("host", node)`` or ``("proj", pr, bias)``."""
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
        if n.op in SYNAPSES:
            return [self.projection(n)]
        raise UnsupportedOpError(
            f"node {v!r} ({n.op}): the current of neuron {pop!r} must be a sum of spike-driven "
            "conv / linear synapses and host values; this op has no Loihi equivalent"
        )

    def projection(self, n: ir.Node) -> tuple:
        g = self.g
        src, up = g.nodes[n.inputs[0]], 1
        if src.op == "upsample":
            up, src = int(src.scale), g.nodes[src.inputs[0]]
        if src.op == "reshape" and n.op == "linear":
            src = g.nodes[src.inputs[0]]
        if src.op == "input" and src.type.kind == ir.SPIKE and src.type.per_step:
            self.spike_inputs.setdefault(src.name, tuple(src.type.shape))
        elif src.op not in ir.NEURON:
            raise UnsupportedOpError(
                f"node {n.name!r} ({n.op}): reads {src.name!r} ({src.op}); a Loihi synapse "
                "must read a neuron's spikes (optionally upsampled)"
            )
        pr, b, spread = float_projection(g, n, src.name, self.tsm, up)
        if spread is not None:
            self.tsm_spread[n.name] = spread
        return ("proj", pr, b)

    def populations(self) -> list[FloatPopulation]:
        """Every neuromorphic neuron node as a :class:`FloatPopulation`, in topological order."""
        g = self.g
        pops = []
        for n in g.order():
            if n.op not in ir.NEURON or self.side[n.name] != "neuromorphic":
                continue
            gain, dv = neuron_params(n)
            fp = FloatPopulation(n.name, tuple(n.type.shape), float(n.threshold), gain, dv)
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


def output_populations(g: ir.Graph, pops: set[str], side: Mapping[str, str]) -> list[str]:
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
            elif g.nodes[u].op not in ir.NEURON:
                stack.extend(g.users(u))
        if hit:
            out.append(p)
    return out


def with_threshold(g: ir.Graph, threshold: float) -> ir.Graph:
    """A checked copy of ``g`` with every neuron's threshold set to ``threshold`` (threshold guidance)."""
    g = g.copy()
    for n in list(g.nodes.values()):
        if n.op in ir.NEURON:
            g.nodes[n.name] = n.replace(threshold=float(threshold))
    return ir.check(g)


def neuromorphic_graph(graph: ir.Graph, threshold: float | None = None) -> ir.Graph:
    """``graph`` through the ``neuromorphic`` pass pipeline (unless its pass log ends with it), with threshold
    guidance (:func:`with_threshold`) applied after it."""
    from ... import passes

    log = [e.get("pass") for e in graph.meta.get("passes", [])]
    if log[-len(passes.PIPELINES["neuromorphic"]) :] == list(passes.PIPELINES["neuromorphic"]):
        g = ir.check(graph)
    else:
        g = passes.run(graph, "neuromorphic")
    return g if threshold is None else with_threshold(g, threshold)
