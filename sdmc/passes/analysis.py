"""Analyses: passes that only write metadata (types, cost, host / neuromorphic partition) and the summary
behind ``sdmc inspect``.

Node metadata written, one key per analysis (``node.meta``): ``type`` (:class:`sdmc.ir.ValueType`), ``cost``
(``{"synapses", "runs", "ops"}``) and ``partition`` (``(side, reason)``, side ``"host"`` or ``"neuromorphic"``).
Node metadata is not serialised, so the partition is also kept in ``graph.meta['partition']``.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from .. import ir
from ..ir.graph import REAL
from .manager import register_pass

HOST, NEURO = "host", "neuromorphic"


@register_pass("infer", "shape / dtype / kind / timing inference into node.meta['type']", writes="type")
def infer(g: ir.Graph) -> dict:
    # the pass manager infers the types of every pass's copy before its body runs: this body only reports them
    kinds = Counter(n.type.kind for n in g.nodes.values())
    timings = Counter(n.type.timing for n in g.nodes.values())
    return {"kinds": dict(kinds), "timings": dict(timings)}


def node_cost(g: ir.Graph, n: ir.Node) -> dict:
    """Connections of a synaptic node per sample and run (``synapses``), how often it runs per call
    (``runs``: T when its input is per-step, else 1) and their product ``ops`` (MACs or ACs)."""
    if n.op not in ir.SYNAPTIC:
        return {"synapses": 0, "runs": 0, "ops": 0}
    x = g.nodes[n.inputs[0]].type
    w = g.params[n.weight].shape
    out = math.prod(n.type.shape)
    per_out = math.prod(w[1:])  # inputs per output: C/groups x kernel (conv), I (linear [O, I])
    runs = g.T if x.per_step else 1
    return {"synapses": int(out * per_out), "runs": runs, "ops": int(out * per_out * runs)}


@register_pass("cost", "synapse and operation counts per node into node.meta['cost']", writes="cost")
def cost(g: ir.Graph) -> dict:
    for n in g.nodes.values():
        n.meta["cost"] = node_cost(g, n)
    return work_per_call(g)


def work_per_call(g: ir.Graph, side: dict[str, tuple[str, str]] | None = None) -> dict[str, int]:
    """Synaptic operations of one call (types must be inferred), split two ways: ``static_ops`` /
    ``per_step_ops`` (run once, or T times) and ``spike_driven_ops`` / ``real_input_ops`` (by the kind of the
    input); with a partition ``side`` also ``host_ops`` / ``neuromorphic_ops``."""
    tot = Counter()
    for n in g.nodes.values():
        c = node_cost(g, n)
        if c["ops"]:
            tot["static_ops" if c["runs"] == 1 else "per_step_ops"] += c["ops"]
            tot["spike_driven_ops" if g.nodes[n.inputs[0]].type.kind != REAL else "real_input_ops"] += c["ops"]
            if side is not None:
                tot[f"{side[n.name][0]}_ops"] += c["ops"]
    return {k: int(v) for k, v in sorted(tot.items())}


def _sides(g: ir.Graph) -> dict[str, tuple[str, str]]:
    """Host / neuromorphic side of every node with the reason (types must be inferred)."""
    side: dict[str, tuple[str, str]] = {}
    order = g.order()
    for n in order:
        t = n.type
        ins = [g.nodes[i].type for i in n.inputs]
        if n.op in ("input", "output"):
            side[n.name] = (HOST, "graph boundary")
        elif not t.per_step:
            side[n.name] = (HOST, "static: computed once per call, outside the time loop")
        elif n.op in ir.NEURON:
            side[n.name] = (NEURO, "spiking neuron")
        elif (n.op in ir.SYNAPTIC or n.op in ir.ROUTING) and all(x.kind != REAL for x in ins):
            side[n.name] = (NEURO, f"{n.op} driven by spikes (synapse / routing)")
        elif n.op == "repeat":
            side[n.name] = (HOST, "repeats a static value over T (host input to the time loop)")
        elif n.op == "tsm_scale":
            side[n.name] = (HOST, "per-step scale of a value (no static synapse can do it)")
        else:
            side[n.name] = (HOST, f"{n.op} on real-valued (analog) data")
    # sums of spike-driven currents (and static biases) that only feed neuromorphic nodes join them:
    # the greatest such set, found by dropping offenders until none is left
    users = {k: g.users(k) for k in g.nodes}
    cand = {n.name for n in order if n.op == "add" and n.type.per_step}
    neuro = lambda k: k in cand or side[k][0] == NEURO  # noqa: E731
    changed = True
    while changed:  # users first (deterministic); a drop on the input side needs another sweep
        changed = False
        for k in [n.name for n in reversed(order) if n.name in cand]:
            ok_in = all(neuro(i) or not g.nodes[i].type.per_step for i in g.nodes[k].inputs)
            ok_out = bool(users[k]) and all(neuro(u) for u in users[k])
            if not (ok_in and ok_out):
                cand.discard(k)
                changed = True
    for k in cand:
        side[k] = (NEURO, "sums synaptic currents into neurons (static operands: neuron bias)")
    readout: set[str] = set()
    for n in order:
        if (
            n.op == "add"
            and n.name not in cand
            and n.type.per_step
            and all(side[i][0] == NEURO or i in readout or not g.nodes[i].type.per_step for i in n.inputs)
        ):
            readout.add(n.name)
            side[n.name] = (HOST, "sum of spike-driven currents read by host ops (the read-out boundary)")
    return side


@register_pass(
    "partition",
    "mark each node host (analog) or neuromorphic (spike-driven), with the reason, into node.meta['partition']",
    writes="partition",
)
def partition(g: ir.Graph) -> dict:
    side = _sides(g)
    for k, (s, why) in side.items():
        g.nodes[k].meta["partition"] = (s, why)
    g.meta["partition"] = {k: list(v) for k, v in side.items()}
    count = Counter(s for s, _ in side.values())
    return {"host": count[HOST], "neuromorphic": count[NEURO]}


def summarize(graph: ir.Graph) -> dict:
    """A JSON-able summary of a graph (the content of ``sdmc inspect``): ops by type, parameters, spike
    layers, static vs per-step work, the host / neuromorphic partition and the pass log."""
    g = ir.check(graph.copy())
    side = _sides(g)
    ops = Counter(n.op for n in g.nodes.values())
    used = g.param_names()
    n_el = sum(int(np.asarray(g.params[k]).size) for k in used)
    n_bytes = sum(int(np.asarray(g.params[k]).nbytes) for k in used)
    spikes = [
        {
            "name": n.name,
            "op": n.op,
            "neurons": math.prod(n.type.shape),
            "shape": list(n.type.shape),
            "threshold": n.threshold,
            "reset": "soft" if n.v_reset is None else f"hard({n.v_reset})",
        }
        for n in g.order()
        if n.op in ir.NEURON
    ]
    nodes_t = Counter(n.type.timing for n in g.nodes.values() if n.op not in ("input", "output"))
    part = Counter(s for s, _ in side.values())
    host_reasons = Counter(why for s, why in side.values() if s == HOST)
    return {
        "T": g.T,
        "source": g.meta.get("source"),
        "model_config": g.meta.get("model_config"),
        "nodes": len(g.nodes),
        "ops": dict(sorted(ops.items())),
        "inputs": [{"name": n.name, "type": str(n.type)} for n in g.input_nodes],
        "outputs": [{"name": n.name, "type": str(n.type)} for n in g.output_nodes],
        "params": {"tensors": len(used), "elements": n_el, "bytes": n_bytes},
        "spike_layers": {"count": len(spikes), "neurons": sum(s["neurons"] for s in spikes), "layers": spikes},
        "timing": {"static_nodes": nodes_t["static"], "per_step_nodes": nodes_t["per-step"]},
        "work_per_call": work_per_call(g, side),
        "partition": {
            "host": part[HOST],
            "neuromorphic": part[NEURO],
            "host_reasons": dict(host_reasons),
            "nodes": {k: list(v) for k, v in side.items()},
        },
        "passes": list(g.meta.get("passes", [])),
    }


def _n(x: int) -> str:
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= f:
            return f"{x / f:.2f}{unit}"
    return str(x)


def format_summary(s: dict) -> str:
    """The readable form of :func:`summarize`'s result."""
    lines = []
    cfg = s.get("model_config") or {}
    desc = ", ".join(f"{k}={cfg[k]}" for k in ("arch", "ch", "ch_mult", "img_size") if k in cfg)
    lines.append(
        f"graph: {s['nodes']} nodes, T={s['T']}"
        + (f", source {s['source']}" if s.get("source") else "")
        + (f" ({desc})" if desc else "")
    )
    lines.append("inputs:  " + "; ".join(f"{i['name']}: {i['type']}" for i in s["inputs"]))
    lines.append("outputs: " + "; ".join(f"{o['name']}: {o['type']}" for o in s["outputs"]))
    p = s["params"]
    lines.append(f"parameters: {p['tensors']} tensors, {_n(p['elements'])} values, {p['bytes'] / 2**20:.2f} MiB")
    lines.append("ops: " + ", ".join(f"{k} {v}" for k, v in sorted(s["ops"].items(), key=lambda kv: -kv[1])))
    sl = s["spike_layers"]
    lines.append(f"spike layers: {sl['count']} ({_n(sl['neurons'])} neurons per sample)")
    for layer in sl["layers"][:4]:
        lines.append(
            f"  {layer['name']}: {layer['op']} {layer['shape']} threshold {layer['threshold']} {layer['reset']}"
        )
    if sl["count"] > 4:
        lines.append(f"  ... {sl['count'] - 4} more")
    tm, w = s["timing"], s["work_per_call"]
    lines.append(f"timing: {tm['static_nodes']} static nodes (run once per call), {tm['per_step_nodes']} per-step")
    lines.append(
        f"work per call (synaptic ops, one sample): static {_n(w.get('static_ops', 0))}, per-step "
        f"{_n(w.get('per_step_ops', 0))}; spike-driven {_n(w.get('spike_driven_ops', 0))}, real-input "
        f"{_n(w.get('real_input_ops', 0))}"
    )
    pt = s["partition"]
    lines.append(
        f"partition: {pt['neuromorphic']} neuromorphic nodes ({_n(w.get('neuromorphic_ops', 0))} ops), "
        f"{pt['host']} host nodes ({_n(w.get('host_ops', 0))} ops)"
    )
    for why, k in sorted(pt["host_reasons"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  host x{k}: {why}")
    lines.append(f"pass log ({len(s['passes'])}):" if s["passes"] else "pass log: none (graph as traced)")
    for e in s["passes"]:
        extra = []
        for key in ("folded", "fused", "hoisted", "removed_nodes", "split", "pushed_through", "rewritten"):
            if key in e and isinstance(e[key], list):
                extra.append(f"{key} {len(e[key])}")
        if "synapses_before" in e:
            b, a = e["synapses_before"], e["synapses_after"]
            extra.append(
                f"synapses spike-driven {_n(b['spike_driven'])} -> {_n(a['spike_driven'])}, "
                f"all {_n(b['all'])} -> {_n(a['all'])}, max fan-in {e['max_projections_per_neuron']}"
            )
        if e.get("not_composed"):
            extra.append(f"not composed {len(e['not_composed'])}")
        if "host" in e and "neuromorphic" in e:
            extra.append(f"host {e['host']}, neuromorphic {e['neuromorphic']}")
        lines.append(
            f"  {e['pass']}: nodes {e['nodes'][0]} -> {e['nodes'][1]}, params {e['params'][0]} -> "
            f"{e['params'][1]}" + (f"; {'; '.join(extra)}" if extra else "")
        )
        for k, why in list((e.get("not_composed") or {}).items())[:3]:
            lines.append(f"    not composed: {k}: {why}")
    return "\n".join(lines) + "\n"
