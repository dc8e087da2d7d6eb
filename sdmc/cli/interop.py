"""The ONNX and NIR targets of ``sdmc export`` / ``sdmc compile`` (:mod:`sdmc.backends.onnx`,
:mod:`sdmc.backends.nir`), and ``.nir`` files as model inputs (:mod:`sdmc.frontends.nir`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SdmcError
from .base import count, positive

BACKENDS = ("onnx", "nir")


def add_interop_options(p: argparse.ArgumentParser, *, t: bool) -> None:
    """``--onnx-form``, ``--nir-ext``, ``--dt`` (and ``--t`` where the command has none)."""
    g = p.add_argument_group("ONNX / NIR (--backend onnx|nir, and .nir model files)")
    g.add_argument(
        "--onnx-form",
        choices=["full", "step"],
        default="full",
        help="full: all T steps in one call (default); step: one SNN step, membrane state as inputs/outputs",
    )
    g.add_argument(
        "--nir-ext",
        action="store_true",
        help="NIR: keep ops NIR lacks (upsample, Swish, TSM, ...) as sdmc extension nodes instead of refusing",
    )
    add_dt(g)
    if t:
        g.add_argument(
            "--t", type=count, default=None, dest="step", help="NIR: the diffusion step folded into the biases"
        )


def add_dt(p) -> None:
    """``--dt``: the time step of a ``.nir`` file (an input model, or the NIR export)."""
    p.add_argument("--dt", type=positive, default=None, help="NIR time step (default: recorded by sdmc, else 1e-4)")


def is_nir(path) -> bool:
    return Path(path).suffix == ".nir"


def load_nir(path, args: argparse.Namespace):
    """A ``.nir`` file as an IR graph (T from ``--snn-steps`` or sdmc's record); NaN/Inf parameters are refused,
    naming the first, as for every other model file (``--allow-nonfinite`` loads them)."""
    from ..errors import IRError
    from ..frontends.nir import from_nir
    from ..validate import check_finite

    graph = from_nir(path, T=args.snn_steps, dt=args.dt)
    check_finite(graph.params, str(path), IRError)
    return graph


def is_ours(backend: str):
    """The test that an existing ``-o`` file is one sdmc wrote, for ``backend`` (onnx | nir)."""
    if backend == "onnx":
        from ..backends.onnx import is_sdmc_onnx

        return is_sdmc_onnx
    from ..backends.nir import is_sdmc_nir

    return is_sdmc_nir


def check_out(args: argparse.Namespace, inputs: list) -> None:
    """Before the work: ``args.out`` may be written (not an input, not a directory, absent or sdmc's, or
    ``--force``); the writers check again under the output lock."""
    from ..utils import check_file_replaceable

    check_file_replaceable(args.out, is_ours(args.backend), force=args.force, protect=inputs)


def write(graph, args: argparse.Namespace, pipeline: str | list[str] | None, inputs: list) -> str:
    """Write ``graph`` to ``args.out`` for ``args.backend`` (onnx | nir), never over ``inputs`` nor over a file sdmc
    did not write (unless ``--force``); returns the line to print."""
    out = Path(args.out)
    save = dict(force=args.force, protect=inputs)
    if args.backend == "onnx":
        from ..backends.onnx import save_onnx

        save_onnx(graph, out, form=args.onnx_form, pipeline=pipeline, **save)
        return f"wrote {out}: ONNX opset 17, {args.onnx_form} form, T={graph.T} (run: sdmc sample {out} ...)"
    from ..backends.nir import DT, save_nir, sdmc_meta, to_nir

    ng = to_nir(graph, t=args.step, dt=args.dt or DT, extensions=args.nir_ext)
    save_nir(ng, out, **save)
    meta = sdmc_meta(ng)
    ext = sorted({e["op"] for e in meta["extensions"]})
    folded = f", diffusion step t={meta['t']} folded into the biases" if meta["t"] is not None else ""
    extra = f", sdmc extension nodes: {', '.join(ext)}" if ext else ""
    return f"wrote {out}: NIR graph, {len(ng.nodes)} nodes, dt={meta['dt']}, T={meta['T']}{folded}{extra}"


def refuse_lava_options(args: argparse.Namespace, defaults: dict) -> None:
    """Options that only the Lava target reads, given with ``--backend onnx|nir``: one error naming them."""
    given = [f"--{k.replace('_', '-')}" for k, v in defaults.items() if getattr(args, k, v) != v]
    if given:
        raise SdmcError(f"{', '.join(given)}: only for --backend lava, not --backend {args.backend}")
