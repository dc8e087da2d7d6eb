"""The host plan: what runs on the host around a :class:`~.network.LoihiNet`.

Every host value a population reads (the static head conv, the time-embedding bias, TSM head convs, a bias too
large for the 13-bit mantissa) is summed on the host into one graded :class:`HostCurrent` per population, sent
through an ``identity`` projection from a :class:`~.network.Source` of the same name::

    I_host[t] = clip(round(scale (sum(terms)[t] + bias)), +-(2^(bits-1) - 1))     scale = S g (:mod:`.quantize`)

:class:`HostPlan` evaluates those terms with the golden interpreter (:meth:`HostPlan.float_currents`),
quantises them (:meth:`HostPlan.quantize_currents`) and, after the chip ran, computes the graph outputs from
the output populations' spikes (:meth:`HostPlan.readout`, ``golden.run(..., overrides=spikes)``).  Per-step
spike graph inputs are sent unchanged as unary sources of the same name.  :func:`host_graph` is the part of
the compiled graph the host needs (what an export stores).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ... import ir
from ...sim import golden

HOST_BITS = 16  # graded host-current message bits (default)
HOST_GRAPH_META = "loihi_host_graph"  # graph.meta key marking a host-only graph (:func:`host_graph`)


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
    :func:`.manifest.load_export` only its host part, :func:`host_graph`), the ``currents`` it sends, ``outputs``
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
        over = {k: np.asarray(spikes[k], np.float64) for k in self.outputs}
        fed = {k: v for k, v in over.items() if self.graph.nodes[k].op == "input"}  # host graph: inputs
        over = {k: v for k, v in over.items() if k not in fed}
        return golden.run(self.graph, {**dict(inputs), **fed}, overrides=over)

    @property
    def host_only(self) -> bool:
        """True when ``graph`` is only the host part (a loaded export): no float reference of the chip part."""
        return bool(self.graph.meta.get(HOST_GRAPH_META))


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
