"""``sdmc demo``: the whole pipeline on the bundled digits data (:mod:`sdmc.demo`)."""

from __future__ import annotations

import argparse

from .base import Command, add_device


def add_arguments(p: argparse.ArgumentParser) -> None:
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
    add_device(p, default="cpu")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

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


DEMO = Command("demo", "the whole pipeline on the bundled digits data (CPU, minutes)", add_arguments, run)
