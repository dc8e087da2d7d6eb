"""Versioned on-disk form of a graph.

``graph.json`` = ``{"ir_version", "T", "meta", "nodes": [{"name", "op", "inputs", <attributes>}]}``
(attributes come from the node dataclass fields, so no op needs its own reader) and
``weights.safetensors`` holds ``graph.params``.  :func:`save` writes a zip (``.sdmc``) or a directory;
both are written atomically (a failed write leaves any previous file or directory untouched).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import atomic_dir, atomic_path
from .graph import IR_VERSION, OPS, Graph, IRError, Node

GRAPH_FILE, WEIGHTS_FILE = "graph.json", "weights.safetensors"


def node_to_dict(node: Node) -> dict[str, Any]:
    d: dict[str, Any] = {"name": node.name, "op": node.op, "inputs": list(node.inputs)}
    for k, v in node.attrs().items():
        d[k] = list(v) if isinstance(v, tuple) else v
    return d


def node_from_dict(d: dict[str, Any], where: str = "graph") -> Node:
    if not isinstance(d, dict) or "op" not in d or "name" not in d:
        raise IRError(f"{where}: a node entry needs 'name' and 'op', got {str(d)[:80]}")
    op = d["op"]
    cls = OPS.get(op)
    if cls is None:
        raise IRError(f"{where}: node {d['name']!r}: unknown op {op!r}; known ops: {sorted(OPS)}")
    fields = {f.name for f in cls.attr_fields()}
    extra = set(d) - fields - {"name", "op", "inputs"}
    if extra:
        raise IRError(f"{where}: node {d['name']!r} ({op}): unknown attribute(s) {sorted(extra)}")
    kw = {k: v for k, v in d.items() if k in fields}
    try:
        return cls(name=d["name"], inputs=tuple(d.get("inputs", ())), **kw)
    except TypeError as e:
        raise IRError(f"{where}: node {d['name']!r} ({op}): {e}") from None


def to_dict(graph: Graph) -> dict[str, Any]:
    """The JSON-able description of ``graph`` (no parameter values)."""
    return {
        "ir_version": IR_VERSION,
        "T": graph.T,
        "meta": graph.meta,
        "nodes": [node_to_dict(n) for n in graph.nodes.values()],
    }


def from_dict(d: dict[str, Any], params: dict[str, np.ndarray] | None = None, where: str = "graph") -> Graph:
    if not isinstance(d, dict) or "nodes" not in d or "T" not in d:
        raise IRError(f"{where}: not an sdmc IR graph (needs 'T' and 'nodes')")
    v = d.get("ir_version")
    if not isinstance(v, int):
        raise IRError(f"{where}: missing or invalid 'ir_version'")
    if v > IR_VERSION:
        raise IRError(f"{where}: ir_version {v} is newer than this sdmc understands ({IR_VERSION}); upgrade sdmc")
    g = Graph(int(d["T"]), params=params or {}, meta=d.get("meta") or {})
    for nd in d["nodes"]:
        g.add(node_from_dict(nd, where))
    return g


def _weights_bytes(params: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    # np.ascontiguousarray would turn 0-d arrays (BN num_batches_tracked) into 1-d ones
    return save({k: np.array(v, order="C", copy=not v.flags.c_contiguous) for k, v in params.items()})


def _weights_load(data: bytes, where: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    try:
        return dict(load(data))
    except Exception as e:  # safetensors raises its own error types
        raise IRError(f"{where}: unreadable {WEIGHTS_FILE}: {e}") from None


def save(
    graph: Graph, path: str | os.PathLike, *, force: bool = False, protect: Iterable[str | os.PathLike] = ()
) -> Path:
    """Write ``graph`` to ``path``: a zip if it ends in ``.sdmc``, else a directory.  Atomic.

    The directory form replaces ``path`` whole (:func:`sdmc.utils.atomic_dir`): only a graph directory sdmc
    wrote or an empty one, unless ``force``; never one that holds a path of ``protect`` (the inputs)."""
    path = Path(path)
    gjson = json.dumps(to_dict(graph), indent=1).encode()
    weights = _weights_bytes(graph.params)
    if path.suffix == ".sdmc":
        with atomic_path(path) as tmp:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
                z.writestr(GRAPH_FILE, gjson)
                z.writestr(WEIGHTS_FILE, weights)
        return path
    if path.exists() and not path.is_dir():
        raise IRError(f"save: {path} exists and is not a directory (use a '.sdmc' name for the zip form)")
    with atomic_dir(path, force=force, protect=protect) as tmp:
        (tmp / GRAPH_FILE).write_bytes(gjson)
        (tmp / WEIGHTS_FILE).write_bytes(weights)
    return path


def load(path: str | os.PathLike) -> Graph:
    """Read a graph written by :func:`save` (zip or directory)."""
    path = Path(path)
    where = str(path)
    if path.is_dir():
        try:
            gjson = (path / GRAPH_FILE).read_bytes()
            weights = (path / WEIGHTS_FILE).read_bytes()
        except FileNotFoundError as e:
            raise IRError(f"{where}: missing {Path(e.filename).name}") from None
    elif path.is_file():
        try:
            with zipfile.ZipFile(path) as z:
                gjson = z.read(GRAPH_FILE)
                weights = z.read(WEIGHTS_FILE)
        except zipfile.BadZipFile:
            raise IRError(f"{where}: not an .sdmc zip file") from None
        except KeyError as e:
            raise IRError(f"{where}: zip lacks {e.args[0]}") from None
    else:
        raise IRError(f"{where}: no such file or directory")
    try:
        d = json.loads(gjson)
    except json.JSONDecodeError as e:
        raise IRError(f"{where}/{GRAPH_FILE}: invalid JSON: {e}") from None
    return from_dict(d, _weights_load(weights, where), where)
