"""The ``sdmc`` command line.

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its arguments and ``cmd_<name>(args)``
runs it.  Errors derived from :class:`sdmc.errors.SdmcError` print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from . import __version__
from .errors import SdmcError

COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def command(name: str):
    def deco(fn):
        COMMANDS[name] = fn
        return fn

    return deco


def _not_yet(name: str, issue: str):
    def run(args: argparse.Namespace) -> int:
        print(f"sdmc {name}: not implemented yet ({issue})", file=sys.stderr)
        return 2

    return run


# ----------------------------------------------------------------------------------------------- info
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="describe a checkpoint: architecture (inferred), parameters, provenance")
    p.add_argument("file", help="released .pt checkpoint or native .safetensors model")
    p.add_argument(
        "--weights",
        choices=["auto", "net", "ema"],
        default="auto",
        help="which weights of a training checkpoint to describe (default: ema if present)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument(
        "--unsafe-load",
        action="store_true",
        help="allow unpickling arbitrary Python objects (only for files you trust)",
    )


@command("info")
def cmd_info(args: argparse.Namespace) -> int:
    from .checkpoint import describe

    print(describe(args.file, weights=args.weights, as_json=args.json, unsafe=args.unsafe_load))
    return 0


# -------------------------------------------------------------------------------------------- inherit
def _add_inherit_tsm(sub) -> None:
    p = sub.add_parser("inherit-tsm", help="SDDPM -> SDM: copy conv weights into TSM convs (p = 1)")
    p.add_argument("file", help="SDDPM checkpoint")
    p.add_argument("-o", "--out", required=True, help="output native model (.safetensors)")
    p.add_argument("--snn-steps", type=int, default=None, help="SNN steps T of the SDDPM model if not recorded")


@command("inherit-tsm")
def cmd_inherit_tsm(args: argparse.Namespace) -> int:
    from .checkpoint import inherit_tsm_file

    cfg = inherit_tsm_file(args.file, args.out, snn_steps=args.snn_steps)
    print(
        f"wrote {args.out}: SDM TSM UNet, T={cfg.model.snn_steps}, ch={cfg.model.ch}, "
        f"ch_mult={list(cfg.model.ch_mult)} (every p initialised to 1)"
    )
    return 0


# ---------------------------------------------------------------------------------- compile / inspect
def _add_compile(sub) -> None:
    p = sub.add_parser(
        "compile",
        help="trace a model into the spiking IR, run passes, write a backend artefact",
        description="Trace a released .pt or native .safetensors model with the torch.fx frontend, "
        "run IR passes (checked after each), and save the .sdmc graph (--backend ir).",
    )
    p.add_argument("file", help="released .pt checkpoint or native .safetensors model")
    p.add_argument(
        "--backend",
        default="ir",
        choices=["ir", "torch", "lava", "onnx", "nir"],
        help="what to produce (default: ir, the .sdmc graph)",
    )
    p.add_argument(
        "-o",
        "--out",
        required=True,
        help="output .sdmc zip (a directory if the name does not end in .sdmc); --backend torch writes "
        "the graph the torch executor runs (sdmc.backends.torch_exec.load_compiled reads it)",
    )
    p.add_argument(
        "--passes",
        default="inference",
        help="pipeline (inference, neuromorphic) or comma-separated pass names; 'none' for the raw "
        "trace; with --backend torch the executor mode: inference (default) or train",
    )
    p.add_argument("--snn-steps", type=int, default=None, help="SNN steps T if the file does not record them")
    p.add_argument("--img-size", type=int, default=None, help="image size to trace at (default: the model's)")
    p.add_argument(
        "--weights",
        choices=["auto", "net", "ema"],
        default="auto",
        help="which weights of a training checkpoint (default: ema if present)",
    )


@command("compile")
def cmd_compile(args: argparse.Namespace) -> int:
    import importlib.util

    if args.backend == "torch" and importlib.util.find_spec("sdmc.backends.torch_exec") is None:
        raise SdmcError(
            "--backend torch: not available yet (sdmc.backends.torch_exec is not in this build); "
            "use --backend ir to write the .sdmc graph"
        )
    if args.backend not in ("ir", "torch"):
        raise SdmcError(f"--backend {args.backend}: not available in 'sdmc compile' yet; use --backend ir (or torch)")
    from . import ir, passes
    from .frontends import from_checkpoint

    if args.backend == "torch":
        if args.passes not in ("inference", "train"):
            raise SdmcError(
                f"--backend torch: --passes must be 'inference' or 'train' (the executor's mode), got {args.passes!r}"
            )
        names = [args.passes]
    else:
        names = [] if args.passes.strip().lower() == "none" else passes.resolve(args.passes)
    graph = from_checkpoint(args.file, weights=args.weights, snn_steps=args.snn_steps, img_size=args.img_size)
    if args.backend == "torch":
        from .backends.torch_exec import save_compiled

        out = save_compiled(args.out, graph, mode=args.passes)
        graph = ir.load(out)
    else:
        graph = passes.run(graph, names)
        out = ir.save(ir.check(graph), args.out)
    print(
        f"wrote {out}: {len(graph.nodes)} nodes, {len(graph.params)} parameters, T={graph.T}, "
        f"backend {args.backend}, passes: {', '.join(e['pass'] for e in graph.meta.get('passes', [])) or 'none'}"
    )
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="summarise a compiled .sdmc graph: ops, parameters, spike layers, "
        "static vs per-step work, host/neuromorphic partition, pass log",
    )
    p.add_argument("file", help=".sdmc zip (or graph directory) written by 'sdmc compile'")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--nodes", action="store_true", help="with --json: include the per-node partition")


@command("inspect")
def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from . import ir
    from .passes import format_summary, summarize

    s = summarize(ir.load(args.file))
    if args.json:
        if not args.nodes:
            s["partition"].pop("nodes")
        print(json.dumps(s, indent=1))
    else:
        print(format_summary(s), end="")
    return 0


# ----------------------------------------------------------------------------------------------- demo
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the bundled digits data (CPU, minutes)")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for tests): 30 training steps")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the digits preset's)")
    p.add_argument("-n", "--n-samples", type=int, default=None, help="samples per solver (default 256)")
    p.add_argument(
        "--convert-steps",
        type=int,
        default=None,
        help="training steps of the convert stage's quantised ANN (default: --steps if given, else 300; "
        "20 with --quick)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    from .pipeline import run_demo

    run_demo(
        args.out,
        quick=args.quick,
        device=args.device,
        seed=args.seed,
        steps=args.steps,
        n_samples=args.n_samples,
        convert_steps=args.convert_steps,
    )
    return 0


# ---------------------------------------------------------------------------------------------- train
def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a spiking diffusion model (presets; torchrun for many GPUs)",
        description="Train (or resume, or TSM-fine-tune) a diffusion model. Every preset field can be "
        "overridden; unset options keep the preset's value. Many GPUs: torchrun "
        "--nproc_per_node=K -m sdmc train ... (DistributedDataParallel).",
    )
    p.add_argument("--preset", default="digits", help="named settings (see --list-presets; default: digits)")
    p.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    g = p.add_argument_group("run")
    g.add_argument("--out", help="output folder (default: runs/PRESET)")
    g.add_argument("--steps", type=int, help="total optimiser steps")
    g.add_argument(
        "--batch-size", type=int, help="GLOBAL batch over all ranks; each of K ranks takes batch/K (must divide)"
    )
    g.add_argument("--lr", type=float)
    g.add_argument("--warmup", type=int, help="linear learning-rate warm-up steps (0: none)")
    g.add_argument("--grad-clip", type=float)
    g.add_argument("--ema-decay", type=float)
    g.add_argument("--no-ema", dest="ema", action="store_const", const=False, help="no EMA (the papers' SNN runs)")
    g.add_argument(
        "--no-ema-warmup",
        dest="ema_warmup",
        action="store_const",
        const=False,
        help="use the full EMA decay from step 0",
    )
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    g.add_argument("--resume", help="auto (default: newest checkpoint in --out), never, or a checkpoint path")
    g.add_argument("--keep-last", type=int, help="training checkpoints to keep")
    g.add_argument("--log-every", type=int)
    g.add_argument("--save-every", type=int)
    g.add_argument("--sample-every", type=int)
    g.add_argument("--sample-n", type=int, help="images per sample grid (0: none)")
    g.add_argument("--sample-steps", type=int, help="DDIM steps for the sample grids")
    g.add_argument("--tensorboard", dest="tensorboard", action="store_const", const=True)
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_const", const=False)
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False)
    g.add_argument(
        "--eager",
        action="store_const",
        const=True,
        help="train the plain spikingjelly model instead of the compiled torch executor (default)",
    )
    g.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: torch's); a CPU run is bit-for-bit reproducible for a given seed and thread count",
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="digits, cifar10, mnist, fashion-mnist, celeba64, folder:PATH")
    g.add_argument("--data-root", help="where the dataset lies (torchvision layout)")
    g.add_argument("--download", action="store_const", const=True, help="allow downloading the dataset")
    g.add_argument("--num-workers", type=int)
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=["sddpm", "sdm", "ann", "qann"])
    g.add_argument("--ch", type=int)
    g.add_argument("--ch-mult", type=_int_list, help="e.g. 1,2,2,4")
    g.add_argument("--num-res-blocks", type=int)
    g.add_argument("--snn-steps", type=int, help="SNN time steps T")
    g.add_argument("--img-size", type=int)
    g.add_argument("--threshold", type=float)
    g.add_argument("--neuron", choices=["if", "lif"])
    g.add_argument("--dropout", type=float)
    g.add_argument("--init-from", help="start from this model's weights (its architecture wins)")
    g.add_argument("--init-weights", choices=["auto", "net", "ema"])
    g.add_argument(
        "--tsm",
        action="store_const",
        const=True,
        help="with --init-from SDDPM: inherit into an SDM TSM model (p = 1) and fine-tune",
    )
    g = p.add_argument_group("diffusion")
    g.add_argument("--schedule", choices=["linear", "cosine"])
    g.add_argument("--mean-type", choices=["epsilon", "x0", "v"])
    g.add_argument("--num-timesteps", type=int)
    g.add_argument("--beta-1", type=float)
    g.add_argument("--beta-T", dest="beta_T", type=float)


_TRAIN_OPTS = (
    "threads",
    "out",
    "steps",
    "batch_size",
    "lr",
    "warmup",
    "grad_clip",
    "ema_decay",
    "ema",
    "ema_warmup",
    "seed",
    "device",
    "resume",
    "keep_last",
    "log_every",
    "save_every",
    "sample_every",
    "sample_n",
    "sample_steps",
    "tensorboard",
    "progress",
    "dataset",
    "data_root",
    "download",
    "num_workers",
    "arch",
    "ch",
    "ch_mult",
    "num_res_blocks",
    "snn_steps",
    "img_size",
    "threshold",
    "neuron",
    "dropout",
    "init_from",
    "init_weights",
    "tsm",
    "schedule",
    "mean_type",
    "num_timesteps",
    "beta_1",
    "beta_T",
    "eager",
)


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    from .diffusion.presets import describe_presets

    if args.list_presets:
        print(describe_presets())
        return 0
    from .diffusion.train import make_config, train

    cfg = make_config(args.preset, **{k: getattr(args, k) for k in _TRAIN_OPTS})
    print(train(cfg))
    return 0


# ----------------------------------------------------------------------------------------------- eval
def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="FID / IS / digits-FID of saved samples or of a model's samples (torchrun for many GPUs)",
        description="Either sdmc eval --samples samples.npz --ref digits|cifar10.train.npz|DATASET, or "
        "sdmc eval model.pt --solver ddim --steps 50 -n 1000 --metric digits-fid. Metrics: "
        "digits-fid, digits-is (offline, shipped classifier), fid, is (TF-Inception weights: "
        "--inception-weights PATH, $SDMC_INCEPTION_WEIGHTS or --download). Many GPUs: torchrun "
        "--nproc_per_node=K -m sdmc eval ... (features all-gathered; rank 0 prints).",
    )
    p.add_argument("model", nargs="?", help="checkpoint to sample from (.pt or native .safetensors)")
    p.add_argument("--samples", help="evaluate saved images instead (.npz/.npy; uint8 NHWC or float [-1,1] NCHW)")
    p.add_argument("--ref", help="reference: digits, a mu/sigma .npz (cifar10.train.npz) or a dataset name")
    p.add_argument(
        "--metric",
        action="append",
        help="digits-fid, digits-is, fid, is (comma list or repeated; default: digits metrics for "
        "digits data and gray images without --ref, else fid,is)",
    )
    p.add_argument(
        "-n",
        "--num",
        type=int,
        default=None,
        help="images to sample per seed (default: 256 for digits metrics, whose real-data floor exists up to "
        "360 images; else 1000)",
    )
    p.add_argument("--solver", default="ddim", help="sampling solver (default ddim)")
    p.add_argument("--steps", type=int, default=50, help="solver steps (default 50)")
    p.add_argument("--batch-size", type=int, default=100, help="images per batch and rank (default 100)")
    p.add_argument("--seed", type=int, default=0, help="first sampling seed (default 0)")
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="sampling seeds SEED, SEED+1, ...: the report gives mean ± std over them (default: 3 for digits "
        "metrics, else 1)",
    )
    p.add_argument("--weights", choices=["auto", "net", "ema"], default="auto")
    p.add_argument("--snn-steps", type=int, help="SNN time steps T when the checkpoint does not record it")
    p.add_argument("--threshold", type=float, help="threshold guidance: every IF threshold becomes this")
    p.add_argument("--save-samples", help="also write the sampled images here (.npz, uint8; the first seed's)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--inception-weights", help="local pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--download", action="store_true", help="allow downloading the Inception weights")
    p.add_argument("--splits", type=int, default=10, help="Inception Score splits (default 10)")
    p.add_argument("--data-root", help="where a --ref dataset lies")
    p.add_argument("--ref-limit", type=int, help="use at most this many dataset images for the reference")
    p.add_argument("--save-ref", help="write the reference statistics computed from a dataset (.npz)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


@command("eval")
def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .metrics.evaluate import EvalOptions, eval_model_file, eval_samples_file

    if bool(args.model) == bool(args.samples):
        raise SdmcError("give either a model checkpoint or --samples FILE (exactly one)")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    opts = EvalOptions(
        ref=args.ref,
        inception_weights=args.inception_weights,
        download=args.download,
        splits=args.splits,
        data_root=args.data_root,
        ref_limit=args.ref_limit,
        save_ref=args.save_ref,
        device=device,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    if args.samples:
        report = eval_samples_file(args.samples, args.metric, opts, log=log)
    else:
        report = eval_model_file(
            args.model,
            args.num,
            args.metric,
            opts,
            solver=args.solver,
            steps=args.steps,
            seed=args.seed,
            n_seeds=args.seeds,
            weights=args.weights,
            snn_steps=args.snn_steps,
            threshold=args.threshold,
            save_samples_to=args.save_samples,
            log=log,
        )
    if report is not None:  # rank 0
        print(report.to_json() if args.json else report.line())
    return 0


# --------------------------------------------------------------------------------------------- energy
def _add_energy(sub) -> None:
    p = sub.add_parser(
        "energy",
        help="synaptic operations, firing rates and energy per call / step / image",
        description="Measure firing rates along the model's own sampling trajectories (the solver run from "
        "noise, every call recorded: no dataset needed; per image = the exact sum over the calls) or, with "
        "--data, on dataset images noised to the steps the solver visits; count MACs and exact SOPs per layer "
        "from the IR, and report energy under SDM's Eq. 20 ('paper') and a faithful convention, next to the "
        "ANN UNet of the same width.",
    )
    p.add_argument("file", help="released .pt, native .safetensors, or a compiled .sdmc graph")
    p.add_argument("--report", action="store_true", help="print the full report (the default)")
    p.add_argument(
        "--data",
        default=None,
        help="calibrate on this dataset's images noised to the solver's steps instead of measuring the "
        "sampling trajectories (e.g. digits, cifar10; 'noise': random images); a dataset whose images "
        "do not fit the model falls back to the trajectories, with a note",
    )
    p.add_argument(
        "--assume-rate", type=float, help="skip measuring: every input fires with this probability (what-if, e.g. 0.47)"
    )
    p.add_argument("--data-root", help="where the dataset lies")
    p.add_argument(
        "--images",
        type=int,
        default=None,
        help="trajectories measured (default: 8; each costs NFE model calls), or with --data calibration "
        "images (default: 32)",
    )
    p.add_argument(
        "--calib-steps",
        type=int,
        default=8,
        help="with --data: diffusion steps measured, evenly picked from the solver's grid (default: 8)",
    )
    p.add_argument("--solver", default="ddim", help="solver whose steps and NFE are used (default: ddim)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default: 50)")
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
    p.add_argument("--weights", choices=["auto", "net", "ema"], default="auto")
    p.add_argument("--snn-steps", type=int, help="SNN steps T when the file does not record them")
    p.add_argument("--threshold", type=float, help="threshold guidance: every IF threshold becomes this")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


@command("energy")
def cmd_energy(args: argparse.Namespace) -> int:

    from .energy import analyze

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
    from .models.bundled import resolve

    path = resolve(args.file)
    if not path.exists():
        raise SdmcError(f"{args.file}: no such file")
    if path.suffix == ".sdmc" or path.is_dir():
        from .ir import load

        if args.threshold is not None:
            raise SdmcError("--threshold applies to checkpoints; recompile the .sdmc file with the threshold")
        report = analyze(load(path), **opts)
    else:
        from .checkpoint import load_model

        model, cfg = load_model(path, weights=args.weights, snn_steps=args.snn_steps, device=args.device)
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


# --------------------------------------------------------------------------------------------- sample
SOLVER_CHOICES = (
    "ddpm",
    "ddim",
    "analytic-ddpm",
    "analytic-ddim",
    "dpm-solver-1",
    "dpm-solver-2",
    "dpm-solver-3",
    "dpm-solver++",
)  # = sdmc.diffusion.solvers.SOLVER_NAMES (kept here: no torch import for --help)


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="sample images with any solver: a PNG grid and an .npz of uint8 images (NHWC)",
        description="Solvers: ddpm, ddim, analytic-ddpm, analytic-ddim (need `sdmc analytic-stats` first or "
        "--gamma), dpm-solver-1/2/3 (--method singlestep|multistep), dpm-solver++ (2M; --order 3 "
        "for 3M).  Image i of a run depends only on --seed and i, not on --batch-size.",
    )
    p.add_argument("file", help="released .pt checkpoint or native .safetensors model")
    p.add_argument("--solver", choices=SOLVER_CHOICES, default="ddim", help="(default ddim)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    p.add_argument("-n", "--num", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--out", default="samples", help="output directory (default samples/)")
    p.add_argument("--name", help="file stem of the outputs (default SOLVER_STEPS)")
    p.add_argument("--threshold", type=float, help="threshold guidance: every IF threshold becomes this (e.g. 0.997)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--weights", choices=["auto", "net", "ema"], default="auto")
    p.add_argument("--snn-steps", type=int, help="SNN time steps T when the checkpoint does not record it")
    p.add_argument("--eta", type=float, help="DDIM η (default 0)")
    p.add_argument("--variance", choices=["fixedlarge", "fixedsmall"], help="DDPM variance (default fixedlarge)")
    p.add_argument(
        "--spacing",
        choices=["seed", "linspace", "leading", "trailing"],
        help="DDPM/DDIM time grid (default seed: int(999 - i*1000/S), then 0)",
    )
    p.add_argument("--order", type=int, choices=[1, 2, 3], help="DPM-Solver order")
    p.add_argument("--method", choices=["singlestep", "multistep", "singlestep_fixed"], help="DPM-Solver method")
    p.add_argument(
        "--skip-type",
        choices=["logSNR", "time_uniform", "time_quadratic"],
        help="DPM-Solver time grid (default logSNR)",
    )
    p.add_argument(
        "--denoise-to-zero", action="store_true", default=None, help="DPM-Solver: one more call at step 0 returning x̂0"
    )
    p.add_argument(
        "--clip-x0",
        action="store_true",
        default=None,
        help="DPM-Solver++: clamp the data prediction x̂0 to [-1, 1] (DDPM/DDIM always clamp)",
    )
    p.add_argument("--gamma", help="Analytic-DPM Γ file (default: the cache beside the checkpoint)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--eager",
        action="store_true",
        help="run the plain spikingjelly model instead of the compiled torch executor (the default; "
        "a .sdmc file from 'sdmc compile --backend torch' always runs compiled)",
    )


def _device(name: str):
    import torch

    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


@command("sample")
def cmd_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from .checkpoint import load_model
    from .data.images import save_grid, to_uint8
    from .diffusion.analytic import gamma_for_checkpoint, load_gamma
    from .diffusion.sampling import sample_images
    from .diffusion.schedule import NoiseSchedule
    from .utils import atomic_path

    if args.num < 1 or args.steps < 1 or args.batch_size < 1:
        raise SdmcError("-n, --steps and --batch-size must be >= 1")
    device = _device(args.device)
    if str(args.file).endswith(".sdmc"):
        from .backends.torch_exec import load_compiled

        model, cfg = load_compiled(args.file, device=device)
        if cfg is None:
            raise SdmcError(
                f"{args.file}: the graph records no sdmc config (compile it from a checkpoint with "
                "'sdmc compile FILE --backend torch')"
            )
    else:
        model, cfg = load_model(args.file, weights=args.weights, snn_steps=args.snn_steps, device=device)
    schedule = NoiseSchedule(cfg.diffusion)
    kw = dict(
        eta=args.eta,
        variance=args.variance,
        spacing=args.spacing,
        order=args.order,
        method=args.method,
        skip_type=args.skip_type,
        denoise_to_zero=args.denoise_to_zero,
        clip_sample=args.clip_x0,
    )
    if args.solver.startswith("analytic-"):
        if args.gamma:
            gamma, _ = load_gamma(args.gamma)
        else:
            gamma = gamma_for_checkpoint(
                args.file, model, schedule.num_timesteps, args.threshold, log=lambda m: print(m, file=sys.stderr)
            )
        kw["gamma"] = gamma
    if not args.eager:  # after the Γ lookup: its cache key hashes the eager model's weights
        from .backends.torch_exec import prepare

        model = prepare(model, "inference")
    images = sample_images(
        model,
        schedule,
        args.num,
        solver=args.solver,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
        progress=not args.no_progress,
        threshold=args.threshold,
        **kw,
    )
    out = Path(args.out)
    stem = args.name or f"{args.solver}_{args.steps}"
    grid_path, npz_path = out / f"{stem}.png", out / f"{stem}.npz"
    save_grid(images[:100], grid_path)
    with atomic_path(npz_path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                images=to_uint8(images),
                seed=np.int64(args.seed),
                steps=np.int64(args.steps),
                solver=np.str_(args.solver),
                threshold=np.float64(args.threshold if args.threshold is not None else np.nan),
            )
    print(
        f"wrote {len(images)} samples ({args.solver}, {args.steps} steps, seed {args.seed}"
        + (f", threshold {args.threshold}" if args.threshold is not None else "")
        + f"): {grid_path} and {npz_path} (key 'images', uint8 NHWC)"
    )
    return 0


# ------------------------------------------------------------------------------------- analytic-stats
def _add_analytic_stats(sub) -> None:
    p = sub.add_parser(
        "analytic-stats",
        help="estimate the Analytic-DPM statistics Γ_k = E‖ε_θ(x_k, k)‖²/d and cache them beside the checkpoint",
    )
    p.add_argument("file", help="released .pt checkpoint or native .safetensors model")
    p.add_argument("--data", default="digits", help="training dataset (default digits)")
    p.add_argument("--data-root", help="where the dataset lies")
    p.add_argument("--budget", type=int, default=64, help="draws of (x0, ε) per diffusion step (default 64)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--weights", choices=["auto", "net", "ema"], default="auto")
    p.add_argument("--snn-steps", type=int)
    p.add_argument("--threshold", type=float, help="estimate for the threshold-guided model")
    p.add_argument("--force", action="store_true", help="recompute even when a cache with this budget exists")
    p.add_argument("--no-progress", action="store_true")


@command("analytic-stats")
def cmd_analytic_stats(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .data import load_dataset
    from .diffusion.analytic import estimate_gamma, find_cached_gamma, gamma_cache_path, save_gamma, weights_key
    from .diffusion.sampling import threshold_guidance
    from .diffusion.schedule import NoiseSchedule

    device = _device(args.device)
    model, cfg = load_model(args.file, weights=args.weights, snn_steps=args.snn_steps, device=device)
    schedule = NoiseSchedule(cfg.diffusion)
    with threshold_guidance(model, args.threshold):
        key = weights_key(model)
        path = gamma_cache_path(args.file, key)
        found = find_cached_gamma(args.file, model, schedule.num_timesteps)
        if (
            found is not None
            and not args.force
            and found[1].get("data") == args.data
            and int(found[1].get("budget", 0)) >= args.budget
        ):
            print(f"{path}: cached (budget {found[1]['budget']}); --force recomputes")
            return 0
        data = load_dataset(args.data, root=args.data_root, img_size=cfg.model.img_size, train=True)
        x0, _ = data[0]
        if x0.shape[0] != cfg.model.img_ch:
            raise SdmcError(f"dataset {args.data!r} has {x0.shape[0]} channel(s), the model {cfg.model.img_ch}")
        gamma = estimate_gamma(
            model,
            schedule,
            data,
            budget=args.budget,
            batch_size=args.batch_size,
            seed=args.seed,
            device=device,
            progress=not args.no_progress,
        )
    save_gamma(
        path,
        gamma,
        {
            "weights_sha256": key,
            "data": args.data,
            "budget": args.budget,
            "seed": args.seed,
            "threshold": args.threshold,
            "num_timesteps": schedule.num_timesteps,
            "checkpoint": str(args.file),
        },
    )
    print(
        f"wrote {path}: Γ over {schedule.num_timesteps} steps, {args.budget} draws each "
        f"(Γ_0 = {gamma[0]:.4f}, Γ_{schedule.num_timesteps - 1} = {gamma[-1]:.4f})"
    )
    return 0


# ----------------------------------------------------------------------------------------------- lava
def _add_lava(sub) -> None:
    p = sub.add_parser(
        "lava",
        help="Lava-DL: install Lava, export a sequential spiking chain to netx, run it",
        description="Loihi backend for sequential conv/linear + IF chains (the UNet needs the "
        "manifest export, not yet available).",
    )
    lsub = p.add_subparsers(dest="lava_command", metavar="ACTION", required=True)
    q = lsub.add_parser("install", help="pip-install lava-nc 0.10.0 / lava-dl 0.6.0 without their pinned deps")
    q.add_argument("--check", action="store_true", help="only verify that Lava imports")
    q = lsub.add_parser("export", help="quantise a chain graph (.sdmc) for Loihi and write one netx HDF5 file")
    q.add_argument("graph", help=".sdmc zip or graph directory (e.g. from 'sdmc compile')")
    q.add_argument("-o", "--out", required=True, help="netx HDF5 file to write")
    q.add_argument("--pow2", action="store_true", help="power-of-two weight scales (dyadic weights stay exact)")
    q.add_argument(
        "--on-overflow",
        choices=["error", "rescale"],
        default="error",
        help="when a layer's worst per-step current overflows 24-bit state: fail (default) or rescale",
    )
    q.add_argument(
        "--tsm",
        choices=["reject", "mean"],
        default="reject",
        help="SDM per-step (TSM) conv scales: reject (default) or approximate by the mean",
    )
    q.add_argument(
        "--input-scale", type=float, default=None, help="graded input: x_int = round(scale * x) (default 127)"
    )
    q.add_argument(
        "--check-samples",
        type=int,
        default=4,
        help="random inputs on which to report spike mismatch vs float (0: skip)",
    )
    q = lsub.add_parser(
        "resources",
        help="Loihi 2 resource report of a model's spiking core (neurons, synapses, fan-in/out, cores, chips)",
    )
    _loihi_model_args(q)
    q.add_argument("--json", action="store_true", help="print machine-readable JSON")
    q.add_argument("--top", type=int, default=8, help="populations listed (largest first)")
    q = lsub.add_parser(
        "run", help="run a netx file in Lava's CPU simulation on random inputs; compare with the numpy Loihi model"
    )
    q.add_argument("file", help="netx HDF5 file written by 'sdmc lava export'")
    q.add_argument("--samples", type=int, default=2)
    q.add_argument("--steps", type=int, default=None, help="time steps T per sample (default: recorded T, else 4)")
    q.add_argument("--density", type=float, default=0.3, help="spike probability of random spike inputs")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--stock-conv", action="store_true", help="use Lava's own (slow) scipy convolution")


@command("lava")
def cmd_lava(args: argparse.Namespace) -> int:
    import numpy as np

    if args.lava_command == "install":
        from .backends.lava import install

        return install.main(["--check"] if args.check else [])
    rng = np.random.default_rng(getattr(args, "seed", 0))
    if args.lava_command == "resources":
        import json

        from .backends.lava import unet

        graph = _load_graph(args)
        # the counts depend on shapes only: compile leniently (mean TSM, rescaled overflow) so any model reports
        net, plan, _ = unet.compile_net(graph, tsm="mean", on_overflow="rescale")
        res = unet.resources(net, plan.graph)
        print(json.dumps(res, indent=1) if args.json else unet.format_resources(res, top=args.top))
        return 0
    if args.lava_command == "export":
        from . import ir
        from .backends.lava import export, quantize

        graph = ir.load(args.graph)
        chain, report = export.export_netx(
            graph, args.out, pow2=args.pow2, on_overflow=args.on_overflow, input_scale=args.input_scale, tsm=args.tsm
        )
        if args.check_samples > 0:
            fchain = export.extract_chain(graph, tsm=args.tsm)
            shape = (graph.T, args.check_samples) + tuple(chain.input_shape)
            x = rng.uniform(-1, 1, shape) if fchain.graded_input else (rng.random(shape) < 0.3).astype(float)
            quantize.evaluate(fchain, chain, report, x)
        print(report.format())
        print(
            f"wrote {args.out}: {len(chain.layers)} layers, input {list(chain.input_shape)} "
            f"({'graded, 16-bit messages' if chain.input_bits else 'spikes'}), T={graph.T}"
        )
        return 0
    from .backends.lava import export, run
    from .sim import loihi as lm

    chain = export.read_netx(args.file)
    T = args.steps or int(chain.meta.get("T", 4))
    shape = (T, args.samples) + tuple(chain.input_shape)
    x = rng.integers(-127, 128, shape) if chain.input_bits else (rng.random(shape) < args.density).astype(np.int64)
    res = run.run_netx(args.file, x, input_message_bits=chain.input_bits, read_v=False, fast_conv=not args.stock_conv)
    L = len(chain.layers)
    model = lm.aligned_spikes(lm.run_chain(chain, x, num_steps=T + L, reset_interval=T + L), T)
    same = all(np.array_equal(a, b) for a, b in zip(res.spikes, model))
    t = res.times
    print(
        f"Lava: {args.samples} sample(s) x {T + L} steps; build {t['build']:.2f} s, run {t['run']:.2f} s "
        f"({t['run'] / args.samples:.3f} s/sample), read {t['read']:.2f} s"
    )
    print(f"output firing rate {res.spikes[-1].mean():.4f}; spikes identical to the numpy Loihi model: {same}")
    return 0 if same else 1


# ------------------------------------------------------------------------------------- export / sim
def _loihi_model_args(p) -> None:
    p.add_argument("model", help="released .pt / native .safetensors model, or a .sdmc graph")
    p.add_argument("--snn-steps", type=int, default=None, help="SNN steps T if the file does not record them")
    p.add_argument("--img-size", type=int, default=None, help="image size to trace at (default: the model's)")
    p.add_argument("--weights", choices=["auto", "net", "ema"], default="auto")


def _loihi_compile_args(p) -> None:
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
    p.add_argument("--host-bits", type=int, default=16, help="bits of the graded host currents (default 16)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="threshold guidance: every IF threshold becomes this value (e.g. 0.997)",
    )
    p.add_argument("--t", type=int, default=500, dest="step", help="diffusion step of the check inputs (default 500)")
    p.add_argument("--seed", type=int, default=0)


def _load_graph(args: argparse.Namespace):
    from pathlib import Path

    from . import ir

    path = Path(args.model)
    if path.suffix == ".sdmc" or (path / "graph.json").is_file():
        return ir.check(ir.load(path))
    from .frontends import from_checkpoint

    return from_checkpoint(path, weights=args.weights, snn_steps=args.snn_steps, img_size=args.img_size)


def _check_inputs(graph, n: int, step: int, seed: int) -> dict:
    """``n`` noised images ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (linear betas 1e-4..0.02, 1000
    steps; x0 from the bundled digits set when it loads, else uniform in [-1, 1]) and their step ``t``.
    Graphs whose first input is not a static image get random spikes (p = 0.3) / standard normal values."""
    import numpy as np

    x_node = graph.input_nodes[0]
    rng = np.random.default_rng(seed)
    if x_node.type.per_step or len(x_node.type.shape) != 3:
        out = {}
        for node in graph.input_nodes:
            shape = node.type.full_shape(graph.T, n)
            if node.type.dtype.startswith("int"):
                out[node.name] = np.full(shape, step, np.int64)
            elif node.type.kind == "spike":
                out[node.name] = (rng.random(shape) < 0.3).astype(np.float64)
            else:
                out[node.name] = rng.standard_normal(shape)
        return out
    C, H, W = x_node.type.shape
    x0 = rng.uniform(-1, 1, (n, C, H, W))
    try:
        from .data import load_dataset

        ds = load_dataset("digits", img_size=H)
        x0 = np.stack([ds[int(i)][0].numpy() for i in rng.integers(0, len(ds), n)])
        x0 = np.broadcast_to(x0[:, :1], (n, C, H, W)) if x0.shape[1] != C else x0
    except Exception:  # noqa: BLE001 - the uniform images are the documented fallback
        pass
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[min(max(step, 0), 999)]
    x = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * rng.standard_normal(x0.shape)
    inputs = {x_node.name: x}
    for node in graph.input_nodes[1:]:
        inputs[node.name] = np.full(n, step, np.int64)
    return inputs


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export the spiking core for Loihi (Lava): netx segments + manifest",
        description="Compile the model's spiking UNet into a LoihiNet (populations, projections, "
        "delays, graded host currents), quantise it per population and write an export "
        "directory: manifest.json, netx HDF5 segments, projections.h5, graph.sdmc.",
    )
    _loihi_model_args(p)
    _loihi_compile_args(p)
    p.add_argument("--backend", default="lava", choices=["lava", "onnx", "nir"], help="target (only lava for now)")
    p.add_argument("-o", "--out", required=True, help="export directory to write (replaced atomically)")
    p.add_argument(
        "--calib",
        type=int,
        default=0,
        metavar="N",
        help="report the accuracy cost on N noised inputs (spike mismatch, output error; 0: skip)",
    )
    p.add_argument("--resources", action="store_true", help="also print the Loihi 2 resource report")


@command("export")
def cmd_export(args: argparse.Namespace) -> int:
    if args.backend != "lava":
        raise SdmcError(f"--backend {args.backend}: not implemented yet (only --backend lava exports)")
    from .backends.lava import unet

    graph = _load_graph(args)
    calib = _check_inputs(graph, args.calib, args.step, args.seed) if args.calib > 0 else None
    net, plan, report = unet.compile_net(
        graph,
        tsm=args.tsm,
        calib=calib,
        pow2=args.pow2,
        on_overflow=args.on_overflow,
        host_bits=args.host_bits,
        threshold=args.threshold,
    )
    res = unet.resources(net, plan.graph)
    out = unet.export_dir(net, plan, report, args.out, resources=res)
    print(report.format())
    if args.resources:
        print(unet.format_resources(res))
    t = res["totals"]
    print(
        f"wrote {out}: {t['populations']} populations, {t['projections']} projections, {t['sources']} sources, "
        f"depth {t['depth']}, {len(unet.segments(net))} netx segment(s), T={graph.T}"
    )
    return 0


def _add_sim(sub) -> None:
    p = sub.add_parser(
        "sim",
        help="simulate the model with its spiking core as Loihi runs it (hybrid host/chip)",
        description="Host parts in numpy (golden), the spiking core in the bit-exact Loihi model "
        "(default) or Lava's CPU simulation (--lava); reports the mismatch against "
        "the float golden simulator and the torch backend (compiled executor, float64).",
    )
    _loihi_model_args(p)
    _loihi_compile_args(p)
    p.add_argument("--target", default="loihi", choices=["loihi"], help="what to simulate (loihi)")
    p.add_argument("--lava", action="store_true", help="run the spiking core in Lava (needs lava-nc / lava-dl)")
    p.add_argument("--samples", type=int, default=1, help="number of noised input images (default 1)")


@command("sim")
def cmd_sim(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from .backends.lava import unet
    from .sim import golden

    if args.samples < 1:
        raise SdmcError(f"--samples must be >= 1, got {args.samples}")
    graph = _load_graph(args)
    net, plan, report = unet.compile_net(
        graph,
        tsm=args.tsm,
        pow2=args.pow2,
        on_overflow=args.on_overflow,
        host_bits=args.host_bits,
        threshold=args.threshold,
    )
    inputs = _check_inputs(plan.graph, args.samples, args.step, args.seed)
    pops = [p.name for p in net.populations]
    t0 = time.perf_counter()
    hy = unet.run_hybrid(net, plan, inputs, lava=args.lava, probe=pops)
    wall = time.perf_counter() - t0
    ref = golden.run(plan.graph, inputs, keep=pops)
    mism = {p: float(np.mean(hy["spikes"][p] != ref[p].astype(bool))) for p in pops}
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
    tref = unet.torch_reference(graph, inputs, threshold=args.threshold)
    for o in (n.name for n in plan.graph.output_nodes):
        print(
            f"output {o}: relative error vs float golden {unet.rel_error(hy['outputs'][o], ref[o]):.4g}, vs "
            f"torch executor (float64) {unet.rel_error(hy['outputs'][o], tref[o]):.4g}; torch executor vs float "
            f"golden {unet.rel_error(tref[o], ref[o]):.3g}"
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
        model, _ = unet.run_loihi(net, ints, graph.T, probe=pops)
        same = all(np.array_equal(model[p], hy["spikes"][p]) for p in pops)
        print(f"Lava spikes identical to the numpy Loihi model in all {len(pops)} populations: {same}")
        return 0 if same else 1
    return 0


# -------------------------------------------------------------------------------------------- convert
def _add_convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="ANN -> SNN conversion of a quantised-activation ANN UNet (SDM §6)",
        description="Every QuantReLU becomes an IF neuron (threshold = clip alpha, membrane "
        "alpha/2, reset by subtraction), run for T = 2**bits - 1 steps. Input: a "
        "quantised ANN (e.g. from 'sdmc train --preset digits-qann-2bit') or a plain ANN "
        "with --bits. The output is an ordinary model file (arch qsnn) that sdmc "
        "sample / eval / compile / energy / info read.",
    )
    p.add_argument("file", help="quantised ANN (.safetensors from sdmc) or a plain ANN checkpoint (.pt/.safetensors)")
    p.add_argument("-o", "--out", required=True, help="converted SNN to write (.safetensors)")
    p.add_argument(
        "--bits",
        type=int,
        default=None,
        help="activation bits (required for a plain ANN; must match a quantised ANN's)",
    )
    p.add_argument(
        "--signed",
        action="store_true",
        help="Fast-SNN inhibitory -1 spikes (released SDM code: on; paper: off; default off)",
    )
    p.add_argument(
        "--norm",
        choices=["step", "running"],
        default="step",
        help="GroupNorm in the SNN: on each step's input (step, literal) or with running-mean "
        "statistics (running: sdmc option, error falls with T)",
    )
    p.add_argument("--weights", choices=["auto", "net", "ema"], default="auto")
    p.add_argument("--alpha-init", type=float, default=6.0, help="clip alpha for a plain ANN (default 6.0)")
    p.add_argument(
        "--calibrate",
        type=int,
        default=0,
        metavar="N",
        help="set each clip to the 99.9%% quantile of its inputs on N noised digits images (plain ANNs; 0: keep alpha)",
    )
    p.add_argument(
        "--check",
        type=int,
        default=4,
        metavar="N",
        help="report the SNN-vs-quantised-ANN relative error on N noised inputs (0: skip)",
    )
    p.add_argument(
        "--finetune",
        type=int,
        default=0,
        metavar="N",
        help="block-wise fine-tuning: N Adam steps per UNet block on noised digits (0: none)",
    )
    p.add_argument("--lr", type=float, default=1e-6, help="fine-tuning learning rate (paper: 1e-6)")
    p.add_argument("--batch-size", type=int, default=16, help="fine-tuning batch size")
    p.add_argument("--seed", type=int, default=0)


@command("convert")
def cmd_convert(args: argparse.Namespace) -> int:
    import torch

    from . import convert as cv
    from .diffusion.schedule import NoiseSchedule
    from .models.qann import calibrate_alpha, quant_layers

    qann, cfg, fresh = cv.load_qann(args.file, bits=args.bits, alpha_init=args.alpha_init, weights=args.weights)
    m = cfg.model
    g = torch.Generator().manual_seed(args.seed)
    schedule = NoiseSchedule(cfg.diffusion)

    ds = None
    if args.calibrate or args.finetune:  # loaded once: finetune draws a batch per step per block
        from .data import load_dataset

        ds = load_dataset("digits", img_size=m.img_size)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = torch.rand(n, m.img_ch, m.img_size, m.img_size, generator=g) * 2 - 1
        if ds is not None:
            idx = torch.randint(len(ds), (n,), generator=g)
            x0 = torch.stack([ds[int(i)][0] for i in idx])
            if x0.shape[1] != m.img_ch:
                x0 = x0[:, :1].expand(-1, m.img_ch, -1, -1)
        t = torch.randint(min(schedule.num_timesteps, m.diffusion_steps), (n,), generator=g)
        return schedule.q_sample(x0, t, torch.randn(x0.shape, generator=g)), t

    if args.calibrate:
        calibrate_alpha(qann, *batch(args.calibrate))
        cfg.provenance["calibrated_on"] = f"{args.calibrate} noised digits images"
    elif fresh:
        print(
            f"note: {args.file} is a plain ANN; its clips are alpha={args.alpha_init} untrained "
            "(train a quantised ANN or pass --calibrate N)",
            file=sys.stderr,
        )
    snn = cv.convert(qann, signed=args.signed, norm=args.norm)
    if args.finetune:
        rep = cv.finetune(snn, qann, lambda: batch(args.batch_size), args.finetune, lr=args.lr, progress=True)
        cfg.provenance["finetune"] = {"steps_per_block": args.finetune, "lr": args.lr, "batch_size": args.batch_size}
        print(
            f"fine-tuned {len(rep)} blocks x {args.finetune} steps; block MSE first -> last: "
            + ", ".join(f"{k} {a:.3g}->{b:.3g}" for k, (a, b) in rep.items())
        )
    cfg.provenance["converted_from"] = str(args.file)
    cv.save_converted(args.out, snn, cfg)
    bits = cfg.model.bits
    print(
        f"wrote {args.out}: {len(quant_layers(qann))} IF layers, {bits}-bit -> T={snn.steps}, "
        f"{'signed' if args.signed else 'unsigned'} spikes, {args.norm} GroupNorm"
    )
    if args.check:
        x, t = batch(args.check)
        print(
            f"relative error SNN vs quantised ANN on {args.check} noised inputs: "
            f"{cv.conversion_error(qann, snn, x, t):.4f}"
        )
    return 0


# ----------------------------------------------------------------------------- later issues' commands
def _add_placeholders(sub) -> None:
    for name, help_, issue in [
        ("train", "train a spiking diffusion model", "issue 3"),
        ("eval", "FID / IS of a model's samples", "issue 3"),
        ("sample", "sample images with any solver", "issue 4"),
        ("compile", "compile a model to the spiking IR and a backend", "issue 5"),
        ("inspect", "summarise a compiled .sdmc file", "issue 5"),
        ("energy", "synaptic operations and energy report", "issue 7"),
        ("export", "export to lava / onnx / nir", "issue 8"),
        ("convert", "ANN -> SNN conversion", "issue 9"),
    ]:
        if name in COMMANDS:
            continue
        p = sub.add_parser(name, help=f"{help_} (not implemented yet: {issue})")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        COMMANDS[name] = _not_yet(name, issue)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdmc", description="Compiler and simulator for spiking diffusion models (SDDPM / SDM)."
    )
    parser.add_argument("--version", action="version", version=f"sdmc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, obj in list(globals().items()):
        if name.startswith("_add_") and name != "_add_placeholders" and callable(obj):
            obj(sub)
    _add_placeholders(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        return int(COMMANDS[args.command](args) or 0)
    except SdmcError as e:
        print(f"sdmc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
