"""The sdmc spiking graph IR.

A :class:`Graph` holds named nodes (small frozen dataclasses, one module per op family: ``linear``,
``norm``, ``neuron``, ``pool``, ``elementwise``, ``structure``), a parameter store ``graph.params`` (numpy arrays
under the source model's ``state_dict`` names) and ``graph.T``, the number of SNN steps.  Each node
produces one value named like the node.  Every value has a :class:`ValueType`: per-sample ``shape``
(no T, no B), ``dtype``, ``kind`` (``spike`` | ``real`` | ``graded``) and ``timing`` (``static``:
arrays ``[B, *shape]`` that broadcast over T; ``per-step``: ``[T, B, *shape]``).

Build a graph::

    from sdmc import ir
    g = ir.Graph(T=4)
    g.add(ir.Input(name="x", shape=(3, 32, 32), dtype="float32"))           # static image
    g.add(ir.Repeat(name="xs", inputs=("x",)))                             # static -> per-step
    g.add_param("conv.weight", w)                                          # numpy arrays
    g.add(ir.Conv2d(name="conv", inputs=("xs",), weight="conv.weight", padding=(1, 1)))
    g.add(ir.IF(name="sn", inputs=("conv",), threshold=1.0, v_reset=0.0))
    g.add(ir.MembraneReadout(name="ro", inputs=("sn",), decay=0.8))
    g.add(ir.Output(name="out", inputs=("ro",)))
    ir.check(g)            # raises IRError naming the node; fills node.meta["type"]

or trace a model: ``sdmc.frontends.trace(model, (1, 3, 32, 32))`` /
``sdmc.frontends.from_checkpoint("SDM_TSM_8T.pt")``.

Read and walk::

    for node in g:                       # topological order (ties: insertion order) == g.order()
        node.op, node.name, node.inputs, node.attrs(), node.type      # type after check/infer_types
        node.param_refs()                # {"weight": "conv.weight", ...}; g.params[name] is the array
    g["conv"]; "conv" in g; g.users("conv"); g.input_nodes; g.output_nodes; g.to_networkx()
    # users() is a kept map and order() is cached until the graph changes (every edit of g.nodes counts)

Rewrite (passes are plain functions ``graph -> graph``; copy first with ``g.copy()`` to stay pure)::

    g.replace("conv", g["conv"].replace(weight="conv.folded"))   # same name: users unchanged
    g.replace("bn", ir.Swish(name="bn2", inputs=("conv",)))      # new name: users rewired to "bn2"
    g.replace_uses("bn", "conv"); g.remove("bn")                 # bypass, then delete (must be unused)
    name = g.fresh_name("conv_split"); g.add_param(name + ".weight", w2)
    ir.check(g)                                                  # after every pass in tests

``node.replace(**changes)`` returns a copy with empty ``meta`` (re-run :func:`check` or
:func:`infer_types`).  Analyses write into ``node.meta`` (``meta["type"]`` is the checker's).

Simulate (the golden float64 semantics every backend is tested against)::

    from sdmc.sim import golden
    out = golden.run(g, {"x": x, "t": t})["out"]              # or golden.run(g, [x, t])
    vals = golden.run(g, {"x": x, "t": t}, all_values=True)   # every node's value, spikes included
    vals = golden.run(g, [x, t], keep=["sn"])                 # outputs plus chosen values (less memory)
    golden.run(g, inputs, training=True)                      # BN with batch statistics over T*B*H*W

Store: ``ir.save(g, "m.sdmc")`` (zip) or ``ir.save(g, "m_dir")`` (directory), both with ``graph.json``
(+ ``ir_version``) and ``weights.safetensors``, written atomically; ``ir.load(path)``.  Text:
``print(g)`` / ``ir.format_graph(g)`` and ``ir.parse(text, params)``, with ``parse(format_graph(g),
g.params) == g``.  New ops: subclass :class:`Node` as a frozen ``kw_only`` dataclass, set ``op`` and
``arity``, list its op families (``families = (ir.TIME_INVARIANT, ...)``, see :mod:`sdmc.ir.families`),
declare parameter fields with :func:`param` (2-d geometry with ``pair_attr``), implement ``infer(ins, graph)``,
decorate with :func:`register`, and add a kernel to ``sdmc.sim.golden.KERNELS`` and a lowering to
``sdmc.backends.torch.lowering.LOWERINGS``.

Op families (defined once; passes, analyses and backends ask ``node.op in ir.SYNAPTIC``): ``NEURON``,
``SYNAPTIC``, ``CONV``, ``CONV2D``, ``TIME_INVARIANT``, ``PER_STEP_PARAMS``, ``ROUTING``.
"""

from __future__ import annotations

from ..errors import IRError
from .check import check, infer_types
from .elementwise import Add, Mul, Scale, Sigmoid, Swish
from .families import CONV, CONV2D, FAMILIES, NEURON, PER_STEP_PARAMS, ROUTING, SYNAPTIC, TIME_INVARIANT, Family
from .graph import (
    GRADED,
    IR_VERSION,
    KINDS,
    OPS,
    PER_STEP,
    REAL,
    SPIKE,
    STATIC,
    TIMINGS,
    Graph,
    Node,
    ValueType,
    pair,
    param,
    register,
)
from .linear import Conv2d, Conv3d, Linear, ScaledConv2d, TSMScale
from .neuron import IF, LIF, NEURON_OPS, PLIF, NeuronNode
from .norm import BatchNorm, GroupNorm
from .pool import POOL_MODES, Pool2d
from .serialize import from_dict, load, save, to_dict
from .structure import Concat, Embedding, Input, MembraneReadout, Output, Repeat, Reshape, Upsample
from .text import format_graph, parse

__all__ = [
    "IR_VERSION",
    "SPIKE",
    "REAL",
    "GRADED",
    "KINDS",
    "STATIC",
    "PER_STEP",
    "TIMINGS",
    "OPS",
    "Graph",
    "Node",
    "ValueType",
    "IRError",
    "param",
    "pair",
    "register",
    "Family",
    "FAMILIES",
    "NEURON",
    "SYNAPTIC",
    "CONV",
    "CONV2D",
    "TIME_INVARIANT",
    "PER_STEP_PARAMS",
    "ROUTING",
    "check",
    "infer_types",
    "save",
    "load",
    "to_dict",
    "from_dict",
    "format_graph",
    "parse",
    "Input",
    "Output",
    "Conv2d",
    "Conv3d",
    "Linear",
    "TSMScale",
    "ScaledConv2d",
    "BatchNorm",
    "GroupNorm",
    "Pool2d",
    "POOL_MODES",
    "IF",
    "LIF",
    "PLIF",
    "NeuronNode",
    "NEURON_OPS",
    "Add",
    "Mul",
    "Swish",
    "Sigmoid",
    "Scale",
    "Concat",
    "Upsample",
    "Reshape",
    "Repeat",
    "Embedding",
    "MembraneReadout",
]
