"""Core of the spiking graph IR: value types, the node base class, the op registry and :class:`Graph`.

A graph is a set of named nodes; every node produces exactly one value, named like the node, and reads
the values named in ``node.inputs``.  Parameters are not stored in nodes: a node names them (fields
declared with :func:`param`) and the arrays live in ``graph.params`` under the source model's
``state_dict`` names.

Value layout at run time (``T`` = ``graph.T`` SNN steps, ``B`` = batch)::

    static    array [B, *shape]       same at every step; broadcasts over T
    per-step  array [T, B, *shape]
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import networkx as nx
import numpy as np

from ..errors import IRError
from .families import Family

IR_VERSION = 1

SPIKE, REAL, GRADED = "spike", "real", "graded"
KINDS = (SPIKE, REAL, GRADED)
STATIC, PER_STEP = "static", "per-step"
TIMINGS = (STATIC, PER_STEP)
DTYPES = ("float16", "bfloat16", "float32", "float64", "int64", "int32")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


@dataclass(frozen=True)
class ValueType:
    """Type of one value: per-sample ``shape`` (no T, no B), ``dtype``, ``kind`` and ``timing``.

    ``kind``: ``spike`` (binary 0/1), ``graded`` (integer- or scale-valued spike payloads, e.g. a sum
    of spikes) or ``real``.  ``timing``: ``static`` ([B, *shape]) or ``per-step`` ([T, B, *shape]).
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    kind: str = REAL
    timing: str = STATIC

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.kind not in KINDS:
            raise IRError(f"value type: unknown kind {self.kind!r}; choose one of {KINDS}")
        if self.timing not in TIMINGS:
            raise IRError(f"value type: unknown timing {self.timing!r}; choose one of {TIMINGS}")
        if self.dtype not in DTYPES:
            raise IRError(f"value type: unknown dtype {self.dtype!r}; choose one of {DTYPES}")
        if any(s < 1 for s in self.shape):
            raise IRError(f"value type: every dimension must be >= 1, got shape {self.shape}")

    @property
    def per_step(self) -> bool:
        return self.timing == PER_STEP

    def full_shape(self, T: int, B: int) -> tuple[int, ...]:
        """The run-time array shape: ``[T, B, *shape]`` (per-step) or ``[B, *shape]`` (static)."""
        return ((T, B) if self.per_step else (B,)) + self.shape

    def __str__(self) -> str:
        return f"{self.kind} {self.timing} {self.dtype} [{','.join(map(str, self.shape))}]"

    @classmethod
    def parse(cls, text: str) -> ValueType:
        m = re.fullmatch(r"\s*(\w+)\s+([\w-]+)\s+(\w+)\s+\[([0-9,\s]*)\]\s*", text)
        if not m:
            raise IRError(f"cannot parse value type {text!r}; expected e.g. 'real per-step float32 [8,16,16]'")
        dims = tuple(int(d) for d in m.group(4).split(",") if d.strip())
        return cls(dims, m.group(3), m.group(1), m.group(2))


def param(*, optional: bool = False, default: Any = dataclasses.MISSING) -> Any:
    """Declare a node field that names an entry of ``graph.params`` (``None`` allowed when optional)."""
    if optional and default is dataclasses.MISSING:
        default = None
    return field(default=default, metadata={"param": True, "optional": optional})


def pair_attr(default: tuple[int, int]) -> Any:
    """Declare a 2-d geometry field (stride, padding, dilation): an int or a pair, stored as a pair of ints."""
    return field(default=default, metadata={"pair": True})


def pair(v: Any, what: str = "value") -> tuple[int, int]:
    """``v`` as a pair of ints: ``3 -> (3, 3)``, ``[2, 1] -> (2, 1)``; anything else is an :class:`IRError`."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return (int(v), int(v))
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, (int, np.integer)) for x in v):
        return (int(v[0]), int(v[1]))
    raise IRError(f"{what} must be an int or a pair of ints, got {v!r}")


def _freeze(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


OPS: dict[str, type[Node]] = {}


def register(cls: type[Node]) -> type[Node]:
    """Class decorator: make an op known to the (de)serialisers and the text parser by ``cls.op``, and add
    it to the op families its class lists (``cls.families``, see :mod:`sdmc.ir.families`)."""
    if cls.op in OPS and OPS[cls.op] is not cls:
        raise IRError(f"op name {cls.op!r} registered twice ({OPS[cls.op].__name__}, {cls.__name__})")
    OPS[cls.op] = cls
    for fam in cls.families:
        fam.add(cls.op)
    return cls


@dataclass(frozen=True, kw_only=True)
class Node:
    """Base of every IR node: ``name`` (also the name of its output value) and ``inputs`` (value names).

    Subclasses are frozen dataclasses holding only attributes; ``meta`` is a free dict that analyses
    fill (``meta['type']``: the inferred :class:`ValueType`); it is not part of equality.  ``families``:
    the op families (:mod:`sdmc.ir.families`) the op belongs to.  Fields declared with :func:`pair_attr`
    are stored as pairs of ints whatever was passed (``stride=2`` -> ``(2, 2)``).
    """

    op: ClassVar[str] = ""
    arity: ClassVar[int | None] = 1  # number of inputs; None = one or more
    families: ClassVar[tuple[Family, ...]] = ()

    name: str
    inputs: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.metadata.get("pair"):
                object.__setattr__(self, f.name, pair(v, f"node {self.name!r} ({self.op}): {f.name}"))
            elif isinstance(v, list) or (isinstance(v, tuple) and f.name != "meta"):
                object.__setattr__(self, f.name, _freeze(v))

    # ---- reflection used by serialisers, printers and passes
    @classmethod
    def attr_fields(cls) -> list[dataclasses.Field]:
        """The op's own fields (not name / inputs / meta), in declaration order."""
        return [f for f in dataclasses.fields(cls) if f.name not in ("name", "inputs", "meta")]

    def attrs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in self.attr_fields()}

    def param_refs(self) -> dict[str, str]:
        """``{field: parameter name}`` for every parameter this node reads (unset optional ones omitted)."""
        return {
            f.name: getattr(self, f.name)
            for f in self.attr_fields()
            if f.metadata.get("param") and getattr(self, f.name) is not None
        }

    def replace(self, **changes: Any) -> Node:
        """A copy with ``changes`` applied and empty ``meta`` (types must be re-inferred)."""
        return dataclasses.replace(self, meta={}, **changes)

    @property
    def type(self) -> ValueType:
        """The inferred output type (run :func:`sdmc.ir.infer_types` or :func:`sdmc.ir.check` first)."""
        t = self.meta.get("type")
        if t is None:
            raise IRError(f"node {self.name!r} ({self.op}): no inferred type; run sdmc.ir.check(graph) first")
        return t

    def format(self) -> str:
        """One line of the text form: ``%name : <type> = op(%in, ...) {attr=value, ...}`` (type once inferred)."""
        t = self.meta.get("type")
        head = f"%{self.name}" + (f" : {t}" if t is not None else "")
        ins = ", ".join(f"%{i}" for i in self.inputs)
        attrs = ", ".join(f"{k}={v!r}" for k, v in self.attrs().items())
        return f"{head} = {self.op}({ins})" + (f" {{{attrs}}}" if attrs else "")

    # ---- type rules
    def infer(self, ins: list[ValueType], graph: Graph) -> ValueType:  # pragma: no cover - abstract
        raise NotImplementedError

    def fail(self, msg: str) -> IRError:
        """An :class:`IRError` whose message names this node and its op."""
        return IRError(f"node {self.name!r} ({self.op}): {msg}")

    def param_shape(self, graph: Graph, fld: str) -> tuple[int, ...]:
        """Shape of the parameter named by field ``fld``; a missing entry is an error naming this node."""
        key = getattr(self, fld)
        if key not in graph.params:
            raise self.fail(f"missing parameter {key!r} (field {fld!r}) in the graph's parameter store")
        return tuple(graph.params[key].shape)


def timing_of(*types: ValueType) -> str:
    """``per-step`` if any input is per-step, else ``static``."""
    return PER_STEP if any(t.per_step for t in types) else STATIC


class _NodeTable(dict):
    """``graph.nodes``: an ordinary ``dict`` of nodes by name that reports every change to its graph, which
    keeps its users map and cached order up to date (like ``torch.fx.Node.users``).  A copy is a plain dict."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self._graph = graph

    def __setitem__(self, key: str, node: Node) -> None:
        old = dict.get(self, key)
        super().__setitem__(key, node)
        self._graph._edited(key, old, node)

    def __delitem__(self, key: str) -> None:
        old = self[key]
        super().__delitem__(key)
        self._graph._edited(key, old, None)

    def pop(self, key: str, *default: Any) -> Any:
        if key not in self:
            return super().pop(key, *default)
        old = super().pop(key)
        self._graph._edited(key, old, None)
        return old

    def popitem(self) -> tuple[str, Node]:
        key = next(reversed(self))
        return key, self.pop(key)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kw: Any) -> None:
        for k, v in dict(*args, **kw).items():
            self[k] = v

    def __ior__(self, other: Any) -> _NodeTable:
        self.update(other)
        return self

    def clear(self) -> None:
        for k in list(self):
            del self[k]

    def __reduce__(self) -> Any:
        return (dict, (dict(self),))


class Graph:
    """A spiking dataflow graph: named nodes, a parameter store and the number of SNN steps ``T``.

    ``nodes`` keeps insertion order; :meth:`order` gives a topological order (stable: ties broken by
    insertion order).  ``params`` maps ``state_dict`` names to numpy arrays.  ``meta`` holds free-form
    graph-level facts (source config, provenance); it is serialised but not part of equality.
    """

    def __init__(
        self,
        T: int,
        nodes: Mapping[str, Node] | list[Node] | None = None,
        params: Mapping[str, np.ndarray] | None = None,
        meta: dict | None = None,
    ) -> None:
        if int(T) < 1:
            raise IRError(f"graph: T (SNN steps) must be >= 1, got {T}")
        self.T = int(T)
        self.nodes = {}
        self.params: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in (params or {}).items()}
        self.meta: dict = dict(meta or {})
        for n in nodes.values() if isinstance(nodes, Mapping) else nodes or []:
            self.add(n)

    # ---- the node table and what is kept from it: users map, insertion sequence, topological order
    @property
    def nodes(self) -> dict[str, Node]:
        """Nodes by name in insertion order.  Editable like a dict (``g.nodes[k] = node``, ``del``); every
        change updates :meth:`users` and invalidates the cached :meth:`order`."""
        return self._nodes

    @nodes.setter
    def nodes(self, nodes: Mapping[str, Node]) -> None:
        self._nodes = _NodeTable(self)
        self._users: dict[str, dict[str, None]] = {}
        self._seq: dict[str, int] = {}
        self._next_seq = 0
        self._order: list[Node] | None = None
        for k, v in nodes.items():
            self._nodes[k] = v

    def _edited(self, key: str, old: Node | None, new: Node | None) -> None:
        """Keep the users map, the insertion sequence and the order cache in step with one table change."""
        if old is not None:
            for i in old.inputs:
                self._users.get(i, {}).pop(key, None)
        if new is not None:
            for i in new.inputs:
                self._users.setdefault(i, {})[key] = None
            if key not in self._seq:
                self._seq[key] = self._next_seq
                self._next_seq += 1
        else:
            self._seq.pop(key, None)
        self._order = None

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k in ("T", "params", "meta")}
        state["nodes"] = dict(self._nodes)
        return state

    def __setstate__(self, state: dict) -> None:
        self.T, self.params, self.meta = state["T"], state["params"], state["meta"]
        self.nodes = state["nodes"]

    # ---- building and editing
    def add(self, node: Node) -> str:
        """Append ``node``; returns its name.  A name already in the graph is an :class:`IRError`."""
        if not isinstance(node, Node):
            raise IRError(f"graph.add: expected an IR node, got {type(node).__name__}")
        if node.name in self.nodes:
            raise IRError(f"node {node.name!r} ({node.op}): duplicate node name")
        self.nodes[node.name] = node
        return node.name

    def add_param(self, name: str, value: Any) -> str:
        """Store a parameter array under ``name`` (replacing any previous value); returns ``name``."""
        self.params[name] = np.asarray(value)
        return name

    def replace(self, name: str, node: Node) -> Node:
        """Put ``node`` where ``name`` was, keeping its position; a new name is propagated to the users."""
        if name not in self.nodes:
            raise IRError(f"graph.replace: no node named {name!r}")
        if node.name != name and node.name in self.nodes:
            raise IRError(f"node {node.name!r} ({node.op}): duplicate node name")
        self.nodes = {(node.name if k == name else k): (node if k == name else v) for k, v in self._nodes.items()}
        if node.name != name:
            self.replace_uses(name, node.name)
        return node

    def replace_uses(self, old: str, new: str) -> int:
        """Make every node that reads ``old`` read ``new`` instead; returns the number of nodes changed."""
        n = 0
        for k in self.users(old):
            if k != new:
                v = self.nodes[k]
                self.nodes[k] = v.replace(inputs=tuple(new if i == old else i for i in v.inputs))
                n += 1
        return n

    def remove(self, name: str) -> Node:
        """Delete a node nobody reads."""
        users = self.users(name)
        if users:
            raise IRError(f"node {name!r}: cannot remove, still read by {users}")
        return self.nodes.pop(name)

    def users(self, name: str) -> list[str]:
        """Names of the nodes that read ``name``, in insertion order (kept up to date on every edit)."""
        return sorted(self._users.get(name, ()), key=self._seq.__getitem__)

    def ancestors(self, targets: Iterable[str], stop: Collection[str] = ()) -> set[str]:
        """``targets`` and every node they read, directly or not, without looking past the nodes in ``stop``
        (which are included when reached, but not their inputs)."""
        seen: set[str] = set()
        stack = list(targets)
        while stack:
            k = stack.pop()
            if k in seen:
                continue
            seen.add(k)
            if k not in stop:
                stack.extend(self.nodes[k].inputs)
        return seen

    def fresh_name(self, base: str) -> str:
        """``base`` if unused, else ``base_1``, ``base_2``, ..."""
        if base not in self.nodes:
            return base
        i = 1
        while f"{base}_{i}" in self.nodes:
            i += 1
        return f"{base}_{i}"

    # ---- reading
    def __getitem__(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise IRError(f"graph: no node named {name!r}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.nodes

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.order())

    def to_networkx(self) -> nx.DiGraph:
        """Edges ``producer -> consumer`` (known nodes only); node attribute ``node`` is the IR node."""
        g = nx.DiGraph()
        for k, v in self.nodes.items():
            g.add_node(k, node=v)
        for k, v in self.nodes.items():
            for i in v.inputs:
                if i in self.nodes:
                    g.add_edge(i, k)
        return g

    def order(self) -> list[Node]:
        """Nodes in topological order (ties: insertion order), cached until the graph changes.  A cycle is an
        :class:`IRError` naming a node on it.

        Kahn's algorithm with the ready nodes in a heap keyed by insertion sequence: the smallest-positioned
        node whose producers are all placed comes next."""
        if self._order is None:
            nodes, seq = self._nodes, self._seq
            missing = {k: len({i for i in n.inputs if i in nodes}) for k, n in nodes.items()}
            ready = [(seq[k], k) for k, m in missing.items() if m == 0]
            heapq.heapify(ready)
            names: list[str] = []
            while ready:
                k = heapq.heappop(ready)[1]
                names.append(k)
                for u in self._users.get(k, ()):
                    missing[u] -= 1
                    if missing[u] == 0:
                        heapq.heappush(ready, (seq[u], u))
            if len(names) != len(nodes):
                cyc = [u for u, _ in nx.find_cycle(self.to_networkx())]
                raise IRError(f"node {cyc[0]!r} ({nodes[cyc[0]].op}): on a cycle {' -> '.join(cyc + cyc[:1])}")
            self._order = [nodes[k] for k in names]
        return list(self._order)

    @property
    def input_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.op == "input"]

    @property
    def output_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.op == "output"]

    def param_names(self) -> list[str]:
        """Parameter names referenced by nodes, in node order, without repeats."""
        seen: dict[str, None] = {}
        for n in self.nodes.values():
            for p in n.param_refs().values():
                seen.setdefault(p, None)
        return list(seen)

    def copy(self) -> Graph:
        """A copy sharing parameter arrays (nodes are immutable; meta dicts are copied)."""
        g = Graph(self.T, params=dict(self.params), meta=dict(self.meta))
        for n in self.nodes.values():
            g.add(dataclasses.replace(n, meta=dict(n.meta)))
        return g

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return (
            self.T == other.T
            and list(self.nodes.items()) == list(other.nodes.items())
            and self.params.keys() == other.params.keys()
            and all(
                self.params[k].dtype == other.params[k].dtype and np.array_equal(self.params[k], other.params[k])
                for k in self.params
            )
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Graph(T={self.T}, {len(self.nodes)} nodes, {len(self.params)} params)"

    def format(self, params: bool = True) -> str:
        """The text form (:mod:`sdmc.ir.text` parses it back): header, ``meta``, one ``# param`` comment per
        parameter (with ``params``), then one line per node in insertion order (:meth:`Node.format`)."""
        lines = [f"sdmc-ir {IR_VERSION} T={self.T}"]
        if self.meta:
            lines.append("meta " + json.dumps(self.meta, sort_keys=True))
        if params:
            for k in self.param_names():
                if k in self.params:
                    a = self.params[k]
                    lines.append(f"# param {k} {a.dtype} [{','.join(map(str, a.shape))}]")
        lines.extend(n.format() for n in self.nodes.values())
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.format()
