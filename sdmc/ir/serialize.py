"""Versioned on-disk form of a graph.

``graph.json`` = ``{"ir_version", "T", "meta", "nodes": [{"name", "op", "inputs", <attributes>}]}``
(attributes come from the node dataclass fields, so no op needs its own reader) and
``weights.safetensors`` holds ``graph.params``.  :func:`save` writes a zip (``.sdmc``) or a directory;
both are written atomically (a failed write leaves any previous file or directory untouched).
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import atomic_dir, atomic_path
from ..validate import LIMITS, check_finite, check_limit, check_value, parse_json, read_member, type_hints
from .graph import IR_VERSION, OPS, Graph, IRError, Node

GRAPH_FILE, WEIGHTS_FILE = "graph.json", "weights.safetensors"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # every member's time stamp: one graph gives the same .sdmc bytes at any time


def node_to_dict(node: Node) -> dict[str, Any]:
    d: dict[str, Any] = {"name": node.name, "op": node.op, "inputs": list(node.inputs)}
    for k, v in node.attrs().items():
        d[k] = list(v) if isinstance(v, tuple) else v
    return d


# Bounds on attribute values read from a file, by field name, beyond the annotation's type (a node class may also
# declare ``range`` in a field's metadata, :func:`sdmc.validate.spec`; both apply).  A zero stride divided by
# zero; a huge upsampling factor or shape is caught by the element count below.
LOAD_RANGES: dict[str, dict[str, Any]] = {
    "stride": {"range": (1, None)},
    "dilation": {"range": (1, None)},
    "padding": {"range": (0, None)},
    "groups": {"range": (1, None)},
    "num_groups": {"range": (1, None)},
    "scale": {"range": (1, 64)},  # Upsample's integer factor (a parameter name elsewhere: not a number)
    "eps": {"range": (0, None), "open_low": True},
    "tau": {"range": (1, None)},
    "shape": {"range": (1, None), "length": (0, 8)},
}


def node_from_dict(d: dict[str, Any], where: str = "graph") -> Node:
    """One node from its JSON entry; the op must be registered and every attribute must have the type its
    field declares (and lie in :data:`LOAD_RANGES`), else one :class:`IRError` naming the node."""
    if not isinstance(d, dict) or "op" not in d or "name" not in d:
        raise IRError(f"{where}: a node entry needs 'name' and 'op', got {str(d)[:80]}")
    name = check_value(d["name"], str, {}, f"{where}: node name", IRError)
    op = d["op"]
    cls = OPS.get(op) if isinstance(op, str) else None
    if cls is None:
        raise IRError(f"{where}: node {name!r}: unknown op {str(op)[:40]!r}; known ops: {sorted(OPS)}")
    fields = {f.name: f for f in cls.attr_fields()}
    extra = set(d) - set(fields) - {"name", "op", "inputs"}
    if extra:
        raise IRError(f"{where}: node {name!r} ({op}): unknown attribute(s) {sorted(extra)}")
    hints = type_hints(cls)
    at = f"{where}: node {name!r} ({op})"
    inputs = check_value(d.get("inputs", ()), tuple[str, ...], {}, f"{at}: inputs", IRError)
    kw = {
        k: check_value(v, hints[k], {**fields[k].metadata, **LOAD_RANGES.get(k, {})}, f"{at}: {k}", IRError)
        for k, v in d.items()
        if k in fields
    }
    try:
        return cls(name=name, inputs=inputs, **kw)
    except (TypeError, ValueError) as e:
        raise IRError(f"{at}: {e}") from None


def to_dict(graph: Graph) -> dict[str, Any]:
    """The JSON-able description of ``graph`` (no parameter values)."""
    return {
        "ir_version": IR_VERSION,
        "T": graph.T,
        "meta": graph.meta,
        "nodes": [node_to_dict(n) for n in graph.nodes.values()],
    }


def from_dict(d: dict[str, Any], params: dict[str, np.ndarray] | None = None, where: str = "graph") -> Graph:
    """The graph of a ``graph.json`` object: ``T`` and the node count are bounded (:data:`sdmc.validate.LIMITS`)
    before any node is built."""
    if not isinstance(d, dict) or "nodes" not in d or "T" not in d:
        raise IRError(f"{where}: not an sdmc IR graph (needs 'T' and 'nodes')")
    v = d.get("ir_version")
    if not isinstance(v, int) or isinstance(v, bool):
        raise IRError(f"{where}: missing or invalid 'ir_version'")
    if v > IR_VERSION:
        raise IRError(f"{where}: ir_version {v} is newer than this sdmc understands ({IR_VERSION}); upgrade sdmc")
    T = check_value(d["T"], int, {"range": (1, LIMITS.snn_steps), "limit": True}, f"{where}: T", IRError)
    meta = check_value(d.get("meta") or {}, dict, {}, f"{where}: meta", IRError)
    nodes = check_value(d["nodes"], list, {}, f"{where}: nodes", IRError)
    check_limit(f"{where}: nodes", len(nodes), LIMITS.graph_nodes)
    g = Graph(T, params=params or {}, meta=meta)
    for nd in nodes:
        g.add(node_from_dict(nd, where))
    return g


def check_size(g: Graph, where: str) -> None:
    """Refuse a graph whose values (one sample, every node, every step) exceed ``LIMITS.graph_elements``.  The
    shapes come from type inference; a graph that fails it is left to the caller's :func:`sdmc.ir.check`."""
    from .check import check

    try:
        check(g)
    except IRError:
        return
    except Exception as e:  # noqa: BLE001 - a hostile graph must not crash inference: one line naming it
        raise IRError(f"{where}: inconsistent graph ({type(e).__name__}: {e})") from None
    total = 0
    for node in g.nodes.values():
        t = node.type
        total += math.prod(t.shape) * (g.T if t.per_step else 1)
    check_limit(f"{where}: values of one sample (all nodes and steps)", total, LIMITS.graph_elements)


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
    """Write ``graph`` to ``path``: a zip if it ends in ``.sdmc`` (byte-for-byte reproducible), else a directory.
    Atomic.

    The directory form replaces ``path`` whole (:func:`sdmc.utils.atomic_dir`): only a graph directory sdmc
    wrote or an empty one, unless ``force``; never one that holds a path of ``protect`` (the inputs)."""
    path = Path(path)
    gjson = json.dumps(to_dict(graph), indent=1).encode()
    weights = _weights_bytes(graph.params)
    if path.suffix == ".sdmc":
        with atomic_path(path) as tmp:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
                for name, data in ((GRAPH_FILE, gjson), (WEIGHTS_FILE, weights)):
                    z.writestr(zipfile.ZipInfo(name, date_time=ZIP_DATE), data)
        return path
    if path.exists() and not path.is_dir():
        raise IRError(f"save: {path} exists and is not a directory (use a '.sdmc' name for the zip form)")
    with atomic_dir(path, force=force, protect=protect) as tmp:
        (tmp / GRAPH_FILE).write_bytes(gjson)
        (tmp / WEIGHTS_FILE).write_bytes(weights)
    return path


def _read_file(path: Path, limit: int, where: str) -> bytes:
    try:
        size = path.stat().st_size
        check_limit(f"{where}/{path.name}: size", size, limit, " bytes")
        return path.read_bytes()
    except FileNotFoundError:
        raise IRError(f"{where}: missing {path.name}") from None
    except OSError as e:
        raise IRError(f"{where}/{path.name}: cannot read: {e.strerror or e}") from None


def load(path: str | os.PathLike, allow_nonfinite: bool | None = None) -> Graph:
    """Read a graph written by :func:`save` (zip or directory).

    Everything is bounded before it is allocated: member sizes (from the zip header, and while reading),
    ``T``, the node count, every attribute's type and range, the element count of the values; a parameter
    holding NaN or Inf is refused, naming it, unless ``allow_nonfinite``."""
    path = Path(path)
    where = str(path)
    if path.is_dir():
        gjson = _read_file(path / GRAPH_FILE, LIMITS.graph_json_bytes, where)
        weights = _read_file(path / WEIGHTS_FILE, LIMITS.weights_bytes, where)
    elif path.exists():
        try:
            with zipfile.ZipFile(path) as z:
                gjson = read_member(z, GRAPH_FILE, LIMITS.graph_json_bytes, where, IRError)
                weights = read_member(z, WEIGHTS_FILE, LIMITS.weights_bytes, where, IRError)
        except zipfile.BadZipFile as e:
            raise IRError(f"{where}: not an .sdmc zip file ({e})") from None
        except OSError as e:
            raise IRError(f"{where}: cannot read: {e.strerror or e}") from None
        except (EOFError, ValueError, NotImplementedError, zlib.error) as e:  # a corrupt or exotic member
            raise IRError(f"{where}: unreadable zip member ({type(e).__name__}: {e})") from None
    else:
        raise IRError(f"{where}: no such file or directory")
    d = parse_json(gjson, f"{where}/{GRAPH_FILE}", IRError, limit=LIMITS.graph_json_bytes)
    g = from_dict(d, _weights_load(weights, where), where)
    check_finite(g.params, f"{where}/{WEIGHTS_FILE}", IRError, allow=allow_nonfinite)
    check_size(g, where)
    return g
