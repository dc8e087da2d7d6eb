"""``sdmc energy``: synaptic operations, firing rates and energy per call / step / image (:mod:`sdmc.energy`)."""

from __future__ import annotations

import argparse

from ..errors import SdmcError
from . import interop
from .base import (
    Command,
    add_device,
    add_model_args,
    add_seed,
    add_solver,
    add_threshold,
    add_user_model,
    check_device,
    positive_int,
    probability,
    user_model_graph,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file",
        help="released .pt, native .safetensors, a compiled .sdmc graph or a .nir graph (imported); with --model: "
        "that class's weights",
    )
    p.add_argument("--report", action="store_true", help="print the full report (the default)")
    p.add_argument(
        "--data",
        default=None,
        help="calibrate on this dataset's images noised to the solver's steps instead of measuring the "
        "sampling trajectories (e.g. digits, cifar10; 'noise': random images); a dataset whose images "
        "do not fit the model falls back to the trajectories, with a note",
    )
    p.add_argument(
        "--assume-rate",
        type=probability,
        help="skip measuring: every input fires with this probability (what-if, e.g. 0.47)",
    )
    p.add_argument("--data-root", help="where the dataset lies")
    p.add_argument(
        "--images",
        type=positive_int,
        default=None,
        help="trajectories measured (default: 8; each costs NFE model calls), or with --data calibration "
        "images (default: 32)",
    )
    p.add_argument(
        "--calib-steps",
        type=positive_int,
        default=8,
        help="with --data: diffusion steps measured, evenly picked from the solver's grid (default: 8)",
    )
    add_solver(p, steps=50)
    p.add_argument(
        "--profile",
        default="45nm-fp32",
        help="45nm-fp32 (default), 45nm-fp16, 45nm-int8, loihi1, or a JSON profile file",
    )
    p.add_argument("--convention", choices=["paper", "faithful", "both"], default="both")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON instead of tables")
    fmt.add_argument("--markdown", action="store_true", help="print Markdown")
    fmt.add_argument("--csv", action="store_true", help="print the per-layer CSV")
    p.add_argument("-o", "--out", help="write the chosen format (JSON by default) to this file instead")
    p.add_argument("--plot", help="save per-layer energy and firing rates as a PNG")
    p.add_argument("--no-layers", action="store_true", help="terminal report without the per-layer table")
    add_model_args(p)
    interop.add_dt(p)
    add_user_model(p)
    add_threshold(p)
    p.add_argument("--batch-size", type=positive_int, default=32, help="calibration batch (default 32)")
    add_seed(p)
    add_device(p, default="cpu")


def run(args: argparse.Namespace) -> int:
    from ..energy import analyze
    from ..models.bundled import resolve
    from ..utils import refuse_input_as_output

    device = check_device(args.device)
    for out in (args.out, args.plot):
        if out is not None:
            refuse_input_as_output(out, [args.file])
    opts = dict(
        data=args.data,
        data_root=args.data_root,
        solver=args.solver,
        steps=args.steps,
        n_images=args.images,
        calib_steps=args.calib_steps,
        profile=args.profile,
        batch_size=args.batch_size,
        seed=args.seed,
        assume_rate=args.assume_rate,
        threshold=args.threshold,
    )
    path = resolve(args.file)
    if not path.exists():
        raise SdmcError(f"{args.file}: no such file")
    graph = user_model_graph(args, args.file)
    if graph is not None:
        if args.threshold is not None:
            raise SdmcError("--threshold: not with --model (set the class's thresholds through --model-args)")
        report = analyze(graph, **opts)
    elif path.suffix == ".sdmc" or path.is_dir() or interop.is_nir(path):
        from ..ir import load

        if args.threshold is not None:
            raise SdmcError("--threshold applies to checkpoints; recompile the graph with the threshold")
        report = analyze(interop.load_nir(path, args) if interop.is_nir(path) else load(path), **opts)
    else:
        from ..checkpoint import load_model

        model, cfg = load_model(
            path, weights=args.weights, snn_steps=args.snn_steps, device=device, unsafe=args.unsafe_load
        )
        report = analyze(model, diffusion=cfg.diffusion, **opts)
    report.conventions = ["paper", "faithful"] if args.convention == "both" else [args.convention]
    fmt = "json" if args.json else "markdown" if args.markdown else "csv" if args.csv else None
    if args.out:
        report.write(args.out, fmt or "json")
        print(f"wrote {args.out}")
    elif fmt == "json":
        print(report.to_json())
    elif fmt == "markdown":
        print(report.to_markdown())
    elif fmt == "csv":
        print(report.to_csv(), end="")
    else:
        report.print(layers=not args.no_layers)
    if args.plot:
        report.plot(args.plot)
        print(f"wrote {args.plot}")
    return 0


ENERGY = Command(
    "energy",
    "synaptic operations, firing rates and energy per call / step / image",
    add_arguments,
    run,
    description="Measure firing rates along the model's own sampling trajectories (the solver run from "
    "noise, every call recorded: no dataset needed; per image = the exact sum over the calls) or, with "
    "--data, on dataset images noised to the steps the solver visits; count MACs and exact SOPs per layer "
    "from the IR, and report energy under SDM's Eq. 20 ('paper') and a faithful convention, next to the "
    "ANN UNet of the same width.",
)
