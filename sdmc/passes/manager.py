"""The pass manager: the :class:`Pass` registry, :func:`register_pass`, named :data:`PIPELINES`, prerequisite
checking in :func:`resolve` and :func:`run` (see :mod:`sdmc.passes` for the whole story)."""

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
    requires: tuple[str, ...] = ()
    writes: str | None = None

    @property
    def analysis(self) -> bool:
        """An analysis names the ``node.meta`` key it writes and changes nothing else (checked on every run)."""
        return self.writes is not None

    def __call__(self, graph: ir.Graph) -> ir.Graph:
        return self.fn(graph)


PASSES: dict[str, Pass] = {}


def register_pass(name: str, description: str, *, requires: Iterable[str] = (), writes: str | None = None):
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
            ir.check(graph)  # also infers the types, which the copy carries in its nodes' meta
            g = graph.copy()
            g.meta = {
                k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
                for k, v in g.meta.items()
            }
            before = (len(g.nodes), len(g.params))
            analysis = writes is not None
            shape = _structure(g) if analysis else None
            details = body(g) or {}
            if analysis and _structure(g) != shape:
                raise SdmcError(f"analysis pass {name!r} changed the graph (an analysis only writes node.meta)")
            try:
                ir.check(g)
            except SdmcError as e:
                raise SdmcError(f"pass {name!r} produced an invalid graph: {e}") from e
            entry = {"pass": name, "nodes": [before[0], len(g.nodes)], "params": [before[1], len(g.params)]}
            entry.update(details)
            g.meta["passes"] = list(g.meta.get("passes", [])) + [entry]
            return g

        wrapper.description = description  # type: ignore[attr-defined]
        PASSES[name] = Pass(name, description, wrapper, tuple(requires), writes)
        return wrapper

    return deco


def _structure(g: ir.Graph) -> tuple:
    """What an analysis may not change: every node's name, op, inputs and attributes, and the parameter names
    and arrays (by identity: an analysis must not replace them)."""
    nodes = tuple((k, repr(n)) for k, n in g.nodes.items())
    return nodes, tuple((k, id(v)) for k, v in g.params.items())


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
