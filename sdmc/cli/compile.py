"""``sdmc compile`` (trace a model into the spiking IR, run passes, write a backend artefact) and
``sdmc inspect`` (summarise a compiled ``.sdmc`` graph)."""

from __future__ import annotations

import argparse

from ..errors import SdmcError
from . import interop
from .base import Command, add_json, add_model_args, add_out, add_user_model, user_model_graph

BACKENDS = ("ir", "torch") + interop.BACKENDS


def add_compile_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file",
        help="released .pt checkpoint, native .safetensors model or a .nir graph (imported); with --model: the "
        "weights of that class (.pt state_dict or .safetensors)",
    )
    p.add_argument(
        "--backend",
        default="ir",
        choices=BACKENDS + ("lava",),
        help="what to produce (default: ir, the .sdmc graph; onnx / nir: a .onnx / .nir file; for Loihi use "
        "'sdmc export')",
    )
    add_out(
        p,
        "output .sdmc zip (a directory if the name does not end in .sdmc); --backend torch writes "
        "the graph the torch executor runs (sdmc.backends.torch_exec.load_compiled reads it); --backend "
        "onnx / nir: the file (replaces an existing one only if sdmc wrote it, else with --force)",
        required=True,
    )
    p.add_argument(
        "--passes",
        default=None,
        help="pipeline (inference, neuromorphic) or comma-separated pass names; 'none' for the raw "
        "trace (default: inference; nir: none, its export folds what it needs); with --backend torch the "
        "executor mode: inference (default) or train",
    )
    add_model_args(p, img_size=True)
    add_user_model(p)
    interop.add_interop_options(p, t=True)


def run_compile(args: argparse.Namespace) -> int:
    if args.backend not in BACKENDS:
        hint = " (for Loihi: 'sdmc export MODEL -o DIR')" if args.backend == "lava" else ""
        raise SdmcError(f"--backend {args.backend}: not available in 'sdmc compile'{hint}")
    from .. import ir, passes
    from ..frontends import from_checkpoint
    from ..utils import check_replaceable

    if args.passes is None:
        args.passes = "none" if args.backend == "nir" else "inference"
    if args.backend in interop.BACKENDS:  # a file: sdmc's own, or --force
        interop.check_out(args, [args.file])
    elif not str(args.out).endswith(".sdmc"):  # the directory form replaces args.out whole: check before the work
        check_replaceable(args.out, force=args.force, protect=[args.file])
    if args.backend == "torch":
        if args.passes not in ("inference", "train"):
            raise SdmcError(
                f"--backend torch: --passes must be 'inference' or 'train' (the executor's mode), got {args.passes!r}"
            )
        names = [args.passes]
    else:
        names = [] if args.passes.strip().lower() == "none" else passes.resolve(args.passes)
    graph = user_model_graph(args, args.file)
    if graph is None and interop.is_nir(args.file):
        graph = interop.load_nir(args.file, args)
    elif graph is None:
        graph = from_checkpoint(
            args.file, weights=args.weights, snn_steps=args.snn_steps, img_size=args.img_size, unsafe=args.unsafe_load
        )
    if args.backend in interop.BACKENDS:
        print(interop.write(passes.run(graph, names), args, pipeline=None, inputs=[args.file]))
        return 0
    save = dict(force=args.force, protect=[args.file])
    if args.backend == "torch":
        from ..backends.torch_exec import save_compiled

        out = save_compiled(args.out, graph, mode=args.passes, **save)
        graph = ir.load(out)
    else:
        graph = passes.run(graph, names)
        out = ir.save(ir.check(graph), args.out, **save)
    print(
        f"wrote {out}: {len(graph.nodes)} nodes, {len(graph.params)} parameters, T={graph.T}, "
        f"backend {args.backend}, passes: {', '.join(e['pass'] for e in graph.meta.get('passes', [])) or 'none'}"
    )
    return 0


def add_inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help=".sdmc zip (or graph directory) written by 'sdmc compile'")
    add_json(p)
    p.add_argument("--nodes", action="store_true", help="with --json: include the per-node partition")


def run_inspect(args: argparse.Namespace) -> int:
    import json

    from .. import ir
    from ..passes import format_summary, summarize

    s = summarize(ir.load(args.file))
    if args.json:
        if not args.nodes:
            s["partition"].pop("nodes")
        print(json.dumps(s, indent=1))
    else:
        print(format_summary(s), end="")
    return 0


COMPILE = Command(
    "compile",
    "trace a model into the spiking IR, run passes, write a backend artefact",
    add_compile_arguments,
    run_compile,
    description="Trace a released .pt or native .safetensors model with the torch.fx frontend, "
    "run IR passes (checked after each), and save the .sdmc graph (--backend ir).",
)
INSPECT = Command(
    "inspect",
    "summarise a compiled .sdmc graph: ops, parameters, spike layers, static vs per-step work, "
    "host/neuromorphic partition, pass log",
    add_inspect_arguments,
    run_inspect,
)
