"""``sdmc sample``: sample images with any solver, a PNG grid and an ``.npz`` of uint8 images (NHWC)."""

from __future__ import annotations

import argparse
import sys

from ..errors import SdmcError
from .base import (
    Command,
    add_device,
    add_model_args,
    add_out,
    add_precision,
    add_progress,
    add_seed,
    add_solver,
    add_solver_options,
    add_threshold,
    check_device,
    positive_int,
    solver_options,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file",
        help="released .pt checkpoint, native .safetensors model, a 'compile --backend torch' .sdmc or an "
        "'export --backend onnx' .onnx (run by onnxruntime)",
    )
    add_solver(p, steps=50)
    p.add_argument("-n", "--num", type=positive_int, default=64, help="number of images (default 64)")
    add_out(p, "output directory (default samples/)", default="samples")
    p.add_argument("--name", help="file stem of the outputs, a plain name (default SOLVER_STEPS)")
    add_threshold(p)
    add_seed(p)
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default 64)")
    add_device(p)
    add_model_args(p)
    add_solver_options(p)
    add_progress(p)
    p.add_argument(
        "--eager",
        action="store_true",
        help="run the plain spikingjelly model instead of the compiled torch executor (the default; "
        "a .sdmc file from 'sdmc compile --backend torch' always runs compiled)",
    )
    add_precision(p)


def run(args: argparse.Namespace) -> int:

    import numpy as np
    import torch

    from ..checkpoint import load_model
    from ..data.images import save_grid, to_uint8
    from ..diffusion.analytic import gamma_for_checkpoint, load_gamma
    from ..diffusion.sampling import sample_images
    from ..diffusion.schedule import NoiseSchedule
    from ..utils import atomic_paths, check_run_dir, claim_dir, output_lock, safe_name

    stem = safe_name(args.name) if args.name else f"{args.solver}_{args.steps}"
    device = torch.device(check_device(args.device))
    if args.eager and args.precision != "fp32":
        raise SdmcError(f"--precision {args.precision} runs the compiled executor; drop --eager")
    check_run_dir(args.out, force=args.force)  # before the work; claimed when writing
    if str(args.file).endswith(".onnx"):
        model, cfg = _onnx_model(args)
        device = torch.device("cpu")
    elif str(args.file).endswith(".sdmc"):
        from ..backends.torch_exec import load_compiled

        model, cfg = load_compiled(args.file, device=device, precision=args.precision)
        if cfg is None:
            raise SdmcError(
                f"{args.file}: the graph records no sdmc config (compile it from a checkpoint with "
                "'sdmc compile FILE --backend torch')"
            )
    else:
        model, cfg = load_model(
            args.file, weights=args.weights, snn_steps=args.snn_steps, device=device, unsafe=args.unsafe_load
        )
    schedule = NoiseSchedule(cfg.diffusion)
    kw = solver_options(args)
    if args.solver.startswith("analytic-"):
        if args.gamma:
            gamma, _ = load_gamma(args.gamma)
        else:
            gamma = gamma_for_checkpoint(
                args.file, model, schedule.num_timesteps, args.threshold, log=lambda m: print(m, file=sys.stderr)
            )
        kw["gamma"] = gamma
    if not args.eager and not str(args.file).endswith(".onnx"):  # after the Γ lookup (it hashes the eager model)
        from ..backends.torch_exec import prepare

        model = prepare(model, "inference", precision=args.precision)
    if getattr(model, "precision", None) is not None:
        print(f"precision: {model.precision.note}", file=sys.stderr)
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
    out = claim_dir(args.out, force=args.force)
    grid_path, npz_path = out / f"{stem}.png", out / f"{stem}.npz"
    with output_lock(out / stem), atomic_paths(grid_path, npz_path) as (grid_tmp, npz_tmp):
        # both files are complete before either replaces a previous run's, and no other run writes this pair
        save_grid(images[:100], grid_tmp)
        with open(npz_tmp, "wb") as fh:
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


def _onnx_model(args: argparse.Namespace):
    """An sdmc ONNX export on onnxruntime's CPU provider, and its recorded sdmc config."""
    from ..backends.onnx import OnnxModel

    if args.threshold is not None:
        raise SdmcError(f"{args.file}: --threshold changes neuron thresholds, which an ONNX export has baked in")
    if args.precision != "fp32":
        raise SdmcError(
            f"{args.file}: --precision {args.precision} is the torch executor's; an ONNX model runs as exported"
        )
    if args.solver.startswith("analytic-") and not args.gamma:
        raise SdmcError(
            f"{args.file}: analytic solvers with an ONNX model need --gamma FILE (the Γ cache is keyed by torch weights)"
        )
    model = OnnxModel(args.file)
    if model.sdmc_config is None:
        raise SdmcError(
            f"{args.file}: the export records no sdmc config (export it from a checkpoint: 'sdmc export MODEL --backend onnx')"
        )
    return model, model.sdmc_config


SAMPLE = Command(
    "sample",
    "sample images with any solver: a PNG grid and an .npz of uint8 images (NHWC)",
    add_arguments,
    run,
    description="Solvers: ddpm, ddim, analytic-ddpm, analytic-ddim (need `sdmc analytic-stats` first or "
    "--gamma), dpm-solver-1/2/3 (--method singlestep|multistep), dpm-solver++ (2M; --order 3 "
    "for 3M).  Image i of a run depends only on --seed and i, not on --batch-size.",
)
