"""``sdmc info``: describe a checkpoint (inferred architecture, parameters, provenance)."""

from __future__ import annotations

import argparse

from .base import Command, add_json, add_unsafe_load, add_weights


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="released .pt checkpoint or native .safetensors model")
    add_weights(p, help="which weights of a training checkpoint to describe (default: ema if present)")
    add_json(p)
    add_unsafe_load(p)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import describe

    print(describe(args.file, weights=args.weights, as_json=args.json, unsafe=args.unsafe_load))
    return 0


INFO = Command("info", "describe a checkpoint: architecture (inferred), parameters, provenance", add_arguments, run)
