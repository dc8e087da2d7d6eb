"""The ``sdmc`` command line: one module per command (or command group), listed in :data:`COMMANDS`.

A command is a :class:`~sdmc.cli.base.Command`: its ``add_arguments(parser)`` declares the options (the groups
several commands share live in :mod:`sdmc.cli.base`), its ``run(args)`` does the work, importing the library
lazily so that ``sdmc --help`` stays fast.  ``--allow-nonfinite`` (before or after the command) lets every
loader accept NaN/Inf weights (:func:`sdmc.validate.allowing_nonfinite`).  Errors derived from :class:`sdmc.errors.SdmcError` print one line
and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from .. import __version__
from ..errors import SdmcError
from .analytic_stats import ANALYTIC_STATS
from .base import Command, Parser, one_line
from .compile import COMPILE, INSPECT
from .convert import CONVERT
from .demo import DEMO
from .energy import ENERGY
from .eval import EVAL
from .info import INFO
from .inherit_tsm import INHERIT_TSM
from .lava import LAVA
from .loihi import EXPORT, SIM
from .sample import SAMPLE
from .train import TRAIN

# in the order `sdmc --help` lists them
COMMANDS: tuple[Command, ...] = (
    INFO,
    INHERIT_TSM,
    COMPILE,
    INSPECT,
    DEMO,
    TRAIN,
    EVAL,
    ENERGY,
    SAMPLE,
    ANALYTIC_STATS,
    LAVA,
    EXPORT,
    SIM,
    CONVERT,
)


DEBUG_HELP = "show the full traceback of an unexpected error (for bug reports)"
NONFINITE_HELP = "load weights holding NaN/Inf instead of refusing them (for debugging)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sdmc", description="Compiler and simulator for spiking diffusion models (SDDPM / SDM).")
    parser.add_argument("--version", action="version", version=f"sdmc {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--allow-nonfinite", action="store_true", help=NONFINITE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description)
        cmd.add_arguments(p)
        # also after the command name; SUPPRESS keeps a 'sdmc --debug CMD' from being reset to False
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        p.add_argument("--allow-nonfinite", action="store_true", default=argparse.SUPPRESS, help=NONFINITE_HELP)
        p.set_defaults(run=cmd.run)
        _declare_inputs(p)
    return parser


def _declare_inputs(p: argparse.ArgumentParser) -> None:
    """Record the positional arguments of ``p`` (and of its sub-commands) as the command's inputs, so that
    :func:`main` refuses an ``-o/--out`` that names one of them, for every command at once."""
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    names = tuple(a.dest for a in p._actions if not a.option_strings and a not in subs)
    p.set_defaults(input_args=names)
    for a in subs:
        for q in a.choices.values():
            _declare_inputs(q)


def _refuse_input_as_output(args: argparse.Namespace) -> None:
    """``-o/--out`` may not be one of the command's input files (writing it would destroy the input)."""
    out = getattr(args, "out", None)
    if out:
        from ..utils import refuse_input_as_output

        refuse_input_as_output(
            out, [v for n in getattr(args, "input_args", ()) if isinstance(v := getattr(args, n, None), str)]
        )


def _os_error(e: OSError) -> str:
    """``strerror: path`` (both paths of a rename), the way an OSError names what failed."""
    what = e.strerror or type(e).__name__
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    return f"{what}: {' -> '.join(paths)}" if paths else f"{what} ({e})"


def _out_of_memory(e: BaseException) -> bool:
    """A failed allocation: Python's MemoryError, or torch's RuntimeError from its CPU allocator ("can't allocate
    memory") or CUDA ("CUDA out of memory", ``torch.cuda.OutOfMemoryError``)."""
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def main(argv: list[str] | None = None) -> int:
    """Run ``sdmc ARGV``; returns the exit status: 0 success, 2 a user error (bad option or file, missing
    device, unwritable output: one line on stderr), 1 an unexpected error (one line and a pointer to --debug,
    which shows the traceback), 130 interrupted."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a bad option (one line already printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if not args.command:
        parser.print_help()
        return 0
    where = f"sdmc {args.command}"
    allow = contextlib.nullcontext()
    if args.allow_nonfinite:
        from ..validate import allowing_nonfinite

        allow = allowing_nonfinite()
    try:
        _refuse_input_as_output(args)
        with allow:
            return int(args.run(args) or 0)
    except SdmcError as e:
        print(f"{where}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # permissions, disk full, read-only file system, a directory where a file should be
        if args.debug:
            raise
        print(f"{where}: error: {one_line(_os_error(e))}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, the traceback on request
        if args.debug:
            raise
        if _out_of_memory(e):
            print(f"{where}: error: out of memory (try smaller sizes: --batch-size, -n, ...)", file=sys.stderr)
            return 2
        print(
            f"{where}: internal error: {type(e).__name__}: {one_line(e)} (run 'sdmc --debug {args.command} ...' "
            "for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
