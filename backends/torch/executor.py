"""The torch backend: compile a spiking IR graph (or a model) into an ``nn.Module`` that trains and samples.

    >>> ex = compile_torch(model, mode="train")          # traced with sdmc.frontends.trace
    >>> ex = compile_torch(graph, mode="inference", dtype=torch.float32, channels_last=True)
    >>> eps = ex(x, t)                                    # same call signature as the source model
    >>> print(ex.code)                                    # the generated forward (torch.fx codegen)

Code generation: every IR node becomes one call in a torch.fx ``Graph`` (kernels in
:mod:`.kernels`, chosen by the table :data:`.lowering.LOWERINGS`); ``python_code`` turns it into the executor's forward.  Per-step
values stay folded ``[T*B, ...]`` from end to end (convolutions see T in the batch, no per-step
re-layout), neurons run fused over T (:class:`~sdmc.backends.torch.kernels.MultiStepNeuron`), static
values (the noisy image, the time embedding) stay ``[B, ...]``.

Modes:
  ``train``      the traced graph as is (BN with batch statistics pooled over T*B in ``.train()``, running
                 statistics updated like ``nn.BatchNorm2d``; ATan surrogate gradients through the reset) after the
                 ``train`` pass pipeline (``hoist_affine``: the head conv runs on the un-repeated image).  Parameters and buffers
                 are registered under the source model's ``state_dict`` names, so ``ex.state_dict()`` loads
                 strictly into the eager model and vice versa.
  ``inference``  the ``inference`` pass pipeline (BN folded, TSM fused into per-step weights, static work
                 hoisted, dead code removed); eval only; folded parameters get the passes' names.

Neuron thresholds live on small neuron modules as ``v_threshold`` (threshold guidance sets them).
Optional paths: ``autocast=torch.bfloat16`` (tested on CPU: forward and backward run; spikes near the
threshold flip, so outputs are not exact), ``compile=True`` -> ``torch.compile`` of the generated forward and
``compile="reduce-overhead"`` (CUDA graphs on GPU).  The compile paths are guarded but not tuned: on CPU dynamo
breaks the graph at the neuron loops and recompiles per call site; no GPU was available to test them.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from sdmc import ir
from sdmc.errors import ConfigError, SdmcError

from . import kernels as K
from .lowering import LOWERINGS, Lowering
from .neuron import NeuronModule
from .precision import Precision, choose, quantize_graph

__all__ = [
    "TorchExecutor",
    "compile_torch",
    "prepare",
    "load_compiled",
    "save_compiled",
    "NeuronModule",
    "MODES",
]

MODES = ("train", "inference")
_BUFFER_FIELDS = ("running_mean", "running_var", "num_batches_tracked")
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def _ident(name: str) -> str:
    """``name`` as a Python identifier (generated code names inputs after IR nodes; NIR files call theirs 'in')."""
    s = re.sub(r"\W", "_", name)
    s = s if s and not s[0].isdigit() else "_" + s
    return s + "_" if keyword.iskeyword(s) else s


class TorchExecutor(nn.Module):
    """The generated module.  Call it like the source model: ``ex(*inputs)`` in graph-input order; returns
    the output tensor (a tuple when the graph has several outputs).  Per-step inputs/outputs are
    ``[T, B, ...]``, static ones ``[B, ...]``.  Float inputs are cast to the executor's dtype."""

    def __init__(
        self,
        graph: ir.Graph,
        mode: str,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        source_state: dict[str, torch.Tensor] | None = None,
        frozen: Iterable[str] = (),
        autocast: torch.dtype | None = None,
        precision: Precision | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"compile_torch: mode must be one of {MODES}, got {mode!r}")
        ir.check(graph)
        self.precision = precision or Precision("fp32", dtype)
        self._int8: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if self.precision.int8:
            graph, self._int8 = quantize_graph(graph)
        self._ir = graph
        self._mode = mode
        self._dtype = dtype
        self._channels_last = bool(channels_last)
        self._autocast = autocast
        self._out_dtype = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
        self._T = graph.T
        self._in_types = [n.type for n in graph.input_nodes]
        self._in_names = [n.name for n in graph.input_nodes]
        self._param_attr: dict[str, str] = {}
        self._build_params(graph, dtype, source_state or {}, set(frozen))
        self._fx = self._build_fx(graph)
        code = self._fx.python_code(root_module="self")
        self._src = code.src
        ns: dict[str, Any] = dict(code.globals)
        exec(compile(code.src, f"<sdmc torch_exec {graph.meta.get('source', 'graph')}>", "exec"), ns)
        self._run = ns["forward"]
        self._compiled = None
        if mode == "inference":
            self.eval()

    # -------------------------------------------------------------------------------- construction
    def _place(self, path: str, make) -> str:
        """Put a parameter / buffer / module at dotted ``path`` (creating empty parent modules); on a name
        clash use a flat sanitised name.  Returns the attribute path used."""
        parts = path.split(".")
        mod: nn.Module = self
        ok = all((p.isidentifier() and not keyword.iskeyword(p)) or p.isdigit() for p in parts)  # fx: no self.x.from
        if ok:
            for p in parts[:-1]:
                sub = mod._modules.get(p)
                if sub is None:
                    if hasattr(mod, p):
                        ok = False
                        break
                    sub = nn.Module()
                    mod.add_module(p, sub)
                mod = sub
        leaf = parts[-1]
        if not ok or hasattr(mod, leaf) or leaf in mod._modules:
            mod, leaf, path = self, "_p_" + _ident(path), "_p_" + _ident(path)
            if hasattr(self, leaf):
                raise SdmcError(f"torch backend: cannot place {path!r}: name taken")
        make(mod, leaf)
        return path

    def _build_params(self, g: ir.Graph, dtype: torch.dtype, src: dict[str, torch.Tensor], frozen: set[str]) -> None:
        buffers = set()
        for n in g:
            refs = n.param_refs()
            for fld in _BUFFER_FIELDS:
                if fld in refs:
                    buffers.add(refs[fld])
        int8_weights = {g.nodes[k].weight for k in self._int8}  # held by the Int8Conv modules instead
        for name in g.param_names():
            if name in int8_weights:
                continue
            if name in src:
                t = src[name].detach().clone()
            else:
                t = torch.from_numpy(np.array(g.params[name], copy=True))
            if t.is_floating_point():
                t = t.to(dtype)
                if self._channels_last and t.dim() == 4:
                    t = t.contiguous(memory_format=torch.channels_last)
            if name in buffers or not t.is_floating_point():
                self._param_attr[name] = self._place(name, lambda m, k, t=t: m.register_buffer(k, t))
            else:
                p = nn.Parameter(t, requires_grad=name not in frozen)
                self._param_attr[name] = self._place(name, lambda m, k, p=p: m.register_parameter(k, p))

    def _build_fx(self, g: ir.Graph) -> fx.Graph:
        """One fx call per IR node from the lowering table; graph inputs are folded when per-step, outputs
        unfolded back to ``[T, B, ...]``."""
        fg = fx.Graph()
        T = g.T
        place = lambda name, make: self._place(name, lambda m, k: m.add_module(k, make()))  # noqa: E731
        c = Lowering(fg, T, self._param_attr, place, self._int8, self._dtype, train=self._mode == "train")
        env: dict[str, fx.Node] = {}
        outs: dict[str, fx.Node] = {}
        for n in g.order():
            ts = [g.nodes[i].type for i in n.inputs]
            xs = [env[i] for i in n.inputs]
            if n.op == "input":
                v = fg.placeholder(_ident(n.name))
                env[n.name] = c.call(K.fold, v, T) if n.type.per_step else v
                continue
            if n.op == "output":
                outs[n.name] = c.call(K.unfold, xs[0], T) if ts[0].per_step else xs[0]
                continue
            rule = LOWERINGS.get(n.op)
            if rule is None:
                raise SdmcError(f"torch backend: node {n.name!r}: op {n.op!r} is not supported")
            env[n.name] = rule(c, n, xs, ts)
        res = [outs[n.name] for n in g.output_nodes]
        fg.output(res[0] if len(res) == 1 else tuple(res))
        fg.lint()
        return fg

    # -------------------------------------------------------------------------------- running
    @property
    def code(self) -> str:
        """The generated forward's Python source."""
        return self._src

    @property
    def graph(self) -> ir.Graph:
        """The IR graph this executor runs (after the mode's passes)."""
        return self._ir

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def T(self) -> int:
        return self._T

    def _prep_inputs(self, args: tuple) -> list[torch.Tensor]:
        if len(args) != len(self._in_names):
            raise SdmcError(
                f"torch executor: expected {len(self._in_names)} input(s) {self._in_names}, got {len(args)}"
            )
        out = []
        for name, t, a in zip(self._in_names, self._in_types, args):
            a = torch.as_tensor(a)
            lead = 2 if t.per_step else 1
            if (
                a.dim() != lead + len(t.shape)
                or tuple(a.shape[lead:]) != t.shape
                or (t.per_step and a.shape[0] != self._T)
            ):
                raise SdmcError(
                    f"torch executor: input {name!r}: expected shape "
                    f"[{', '.join(map(str, t.full_shape(self._T, 'B')))}], got {list(a.shape)}"
                )
            if t.dtype in _DTYPES:
                a = a.to(self._dtype)
                if self._channels_last and a.dim() == 4:
                    a = a.contiguous(memory_format=torch.channels_last)
            out.append(a)
        return out

    def forward(self, *args: Any) -> Any:
        if self._mode == "inference" and self.training:
            raise SdmcError(
                "torch executor: an 'inference' executor (BN folded) cannot run in training mode; "
                "compile with mode='train' to train"
            )
        xs = self._prep_inputs(args)
        run = self._compiled or self._run
        if self._autocast is not None:
            dev = xs[0].device.type
            with torch.autocast(dev, dtype=self._autocast):
                out = run(self, *xs)
            return out.to(self._dtype) if isinstance(out, torch.Tensor) else tuple(o.to(self._dtype) for o in out)
        out = run(self, *xs)
        if self._out_dtype != self._dtype:  # bf16 executors hand back fp32 outputs
            return (
                out.to(self._out_dtype) if isinstance(out, torch.Tensor) else tuple(o.to(self._out_dtype) for o in out)
            )
        return out

    def extra_repr(self) -> str:
        return (
            f"mode={self._mode}, T={self._T}, dtype={self._dtype}, precision={self.precision.name}, "
            f"channels_last={self._channels_last}"
        )


# ------------------------------------------------------------------------------------------ entry points
def _passes_for(g: ir.Graph, mode: str) -> ir.Graph:
    """The graph the executor runs in ``mode``: the ``inference`` or ``train`` pass pipeline applied."""
    from sdmc import passes

    return passes.run(g, mode)


def _trace_model(model: nn.Module) -> ir.Graph:
    from sdmc.frontends import trace

    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "img_size"):
        raise ConfigError(
            f"compile_torch: {type(model).__name__} has no .config with img_ch/img_size; "
            "trace it yourself (sdmc.frontends.trace) and pass the graph"
        )
    return trace(model, (1, cfg.img_ch, cfg.img_size, cfg.img_size))


def compile_torch(
    graph_or_model: ir.Graph | nn.Module,
    mode: str = "train",
    dtype: torch.dtype | None = None,
    channels_last: bool | None = None,
    compile: bool | str = False,
    autocast: torch.dtype | None = None,
    device: str | torch.device | None = None,
    precision: str | None = None,
) -> TorchExecutor:
    """Compile an IR graph or a model (traced with :func:`sdmc.frontends.trace`) into a :class:`TorchExecutor`.

    ``mode``: ``train`` or ``inference`` (see the module docstring).  ``dtype``: parameter / compute dtype
    (default: the model's, else float32).  ``channels_last``: NHWC activations and conv weights (default: on
    for CPU executors, where it is faster for training and sampling; off on GPU).  ``compile``: ``True`` or a ``torch.compile`` mode name
    (``"reduce-overhead"`` uses CUDA graphs on GPU).  ``autocast``: e.g. ``torch.bfloat16``.
    ``precision``: ``fp32`` (default, exact), ``bf16`` or ``int8`` (inference), see
    :mod:`sdmc.backends.torch.precision`; checked against the device (an unsupported choice is one
    :class:`ConfigError`), and ``ex.precision.note`` says what was chosen.
    From a model, parameters are copied from its ``state_dict`` (keeping ``requires_grad=False`` ones frozen)
    and the executor takes its ``config``; the executor starts in the model's train/eval state
    (``inference``: always eval).
    """
    if mode not in MODES:
        raise ConfigError(f"compile_torch: mode must be one of {MODES}, got {mode!r}")
    src_state, frozen, cfg, training = None, set(), None, mode == "train"
    if isinstance(graph_or_model, nn.Module):
        model = graph_or_model
        if isinstance(model, TorchExecutor):
            raise ConfigError("compile_torch: already a compiled TorchExecutor")
        g = _trace_model(model)
        src_state = dict(model.state_dict(keep_vars=False))
        frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
        cfg = getattr(model, "config", None)
        training = model.training
        if dtype is None:
            dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        if device is None:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
    elif isinstance(graph_or_model, ir.Graph):
        g = graph_or_model
        if dtype is None:
            dtype = _DTYPES.get(next((n.dtype for n in g.input_nodes if n.dtype in _DTYPES), "float32"), torch.float32)
    else:
        raise ConfigError(
            f"compile_torch: expected an sdmc.ir.Graph or an nn.Module, got {type(graph_or_model).__name__}"
        )
    if precision is not None and autocast is not None:
        raise ConfigError("compile_torch: give precision= or autocast=, not both (precision='bf16' sets autocast)")
    prec = choose(precision, mode, device, dtype)
    g = _passes_for(g, mode)
    if channels_last is None:
        channels_last = torch.device(device or "cpu").type == "cpu"
    ex = TorchExecutor(
        g,
        mode,
        dtype=prec.dtype,
        channels_last=channels_last,
        source_state=src_state,
        frozen=frozen,
        autocast=autocast or prec.autocast,
        precision=prec,
    )
    if cfg is not None:
        ex.config = cfg
    elif "model_config" in g.meta:
        from sdmc.config import ModelConfig

        try:
            ex.config = ModelConfig.from_dict(g.meta["model_config"])  # checked: unknown fields, types, ranges
        except Exception:  # noqa: BLE001 - a foreign graph: no config, callers pass shapes
            pass
    if device is not None:
        ex.to(device)
    ex.train(training and mode == "train")
    if compile:
        ex._compiled = torch.compile(ex._run, mode=compile if isinstance(compile, str) else None)
    return ex


def prepare(model: nn.Module, mode: str = "train", **kwargs: Any) -> nn.Module:
    """The one call site helper for ``sdmc train`` / ``sdmc sample``: the compiled executor of ``model``
    (``mode`` train or inference), or ``model`` itself when it has no spiking neurons (ANN UNet) or is
    already compiled.  A ``precision`` other than fp32 needs the compiled executor: asking it of a model that
    is passed through is a :class:`ConfigError`."""
    passthrough = isinstance(model, TorchExecutor) or not any(hasattr(m, "v_threshold") for m in model.modules())
    if passthrough:
        prec = kwargs.get("precision")
        have = model.precision.name if isinstance(model, TorchExecutor) else "fp32"
        if prec not in (None, have):
            what = "already compiled" if isinstance(model, TorchExecutor) else "has no spiking neurons (an ANN)"
            raise ConfigError(f"precision {prec!r}: the model {what} and runs in {have}; compile the SNN with it")
        return model
    return compile_torch(model, mode=mode, **kwargs)


# ------------------------------------------------------------------------------------------ files
def save_compiled(
    path, graph_or_model: ir.Graph | nn.Module, cfg=None, mode: str = "inference", *, force=False, protect=()
) -> Any:
    """Write the graph the torch backend runs in ``mode`` (passes applied) as a ``.sdmc`` zip (atomic), with
    ``meta['backend'] = {'name': 'torch', 'mode': mode}`` and the sdmc config when known; ``force`` and
    ``protect`` as for :func:`sdmc.ir.save` (the directory form)."""
    import json

    if isinstance(graph_or_model, nn.Module):
        g = _trace_model(graph_or_model)
    else:
        g = graph_or_model
    if mode not in MODES:
        raise ConfigError(f"save_compiled: mode must be one of {MODES}, got {mode!r}")
    g = _passes_for(g, mode)
    g.meta["backend"] = {"name": "torch", "mode": mode}
    if cfg is not None:
        g.meta["sdmc_config"] = json.loads(cfg.to_json())
    return ir.save(g, path, force=force, protect=protect)


def load_compiled(
    path,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    channels_last: bool | None = None,
    precision: str | None = None,
) -> tuple[TorchExecutor, Any]:
    """Load a ``.sdmc`` file into an executor (its recorded mode, default inference) at ``precision`` (see
    :func:`compile_torch`); returns ``(executor, SdmcConfig or None)``; the executor has ``.config`` (the model
    config) when recorded."""
    g = ir.load(path)
    mode = (
        g.meta.get("backend", {}).get("mode", "inference") if isinstance(g.meta.get("backend"), dict) else "inference"
    )
    cfg = None
    if "sdmc_config" in g.meta:
        import json

        from sdmc.config import SdmcConfig

        cfg = SdmcConfig.from_json(json.dumps(g.meta["sdmc_config"]))
    if dtype is None:
        dtype = _DTYPES.get(next((n.dtype for n in g.input_nodes if n.dtype in _DTYPES), "float32"), torch.float32)
    if channels_last is None:
        channels_last = torch.device(device).type == "cpu"
    prec = choose(precision, mode, device, dtype)
    ex = TorchExecutor(g, mode, dtype=prec.dtype, channels_last=channels_last, autocast=prec.autocast, precision=prec)
    if cfg is not None:
        ex.config = cfg.model
    elif "model_config" in g.meta:
        from sdmc.config import ModelConfig

        ex.config = ModelConfig.from_dict(g.meta["model_config"])  # checked: unknown fields, types, ranges
    ex.to(device).eval()
    return ex, cfg
