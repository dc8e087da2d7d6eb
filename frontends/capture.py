"""Capture: record a model's forward as a torch.fx graph while running it on a concrete example.

:class:`SpikingTracer` is a ``torch.fx`` tracer that also evaluates every node it records on the example
inputs (FakeTensors when possible: shapes propagate without computing) and keeps the result in
``node.meta['val']``.  With those values, ordinary model code traces:

- shape arithmetic and unpacking (``T, B, C, H, W = x.shape``, ``x.shape[-2]``, ``len(x.shape)``), and
  Python control flow on shapes (``assert x.shape[1] == 3``, ``for t in range(x.shape[0])``);
- constants built inside ``forward`` (``torch.arange(...)``, ``torch.pow(0.8, arr).to(x.device)``): computed
  for real, recorded as constants;
- Python loops over module lists and list ``pop()``: plain Python, run once.

Control flow on tensor *data* (``if x.sum() > 0``) is refused.  Modules with a lowering rule
(:mod:`.modules`), spikingjelly modules and torch's own layers are leaves; every other module is traced
through, so a model's own helper classes (its TSM conv, its read-out, its Swish) are seen op by op.
``spikingjelly.activation_based.functional.multi_step_forward`` / ``seq_to_ann_forward`` called from model
code on a traced tensor become one node (:func:`drive_multi_step` / :func:`drive_seq_to_ann`) naming the
driven modules.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.fx as fx
from spikingjelly.activation_based import functional as sj_functional
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

_SJ_PREFIX = "spikingjelly."
_ORIG_MULTI_STEP = sj_functional.multi_step_forward
_ORIG_SEQ_TO_ANN = sj_functional.seq_to_ann_forward


def drive_multi_step(x_seq: torch.Tensor, paths: tuple[str, ...]) -> torch.Tensor:  # pragma: no cover - marker
    """Marker target: ``functional.multi_step_forward(x_seq, modules at paths)`` (never called)."""
    raise RuntimeError("drive_multi_step is a trace marker")


def drive_seq_to_ann(x_seq: torch.Tensor, paths: tuple[str, ...]) -> torch.Tensor:  # pragma: no cover - marker
    """Marker target: ``functional.seq_to_ann_forward(x_seq, modules at paths)`` (never called)."""
    raise RuntimeError("drive_seq_to_ann is a trace marker")


_DRIVERS = {drive_multi_step: _ORIG_MULTI_STEP, drive_seq_to_ann: _ORIG_SEQ_TO_ANN}


def _shape_value(v: Any) -> bool:
    """True for values computed from shapes only (ints, bools, sizes), never from tensor data."""
    if isinstance(v, (bool, int)):
        return True
    return isinstance(v, (tuple, list, torch.Size)) and all(_shape_value(x) for x in v)


def _len(p: fx.Proxy) -> int:
    v = p.node.meta.get("val")
    if isinstance(v, (tuple, list, torch.Size, torch.Tensor)):
        return len(v)
    return fx.Proxy.__len__(p)


def _bool(p: fx.Proxy) -> bool:
    v = p.node.meta.get("val")
    if _shape_value(v):
        return bool(v)
    return fx.Proxy.__bool__(p)  # data-dependent: fx raises


def _index(p: fx.Proxy) -> int:
    v = p.node.meta.get("val")
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise fx.proxy.TraceError(f"{p.node.name} is not a known integer; cannot use it as an index")


class _ValAttribute(fx.proxy.Attribute):
    __len__ = _len
    __bool__ = _bool
    __index__ = _index


class ValProxy(fx.Proxy):
    """A proxy that answers ``len()``, ``bool()`` and ``int`` indexing from its example value when that value
    comes from shapes alone."""

    __len__ = _len
    __bool__ = _bool
    __index__ = _index

    def __getattr__(self, k: str) -> fx.proxy.Attribute:
        return _ValAttribute(self, k)


def is_spikingjelly(m: nn.Module) -> bool:
    return type(m).__module__.startswith(_SJ_PREFIX)


class SpikingTracer(fx.Tracer):
    """An fx tracer that records an example value in ``node.meta['val']`` for every node.

    ``leaf(m)`` says which modules are recorded as one ``call_module`` node.  With ``fake`` the example
    inputs are FakeTensors (values computed from real constants only stay real).
    """

    def __init__(self, examples: dict[str, Any], leaf: Callable[[nn.Module], bool], fake: bool = True) -> None:
        super().__init__()
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
        self.examples = {
            k: self.fake_mode.from_tensor(v) if fake and isinstance(v, torch.Tensor) else v for k, v in examples.items()
        }
        self._leaf = leaf
        self._evaluating = False  # True while computing an example value: run modules for real

    # ---- fx hooks
    def call_module(self, m, forward, args, kwargs):
        if self._evaluating:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ValProxy(node, self)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return self._leaf(m) or is_spikingjelly(m) or super().is_leaf_module(m, qualname)

    def iter(self, obj):
        v = obj.node.meta.get("val")
        if isinstance(v, (tuple, list, torch.Size)):
            return iter([obj[i] for i in range(len(v))])
        return super().iter(obj)

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        if kind != "output":
            self._evaluating = True
            try:
                node.meta["val"] = self._evaluate(node)
            finally:
                self._evaluating = False
        return node

    # ---- example values
    def _evaluate(self, node: fx.Node) -> Any:
        args = fx.node.map_arg(node.args, lambda n: n.meta.get("val"))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: n.meta.get("val"))
        fake = self.fake_mode is not None and _any_fake((args, kwargs))
        kind, target = node.op, node.target
        with torch.no_grad(), self.fake_mode if fake else contextlib.nullcontext():
            if kind == "placeholder":
                return self.examples.get(target)
            if kind == "get_attr":
                obj = self.root
                for part in str(target).split("."):
                    obj = getattr(obj, part)
                return obj
            if kind == "call_function":
                if target in _DRIVERS:
                    mods = [self.root.get_submodule(p) for p in args[1]]
                    return _DRIVERS[target](args[0], mods[0] if len(mods) == 1 else nn.Sequential(*mods))
                return target(*args, **kwargs)
            if kind == "call_method":
                return getattr(args[0], target)(*args[1:], **kwargs)
            if kind == "call_module":
                return self.root.get_submodule(target)(*args, **kwargs)
        return None

    def path_of(self, m: nn.Module) -> str:
        for name, sub in self.root.named_modules():
            if sub is m:
                return name
        raise fx.proxy.TraceError(f"module {type(m).__name__} driven over T is not a submodule of the model")

    def drive(self, marker: Callable, x_seq: Any, modules: Any) -> Any:
        """The ``functional.multi_step_forward`` / ``seq_to_ann_forward`` replacement while tracing."""
        if not isinstance(x_seq, fx.Proxy):
            return _DRIVERS[marker](x_seq, modules)
        mods = list(modules) if isinstance(modules, (list, tuple, nn.Sequential)) else [modules]
        if not all(isinstance(m, nn.Module) for m in mods):
            raise fx.proxy.TraceError("functional.multi_step_forward over a plain function cannot be traced")
        return self.create_proxy("call_function", marker, (x_seq, tuple(self.path_of(m) for m in mods)), {})

    def cleanup(self) -> None:
        """Remove the constants fx stowed on the model as ``_tensor_constant*`` attributes."""
        for qualname in set(self.tensor_attrs.values()):
            if isinstance(qualname, str) and "." not in qualname and hasattr(self.root, qualname):
                delattr(self.root, qualname)


def _any_fake(obj: Any) -> bool:
    if isinstance(obj, FakeTensor):
        return True
    if isinstance(obj, (tuple, list)):
        return any(_any_fake(o) for o in obj)
    if isinstance(obj, dict):
        return any(_any_fake(o) for o in obj.values())
    return False


@contextlib.contextmanager
def drivers_patched(tracer: SpikingTracer, model: nn.Module) -> Iterator[None]:
    """Route ``multi_step_forward`` / ``seq_to_ann_forward`` through ``tracer.drive`` while tracing: on the
    functional module and wherever a model class's module imported the function by name."""
    repl = {
        _ORIG_MULTI_STEP: lambda x, m: tracer.drive(drive_multi_step, x, m),
        _ORIG_SEQ_TO_ANN: lambda x, m, *a, **k: tracer.drive(drive_seq_to_ann, x, m),
    }
    spaces = {id(sj_functional): vars(sj_functional)}
    for m in model.modules():
        mod = sys.modules.get(type(m).__module__)
        if mod is not None and not type(m).__module__.startswith(_SJ_PREFIX):
            spaces[id(mod)] = vars(mod)
    saved = []
    for ns in spaces.values():
        for k, v in list(ns.items()):
            if v is _ORIG_MULTI_STEP or v is _ORIG_SEQ_TO_ANN:
                saved.append((ns, k, v))
                ns[k] = repl[v]
    try:
        yield
    finally:
        for ns, k, v in saved:
            ns[k] = v
