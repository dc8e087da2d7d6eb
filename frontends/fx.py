"""torch.fx frontend: trace an ``nn.Module`` built from torch, spikingjelly and sdmc layers into the IR.

``trace(model, example_shape)`` symbolically traces ``model._forward`` when the class has one (the
SDDPM/SDM UNets keep input checks and the neuron reset in ``forward``), else ``forward``.  Neurons,
``TSMConv2d``, ``MembraneOutputLayer``, ``Swish`` and spikingjelly ``layer.*`` modules are leaves.
While tracing, every fx node is also evaluated on a small example (so ``*x.shape`` and ``x.shape[0]``
work); the fx graph is then translated node by node, tracking how each torch tensor lays out T and B:

    S    [B, *f]       static            S1   [1, B, *f]  static, unit time axis
    TB   [T, B, *f]    per-step          F    [T*B, *f]   per-step, T folded into the batch
    TBL  [B, *f, T]    per-step, time last (input of a kernel-(kh,kw,1) Conv3d)

Parameters keep their ``state_dict`` names; IR nodes are named after module paths (fx names for
functions).  Anything else raises :class:`UnsupportedOpError` naming the module path and the op.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from spikingjelly.activation_based import functional as sj_functional
from spikingjelly.activation_based import layer as sj_layer
from spikingjelly.activation_based import neuron as sj_neuron
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from sdmc import ir
from sdmc.convert import IFNeuron, RunningGroupNorm
from sdmc.errors import SdmcError, UnsupportedOpError
from sdmc.models.spiking_unet import MembraneOutputLayer, Swish, TSMConv2d

LEAF_TYPES: tuple[type, ...] = (sj_neuron.BaseNode, TSMConv2d, MembraneOutputLayer, Swish, IFNeuron, RunningGroupNorm)


def _is_sj_layer(m: nn.Module) -> bool:
    return type(m).__module__.startswith(sj_layer.__name__)


def _len(p: fx.Proxy) -> int:
    v = p.node.meta.get("val")
    if isinstance(v, (tuple, list, torch.Size)):
        return len(v)
    return fx.Proxy.__len__(p)


class _ValAttribute(fx.proxy.Attribute):
    __len__ = _len


class _ValProxy(fx.Proxy):
    """A proxy whose ``len()`` is known when its example value is a sequence (e.g. ``*x.shape``)."""

    __len__ = _len

    def __getattr__(self, k: str) -> fx.proxy.Attribute:
        return _ValAttribute(self, k)


class SpikingTracer(fx.Tracer):
    """An fx tracer with spiking leaves that records an example value in ``node.meta['val']``."""

    def __init__(self, examples: dict[str, Any], fake: bool = True) -> None:
        super().__init__()
        # with ``fake`` the examples are FakeTensors: shapes propagate without computing anything
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
        self.examples = {
            k: self.fake_mode.from_tensor(v) if fake and isinstance(v, torch.Tensor) else v for k, v in examples.items()
        }
        self._evaluating = False  # True while computing an example value: run modules for real

    def call_module(self, m, forward, args, kwargs):
        if self._evaluating:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ValProxy(node, self)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAF_TYPES) or _is_sj_layer(m) or super().is_leaf_module(m, qualname)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        p = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = p.node
        self._evaluating = True
        try:
            self._evaluate(kind, target, node)
        finally:
            self._evaluating = False
        return p

    def _evaluate(self, kind, target, node: fx.Node) -> None:
        val = lambda a: fx.node.map_arg(a, lambda n: n.meta.get("val"))  # noqa: E731
        with torch.no_grad(), self.fake_mode or contextlib.nullcontext():
            if kind == "placeholder":
                node.meta["val"] = self.examples.get(target)
            elif kind == "get_attr":
                obj = self.root
                for part in target.split("."):
                    obj = getattr(obj, part)
                node.meta["val"] = obj
            elif kind == "call_function":
                node.meta["val"] = target(*val(node.args), **val(node.kwargs))
            elif kind == "call_method":
                a = val(node.args)
                node.meta["val"] = getattr(a[0], target)(*a[1:], **val(node.kwargs))
            elif kind == "call_module":
                node.meta["val"] = self.root.get_submodule(target)(*val(node.args), **val(node.kwargs))

    def iter(self, obj):
        v = obj.node.meta.get("val")
        if isinstance(v, (tuple, list, torch.Size)):
            return iter([obj[i] for i in range(len(v))])
        return super().iter(obj)


@dataclass
class V:
    """A traced tensor: the IR value it holds and its torch layout (see the module docstring)."""

    name: str
    layout: str


_LEAD = {"S": 1, "S1": 2, "TB": 2, "F": 1, "TBL": 1}


class _Translator:
    def __init__(self, model: nn.Module, tracer: SpikingTracer, T: int | None, B: int) -> None:
        self.model, self.tracer, self.T, self.B = model, tracer, T, B
        self.sd = model.state_dict()
        self.g = ir.Graph(T)
        self.env: dict[fx.Node, Any] = {}

    # ---- helpers
    def where(self, n: fx.Node) -> str:
        if n.op == "call_module":
            return str(n.target)
        scope = self.tracer.node_name_to_scope.get(n.name, ("", None))[0]
        return scope or "<top level>"

    def unsupported(self, n: fx.Node, what: str, hint: str = "") -> UnsupportedOpError:
        return UnsupportedOpError(f"{self.where(n)}: unsupported op {what}" + (f" ({hint})" if hint else ""))

    def need_T(self, n: fx.Node, T: int, what: str) -> None:
        if int(T) != self.T:
            raise self.unsupported(n, what, f"it uses T={T} but the graph has T={self.T}")

    def add(self, node: ir.Node) -> str:
        """Add ``node`` (renamed if its name is taken), store its parameters, infer its type."""
        g = self.g
        node = node if node.name not in g.nodes else node.replace(name=g.fresh_name(node.name))
        for key in node.param_refs().values():
            if key not in g.params:
                g.add_param(key, _to_numpy(self.sd[key]))
        g.add(node)
        node.meta["type"] = node.infer([g.nodes[i].type for i in node.inputs], g)
        return node.name

    def key(self, path: str, leaf: str, optional: bool = False) -> str | None:
        k = f"{path}.{leaf}" if path else leaf
        if k not in self.sd:
            if optional:
                return None
            raise UnsupportedOpError(f"{path}: parameter {k!r} not found in the model's state_dict")
        return k

    def tensor(self, n: fx.Node, a: Any, what: str) -> V:
        if not isinstance(a, V):
            raise self.unsupported(n, what, f"expected a traced tensor argument, got {type(a).__name__}")
        return a

    # ---- main loop
    def run(self, fxg: fx.Graph) -> ir.Graph:
        for n in fxg.nodes:
            if n.op == "placeholder":
                self.env[n] = self.placeholder(n)
            elif n.op == "output":
                self.output(n)
            else:
                args = fx.node.map_arg(n.args, lambda a: self.env[a])
                kwargs = fx.node.map_arg(n.kwargs, lambda a: self.env[a])
                if not _has_tensor((args, kwargs)):
                    self.env[n] = n.meta.get("val")  # shape arithmetic and other constants
                    continue
                if n.op == "call_module":
                    self.env[n] = self.module(n, self.model.get_submodule(n.target), str(n.target), args, kwargs)
                elif n.op == "call_function":
                    self.env[n] = self.function(n, n.target, args, kwargs)
                elif n.op == "call_method":
                    self.env[n] = self.method(n, n.target, args, kwargs)
                else:
                    raise self.unsupported(n, f"{n.op} {n.target}")
        return self.g

    def placeholder(self, n: fx.Node) -> Any:
        ex = n.meta.get("val")
        if not isinstance(ex, torch.Tensor):
            return ex
        dtype = str(ex.dtype).replace("torch.", "")
        node = ir.Input(name=n.name, shape=tuple(ex.shape[1:]), dtype=dtype, kind=ir.REAL, timing=ir.STATIC)
        return V(self.add(node), "S")

    def output(self, n: fx.Node) -> None:
        outs = (
            self.env[n.args[0]] if isinstance(n.args[0], fx.Node) else fx.node.map_arg(n.args[0], lambda a: self.env[a])
        )
        outs = [outs] if isinstance(outs, V) else list(outs) if isinstance(outs, (tuple, list)) else [outs]
        for i, o in enumerate(outs):
            if not isinstance(o, V) or o.layout not in ("S", "TB"):
                raise self.unsupported(n, "output", "outputs must be static [B, ...] or per-step [T, B, ...] tensors")
            self.add(ir.Output(name="out" if len(outs) == 1 else f"out_{i}", inputs=(o.name,)))

    # ---- modules
    def module(self, n: fx.Node, m: nn.Module, path: str, args: tuple, kwargs: dict) -> Any:
        if kwargs:
            raise self.unsupported(n, f"{type(m).__name__} called with keyword arguments")
        x = self.tensor(n, args[0], type(m).__name__)
        step_m = getattr(m, "step_mode", "s") == "m"
        if isinstance(m, sj_neuron.BaseNode):
            return self.neuron(n, m, path, x)
        if isinstance(m, IFNeuron):  # converted QANN: IF, soft reset, v[-1] = theta/2, output spikes * theta
            self.need_T(n, m.steps, "IFNeuron")
            x = self._layout(n, x, ("F", "TB"), "IFNeuron")
            th = float(m.alpha)
            s_ = self.add(
                ir.IF(name=path, inputs=(x.name,), threshold=th, v_reset=None, v_init=0.5 * th, signed=m.signed)
            )
            return V(self.add(ir.Scale(name=f"{path}.out", inputs=(s_,), factor=th)), x.layout)
        if isinstance(m, RunningGroupNorm):
            self.need_T(n, m.steps, "RunningGroupNorm")
            x = self._layout(n, x, ("F", "TB"), "RunningGroupNorm")
            return V(
                self.add(
                    ir.GroupNorm(
                        name=path,
                        inputs=(x.name,),
                        weight=self.key(path, "weight", True),
                        bias=self.key(path, "bias", True),
                        num_groups=int(m.num_groups),
                        eps=float(m.eps),
                        running=True,
                    )
                ),
                x.layout,
            )
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return x  # the IR describes inference: dropout is the identity
        if isinstance(m, TSMConv2d):
            self.need_T(n, m.T, "TSMConv2d")
            x = self._layout(n, x, ("F",), "TSMConv2d")
            c = self.conv2d(n, m.tsmconv, f"{path}.tsmconv", x)
            return V(self.add(ir.TSMScale(name=path, inputs=(c.name,), scale=self.key(path, "tsmp"))), "F")
        if isinstance(m, MembraneOutputLayer):
            self.need_T(n, m.n_steps, "MembraneOutputLayer")
            x = self._layout(n, x, ("TB",), "MembraneOutputLayer")
            return V(self.add(ir.MembraneReadout(name=path, inputs=(x.name,), decay=float(m.decay))), "S")
        if isinstance(m, (Swish, nn.SiLU)):
            return V(self.add(ir.Swish(name=path, inputs=(x.name,))), x.layout)
        if isinstance(m, nn.Sigmoid):
            return V(self.add(ir.Sigmoid(name=path, inputs=(x.name,))), x.layout)
        if isinstance(m, sj_layer.SeqToANNContainer):
            x = self._layout(n, x, ("TB",), "SeqToANNContainer")
            y = V(x.name, "F")
            for i, sub in enumerate(m):
                y = self.module(n, sub, f"{path}.{i}", (y,), {})
            return V(y.name, "TB")
        if step_m and isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.Upsample)):
            x = self._layout(n, x, ("TB",), f"multi-step {type(m).__name__}")
            return V(self.plain(n, m, path, V(x.name, "F")).name, "TB")
        return self.plain(n, m, path, x)

    def plain(self, n: fx.Node, m: nn.Module, path: str, x: V) -> V:
        """Stateless torch layers (spikingjelly wrappers in single-step mode included)."""
        if isinstance(m, nn.Conv2d):
            return self.conv2d(n, m, path, x)
        if isinstance(m, nn.Conv3d):
            return self.conv3d(n, m, path, x)
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            return self.batchnorm(n, m, path, x)
        if isinstance(m, nn.GroupNorm):
            x = self._layout(n, x, ("F", "S"), "GroupNorm")
            return V(
                self.add(
                    ir.GroupNorm(
                        name=path,
                        inputs=(x.name,),
                        weight=self.key(path, "weight", True),
                        bias=self.key(path, "bias", True),
                        num_groups=int(m.num_groups),
                        eps=float(m.eps),
                    )
                ),
                x.layout,
            )
        if isinstance(m, nn.Linear):
            if x.layout not in ("S", "F", "TB", "S1"):
                raise self.unsupported(n, "Linear", f"input layout {x.layout}")
            node = ir.Linear(
                name=path, inputs=(x.name,), weight=self.key(path, "weight"), bias=self.key(path, "bias", optional=True)
            )
            return V(self.add(node), x.layout)
        if isinstance(m, nn.Embedding):
            if m.max_norm is not None:
                raise self.unsupported(n, "Embedding(max_norm=...)", "renormalising lookups are not supported")
            x = self._layout(n, x, ("S", "F"), "Embedding")
            return V(self.add(ir.Embedding(name=path, inputs=(x.name,), weight=self.key(path, "weight"))), x.layout)
        if isinstance(m, nn.Upsample):
            return self.upsample(n, x, m.scale_factor, m.mode, m.size, path)
        raise self.unsupported(
            n,
            f"module {type(m).__module__}.{type(m).__name__}",
            "supported: spikingjelly IF/LIF/ParametricLIF nodes, Conv2d, Conv3d (kernel (kh,kw,1)), "
            "BatchNorm, GroupNorm, Linear, Embedding, Upsample, TSMConv2d, MembraneOutputLayer, Swish, "
            "sdmc.convert IFNeuron / RunningGroupNorm",
        )

    def neuron(self, n: fx.Node, m: nn.Module, path: str, x: V) -> V:
        kind = type(m)
        if getattr(m, "step_mode", "s") != "m":
            raise self.unsupported(n, f"{kind.__name__} in single-step mode", "use step_mode='m' on [T, B, ...] inputs")
        if kind not in (sj_neuron.IFNode, sj_neuron.LIFNode, sj_neuron.ParametricLIFNode):
            raise self.unsupported(n, f"neuron {kind.__name__}", "supported: IFNode, LIFNode, ParametricLIFNode")
        x = self._layout(n, x, ("TB",), kind.__name__)
        sf = m.surrogate_function
        common = dict(
            name=path,
            inputs=(x.name,),
            threshold=float(m.v_threshold),
            v_reset=None if m.v_reset is None else float(m.v_reset),
            surrogate=type(sf).__name__.lower(),
            alpha=float(getattr(sf, "alpha", 0.0)),
            detach_reset=bool(m.detach_reset),
        )
        if kind is sj_neuron.IFNode:
            node = ir.IF(**common)
        elif kind is sj_neuron.LIFNode:
            node = ir.LIF(tau=float(m.tau), decay_input=bool(m.decay_input), **common)
        else:
            node = ir.PLIF(w=self.key(path, "w"), decay_input=bool(m.decay_input), **common)
        return V(self.add(node), "TB")

    def conv2d(self, n: fx.Node, m: nn.Conv2d, path: str, x: V) -> V:
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            raise self.unsupported(
                n,
                f"Conv2d(padding={m.padding!r}, padding_mode={m.padding_mode!r})",
                "only explicit zero padding is supported",
            )
        x = self._layout(n, x, ("F", "S"), "Conv2d")
        node = ir.Conv2d(
            name=path,
            inputs=(x.name,),
            weight=self.key(path, "weight"),
            bias=self.key(path, "bias", optional=True),
            stride=tuple(m.stride),
            padding=tuple(m.padding),
            dilation=tuple(m.dilation),
            groups=int(m.groups),
        )
        return V(self.add(node), x.layout)

    def conv3d(self, n: fx.Node, m: nn.Conv3d, path: str, x: V) -> V:
        x = self._layout(n, x, ("TBL",), "Conv3d")
        if (
            m.kernel_size[2] != 1
            or m.stride[2] != 1
            or isinstance(m.padding, str)
            or m.padding[2] != 0
            or tuple(m.dilation) != (1, 1, 1)
            or m.groups != 1
            or m.padding_mode != "zeros"
        ):
            raise self.unsupported(
                n,
                f"Conv3d(kernel={m.kernel_size}, stride={m.stride}, padding={m.padding})",
                "only kernels (kh, kw, 1) over the time-last axis, no time padding/stride",
            )
        node = ir.Conv3d(
            name=path,
            inputs=(x.name,),
            weight=self.key(path, "weight"),
            bias=self.key(path, "bias", optional=True),
            stride=tuple(m.stride[:2]),
            padding=tuple(m.padding[:2]),
        )
        return V(self.add(node), "TBL")

    def batchnorm(self, n: fx.Node, m: nn.Module, path: str, x: V) -> V:
        if not m.track_running_stats or m.running_mean is None:
            raise self.unsupported(n, "BatchNorm without running statistics", "use track_running_stats=True")
        x = self._layout(n, x, ("F", "S"), type(m).__name__)
        node = ir.BatchNorm(
            name=path,
            inputs=(x.name,),
            weight=self.key(path, "weight", True),
            bias=self.key(path, "bias", True),
            running_mean=self.key(path, "running_mean"),
            running_var=self.key(path, "running_var"),
            num_batches_tracked=self.key(path, "num_batches_tracked", True),
            eps=float(m.eps),
            momentum=None if m.momentum is None else float(m.momentum),
        )
        return V(self.add(node), x.layout)

    def upsample(self, n: fx.Node, x: V, scale, mode, size, path: str) -> V:
        if mode != "nearest" or size is not None or scale is None:
            raise self.unsupported(n, f"interpolate(mode={mode!r}, size={size})", "only nearest with an integer scale")
        s = scale if isinstance(scale, (int, float)) else scale[0]
        if isinstance(scale, (tuple, list)) and len(set(scale)) != 1 or float(s) != int(s):
            raise self.unsupported(n, f"interpolate(scale_factor={scale})", "only one integer scale for H and W")
        x = self._layout(n, x, ("F", "S"), "interpolate")
        return V(self.add(ir.Upsample(name=path, inputs=(x.name,), scale=int(s), mode="nearest")), x.layout)

    def _layout(self, n: fx.Node, x: V, allowed: tuple[str, ...], what: str) -> V:
        if x.layout not in allowed:
            raise self.unsupported(
                n,
                what,
                f"input laid out as {x.layout}, expected one of {allowed} (see the sdmc.frontends.fx docstring)",
            )
        return x

    # ---- functions and methods
    def function(self, n: fx.Node, fn: Callable, args: tuple, kwargs: dict) -> Any:
        if fn in (operator.add, torch.add, operator.iadd):
            return self.binary(n, "add", args, kwargs)
        if fn in (operator.mul, torch.mul, operator.imul):
            return self.binary(n, "mul", args, kwargs)
        if fn in (torch.sigmoid, F.sigmoid):
            return V(
                self.add(ir.Sigmoid(name=n.name, inputs=(self.tensor(n, args[0], "sigmoid").name,))), args[0].layout
            )
        if fn is F.silu:
            return V(self.add(ir.Swish(name=n.name, inputs=(self.tensor(n, args[0], "silu").name,))), args[0].layout)
        if fn in (torch.cat, torch.concat):
            return self.cat(n, *args, **kwargs)
        if fn is F.interpolate:
            b = inspect.signature(F.interpolate).bind(*args, **kwargs)
            b.apply_defaults()
            a = b.arguments
            return self.upsample(
                n, self.tensor(n, a["input"], "interpolate"), a["scale_factor"], a["mode"], a["size"], n.name
            )
        if fn is getattr and args[1] in ("shape", "ndim", "dtype", "device"):
            return n.meta["val"]  # known from the example: T and B are fixed while tracing
        if fn is operator.getitem:
            return self.getitem(n, *args)
        if fn is torch.flatten:
            return self.method(n, "flatten", args, kwargs)
        name = getattr(fn, "__name__", str(fn))
        raise self.unsupported(
            n,
            f"function {getattr(fn, '__module__', '') or ''}.{name}".lstrip("."),
            "supported functions: add, mul, sigmoid, silu, cat, interpolate (nearest), flatten, "
            "getitem with None; wrap the op in a module the IR supports",
        )

    def method(self, n: fx.Node, meth: str, args: tuple, kwargs: dict) -> Any:
        x = self.tensor(n, args[0], f"Tensor.{meth}")
        rest = list(args[1:])
        val = n.meta.get("val")
        if meth in ("contiguous", "clone"):
            return x
        if meth in ("size", "dim"):
            return val
        if meth in ("add", "mul"):
            return self.binary(n, meth, args, kwargs)
        if meth == "sigmoid":
            return V(self.add(ir.Sigmoid(name=n.name, inputs=(x.name,))), x.layout)
        if meth == "mean":
            dim = rest[0] if rest else kwargs.get("dim")
            if x.layout == "TB" and dim in (0, (0,), [0]) and not kwargs.get("keepdim") and len(rest) <= 1:
                total = self.add(ir.MembraneReadout(name=f"{n.name}_sum", inputs=(x.name,), decay=1.0))
                return V(self.add(ir.Scale(name=n.name, inputs=(total,), factor=1.0 / self.T)), "S")
            raise self.unsupported(n, f"Tensor.mean{tuple(rest)}", "only the mean over T of a [T, B, ...] tensor")
        if meth in ("flatten", "unflatten", "view", "reshape", "unsqueeze", "squeeze"):
            return self.reshape_like(n, meth, x, val)
        if meth in ("expand", "repeat"):
            if x.layout == "S1" and val.dim() == len(self._shape(x)) and val.shape[1:] == self._shape(x)[1:]:
                self.need_T(n, val.shape[0], f"Tensor.{meth}")
                return V(self.add(ir.Repeat(name=n.name, inputs=(x.name,))), "TB")
            raise self.unsupported(n, f"Tensor.{meth}{tuple(rest)}", "only expanding a [1, B, ...] tensor over T")
        if meth == "permute":
            perm = tuple(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else tuple(rest)
            r = len(self._shape(x))
            if x.layout == "TB" and perm == tuple(range(1, r)) + (0,):
                return V(x.name, "TBL")
            if x.layout == "TBL" and perm == (r - 1,) + tuple(range(r - 1)):
                return V(x.name, "TB")
            raise self.unsupported(n, f"Tensor.permute{perm}", "only moving T to the last axis and back")
        raise self.unsupported(
            n,
            f"method Tensor.{meth}",
            "supported methods: flatten, unflatten, view, reshape, (un)squeeze, expand/repeat over "
            "T, permute T last and back, add, mul, sigmoid, contiguous, size, dim",
        )

    def _shape(self, x: V) -> tuple[int, ...]:
        """The torch shape of ``x`` for the trace's T and B."""
        f = self.g.nodes[x.name].type.shape
        T = self.T
        return {
            "S": (self.B,) + f,
            "S1": (1, self.B) + f,
            "TB": (T, self.B) + f,
            "F": (T * self.B,) + f,
            "TBL": (self.B,) + f + (T,),
        }[x.layout]

    def reshape_like(self, n: fx.Node, meth: str, x: V, val: torch.Tensor) -> V:
        """flatten / unflatten / view / reshape / (un)squeeze, classified by the example shapes."""
        new = tuple(val.shape)
        B = self.B
        if x.layout == "S" and meth == "unsqueeze" and new[:2] == (1, B):
            return V(x.name, "S1") if new[2:] == self._shape(x)[1:] else self._reshape(n, x, new[2:], "S1")
        old = self._shape(x)
        T = self.T
        if x.layout == "F" and new[:2] == (T, B) and new[2:] == old[1:]:
            return V(x.name, "TB")
        if x.layout == "TB" and new[:1] == (T * B,) and new[1:] == old[2:]:
            return V(x.name, "F")
        if x.layout == "S1" and new[:1] == (B,) and new[1:] == old[2:]:
            return V(x.name, "S")
        lead = _LEAD[x.layout]
        if x.layout != "TBL" and new[:lead] == old[:lead] and math.prod(new[lead:]) == math.prod(old[lead:]):
            return self._reshape(n, x, new[lead:], x.layout)
        raise self.unsupported(
            n,
            f"Tensor.{meth} from {list(old)} to {list(new)}",
            "only folding/unfolding T into the batch or reshaping each sample",
        )

    def _reshape(self, n: fx.Node, x: V, shape: tuple[int, ...], layout: str) -> V:
        return V(self.add(ir.Reshape(name=n.name, inputs=(x.name,), shape=tuple(int(s) for s in shape))), layout)

    def getitem(self, n: fx.Node, x: Any, idx: Any) -> V:
        x = self.tensor(n, x, "indexing")
        idx = idx if isinstance(idx, tuple) else (idx,)
        full = slice(None)
        ok = all(i is None or (isinstance(i, slice) and i == full) for i in idx)
        if x.layout in ("S", "F") and ok:
            val = n.meta["val"]
            items = list(idx) + [full] * (len(self._shape(x)) - sum(i is not None for i in idx))
            layout = "S1" if items[0] is None and x.layout == "S" else x.layout
            if layout == "S1":
                items = items[1:]
            if items and items[0] == full:  # the batch axis stays in place
                new = tuple(val.shape[_LEAD[layout] :])
                return self._reshape(n, x, new, layout) if new != self._shape(x)[1:] else V(x.name, layout)
        raise self.unsupported(n, f"indexing {idx}", "only inserting unit axes with None into a static [B, ...] tensor")

    def binary(self, n: fx.Node, op: str, args: tuple, kwargs: dict) -> V:
        if kwargs or len(args) != 2:
            raise self.unsupported(n, f"{op} with arguments {args} {kwargs}")
        a, b = args
        if not isinstance(a, V) or not isinstance(b, V):
            v, c = (a, b) if isinstance(a, V) else (b, a)
            if op == "mul" and isinstance(c, (int, float)):
                return V(self.add(ir.Scale(name=n.name, inputs=(v.name,), factor=float(c))), v.layout)
            raise self.unsupported(n, f"{op} with constant {c!r}", "only tensor-tensor ops and scaling by a number")
        la, lb = a.layout, b.layout
        ra, rb = len(self.g.nodes[a.name].type.shape), len(self.g.nodes[b.name].type.shape)
        pairs = {
            ("F", "F"): "F",
            ("TB", "TB"): "TB",
            ("S", "S"): "S",
            ("S1", "S1"): "S1",
            ("TBL", "TBL"): "TBL",
            ("TB", "S1"): "TB",
            ("S1", "TB"): "TB",
            ("TB", "S"): "TB",
            ("S", "TB"): "TB",
            ("S1", "S"): "S1",
            ("S", "S1"): "S1",
        }
        out = pairs.get((la, lb))
        if out is None or ra != rb:
            raise self.unsupported(
                n,
                f"{op} of tensors laid out {la} (rank {ra}) and {lb} (rank {rb})",
                "operands must agree on the T and B axes",
            )
        cls = ir.Add if op == "add" else ir.Mul
        return V(self.add(cls(name=n.name, inputs=(a.name, b.name))), out)

    def cat(self, n: fx.Node, tensors, dim: int = 0) -> V:
        vs = [self.tensor(n, t, "cat") for t in tensors]
        lay = {v.layout for v in vs}
        if len(lay) != 1 or lay <= {"S1", "TBL"}:
            raise self.unsupported(n, f"cat of layouts {sorted(lay)}", "all inputs must share one layout (TB, F or S)")
        layout = lay.pop()
        rank = len(self._shape(vs[0]))
        axis = (dim % rank) - _LEAD[layout]
        if axis < 0:
            raise self.unsupported(n, f"cat(dim={dim})", "concatenating over the T or batch axis")
        return V(self.add(ir.Concat(name=n.name, inputs=tuple(v.name for v in vs), axis=axis)), layout)


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


def _example_batch(T: int | None) -> int:
    return 3 if T == 2 else 2


def trace(
    model: nn.Module,
    example_shape: tuple[int, ...] | None = None,
    *,
    T: int | None = None,
    example_inputs: tuple[Any, ...] | None = None,
    check: bool = True,
) -> ir.Graph:
    """Trace ``model`` into a checked :class:`sdmc.ir.Graph`.

    ``example_shape`` is the image batch shape ``[B, C, H, W]`` (B is ignored: the IR is batch-agnostic);
    a second forward argument (the diffusion step ``t``) gets an int64 ``[B]`` example.  Or pass
    ``example_inputs`` directly.  ``T`` defaults to ``model.timestep`` / ``model.config.snn_steps`` when
    present, else to what the model's ``expand``/TSM/read-out layers use.
    """
    if T is None:
        T = getattr(model, "timestep", None) or getattr(getattr(model, "config", None), "snn_steps", None)
    if T is None:
        Ts = {m.T for m in model.modules() if isinstance(m, TSMConv2d)} | {
            m.n_steps for m in model.modules() if isinstance(m, MembraneOutputLayer)
        }
        if len(Ts) != 1:
            raise SdmcError(f"trace: cannot tell the number of SNN steps of {type(model).__name__}; pass T=...")
        T = Ts.pop()
    fn_name = "_forward" if hasattr(type(model), "_forward") else "forward"
    params = list(inspect.signature(getattr(type(model), fn_name)).parameters)[1:]
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    B = _example_batch(T)
    if example_inputs is None:
        if example_shape is None:
            raise SdmcError("trace: give example_shape (e.g. (1, 3, 32, 32)) or example_inputs")
        g = torch.Generator().manual_seed(0)
        example_inputs = (torch.randn((B,) + tuple(example_shape[1:]), generator=g, dtype=dtype).to(device),)
        if len(params) >= 2:
            example_inputs += (torch.zeros(B, dtype=torch.long, device=device),)
    else:
        B = int(example_inputs[0].shape[0])
    if len(example_inputs) != len(params):
        raise SdmcError(
            f"trace: {type(model).__name__}.{fn_name} takes {len(params)} inputs {params}, "
            f"got {len(example_inputs)} example(s)"
        )
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        for fake in (True, False):  # FakeTensors first (fast); real example values if an op has no fake kernel
            tracer = SpikingTracer(dict(zip(params, example_inputs)), fake=fake)
            tracer.traced_func_name = fn_name
            sj_functional.reset_net(model)
            try:
                fxg = tracer.trace(model)
                break
            except SdmcError:
                raise
            except Exception as e:  # fx.proxy.TraceError and errors from evaluating the example
                if fake:
                    continue
                raise UnsupportedOpError(
                    f"{type(model).__name__}.{fn_name}: torch.fx cannot trace it: {e} "
                    "(data-dependent control flow? make it a leaf module or simplify)"
                ) from e
        graph = _Translator(model, tracer, T, B).run(fxg)
    finally:
        sj_functional.reset_net(model)
        for m, mode in modes.items():
            m.training = mode
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        graph.meta["model_config"] = cfg.to_dict()
    graph.meta["source"] = type(model).__name__
    return ir.check(graph) if check else graph


def from_checkpoint(path, weights: str = "auto", snn_steps: int | None = None, img_size: int | None = None) -> ir.Graph:
    """Load a released ``.pt`` or native ``.safetensors`` model (``sdmc.checkpoint.load_model``) and trace it."""
    from sdmc.checkpoint import load_model

    model, cfg = load_model(path, weights=weights, snn_steps=snn_steps, img_size=img_size)
    m = cfg.model
    g = trace(model, (1, m.img_ch, m.img_size, m.img_size))
    g.meta["sdmc_config"] = __import__("json").loads(cfg.to_json())
    return g
