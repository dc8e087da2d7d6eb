"""The ``sdmc`` command line: one module per command (or command group), listed in :data:`COMMANDS`.

A command is a :class:`~sdmc.cli.base.Command`: its ``add_arguments(parser)`` declares the options (the groups
several commands share live in :mod:`sdmc.cli.base`), its ``run(args)`` does the work, importing the library
lazily so that ``sdmc --help`` stays fast.  Errors derived from :class:`sdmc.errors.SdmcError` print one line
and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import SdmcError
from .analytic_stats import ANALYTIC_STATS
from .base import Command
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdmc", description="Compiler and simulator for spiking diffusion models (SDDPM / SDM)."
    )
    parser.add_argument("--version", action="version", version=f"sdmc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description)
        cmd.add_arguments(p)
        p.set_defaults(run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except SdmcError as e:
        print(f"sdmc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
