"""What every ``sdmc`` command shares: the :class:`Command` record and the argument groups repeated across
commands (model file, device, solver, output), so each is declared once."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

WEIGHTS = ("auto", "net", "ema")
SOLVERS = (
    "ddpm",
    "ddim",
    "analytic-ddpm",
    "analytic-ddim",
    "dpm-solver-1",
    "dpm-solver-2",
    "dpm-solver-3",
    "dpm-solver++",
)  # = sdmc.diffusion.solvers.SOLVER_NAMES (kept here: no torch import for --help; a test checks they agree)


PRECISIONS = ("fp32", "bf16", "int8")  # = sdmc.backends.torch.precision.PRECISIONS (no torch import for --help)


@dataclass(frozen=True)
class Command:
    """One subcommand: ``add_arguments(parser)`` declares its options, ``run(args)`` executes it and returns
    the exit status (``None`` = 0).  ``run`` raises :class:`sdmc.errors.SdmcError` for a user error."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    description: str | None = None


# ---------------------------------------------------------------------------------------- option types
def int_list(text: str) -> tuple[int, ...]:
    """``"1,2,2,4"`` -> ``(1, 2, 2, 4)``."""
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


# ------------------------------------------------------------------------------------ argument groups
def add_weights(
    p: argparse.ArgumentParser, help: str = "which weights of a training checkpoint (default: ema if present)"
):
    p.add_argument("--weights", choices=WEIGHTS, default="auto", help=help)


def add_unsafe_load(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--unsafe-load",
        action="store_true",
        help="allow unpickling arbitrary Python objects (only for files you trust)",
    )


def add_model_args(p: argparse.ArgumentParser, *, img_size: bool = False) -> None:
    """``--weights``, ``--snn-steps`` (and ``--img-size``): how a checkpoint becomes a model."""
    add_weights(p)
    p.add_argument("--snn-steps", type=int, default=None, help="SNN time steps T if the file does not record them")
    if img_size:
        p.add_argument("--img-size", type=int, default=None, help="image size to trace at (default: the model's)")


def add_threshold(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="threshold guidance: every IF threshold becomes this value (e.g. 0.997)",
    )


def add_device(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    shown = "auto" if default is None else default
    p.add_argument("--device", default=default, help=f"auto, cpu, cuda, cuda:1 ... (default {shown})")


def add_precision(p, default: str | None = "fp32", choices: tuple[str, ...] = PRECISIONS, what: str = "") -> None:
    """``--precision``: the compiled executor's precision (checked against the device when it is built)."""
    p.add_argument(
        "--precision",
        choices=choices,
        default=default,
        help="executor precision: fp32 (exact), bf16 (bf16 weights/activations, fp32 membranes)"
        + (", int8 (spike-input convolutions as int8 GEMMs, 8-bit per-channel weights)" if "int8" in choices else "")
        + f" (default {default or what})",
    )


def add_solver(p: argparse.ArgumentParser, *, steps: int = 50, choices: bool = True) -> None:
    """``--solver`` and ``--steps`` (the sampling solver and its number of steps)."""
    p.add_argument("--solver", default="ddim", choices=SOLVERS if choices else None, help="solver (default ddim)")
    p.add_argument("--steps", type=int, default=steps, help=f"sampling steps (default {steps})")


def add_solver_options(p: argparse.ArgumentParser) -> None:
    """The per-solver knobs of :func:`sdmc.diffusion.sampling.sample_images` (unset: the solver's default)."""
    g = p.add_argument_group("solver options")
    g.add_argument("--eta", type=float, help="DDIM η (default 0)")
    g.add_argument("--variance", choices=["fixedlarge", "fixedsmall"], help="DDPM variance (default fixedlarge)")
    g.add_argument(
        "--spacing",
        choices=["seed", "linspace", "leading", "trailing"],
        help="DDPM/DDIM time grid (default seed: int(999 - i*1000/S), then 0)",
    )
    g.add_argument("--order", type=int, choices=[1, 2, 3], help="DPM-Solver order")
    g.add_argument("--method", choices=["singlestep", "multistep", "singlestep_fixed"], help="DPM-Solver method")
    g.add_argument(
        "--skip-type",
        choices=["logSNR", "time_uniform", "time_quadratic"],
        help="DPM-Solver time grid (default logSNR)",
    )
    g.add_argument(
        "--denoise-to-zero", action="store_true", default=None, help="DPM-Solver: one more call at step 0 returning x̂0"
    )
    g.add_argument(
        "--clip-x0",
        action="store_true",
        default=None,
        help="DPM-Solver++: clamp the data prediction x̂0 to [-1, 1] (DDPM/DDIM always clamp)",
    )
    g.add_argument("--gamma", help="Analytic-DPM Γ file (default: the cache beside the checkpoint)")


def solver_options(args: argparse.Namespace) -> dict:
    """The ``sample_images`` keywords of :func:`add_solver_options` (``None``: the solver's default)."""
    return dict(
        eta=args.eta,
        variance=args.variance,
        spacing=args.spacing,
        order=args.order,
        method=args.method,
        skip_type=args.skip_type,
        denoise_to_zero=args.denoise_to_zero,
        clip_sample=args.clip_x0,
    )


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# ------------------------------------------------------------------------------------------- devices
def resolve_device(name: str | None) -> str:
    """``auto``/``None`` -> ``cuda`` when available, else ``cpu``; any other name unchanged."""
    if name in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
