"""Text form of a graph: :func:`format_graph` prints it, :func:`parse` reads it back.

Example::

    sdmc-ir 1 T=4
    meta {"arch": "sdm"}
    # param conv.tsmconv.weight float32 [8,3,3,3]
    %x : real static float32 [3,16,16] = input() {shape=(3, 16, 16), dtype='float32', kind='real', timing='static'}
    %conv.tsmconv : real static float32 [8,16,16] = conv2d(%x) {weight='conv.tsmconv.weight', bias=..., ...}

One node per line; ``: <type>`` appears when types were inferred and is parsed back into
``meta['type']``; ``#`` lines are comments.  ``parse(format_graph(g), g.params) == g``.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from .graph import IR_VERSION, OPS, Graph, IRError, ValueType

_HEADER = re.compile(r"^sdmc-ir\s+(\d+)\s+T=(\d+)\s*$")
_LINE = re.compile(
    r"^%(?P<name>[A-Za-z0-9_.]+)\s*(?::\s*(?P<type>[^=]+?))?\s*=\s*(?P<op>[a-z_0-9]+)"
    r"\((?P<ins>[^)]*)\)\s*(?:\{(?P<attrs>.*)\})?\s*$"
)


def format_graph(graph: Graph, params: bool = True) -> str:
    """Readable, parseable text; nodes in insertion order; ``params`` adds a comment per parameter
    (:meth:`Graph.format`, which ``print(graph)`` uses too)."""
    return graph.format(params)


def _attrs(text: str, where: str) -> dict[str, Any]:
    try:
        call = ast.parse(f"f({text})", mode="eval").body
        assert isinstance(call, ast.Call) and not call.args
        return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError, AssertionError):
        raise IRError(f"{where}: cannot parse attributes {{{text}}}") from None


def parse(text: str, params: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Read a graph printed by :func:`format_graph`; ``params`` supplies the parameter store."""
    lines = [(i + 1, ln.strip()) for i, ln in enumerate(text.splitlines())]
    lines = [(i, ln) for i, ln in lines if ln and not ln.startswith("#")]
    if not lines or not _HEADER.match(lines[0][1]):
        raise IRError("text IR: first line must be 'sdmc-ir <version> T=<steps>'")
    m = _HEADER.match(lines[0][1])
    if int(m.group(1)) > IR_VERSION:
        raise IRError(f"text IR: ir_version {m.group(1)} is newer than this sdmc understands ({IR_VERSION})")
    g = Graph(int(m.group(2)), params=params or {})
    for lineno, ln in lines[1:]:
        where = f"text IR line {lineno}"
        if ln.startswith("meta "):
            try:
                g.meta = json.loads(ln[5:])
            except json.JSONDecodeError as e:
                raise IRError(f"{where}: invalid meta JSON: {e}") from None
            continue
        lm = _LINE.match(ln)
        if not lm:
            raise IRError(f"{where}: expected '%name = op(%in, ...) {{attrs}}', got {ln[:80]!r}")
        cls = OPS.get(lm["op"])
        if cls is None:
            raise IRError(f"{where}: node {lm['name']!r}: unknown op {lm['op']!r}")
        ins = [s.strip() for s in lm["ins"].split(",") if s.strip()]
        if any(not s.startswith("%") for s in ins):
            raise IRError(f"{where}: node {lm['name']!r}: inputs must be written %name, got {lm['ins']!r}")
        attrs = _attrs(lm["attrs"], where) if lm["attrs"] else {}
        known = {f.name for f in cls.attr_fields()}
        if set(attrs) - known:
            raise IRError(f"{where}: node {lm['name']!r} ({cls.op}): unknown attribute(s) {sorted(set(attrs) - known)}")
        node = cls(name=lm["name"], inputs=tuple(s[1:] for s in ins), **attrs)
        if lm["type"]:
            node.meta["type"] = ValueType.parse(lm["type"])
        g.add(node)
    return g
