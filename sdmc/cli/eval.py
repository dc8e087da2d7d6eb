"""``sdmc eval``: FID / IS / digits-FID of saved samples or of a model's samples (:mod:`sdmc.metrics.evaluate`)."""

from __future__ import annotations

import argparse
import sys

from ..errors import SdmcError
from .base import (
    Command,
    add_device,
    add_json,
    add_model_args,
    add_precision,
    add_progress,
    add_seed,
    add_solver,
    add_threshold,
    check_device,
    positive_int,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
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
        type=positive_int,
        default=None,
        help="images to sample per seed (default: 256 for digits metrics, whose real-data floor exists up to "
        "360 images; else 1000)",
    )
    add_solver(p, steps=50)
    p.add_argument("--batch-size", type=positive_int, default=100, help="images per batch and rank (default 100)")
    add_seed(p, help="first sampling seed (default 0)")
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=None,
        help="sampling seeds SEED, SEED+1, ...: the report gives mean ± std over them (default: 3 for digits "
        "metrics, else 1)",
    )
    add_model_args(p)
    add_threshold(p)
    p.add_argument("--save-samples", help="also write the sampled images here (.npz, uint8; the first seed's)")
    add_device(p)
    add_precision(p, default=None, what="the eager model")
    p.add_argument("--inception-weights", help="local pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--download", action="store_true", help="allow downloading the Inception weights")
    p.add_argument("--splits", type=positive_int, default=10, help="Inception Score splits (default 10)")
    p.add_argument("--data-root", help="where a --ref dataset lies")
    p.add_argument("--ref-limit", type=positive_int, help="use at most this many dataset images for the reference")
    p.add_argument("--save-ref", help="write the reference statistics computed from a dataset (.npz)")
    add_progress(p)
    add_json(p)
    g = p.add_argument_group(
        "frontier",
        "--frontier: digits-FID (mean ± std over --seeds, -n images each, default 128) against the energy per "
        "generated image (the exact sum over each setting's trajectory, paper and faithful conventions) for "
        "many sampling settings; the reference is the first setting (DDPM-1000 by default), and the answer is "
        "the cheapest setting whose digits-FID the seeds cannot tell from the reference's",
    )
    g.add_argument("--frontier", action="store_true", help="measure the quality-per-energy frontier of MODEL")
    g.add_argument(
        "--settings",
        help="comma list of SOLVER:STEPS[:thTHRESHOLD][:TSTEPS] (default: ddpm:1000, ddim:100/50/20, "
        "dpm-solver++:20/15/10/5, dpm-solver++:10:th0.997, dpm-solver++:20/10:T2)",
    )
    g.add_argument(
        "--energy-images", type=int, default=4, help="trajectories measured per setting for its energy (default 4)"
    )
    g.add_argument("--profile", default="45nm-fp32", help="energy profile (default 45nm-fp32)")
    g.add_argument("--plot", help="save the frontier plot (PNG)")
    g.add_argument("-o", "--out", help="write the frontier JSON here")


def run_frontier(args: argparse.Namespace) -> int:
    import json

    from ..metrics.frontier import DEFAULT_N, DEFAULT_SETTINGS
    from ..metrics.frontier import run_frontier as measure
    from ..metrics.quality import DEFAULT_SEEDS
    from ..utils import atomic_write_text, refuse_input_as_output

    if not args.model or args.samples:
        raise SdmcError("--frontier needs a model (it samples every setting), not --samples")
    for out in (args.out, args.plot):  # before the measurement, which takes minutes
        if out is not None:
            refuse_input_as_output(out, [args.model])
    settings = [s for s in args.settings.split(",") if s.strip()] if args.settings else list(DEFAULT_SETTINGS)
    n_seeds = args.seeds if args.seeds is not None else len(DEFAULT_SEEDS)
    if n_seeds < 1:
        raise SdmcError(f"--seeds must be >= 1, got {n_seeds}")
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    f = measure(
        args.model,
        settings,
        n=args.num or DEFAULT_N,
        seeds=list(range(args.seed, args.seed + n_seeds)),
        energy_images=args.energy_images,
        profile=args.profile,
        batch_size=args.batch_size,
        weights=args.weights,
        log=log,
    )
    if args.json:
        print(json.dumps(f.to_dict(), indent=1))
    else:
        f.print()
    if args.out:
        atomic_write_text(args.out, json.dumps(f.to_dict(), indent=1))
        log(f"wrote {args.out}")
    if args.plot:
        f.plot(args.plot)
        log(f"wrote {args.plot}")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..metrics.evaluate import EvalOptions, eval_model_file, eval_samples_file
    from ..utils import refuse_input_as_output

    if args.frontier:
        return run_frontier(args)
    if bool(args.model) == bool(args.samples):
        raise SdmcError("give either a model checkpoint or --samples FILE (exactly one)")
    device = check_device(args.device)
    inputs = [args.model, args.samples, args.inception_weights]
    for out in (args.save_samples, args.save_ref):
        if out is not None:
            refuse_input_as_output(out, inputs)
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
            precision=args.precision,
            save_samples_to=args.save_samples,
            log=log,
            unsafe=args.unsafe_load,
        )
    if report is not None:  # rank 0
        print(report.to_json() if args.json else report.line())
    return 0


EVAL = Command(
    "eval",
    "FID / IS / digits-FID of saved samples or of a model's samples (torchrun for many GPUs)",
    add_arguments,
    run,
    description="Either sdmc eval --samples samples.npz --ref digits|cifar10.train.npz|DATASET, or "
    "sdmc eval model.pt --solver ddim --steps 50 -n 1000 --metric digits-fid, or sdmc eval bundled:digits "
    "--frontier --plot frontier.png. Digits metrics come as mean ± std over seeds beside the real-data floor at "
    "the same n (held-out digits, up to n=360). Metrics: "
    "digits-fid, digits-is (offline, shipped classifier), fid, is (TF-Inception weights: "
    "--inception-weights PATH, $SDMC_INCEPTION_WEIGHTS or --download). Many GPUs: torchrun "
    "--nproc_per_node=K -m sdmc eval ... (features all-gathered; rank 0 prints).",
)
