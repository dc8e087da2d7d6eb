"""The network compiler: an IR graph's spiking core as a :class:`~.network.LoihiNet` plus the host part around it.

:func:`compile_net` takes the graph through the ``neuromorphic`` pass pipeline (fold BN, fuse TSM, hoist static
work, split concat, compose the residual stream, partition), extracts the float populations (:mod:`.extract`),
quantises each (:mod:`.quantize`) and lays the net out in time:

- every neuromorphic neuron (IF; LIF with a leak ``4096 / tau`` that is an integer) is a Population; the
  spike-driven conv / linear synapses into it are Projections; its host terms and a bias too large for
  the 13-bit mantissa are one graded host Source with an ``identity`` projection (:mod:`.host_plan`);
- depth = longest path (sources 0), shorter paths get ``delay`` so ``dst.depth == depth(src) + 1 + delay``;
- populations whose spikes host ops read are ``outputs``; the host tail recomputes from them.

With calibration inputs the :class:`~.report.CompileReport` also holds the accuracy cost
(:func:`.hybrid.evaluate`), including the float output error the mean-TSM approximation alone causes.
Running: :mod:`.hybrid`; export: :mod:`.manifest`; resources: :mod:`.chip_resources`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ... import ir
from ...errors import SdmcError, UnsupportedOpError
from .extract import Extractor, mean_tsm_graph, neuromorphic_graph, output_populations
from .host_plan import HOST_BITS, HostCurrent, HostPlan
from .hybrid import evaluate
from .network import Cuba, LoihiNet, Population, Projection, Source, check_net
from .quantize import quantize_population
from .report import CompileReport


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


def compile_net(
    graph: ir.Graph,
    *,
    tsm: str = "reject",
    calib: Mapping[str, np.ndarray] | None = None,
    pow2: bool = False,
    on_overflow: str = "error",
    host_bits: int = HOST_BITS,
    threshold: float | None = None,
) -> tuple[LoihiNet, HostPlan, CompileReport]:
    """Compile ``graph`` (traced, or already through the ``neuromorphic`` pipeline) for Loihi.

    Returns the integer :class:`~.network.LoihiNet`, the :class:`HostPlan` around it and the
    :class:`CompileReport`.  ``calib`` (graph inputs by name, e.g. ``{"x": x, "t": t}``) fills the report's
    accuracy figures via :func:`.hybrid.evaluate`.  ``threshold``: threshold guidance, every neuron's threshold set
    to this value (in the host graph too, so the float reference uses it as well).
    """
    if tsm not in ("reject", "mean"):
        raise SdmcError(f"compile_net: tsm must be 'reject' or 'mean', got {tsm!r}")
    if on_overflow not in ("error", "rescale"):
        raise SdmcError(f"compile_net: on_overflow must be 'error' or 'rescale', got {on_overflow!r}")
    if not 2 <= int(host_bits) <= 24:
        raise SdmcError(f"compile_net: host_bits must lie in 2..24 (graded message bits), got {host_bits}")
    if threshold is not None and not float(threshold) > 0:
        raise SdmcError(f"compile_net: threshold must be > 0, got {threshold}")
    g = neuromorphic_graph(graph, threshold)
    ex = Extractor(g, tsm)
    fpops = ex.populations()
    if not fpops:
        raise UnsupportedOpError("compile_net: the graph has no neuromorphic neurons (nothing to put on Loihi)")
    names = {fp.name for fp in fpops}
    depth: dict[str, int] = {k: 0 for k in ex.spike_inputs}
    sources = [Source(k, shape, bits=0) for k, shape in ex.spike_inputs.items()]
    pops, projs, currents, qrep = [], [], [], []
    for fp in fpops:
        for pr in fp.projs:
            if pr.src not in names and pr.src not in ex.spike_inputs:
                raise UnsupportedOpError(f"node {pr.node!r}: reads neuron {pr.src!r}, which is not on the chip")
        d = max([depth[pr.src] + 1 for pr in fp.projs] + [1])
        depth[fp.name] = d
        q = quantize_population(fp, pow2=pow2, on_overflow=on_overflow, host_bits=host_bits)
        S, ws, bias_on_host = q.scale, q.weights, q.bias_on_host
        qrep.append(q.report)
        pops.append(Population(fp.name, fp.shape, Cuba(vth=q.theta_int - 1, dv=fp.dv), bias=q.bias, depth=d))
        for pr, w in zip(fp.projs, ws):  # 8-bit mantissas stored as int8 (the full CIFAR-10 UNet: 158 M of them)
            projs.append(
                Projection(
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
        del ws, q
        if fp.host or bias_on_host:
            src = f"{fp.name}.host"
            sources.append(Source(src, fp.shape, bits=host_bits))
            projs.append(Projection(src, fp.name, "identity", delay=d - 1, name=f"{src}.identity"))
            bias = tuple(float(b) for b in np.asarray(fp.bias).reshape(-1)) if bias_on_host else None
            if bias is not None and len(bias) not in (1, fp.shape[0]):
                raise SdmcError(f"population {fp.name!r}: bias of {len(bias)} values does not match {fp.shape}")
            currents.append(HostCurrent(src, fp.name, tuple(fp.host), S * fp.gain, host_bits, bias, tuple(fp.shape)))
    side = {k: v[0] for k, v in g.meta["partition"].items()}
    outputs = output_populations(g, names, side)
    order = {fp.name: i for i, fp in enumerate(fpops)}
    outputs.sort(key=order.get)
    net = LoihiNet(
        tuple(sources),
        tuple(pops),
        tuple(projs),
        tuple(outputs),
        meta={"T": g.T, "scales": {q.name: q.scale for q in qrep}, "thresholds": {fp.name: fp.theta for fp in fpops}},
    )
    check_net(net)
    plan = HostPlan(g, tuple(currents), tuple(outputs), tuple(ex.spike_inputs))
    report = CompileReport(
        qrep,
        tsm_approx=dict(ex.tsm_spread),
        host=_host_description(g, side, currents, outputs),
        passes=list(g.meta.get("passes", [])),
    )
    if calib is not None:
        evaluate(net, plan, report, calib, tsm_graph=mean_tsm_graph(g, ex.tsm_spread) if ex.tsm_spread else None)
    return net, plan, report
