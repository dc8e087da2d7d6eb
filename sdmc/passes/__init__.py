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

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .. import ir
from ..errors import SdmcError


@dataclass(frozen=True)
class Pass:
    """A registered pass: ``fn(graph) -> graph`` (the checked, logging wrapper), its description, the passes it
    ``requires`` to have run before it and, for an analysis, the ``node.meta`` key it ``writes``."""

    name: str
    description: str
    fn: Callable[[ir.Graph], ir.Graph]
    analysis: bool = False
    requires: tuple[str, ...] = ()
    writes: str | None = None

    def __call__(self, graph: ir.Graph) -> ir.Graph:
        return self.fn(graph)


PASSES: dict[str, Pass] = {}


def register_pass(
    name: str, description: str, *, analysis: bool = False, requires: Iterable[str] = (), writes: str | None = None
):
    """Decorator: register ``body(graph_copy) -> dict | None`` (details for the log) as pass ``name``.

    The decorated name becomes the public function ``graph -> graph``; ``body`` gets a private copy
    whose types are inferred, may edit it freely (never the shared parameter arrays in place), and
    returns details to log.  ``requires``: passes that must run before this one in a pipeline (checked by
    :func:`resolve`).  ``writes``: the one ``node.meta`` key an analysis fills; two analyses cannot share one.
    """

    def deco(body: Callable[[ir.Graph], dict | None]) -> Callable[[ir.Graph], ir.Graph]:
        if name in PASSES:
            raise SdmcError(f"pass {name!r} registered twice")
        owner = next((p.name for p in PASSES.values() if writes is not None and p.writes == writes), None)
        if owner is not None:
            raise SdmcError(f"pass {name!r}: node.meta[{writes!r}] is already written by pass {owner!r}")

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
        PASSES[name] = Pass(name, description, wrapper, analysis, tuple(requires), writes)
        return wrapper

    return deco


PIPELINES: dict[str, tuple[str, ...]] = {
    "inference": ("fold_bn", "fuse_tsm", "hoist_static", "dead_code"),
    "train": ("hoist_affine",),
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


def resolve(passes: str | Iterable[str], done: Iterable[str] = ()) -> list[str]:
    """Pass names for a pipeline name, a comma-separated list, or an iterable of pass / pipeline names.

    Every pass's prerequisites (``Pass.requires``) must come earlier in the list or be in ``done`` (passes that
    already ran, e.g. from a graph's log); otherwise one :class:`SdmcError` names the pass and what it lacks.
    """
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
    ran = set(done)
    for p in out:
        missing = [r for r in PASSES[p].requires if r not in ran]
        if missing:
            raise SdmcError(
                f"pass {p!r} needs {', '.join(map(repr, missing))} to run before it; add "
                f"{'it' if len(missing) == 1 else 'them'} earlier in the list (or use the 'neuromorphic' pipeline)"
            )
        ran.add(p)
    return out


def run(graph: ir.Graph, passes: str | Iterable[str] = "inference") -> ir.Graph:
    """Apply ``passes`` (names or pipeline names, see :func:`resolve`) in order; returns a new graph.
    Prerequisites already in the graph's pass log count as done."""
    done = (
        [e.get("pass") for e in graph.meta.get("passes", []) if isinstance(e, dict)]
        if isinstance(graph, ir.Graph)
        else []
    )
    for name in resolve(passes, done):
        graph = PASSES[name](graph)
    return graph


from . import rewrite  # noqa: E402, F401  (registers the passes; .analysis below too)
from .analysis import cost, format_summary, infer, partition, summarize  # noqa: E402
from .rewrite import (  # noqa: E402
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
