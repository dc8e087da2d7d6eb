"""What every ``sdmc`` command shares: the :class:`Command` record and the argument groups repeated across
commands (model file, device, solver, output), so each is declared once."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import SdmcError

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


# ------------------------------------------------------------------------------------------- parser
class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``sdmc CMD: error: MESSAGE (see sdmc CMD --help)``,
    exit status 2, like every other sdmc error (argparse prints the whole usage first)."""

    def error(self, message: str):
        m = re.fullmatch(r"argument (\S+): (must .*)", message, re.S)  # a range type's message
        if m:
            message = f"{m.group(1)} {m.group(2)}"  # "--steps must be at least 1, got 0"
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------- option types
def _number(kind: type, text: str):
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def _bounds(v, lo, hi, lo_open: bool, hi_open: bool) -> str | None:
    """``None`` if ``v`` lies within the bounds, else the message saying where it must lie."""
    below = lo is not None and (v < lo or (lo_open and v == lo))
    above = hi is not None and (v > hi or (hi_open and v == hi))
    if not (below or above):
        return None
    if hi is None:
        return f"must be {'above' if lo_open else 'at least'} {lo}, got {v}"
    if lo is None:
        return f"must be {'below' if hi_open else 'at most'} {hi}, got {v}"
    return f"must lie in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, got {v}"


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[lo, hi]`` (``None``: no bound)."""

    def integer(text: str) -> int:
        v = _number(int, text)
        if (msg := _bounds(v, lo, hi, False, False)) is not None:
            raise argparse.ArgumentTypeError(msg)
        return v

    return integer


def float_range(
    lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False
) -> Callable[[str], float]:
    """An argparse type: a finite number in ``[lo, hi]`` (``lo_open`` / ``hi_open``: that bound excluded)."""

    def number(text: str) -> float:
        v = _number(float, text)
        if (msg := _bounds(v, lo, hi, lo_open, hi_open)) is not None:
            raise argparse.ArgumentTypeError(msg)
        return v

    return number


positive_int = int_range(1)  # steps, T, batch sizes, sample counts, image sizes, intervals
count = int_range(0)  # "N (0: none/skip)" options, seeds, worker counts
positive = float_range(0, lo_open=True)  # thresholds, learning rates, scales, clip norms
nonnegative = float_range(0)  # DDIM η, ...
probability = float_range(0, 1)  # firing / spike probabilities, DDIM η
unit_open = float_range(0, 1, lo_open=True, hi_open=True)  # betas of the noise schedule
fraction = float_range(0, 1, hi_open=True)  # [0, 1): dropout (1 would zero everything), EMA decay


def int_list(text: str) -> tuple[int, ...]:
    """``"1,2,2,4"`` -> ``(1, 2, 2, 4)``: comma-separated positive integers."""
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values


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
    p.add_argument(
        "--snn-steps", type=positive_int, default=None, help="SNN time steps T if the file does not record them"
    )
    if img_size:
        p.add_argument(
            "--img-size", type=positive_int, default=None, help="image size to trace at (default: the model's)"
        )
    add_unsafe_load(p)


def add_user_model(p: argparse.ArgumentParser) -> None:
    """``--model FILE.py:Class|module:Class``, ``--model-args``, ``--input-shape``, ``--timing``: the checkpoint
    holds the weights of the user's own ``nn.Module`` class (:mod:`sdmc.frontends.user_model`)."""
    g = p.add_argument_group(
        "your own model class (the file argument then holds only its weights; runs the class's Python code)"
    )
    g.add_argument(
        "--model",
        dest="model_class",
        metavar="FILE.py:CLASS",
        help="the nn.Module class to build: path/to/file.py:ClassName or package.module:ClassName",
    )
    g.add_argument(
        "--model-args",
        metavar="JSON",
        help="the class's constructor arguments: a JSON object (keywords) or array (positional)",
    )
    g.add_argument(
        "--input-shape",
        type=int_list,
        metavar="DIMS",
        help="shape of forward's first input (needed with --model): B,C,H,W for an image (a diffusion UNet gets "
        "the step t as its second input) or T,B,... for a per-step sequence (T: --snn-steps, else the model's "
        "own T attribute, else this first axis); B is not compiled in",
    )
    g.add_argument(
        "--timing",
        choices=["static", "per-step"],
        help="the first input is a static image replicated over T, or a [T, B, ...] sequence (default: from "
        "the model's spikingjelly step modes)",
    )


USER_MODEL_ONLY = ("model_args", "input_shape", "timing")


def user_model_graph(args: argparse.Namespace, file):
    """The traced graph of ``--model``'s class with ``file``'s weights (strictly), or ``None`` without
    ``--model``.  Raises :class:`sdmc.errors.SdmcError` for a ``--model`` option without ``--model``, a graph
    file given with ``--model``, or a missing ``--input-shape``, before running the user's code."""
    from pathlib import Path

    from ..errors import SdmcError

    if not getattr(args, "model_class", None):
        given = [f"--{k.replace('_', '-')}" for k in USER_MODEL_ONLY if getattr(args, k, None) is not None]
        if given:
            raise SdmcError(f"{', '.join(given)}: only with --model FILE.py:Class")
        return None
    if Path(str(file)).suffix in (".sdmc", ".nir") or Path(str(file)).is_dir():
        raise SdmcError(f"--model: {file} is a compiled graph, not the weights of a model class")
    if getattr(args, "img_size", None) is not None:
        raise SdmcError("--img-size: not with --model (--input-shape gives the input)")
    if args.input_shape is None:
        raise SdmcError("--model: give --input-shape (e.g. 1,3,32,32 for an image, 4,1,2,34,34 for a T=4 sequence)")
    from ..frontends.user_model import trace_user_model
    from ..models.bundled import resolve

    if not resolve(file).is_file():
        raise SdmcError(f"{file}: no such file")
    return trace_user_model(
        args.model_class,
        args.model_args,
        file,
        input_shape=args.input_shape,
        T=getattr(args, "snn_steps", None),
        timing=args.timing,
        weights=getattr(args, "weights", "auto"),
        unsafe=getattr(args, "unsafe_load", False),
    )


def add_threshold(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threshold",
        type=positive,
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


def add_seed(p: argparse.ArgumentParser, help: str | None = None) -> None:
    p.add_argument("--seed", type=count, default=0, help=help or "random seed (default 0)")


def add_out(
    p: argparse.ArgumentParser,
    help: str,
    *,
    required: bool = False,
    default: str | None = None,
    directory: bool = True,
) -> None:
    """``-o/--out`` and, for a directory output, ``--force`` (replace or write into a directory sdmc did not
    create; :mod:`sdmc.utils` says which directories count as sdmc's)."""
    p.add_argument("-o", "--out", required=required, default=default, help=help)
    if directory:
        p.add_argument(
            "--force",
            action="store_true",
            help="use --out even if sdmc did not create it: a non-empty directory (its files may be replaced) or, "
            "for a file output (onnx, nir), an existing file",
        )


def add_solver(p: argparse.ArgumentParser, *, steps: int = 50, choices: bool = True) -> None:
    """``--solver`` and ``--steps`` (the sampling solver and its number of steps)."""
    p.add_argument("--solver", default="ddim", choices=SOLVERS if choices else None, help="solver (default ddim)")
    p.add_argument("--steps", type=positive_int, default=steps, help=f"sampling steps (default {steps})")


def add_solver_options(p: argparse.ArgumentParser) -> None:
    """The per-solver knobs of :func:`sdmc.diffusion.sampling.sample_images` (unset: the solver's default)."""
    g = p.add_argument_group("solver options")
    g.add_argument("--eta", type=probability, help="DDIM η in [0, 1] (default 0)")
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
def check_device(name: str | None, option: str = "--device") -> str:
    """``name`` resolved (``auto``/``None``: ``cuda`` when available, else ``cpu``) and checked to exist here:
    an unknown name, ``cuda`` on a machine without CUDA or ``cuda:K`` beyond the GPUs present is one
    :class:`SdmcError` line, before anything is loaded."""
    import torch

    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise SdmcError(f"{option} {name!r}: not a device name (auto, cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SdmcError(f"{option} {name}: CUDA is not available on this machine; use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise SdmcError(f"{option} {name}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SdmcError(f"{option} {name}: Apple MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise SdmcError(f"{option} {name}: sdmc runs on cpu, cuda or mps devices")
    return name


def rank() -> int:
    """This process's rank under ``torchrun`` (0 otherwise): only rank 0 claims and locks output folders."""
    import os

    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def one_line(text: str) -> str:
    """``text`` on one line (an error message that must stay one line)."""
    return " ".join(str(text).split())
