"""``sdmc export`` (the spiking core for Loihi: netx segments + manifest) and ``sdmc sim`` (the model with its
spiking core as Loihi runs it), both through :mod:`sdmc.backends.lava`."""

from __future__ import annotations

import argparse

from ..errors import SdmcError
from . import interop
from .base import (
    Command,
    add_model_args,
    add_out,
    add_seed,
    add_threshold,
    add_user_model,
    count,
    int_range,
    positive_int,
    user_model_graph,
)

EXPORT_BACKENDS = ("lava",) + interop.BACKENDS
LAVA_ONLY = dict(tsm="reject", on_overflow="error", pow2=False, host_bits=16, threshold=None, calib=0, resources=False)


def add_model_file(p: argparse.ArgumentParser) -> None:
    """The model argument of every Loihi command: a checkpoint (traced) or a ``.sdmc`` graph."""
    p.add_argument(
        "model",
        help="released .pt / native .safetensors model, a .sdmc graph or a .nir graph; with --model: the weights "
        "of that class",
    )
    add_model_args(p, img_size=True)
    add_user_model(p)


def add_compile_options(p: argparse.ArgumentParser) -> None:
    """The options of :func:`sdmc.backends.lava.compiler.compile_net` and of the check inputs."""
    p.add_argument(
        "--tsm",
        choices=["reject", "mean"],
        default="reject",
        help="SDM per-step (TSM) conv scales on the chip: reject (default) or approximate by the mean",
    )
    p.add_argument(
        "--on-overflow",
        choices=["error", "rescale"],
        default="error",
        help="a population whose worst per-step current overflows Loihi's 24-bit state: fail or rescale",
    )
    p.add_argument("--pow2", action="store_true", help="power-of-two population scales")
    p.add_argument(
        "--host-bits", type=int_range(2, 24), default=16, help="bits of the graded host currents, 2..24 (default 16)"
    )
    add_threshold(p)
    p.add_argument("--t", type=count, default=500, dest="step", help="diffusion step of the check inputs (default 500)")
    add_seed(p, help="seed of the check inputs (default 0)")


def compile_options(args: argparse.Namespace) -> dict:
    return dict(
        tsm=args.tsm, pow2=args.pow2, on_overflow=args.on_overflow, host_bits=args.host_bits, threshold=args.threshold
    )


def load_graph(args: argparse.Namespace):
    """A ``.sdmc`` graph (checked), an imported ``.nir`` graph, the traced checkpoint ``args.model``, or with
    ``--model`` the user's class loaded with its weights and traced."""
    from pathlib import Path

    from .. import ir

    graph = user_model_graph(args, args.model)
    if graph is not None:
        return graph
    path = Path(args.model)
    if path.suffix == ".sdmc" or (path / "graph.json").is_file():
        return ir.check(ir.load(path))
    if interop.is_nir(path):
        return interop.load_nir(path, args)
    from ..frontends import from_checkpoint

    # args.model as given: from_checkpoint resolves 'bundled:NAME' only from the string
    return from_checkpoint(
        args.model, weights=args.weights, snn_steps=args.snn_steps, img_size=args.img_size, unsafe=args.unsafe_load
    )


# ---------------------------------------------------------------------------------------------- export
def add_export_arguments(p: argparse.ArgumentParser) -> None:
    add_model_file(p)
    add_compile_options(p)
    p.add_argument(
        "--backend",
        default="lava",
        choices=EXPORT_BACKENDS,
        help="lava (default): netx segments + manifest; onnx: a .onnx file; nir: a .nir file",
    )
    add_out(
        p,
        "export directory (lava; replaced whole, atomically) or file (onnx, nir; written atomically, over an existing file "
        "only if sdmc wrote it, else with --force)",
        required=True,
    )
    p.add_argument(
        "--calib",
        type=count,
        default=0,
        metavar="N",
        help="report the accuracy cost on N noised inputs (spike mismatch, output error; 0: skip)",
    )
    p.add_argument("--resources", action="store_true", help="also print the Loihi 2 resource report")
    interop.add_interop_options(p, t=False)


def run_export(args: argparse.Namespace) -> int:
    if args.backend in interop.BACKENDS:
        interop.refuse_lava_options(args, LAVA_ONLY)
        interop.check_out(args, [args.model])
        print(interop.write(load_graph(args), args, pipeline="inference", inputs=[args.model]))
        return 0
    from ..backends import lava
    from ..sim.inputs import noised_inputs
    from ..utils import check_replaceable

    check_replaceable(args.out, force=args.force, protect=[args.model])  # before the work
    graph = load_graph(args)
    calib = noised_inputs(graph, args.calib, args.step, args.seed) if args.calib > 0 else None
    net, plan, report = lava.compile_net(graph, calib=calib, **compile_options(args))
    res = lava.resources(net, plan.graph)
    out = lava.export_dir(net, plan, report, args.out, resources=res, force=args.force, protect=[args.model])
    print(report.format())
    if args.resources:
        print(lava.format_resources(res))
    t = res["totals"]
    print(
        f"wrote {out}: {t['populations']} populations, {t['projections']} projections, {t['sources']} sources, "
        f"depth {t['depth']}, {len(lava.segments(net))} netx segment(s), T={graph.T}"
    )
    return 0


# ------------------------------------------------------------------------------------------------- sim
def add_sim_arguments(p: argparse.ArgumentParser) -> None:
    add_model_file(p)
    add_compile_options(p)
    p.add_argument(
        "--target",
        default="loihi",
        choices=["loihi", "golden"],
        help="loihi (default): the hybrid host/chip run; golden: the float64 golden simulator alone (any graph: "
        "classifiers with pooling too), checked against the torch executor",
    )
    p.add_argument("--lava", action="store_true", help="run the spiking core in Lava (needs lava-nc / lava-dl)")
    p.add_argument("--samples", type=positive_int, default=1, help="number of noised input images (default 1)")
    interop.add_dt(p)


SIM_LOIHI_ONLY = dict(tsm="reject", on_overflow="error", pow2=False, host_bits=16, lava=False)


def run_sim(args: argparse.Namespace) -> int:
    import numpy as np

    from ..backends import lava
    from ..sim.inputs import noised_inputs

    if args.target == "golden":
        return run_golden(args)
    graph = load_graph(args)
    net, plan, report = lava.compile_net(graph, **compile_options(args))
    inputs = noised_inputs(plan.graph, args.samples, args.step, args.seed)
    pops = [p.name for p in net.populations]
    chk = lava.check_hybrid(net, plan, inputs, lava=args.lava)
    hy, ref, mism, wall = chk["hybrid"], chk["golden"], chk["spike_mismatch"], chk["seconds"]
    where = "Lava (Loihi2SimCfg fixed_pt)" if args.lava else "numpy Loihi model"
    print(
        f"{len(pops)} populations, {len(net.projections)} projections, depth {net.max_depth}; "
        f"{args.samples} sample(s) at t={args.step}, T={graph.T}, in {where}: {wall:.2f} s "
        f"({wall / args.samples:.2f} s/sample)"
    )
    if args.lava:
        print(
            "Lava wall times (s): "
            + ", ".join(f"{k} {v:.2f}" for k, v in hy["times"].items())
            + " (first_run: compile + first sample; run: the other samples)"
        )
    tref = lava.torch_reference(graph, inputs, threshold=args.threshold)
    for o in (n.name for n in plan.graph.output_nodes):
        print(
            f"output {o}: relative error vs float golden {chk['output_error'][o]:.4g}, vs "
            f"torch executor (float64) {lava.rel_error(hy['outputs'][o], tref[o]):.4g}; torch executor vs float "
            f"golden {lava.rel_error(tref[o], ref[o]):.3g}"
        )
    worst = sorted(mism.items(), key=lambda kv: -kv[1])[:5]
    print(
        f"spike mismatch vs float golden: mean {np.mean(list(mism.values())):.4f}; worst "
        + ", ".join(f"{k} {v:.4f}" for k, v in worst)
    )
    clip = max(hy["host_clip"].values(), default=0.0)
    print(f"host currents clipped: {100 * clip:.3f}% at most")
    if args.lava:
        ints, _ = plan.quantize_currents(plan.float_currents(inputs, args.samples))
        ints.update({k: (np.asarray(inputs[k]) != 0).astype(np.int64) for k in plan.spike_inputs})
        model, _ = lava.run_loihi(net, ints, graph.T, probe=pops)
        same = all(np.array_equal(model[p], hy["spikes"][p]) for p in pops)
        print(f"Lava spikes identical to the numpy Loihi model in all {len(pops)} populations: {same}")
        return 0 if same else 1
    return 0


def run_golden(args: argparse.Namespace) -> int:
    """``sdmc sim --target golden``: the graph in the float64 golden simulator (:mod:`sdmc.sim.golden`) on
    ``--samples`` check inputs (:func:`sdmc.sim.inputs.noised_inputs`: noised images at ``--t`` for a denoiser,
    random spikes / values otherwise), its outputs against the compiled torch executor (float64) and the
    firing rate of every neuron layer."""
    import time

    import numpy as np

    from .. import ir
    from ..backends import lava
    from ..backends.lava.extract import with_threshold
    from ..sim import golden
    from ..sim.inputs import noised_inputs

    given = [f"--{k.replace('_', '-')}" for k, v in SIM_LOIHI_ONLY.items() if getattr(args, k) != v]
    if given:
        raise SdmcError(f"{', '.join(given)}: only for --target loihi")
    graph = load_graph(args)
    run_graph = with_threshold(graph, args.threshold) if args.threshold is not None else graph
    inputs = noised_inputs(graph, args.samples, args.step, args.seed)
    t0 = time.perf_counter()
    vals = golden.run(run_graph, inputs, all_values=True)
    wall = time.perf_counter() - t0
    neurons = [n.name for n in run_graph if n.op in ir.NEURON_OPS]
    denoiser = any(n.type.dtype.startswith("int") for n in graph.input_nodes)
    what = f"noised images at t={args.step}" if denoiser else "random inputs"
    print(
        f"golden simulator (float64): {len(graph.nodes)} nodes, {len(neurons)} neuron layers; {args.samples} "
        f"sample(s) ({what}), T={graph.T}: {wall:.2f} s"
    )
    tref = lava.torch_reference(graph, inputs, threshold=args.threshold)
    for o in run_graph.output_nodes:
        y = vals[o.name]
        print(
            f"output {o.name} {list(y.shape)}: mean {float(np.mean(y)):.4g}, std {float(np.std(y)):.4g}; "
            f"torch executor (float64) vs golden relative error {lava.rel_error(tref[o.name], y):.3g}"
        )
    if neurons:
        rates = {k: float(np.abs(vals[k]).mean()) for k in neurons}
        order = sorted(rates, key=rates.get)
        print(
            f"firing rates: mean {np.mean(list(rates.values())):.4f}; lowest "
            + ", ".join(f"{k} {rates[k]:.4f}" for k in order[:3])
            + "; highest "
            + ", ".join(f"{k} {rates[k]:.4f}" for k in order[::-1][:3])
        )
    return 0


EXPORT = Command(
    "export",
    "export the spiking core for Loihi (Lava): netx segments + manifest",
    add_export_arguments,
    run_export,
    description="Compile the model's spiking UNet into a LoihiNet (populations, projections, "
    "delays, graded host currents), quantise it per population and write an export "
    "directory: manifest.json, netx HDF5 segments, projections.h5, graph.sdmc.",
)
SIM = Command(
    "sim",
    "simulate the model with its spiking core as Loihi runs it (hybrid host/chip), or in the golden simulator",
    add_sim_arguments,
    run_sim,
    description="Host parts in numpy (golden), the spiking core in the bit-exact Loihi model "
    "(default) or Lava's CPU simulation (--lava); reports the mismatch against "
    "the float golden simulator and the torch backend (compiled executor, float64).  --target golden: "
    "the float64 golden simulator alone, checked against the torch executor.",
)
