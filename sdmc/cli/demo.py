"""``sdmc demo``: the whole pipeline on the bundled digits data (:mod:`sdmc.demo`)."""

from __future__ import annotations

import argparse

from .base import Command, add_device, add_out, add_seed, check_device, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_out(p, "output folder (default: runs/demo)", default="runs/demo")
    p.add_argument(
        "--quick", action="store_true", help="a much shorter run (for tests): 30 training steps, 16 images, 2 seeds"
    )
    p.add_argument(
        "--steps", type=positive_int, default=None, help="steps of the short training run from scratch (default 150)"
    )
    p.add_argument(
        "-n",
        "--n-samples",
        type=positive_int,
        default=None,
        help="images per solver and seed (default 128, 3 seeds; the real-data floor exists up to 360)",
    )
    p.add_argument(
        "--convert-steps",
        type=positive_int,
        default=None,
        help="training steps of the convert stage's quantised ANN (default: --steps if given, else 150; "
        "20 with --quick)",
    )
    add_device(p, default="cpu")
    add_seed(p)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from ..utils import claim_dir, output_lock

    device = check_device(args.device)
    claim_dir(args.out, force=args.force)
    with output_lock(args.out):
        run_demo(
            args.out,
            quick=args.quick,
            device=device,
            seed=args.seed,
            steps=args.steps,
            n_samples=args.n_samples,
            convert_steps=args.convert_steps,
        )
    return 0


DEMO = Command("demo", "the whole pipeline on the bundled digits data (CPU, minutes)", add_arguments, run)
