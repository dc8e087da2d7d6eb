"""The sdmc spiking graph IR (placeholder docstring; see below)."""
from __future__ import annotations

from .check import check, infer_types
from .elementwise import Add, Mul, Scale, Sigmoid, Swish
from .graph import (GRADED, IR_VERSION, KINDS, OPS, PER_STEP, REAL, SPIKE, STATIC, TIMINGS, Graph, Node, ValueType,
                    param, register)
from .linear import Conv2d, Conv3d, Linear, ScaledConv2d, TSMScale
from .neuron import IF, LIF, NEURON_OPS, PLIF, NeuronNode
from .norm import BatchNorm
from .serialize import from_dict, load, save, to_dict
from .structure import Concat, Embedding, Input, MembraneReadout, Output, Repeat, Reshape, Upsample
from .text import format_graph, parse
from ..errors import IRError

__all__ = [
    "IR_VERSION", "SPIKE", "REAL", "GRADED", "KINDS", "STATIC", "PER_STEP", "TIMINGS", "OPS",
    "Graph", "Node", "ValueType", "IRError", "param", "register",
    "check", "infer_types", "save", "load", "to_dict", "from_dict", "format_graph", "parse",
    "Input", "Output", "Conv2d", "Conv3d", "Linear", "TSMScale", "ScaledConv2d", "BatchNorm", "IF", "LIF", "PLIF", "NeuronNode",
    "NEURON_OPS", "Add", "Mul", "Swish", "Sigmoid", "Scale", "Concat", "Upsample", "Reshape", "Repeat",
    "Embedding", "MembraneReadout",
]
