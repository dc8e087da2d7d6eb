"""Passes over the spiking graph IR: a registry, named pipelines with prerequisites, and :func:`run`
(the pass manager; anchor: ``torch.fx.passes.infra.pass_manager``).

A pass is a plain function ``graph -> graph`` registered with :func:`register_pass` (name, one-line
description, the passes it ``requires`` to have run before it, and for an analysis the one ``node.meta`` key
it ``writes``).  The registered wrapper never mutates its input: it copies the graph, hands the copy to the
pass body, checks the result (:func:`sdmc.ir.check`) and appends an entry to the pass log
``graph.meta['passes']`` (``{"pass", "nodes": [before, after], "params": [before, after], ...details}``).
Analyses are passes that only write metadata (their ``node.meta`` key; a JSON summary in ``graph.meta``).

    >>> from sdmc import passes
    >>> g2 = passes.run(graph, "inference")                  # a named pipeline
    >>> g3 = passes.run(graph, ["fold_bn", "dead_code"])     # or a list of pass names

Pipelines: ``inference`` = fold_bn, fuse_tsm, hoist_static, dead_code; ``train`` = hoist_affine (keeps the
training-mode outputs: BN stays, batch statistics unchanged); ``neuromorphic`` = inference + split_concat,
compose_residual, dead_code, partition.  :func:`resolve` refuses a list in which a pass runs before its
prerequisites (``compose_residual`` needs ``fuse_tsm`` and ``split_concat``), counting the passes already in
the graph's log when :func:`run` is given a graph.
"""

from __future__ import annotations

from .analysis import cost, format_summary, infer, partition, summarize  # (importing registers the passes)
from .manager import PASSES, PIPELINES, Pass, register_pass, resolve, run
from .rewrite import (
    compose_residual,
    dead_code,
    fold_bn,
    fold_bn_weights,
    fuse_tsm,
    fuse_tsm_weights,
    hoist_affine,
    hoist_static,
    split_concat,
)

__all__ = [
    "Pass",
    "PASSES",
    "PIPELINES",
    "register_pass",
    "resolve",
    "run",
    "fold_bn",
    "fold_bn_weights",
    "fuse_tsm",
    "fuse_tsm_weights",
    "hoist_static",
    "hoist_affine",
    "dead_code",
    "split_concat",
    "compose_residual",
    "partition",
    "infer",
    "cost",
    "summarize",
    "format_summary",
]
