"""``sdmc analytic-stats``: estimate the Analytic-DPM statistics Γ and cache them beside the checkpoint."""

from __future__ import annotations

import argparse

from ..errors import SdmcError
from .base import Command, add_device, add_model_args, add_progress, add_seed, check_device, positive, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="released .pt checkpoint or native .safetensors model")
    p.add_argument("--data", default="digits", help="training dataset (default digits)")
    p.add_argument("--data-root", help="where the dataset lies")
    p.add_argument("--budget", type=positive_int, default=64, help="draws of (x0, ε) per diffusion step (default 64)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (default 256)")
    add_seed(p)
    add_device(p)
    add_model_args(p)
    p.add_argument("--threshold", type=positive, help="estimate for the threshold-guided model")
    p.add_argument("--force", action="store_true", help="recompute even when a cache with this budget exists")
    add_progress(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import load_model
    from ..data import load_dataset
    from ..diffusion.analytic import estimate_gamma, find_cached_gamma, gamma_cache_path, save_gamma, weights_key
    from ..diffusion.sampling import threshold_guidance
    from ..diffusion.schedule import NoiseSchedule

    device = torch.device(check_device(args.device))
    model, cfg = load_model(
        args.file, weights=args.weights, snn_steps=args.snn_steps, device=device, unsafe=args.unsafe_load
    )
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


ANALYTIC_STATS = Command(
    "analytic-stats",
    "estimate the Analytic-DPM statistics Γ_k = E‖ε_θ(x_k, k)‖²/d and cache them beside the checkpoint",
    add_arguments,
    run,
)
