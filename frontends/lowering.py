"""Lowering: translate a captured fx graph into the IR, one fx node at a time, by table.

:class:`Lowering` walks the fx graph in order.  Values computed from constants and shapes alone stay Python
values (``*x.shape``, ``T``); every traced tensor becomes a :class:`~.layouts.V`.  Each ``call_module``
node is lowered by the rule registered for its module type (:data:`.modules.MODULE_RULES`, looked up along
the class's MRO), each ``call_function`` / ``call_method`` node by :data:`.functions.FUNCTIONS` /
:data:`.functions.METHODS`.  Anything without a rule is an :class:`~sdmc.errors.UnsupportedOpError` naming
the module path and the op.

Node names: a module's node is named after its path (``downblocks.0.conv1``); a structure recognised inside
a module's own code (TSM, membrane read-out, Swish) after that module (``downblocks.0.conv1``,
``membrane_output_layer``); other functions after the module whose ``forward`` called them and the op
(``downblocks.0.add``, ``downblocks.0.add_1``, top level ``cat``).  Parameters keep their ``state_dict``
names; constants the model computes get ``<module>.const`` names.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from sdmc import ir
from sdmc.errors import UnsupportedOpError

from .capture import SpikingTracer
from .layouts import Const, V, sample_shape


class Lowering:
    """State of one translation: the graph being built, the fx-node environment and the trace's T and B."""

    def __init__(self, model: nn.Module, tracer: SpikingTracer, T: int, B: int, input_layouts: dict[str, str]):
        self.model, self.tracer, self.T, self.B = model, tracer, T, B
        self.input_layouts = input_layouts
        self.sd = model.state_dict()
        self.g = ir.Graph(T)
        self.env: dict[fx.Node, Any] = {}
        self.consts: set[str] = set()  # parameter names made for computed constants
        self._views: dict[tuple[str, tuple[int, ...]], str] = {}

    # ------------------------------------------------------------------------------------ naming and errors
    def scope(self, n: fx.Node) -> str:
        """The module path whose ``forward`` recorded ``n`` ('' at the top level)."""
        return self.tracer.node_name_to_scope.get(n.name, ("", None))[0] or ""

    def where(self, n: fx.Node) -> str:
        if n.op == "call_module":
            return str(n.target)
        return self.scope(n) or "<top level>"

    def fn_name(self, n: fx.Node, op: str) -> str:
        """``<scope>.<op>`` (``<op>`` at the top level); :meth:`add` makes it unique."""
        s = self.scope(n)
        return f"{s}.{op}" if s else op

    def structure_name(self, n: fx.Node, op: str) -> str:
        """The enclosing module's path for a structure recognised in its code, else :meth:`fn_name`."""
        s = self.scope(n)
        return s if s and s not in self.g.nodes else self.fn_name(n, op)

    def unsupported(self, where: fx.Node | str, what: str, hint: str = "") -> UnsupportedOpError:
        w = self.where(where) if isinstance(where, fx.Node) else where
        return UnsupportedOpError(f"{w}: unsupported op {what}" + (f" ({hint})" if hint else ""))

    def need_T(self, where, T: int, what: str) -> None:
        if int(T) != self.T:
            raise self.unsupported(where, what, f"it uses T={T} but the graph has T={self.T}")

    # ------------------------------------------------------------------------------------ graph building
    def add(self, node: ir.Node) -> str:
        """Add ``node`` (renamed if its name is taken), store its parameters, infer its type; returns its name."""
        g = self.g
        node = node if node.name not in g.nodes else node.replace(name=g.fresh_name(node.name))
        for key in node.param_refs().values():
            if key not in g.params:
                g.add_param(key, _to_numpy(self.sd[key]))
        g.add(node)
        node.meta["type"] = node.infer([g.nodes[i].type for i in node.inputs], g)
        return node.name

    def remove(self, name: str) -> None:
        """Delete a node this lowering made and nobody reads, with the constants only it used."""
        node = self.g.remove(name)
        for key in node.param_refs().values():
            if key in self.consts and not any(key in m.param_refs().values() for m in self.g.nodes.values()):
                del self.g.params[key]
                self.consts.discard(key)

    def key(self, path: str, leaf: str, optional: bool = False) -> str | None:
        k = f"{path}.{leaf}" if path else leaf
        if k not in self.sd:
            if optional:
                return None
            raise UnsupportedOpError(f"{path}: parameter {k!r} not found in the model's state_dict")
        return k

    def const_param(self, n: fx.Node, value: torch.Tensor | np.ndarray) -> str:
        """Store a constant the model computed as a parameter named ``<scope>.const`` (made unique)."""
        base = self.fn_name(n, "const")
        name, i = base, 1
        while name in self.g.params or name in self.sd:
            name, i = f"{base}_{i}", i + 1
        arr = _to_numpy(value) if isinstance(value, torch.Tensor) else np.asarray(value)
        self.sd[name] = torch.from_numpy(arr)
        self.consts.add(name)
        return name

    def v(self, name: str, layout: str) -> V:
        """The traced value of IR node ``name`` under ``layout`` (per-sample shape from its IR type)."""
        return V(name, layout, self.g.nodes[name].type.shape)

    # ------------------------------------------------------------------------------------ values
    def tensor(self, where, a: Any, what: str) -> V:
        if not isinstance(a, V):
            raise self.unsupported(where, what, f"expected a traced tensor argument, got {type(a).__name__}")
        return a

    def layout(self, where, x: V, allowed: tuple[str, ...], what: str) -> V:
        if x.layout not in allowed:
            raise self.unsupported(
                where,
                what,
                f"input laid out as {x.layout}, expected one of {allowed} (see sdmc.frontends.layouts)",
            )
        return x

    def value(self, where, x: V, what: str = "this op") -> str:
        """The IR value holding ``x`` with its per-sample shape ``x.shape`` (adds one reshape for a view)."""
        if x.pre is not None:
            raise self.unsupported(
                where,
                f"{what} on a tensor expanded from {list(x.pre)} to {list(x.shape)}",
                "only elementwise ops accept an expanded (broadcast) tensor",
            )
        return self._reshaped(where, x.name, x.shape)

    def operand(self, where, x: V) -> str:
        """The IR value of an elementwise operand: ``x`` before any broadcast (elementwise ops broadcast)."""
        return self._reshaped(where, x.name, x.pre if x.pre is not None else x.shape)

    def _reshaped(self, where, name: str, shape: tuple[int, ...]) -> str:
        have = self.g.nodes[name].type.shape
        if tuple(shape) == tuple(have):
            return name
        k = (name, tuple(shape))
        if k not in self._views:
            scope = where if isinstance(where, str) else self.scope(where)
            base = f"{scope}.reshape" if scope and scope != "<top level>" else "reshape"
            node = ir.Reshape(name=base, inputs=(name,), shape=tuple(int(s) for s in shape))
            self._views[k] = self.add(node)
        return self._views[k]

    # ------------------------------------------------------------------------------------ main loop
    def run(self, fxg: fx.Graph) -> ir.Graph:
        from .functions import lower_function, lower_method
        from .modules import lower_module

        for n in fxg.nodes:
            if n.op == "placeholder":
                self.env[n] = self.placeholder(n)
                continue
            if n.op == "output":
                self.output(n)
                continue
            if n.op == "get_attr":
                val = n.meta.get("val")
                key = str(n.target)
                self.env[n] = Const(val, key if key in self.sd else None) if isinstance(val, torch.Tensor) else val
                continue
            args = fx.node.map_arg(n.args, lambda a: self.env[a])
            kwargs = fx.node.map_arg(n.kwargs, lambda a: self.env[a])
            if not _has_tensor((args, kwargs)):
                val = n.meta.get("val")  # shape arithmetic and constants computed from constants
                self.env[n] = Const(val) if isinstance(val, torch.Tensor) else val
                continue
            if n.op == "call_module":
                if kwargs:
                    raise self.unsupported(n, f"{type(self.model.get_submodule(n.target)).__name__} with keywords")
                x = self.tensor(n, args[0], "module call")
                if len(args) > 1 and _has_tensor(args[1:]):
                    raise self.unsupported(n, f"{type(self.model.get_submodule(n.target)).__name__} with 2+ inputs")
                self.env[n] = lower_module(self, str(n.target), self.model.get_submodule(n.target), str(n.target), x)
            elif n.op == "call_function":
                self.env[n] = lower_function(self, n, n.target, args, kwargs)
            elif n.op == "call_method":
                self.env[n] = lower_method(self, n, n.target, args, kwargs)
            else:
                raise self.unsupported(n, f"{n.op} {n.target}")
        return self.g

    def placeholder(self, n: fx.Node) -> Any:
        ex = n.meta.get("val")
        if not isinstance(ex, torch.Tensor):
            return ex
        layout = self.input_layouts.get(n.target, "S")
        dtype = str(ex.dtype).replace("torch.", "")
        timing = ir.PER_STEP if layout == "TB" else ir.STATIC
        shape = sample_shape(ex, layout)
        self.add(ir.Input(name=n.name, shape=shape, dtype=dtype, kind=ir.REAL, timing=timing))
        return V(n.name, layout, shape)

    def output(self, n: fx.Node) -> None:
        a = n.args[0]
        outs = self.env[a] if isinstance(a, fx.Node) else fx.node.map_arg(a, lambda x: self.env[x])
        outs = [outs] if isinstance(outs, V) else list(outs) if isinstance(outs, (tuple, list)) else [outs]
        for i, o in enumerate(outs):
            if not isinstance(o, V) or o.layout not in ("S", "TB"):
                raise self.unsupported(n, "output", "outputs must be static [B, ...] or per-step [T, B, ...] tensors")
            self.add(ir.Output(name="out" if len(outs) == 1 else f"out_{i}", inputs=(self.value(n, o, "output"),)))


def _has_tensor(obj: Any) -> bool:
    if isinstance(obj, V):
        return True
    if isinstance(obj, (tuple, list)):
        return any(_has_tensor(o) for o in obj)
    if isinstance(obj, dict):
        return any(_has_tensor(o) for o in obj.values())
    return False


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy().copy()
