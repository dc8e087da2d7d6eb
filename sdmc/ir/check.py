"""The checker and the type-inference analysis.

:func:`infer_types` writes ``node.meta['type']`` (a :class:`ValueType`) for every node in topological
order.  :func:`check` validates structure first (names, arity, unknown inputs, cycles, outputs), then
runs inference, whose op rules raise on shape / kind / timing / dtype mismatches and missing
parameters.  Every failure is one :class:`IRError` naming the node.
"""

from __future__ import annotations

from .graph import NAME_RE, OPS, Graph, IRError


def infer_types(graph: Graph) -> Graph:
    """Shape / dtype / kind / timing inference; stores ``meta['type']`` on every node; returns ``graph``."""
    for node in graph.order():
        ins = []
        for i in node.inputs:
            if i not in graph.nodes:
                raise node.fail(f"unknown input {i!r} (dangling edge: no node of that name)")
            ins.append(graph.nodes[i].type)
        node.meta["type"] = node.infer(ins, graph)
    return graph


def check(graph: Graph) -> Graph:
    """Validate ``graph`` and infer its types; returns it.  Raises :class:`IRError` naming the node."""
    if not isinstance(graph, Graph):
        raise IRError(f"check: expected an sdmc.ir.Graph, got {type(graph).__name__}")
    for key, node in graph.nodes.items():
        if node.name != key:
            raise IRError(f"node {node.name!r} ({node.op}): stored under a different name {key!r}")
        if OPS.get(node.op) is not type(node):
            raise IRError(f"node {key!r}: op {node.op!r} is not a registered IR op")
        if not NAME_RE.match(key):
            raise node.fail("invalid name (letters, digits, '_' and '.', not starting with a digit or '.')")
        if node.arity is not None and len(node.inputs) != node.arity:
            raise node.fail(f"takes {node.arity} input(s), got {len(node.inputs)}: {list(node.inputs)}")
        if node.arity is None and not node.inputs:
            raise node.fail("takes one or more inputs, got none")
        for i in node.inputs:
            if i not in graph.nodes:
                raise node.fail(f"unknown input {i!r} (dangling edge: no node of that name)")
        for fld, ref in node.param_refs().items():
            if not isinstance(ref, str):
                raise node.fail(f"field {fld!r} must name a parameter (a string), got {ref!r}")
    graph.order()  # raises on a cycle, naming a node on it
    if not graph.output_nodes:
        raise IRError("graph: no output node")
    outs = {n.name for n in graph.output_nodes}
    for node in graph.nodes.values():
        for i in node.inputs:
            if i in outs:
                raise node.fail(f"reads output node {i!r}; read the output's producer instead")
    return infer_types(graph)
