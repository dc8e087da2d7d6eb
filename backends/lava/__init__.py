"""Lava-DL backend: netx HDF5 export of sequential spiking chains, Loihi quantisation, Lava CPU runner.

    from sdmc.backends.lava import export_netx, run_netx
    chain, report = export_netx(graph, "net.h5")          # IR chain -> quantised -> one netx file
    print(report.format())                                 # per-layer scale, weight error, threshold
    res = run_netx("net.h5", x_int)                        # stock lava.lib.dl.netx in Loihi2SimCfg(fixed_pt)
    res = run_lava_net(loihi_net, {"x": x_int})            # a LoihiNet DAG as raw Lava processes
    net, plan, rep = compile_net(unet_graph, calib=inputs)  # spiking UNet -> LoihiNet + host plan (unet.py)
    run_hybrid(net, plan, inputs); export_dir(net, plan, rep, "out_dir"); load_export("out_dir")

Importing this package does not import Lava.  ``compat.install_import_fixes()`` (called by ``run_netx``)
makes lava-nc 0.10 / lava-dl 0.6 importable on Python 3.11; install them with
``python -m sdmc.backends.lava.install``.  The bit-exact numpy model is :mod:`sdmc.sim.loihi`.
"""

from .compat import LavaUnavailable, install_import_fixes
from .export import export_netx, extract_chain, read_netx, write_netx
from .net import LavaNetRun, run_lava_net
from .quantize import FloatChain, FloatLayer, QuantReport, evaluate, float_reference, quantize_chain, quantize_input
from .run import LavaRun, run_netx
from .unet import (
    CompileReport,
    HostPlan,
    check_export,
    compile_net,
    export_dir,
    format_resources,
    load_export,
    resources,
    run_hybrid,
)

__all__ = [
    "LavaUnavailable",
    "install_import_fixes",
    "export_netx",
    "extract_chain",
    "read_netx",
    "write_netx",
    "FloatChain",
    "FloatLayer",
    "QuantReport",
    "evaluate",
    "float_reference",
    "quantize_chain",
    "quantize_input",
    "LavaRun",
    "run_netx",
    "LavaNetRun",
    "run_lava_net",
    "CompileReport",
    "HostPlan",
    "check_export",
    "compile_net",
    "export_dir",
    "format_resources",
    "load_export",
    "resources",
    "run_hybrid",
]
