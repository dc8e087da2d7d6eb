"""Passes over the spiking graph IR: a registry, named pipelines and :func:`run`.

A pass is a plain function ``graph -> graph`` registered with :func:`register_pass` (name + one-line
description).  The registered wrapper never mutates its input: it copies the graph, hands the copy to
the pass body, checks the result (:func:`sdmc.ir.check`) and appends an entry to the pass log
``graph.meta['passes']`` (``{"pass", "nodes": [before, after], "params": [before, after], ...details}``).
Analyses are passes that only write metadata (``node.meta``; a JSON summary in ``graph.meta``).

    >>> from sdmc import passes
    >>> g2 = passes.run(graph, "inference")                  # a named pipeline
    >>> g3 = passes.run(graph, ["fold_bn", "dead_code"])     # or a list of pass names

Pipelines: ``inference`` = fold_bn, fuse_tsm, hoist_static, dead_code; ``neuromorphic`` = inference +
split_concat, compose_residual, dead_code, partition.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .. import ir
from ..errors import SdmcError


@dataclass(frozen=True)
class Pass:
    """A registered pass: ``fn(graph) -> graph`` (the checked, logging wrapper), its body and description."""

    name: str
    description: str
    fn: Callable[[ir.Graph], ir.Graph]
    analysis: bool = False

    def __call__(self, graph: ir.Graph) -> ir.Graph:
        return self.fn(graph)


PASSES: dict[str, Pass] = {}


def register_pass(name: str, description: str, *, analysis: bool = False):  # noqa: F811
    """Decorator: register ``body(graph_copy) -> dict | None`` (details for the log) as pass ``name``.

    The decorated name becomes the public function ``graph -> graph``; ``body`` gets a private copy
    whose types are inferred, may edit it freely (never the shared parameter arrays in place), and
    returns details to log.
    """

    def deco(body: Callable[[ir.Graph], dict | None]) -> Callable[[ir.Graph], ir.Graph]:
        if name in PASSES:
            raise SdmcError(f"pass {name!r} registered twice")

        @functools.wraps(body)
        def wrapper(graph: ir.Graph) -> ir.Graph:
            if not isinstance(graph, ir.Graph):
                raise SdmcError(f"pass {name!r}: expected an sdmc.ir.Graph, got {type(graph).__name__}")
            ir.check(graph)
            g = graph.copy()
            g.meta = {
                k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
                for k, v in g.meta.items()
            }
            ir.infer_types(g)
            before = (len(g.nodes), len(g.params))
            details = body(g) or {}
            try:
                ir.check(g)
            except SdmcError as e:
                raise SdmcError(f"pass {name!r} produced an invalid graph: {e}") from e
            entry = {"pass": name, "nodes": [before[0], len(g.nodes)], "params": [before[1], len(g.params)]}
            entry.update(details)
            g.meta["passes"] = list(g.meta.get("passes", [])) + [entry]
            return g

        wrapper.description = description  # type: ignore[attr-defined]
        PASSES[name] = Pass(name, description, wrapper, analysis)
        return wrapper

    return deco


PIPELINES: dict[str, tuple[str, ...]] = {
    "inference": ("fold_bn", "fuse_tsm", "hoist_static", "dead_code"),
    "neuromorphic": (
        "fold_bn",
        "fuse_tsm",
        "hoist_static",
        "dead_code",
        "split_concat",
        "compose_residual",
        "dead_code",
        "partition",
    ),
}


def resolve(passes: str | Iterable[str]) -> list[str]:
    """Pass names for a pipeline name, a comma-separated list, or an iterable of pass / pipeline names."""
    items = passes.split(",") if isinstance(passes, str) else list(passes)
    out: list[str] = []
    for p in items:
        p = p.strip()
        if not p:
            continue
        if p in PIPELINES:
            out.extend(PIPELINES[p])
        elif p in PASSES:
            out.append(p)
        else:
            raise SdmcError(f"unknown pass or pipeline {p!r}; passes: {sorted(PASSES)}; pipelines: {sorted(PIPELINES)}")
    return out


def run(graph: ir.Graph, passes: str | Iterable[str] = "inference") -> ir.Graph:
    """Apply ``passes`` (names or pipeline names, see :func:`resolve`) in order; returns a new graph."""
    for name in resolve(passes):
        graph = PASSES[name](graph)
    return graph


from . import analysis, rewrite  # noqa: E402, F401, F811  (registers the passes)
from .analysis import cost, format_summary, infer, partition, summarize  # noqa: E402
from .rewrite import (  # noqa: E402
    compose_residual,
    dead_code,
    fold_bn,
    fold_bn_weights,
    fuse_tsm,
    fuse_tsm_weights,
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
    "dead_code",
    "split_concat",
    "compose_residual",
    "partition",
    "infer",
    "cost",
    "summarize",
    "format_summary",
]
