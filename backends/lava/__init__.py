"""Lava / Loihi backend: the Loihi network compiler, its export, and netx HDF5 chains.

    from sdmc.backends.lava import compile_net, run_hybrid, export_dir, load_export
    net, plan, rep = compile_net(unet_graph, calib=inputs)   # IR graph -> LoihiNet + host plan + report
    run_hybrid(net, plan, inputs)                              # host currents -> chip (numpy model / Lava) -> host
    export_dir(net, plan, rep, "out_dir"); load_export("out_dir")
    chain, report = export_netx(graph, "net.h5")              # a sequential chain -> one netx file
    res = run_netx("net.h5", x_int)                            # stock lava.lib.dl.netx in Loihi2SimCfg(fixed_pt)
    res = run_lava_net(loihi_net, {"x": x_int})                # a LoihiNet DAG as raw Lava processes

One module per concept:

- ``network``: the Loihi network IR (number formats, ``Cuba``, chains, ``Source`` / ``Population`` /
  ``Projection`` / ``LoihiNet``, ``check_net``, the timing rules)
- ``extract``: IR graph -> float populations (neuron rules, synapses, TSM mean, outputs)
- ``quantize``: float population -> integer population, one scale each; a chain layer by layer
- ``host_plan``: what the host computes around the chip (graded host currents, the read-out tail)
- ``compiler``: ``compile_net`` (pass pipeline, extraction, quantisation, depth / delay layout)
- ``report``: quantisation and accuracy reports, ``spike_mismatch``, ``rel_error``
- ``hybrid``: ``run_hybrid``, ``run_loihi``, ``check_hybrid``, ``evaluate``, ``torch_reference``
- ``chip_resources``: Loihi 2 neurons, synapses, cores, chips from shapes (``resources``)
- ``netx_segments``: a net split into netx chains (``segments``, main projections)
- ``manifest``: the export directory (``export_dir``, ``check_export``, ``load_export``)
- ``netx_chain``: one netx HDF5 file (``extract_chain``, ``write_netx`` / ``read_netx``, ``export_netx``)
- ``run_netx_chain``: a netx file in stock Lava (``run_netx``)
- ``lava_processes``: a LoihiNet as raw Lava processes (``run_lava_net``)
- ``compat`` / ``install``: making lava-nc 0.10 / lava-dl 0.6 importable on Python 3.11, installing them

The names below load their module on first use (PEP 562), so importing this package imports neither Lava nor
the compiler; ``sdmc.sim.loihi`` (the bit-exact numpy simulator) imports only ``network``.  Install Lava with
``python -m sdmc.backends.lava.install``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "compat": ("LavaUnavailable", "install_import_fixes"),
    "network": ("Cuba", "LoihiChain", "LoihiLayer", "LoihiNet", "Population", "Projection", "Source", "check_net"),
    "extract": ("FloatChain", "FloatPopulation", "FloatProjection"),
    "quantize": ("quantize_chain", "quantize_input", "quantize_population"),
    "host_plan": ("HostCurrent", "HostPlan"),
    "compiler": ("compile_net",),
    "report": ("CompileReport", "LayerQuant", "QuantReport", "rel_error", "spike_mismatch"),
    "hybrid": ("check_hybrid", "run_hybrid", "run_loihi", "torch_reference"),
    "chip_resources": ("format_resources", "resources"),
    "netx_segments": ("segments",),
    "manifest": ("check_export", "export_dir", "load_export"),
    "netx_chain": ("evaluate", "export_netx", "extract_chain", "float_reference", "read_netx", "write_netx"),
    "run_netx_chain": ("LavaRun", "run_netx"),
    "lava_processes": ("LavaNetRun", "run_lava_net"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
