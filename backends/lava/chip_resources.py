"""Loihi 2 resources of a network, counted from shapes (nothing dense is built): neurons, synapses (distinct
source -> target neuron pairs; padding taps cost nothing), stored weights, fan-in / fan-out, cores and chips.

Per population ``cores = max(ceil(neurons / NEURONS_PER_CORE), ceil(synapses / SYNAPSES_PER_CORE))``; the
limits are Intel's Loihi 2 brief or stated assumptions (below).  :func:`resources` counts a
:class:`~.network.LoihiNet`, :func:`chain_resources` the layers of a :class:`~.network.LoihiChain`.
"""

from __future__ import annotations

import math

import numpy as np

from ... import ir
from ...sim.loihi import conv2d_f64
from .network import LoihiChain, LoihiNet, Projection

# Loihi 2 per-core and per-chip limits used by :func:`resources` (assumptions stated with their source).
CORES_PER_CHIP = 128  # Intel Loihi 2 brief: 128 neuromorphic cores per chip
NEURONS_PER_CHIP = 1_000_000  # Intel Loihi 2 brief: up to 1 M neurons per chip
SYNAPSES_PER_CHIP = 120_000_000  # Intel Loihi 2 brief: up to 120 M synapses per chip
NEURONS_PER_CORE = 8192  # assumption: chip maximum / 128 cores (2^13; the brief's 1 M / 128)
SYNAPSES_PER_CORE = SYNAPSES_PER_CHIP // CORES_PER_CHIP  # assumption: chip maximum spread evenly (937 500)


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


def projection_resources(net: LoihiNet, pr: Projection) -> dict:
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


def resources(net: LoihiNet, graph: ir.Graph | None = None) -> dict:
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
    """The :func:`resources` report as text: totals, the composition blow-up, the ``top`` populations by cores."""
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


def chain_resources(chain: LoihiChain) -> list[dict]:
    """Per layer: ``neurons``, ``weights`` (stored 8-bit mantissas), ``synapses`` (connections: every
    non-padding input/output pair a weight joins), ``max_fan_in`` and the input ``axons`` it reads."""
    shapes = chain.shapes()
    out = []
    for i, L in enumerate(chain.layers):
        n_out, n_in = int(np.prod(shapes[i + 1])), int(np.prod(shapes[i]))
        w = np.asarray(L.weight)
        if L.kind == "conv":
            # connections = sum over output pixels of the in-bounds kernel taps (padding taps cost nothing)
            ones = np.ones((1, shapes[i][0]) + tuple(shapes[i][1:]))
            taps = conv2d_f64(ones, np.ones_like(w, dtype=np.float64), L.stride, L.padding, L.dilation, L.groups)
            synapses, fan_in = int(np.rint(taps.sum())), int(np.rint(taps.max()))
        else:
            synapses, fan_in = int(w.size), int(w.shape[1])
        out.append(
            {
                "layer": L.name or f"layer{i + 1}",
                "kind": L.kind,
                "neurons": n_out,
                "axons": n_in,
                "weights": int(w.size),
                "synapses": synapses,
                "max_fan_in": fan_in,
            }
        )
    return out
