"""The ``sdmc`` command line.

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its arguments and ``cmd_<name>(args)``
runs it.  Errors derived from :class:`sdmc.errors.SdmcError` print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

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
    p.add_argument("--weights", choices=["auto", "net", "ema"], default="auto",
                   help="which weights of a training checkpoint to describe (default: ema if present)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--unsafe-load", action="store_true",
                   help="allow unpickling arbitrary Python objects (only for files you trust)")


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
    print(f"wrote {args.out}: SDM TSM UNet, T={cfg.model.snn_steps}, ch={cfg.model.ch}, "
          f"ch_mult={list(cfg.model.ch_mult)} (every p initialised to 1)")
    return 0


# ---------------------------------------------------------------------------------- compile / inspect
def _add_compile(sub) -> None:
    p = sub.add_parser("compile", help="trace a model into the spiking IR, run passes, write a backend artefact",
                       description="Trace a released .pt or native .safetensors model with the torch.fx frontend, "
                                   "run IR passes (checked after each), and save the .sdmc graph (--backend ir).")
    p.add_argument("file", help="released .pt checkpoint or native .safetensors model")
    p.add_argument("--backend", default="ir", choices=["ir", "torch", "lava", "onnx", "nir"],
                   help="what to produce (default: ir, the .sdmc graph)")
    p.add_argument("-o", "--out", required=True, help="output file (.sdmc zip for --backend ir; a directory otherwise)")
    p.add_argument("--passes", default="inference",
                   help="pipeline (inference, neuromorphic) or comma-separated pass names; 'none' for the raw trace")
    p.add_argument("--snn-steps", type=int, default=None, help="SNN steps T if the file does not record them")
    p.add_argument("--img-size", type=int, default=None, help="image size to trace at (default: the model's)")
    p.add_argument("--weights", choices=["auto", "net", "ema"], default="auto",
                   help="which weights of a training checkpoint (default: ema if present)")


@command("compile")
def cmd_compile(args: argparse.Namespace) -> int:
    import importlib.util
    if args.backend != "ir":
        mod = {"torch": "torch_exec"}.get(args.backend, args.backend)
        if importlib.util.find_spec(f"sdmc.backends.{mod}") is None:
            raise SdmcError(f"--backend {args.backend}: not available yet (sdmc.backends.{mod} is not in this "
                            "build); use --backend ir to write the .sdmc graph")
        raise SdmcError(f"--backend {args.backend}: sdmc.backends.{mod} exists but is not wired into "
                        "'sdmc compile' yet; use --backend ir")
    from . import ir, passes
    from .frontends import from_checkpoint
    names = [] if args.passes.strip().lower() == "none" else passes.resolve(args.passes)
    graph = from_checkpoint(args.file, weights=args.weights, snn_steps=args.snn_steps, img_size=args.img_size)
    graph = passes.run(graph, names)
    out = ir.save(ir.check(graph), args.out)
    print(f"wrote {out}: {len(graph.nodes)} nodes, {len(graph.params)} parameters, T={graph.T}, "
          f"passes: {', '.join(names) or 'none'}")
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="summarise a compiled .sdmc graph: ops, parameters, spike layers, "
                                       "static vs per-step work, host/neuromorphic partition, pass log")
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
    p.add_argument("--quick", action="store_true", help="a much shorter run (for tests)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    from .pipeline import run_demo
    run_demo(args.out, quick=args.quick, device=args.device, seed=args.seed)
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
        prog="sdmc", description="Compiler and simulator for spiking diffusion models (SDDPM / SDM).")
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
