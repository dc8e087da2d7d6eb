"""Hybrid run: host currents -> LoihiNet -> host tail, and its accuracy against the float model.

:func:`run_hybrid` computes the host current terms with the golden interpreter and quantises them
(:class:`~.host_plan.HostPlan`), runs the LoihiNet (the bit-exact numpy model :func:`sdmc.sim.loihi.run_net`,
or Lava's CPU simulation :func:`.lava_processes.run_lava_net`) and reads the output populations' spikes into
the host tail.  :func:`check_hybrid` compares a run with the golden simulator; :func:`evaluate` fills a :class:`~.report.CompileReport` with the accuracy cost on inputs;
:func:`torch_reference` is the torch backend's float answer the Loihi run is compared with.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from ... import ir
from ...errors import SdmcError
from ...sim import golden
from ...sim import loihi as sim
from .extract import mean_tsm_graph, with_threshold
from .host_plan import HostPlan
from .lava_processes import run_lava_net
from .network import ACT_SHIFT, LoihiNet, aligned_net_spikes
from .report import CompileReport, rel_error, spike_mismatch

TSM_PER_NODE_MAX = 64  # evaluate() measures each TSM node's own output error up to this many nodes


def _batch(inputs: Mapping[str, np.ndarray], g: ir.Graph) -> int:
    n = g.input_nodes[0]
    a = np.asarray(inputs[n.name])
    return int(a.shape[1] if n.type.per_step else a.shape[0])


def run_loihi(
    net: LoihiNet,
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
    (:func:`.lava_processes.run_lava_net`), else the bit-exact numpy model (:func:`sdmc.sim.loihi.run_net`)."""
    if lava:
        res = run_lava_net(net, dict(currents), probe=None if probe is None else tuple(probe))
        return {k: np.asarray(v).astype(bool) for k, v in res.spikes.items()}, dict(res.times)
    t0 = time.perf_counter()
    res = sim.run_net(net, dict(currents), record_v=ranges)
    spikes = aligned_net_spikes(res, net, T)
    keep = spikes.keys() if probe is None else probe
    info: dict = {"run": time.perf_counter() - t0}
    if ranges:
        info["max_abs_v"] = {
            p.name: int(np.abs(res["v"][p.name][p.depth :]).max()) >> ACT_SHIFT for p in net.populations
        }
        info["max_current"] = dict(res["max_current"])
    return {k: np.asarray(spikes[k]).astype(bool) for k in keep}, info


def run_hybrid(
    net: LoihiNet,
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


def check_hybrid(
    net: LoihiNet,
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
    ``inputs`` (graph inputs by name), with threshold guidance applied as :func:`.compiler.compile_net` does: the
    torch backend's answer the Loihi run is compared with.  ``graph``: the traced graph (the executor runs
    its own ``inference`` pipeline)."""
    import torch

    from ..torch import compile_torch

    if threshold is not None:
        graph = with_threshold(graph, threshold)
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
    net: LoihiNet,
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
        by[p].record_spikes(ref[p], hy["spikes"][p])
    outs = [n.name for n in g.output_nodes]
    report.output_error = max(rel_error(hy["outputs"][o], ref[o]) for o in outs)
    report.host_clip = hy["host_clip"]
    if tsm_graph is not None:
        approx = golden.run(tsm_graph, dict(inputs))
        report.tsm_error = max(rel_error(approx[o], ref[o]) for o in outs)
        if len(report.tsm_approx) <= TSM_PER_NODE_MAX:
            for k in report.tsm_approx:
                one = golden.run(mean_tsm_graph(g, {k: 0.0}), dict(inputs))
                report.tsm_node_error[k] = max(rel_error(one[o], ref[o]) for o in outs)
    return report
