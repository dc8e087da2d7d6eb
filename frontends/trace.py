"""Entry points: :func:`trace` (an ``nn.Module`` -> checked IR graph) and :func:`from_checkpoint`.

Inputs come in two timings.  A static input ``[B, ...]`` (a diffusion UNet's noisy image, replicated over T
inside the model) and a per-step sequence ``[T, B, ...]`` (a classifier on event data or encoded frames).
Give ``timing`` to say which, or let :func:`trace` infer it: an example shape whose first axis is ``T``, on
a model with multi-step spikingjelly modules (``step_mode='m'``, ``SeqToANNContainer``...), is a sequence
when the input goes straight into a multi-step module; otherwise the input is static.
"""

from __future__ import annotations

import inspect
import json
import operator
from typing import Any

import torch
import torch.fx as fx
from spikingjelly.activation_based import base as sj_base
from spikingjelly.activation_based import functional as sj_functional
from torch import nn

from sdmc import ir
from sdmc.errors import SdmcError, UnsupportedOpError

from .capture import SpikingTracer, drive_multi_step, drive_seq_to_ann, drivers_patched
from .lowering import Lowering
from .modules import has_rule

TIMINGS = {"static": "S", "per-step": "TB", ir.STATIC: "S", ir.PER_STEP: "TB"}
_T_ATTRS = ("timestep", "T", "n_steps", "steps")


def is_multi_step(m: nn.Module) -> bool:
    """Whether ``m`` takes ``[T, B, ...]`` sequences (spikingjelly ``step_mode='m'`` or a multi-step container)."""
    return getattr(m, "step_mode", "s") == "m" or isinstance(m, sj_base.MultiStepModule)


def steps_of(model: nn.Module) -> int | None:
    """The number of SNN steps a model declares: ``config.snn_steps``, else the one value of the ``timestep``
    / ``T`` / ``n_steps`` / ``steps`` integer attributes of its modules (the model's own first)."""
    cfg_T = getattr(getattr(model, "config", None), "snn_steps", None)
    if isinstance(cfg_T, int):
        return cfg_T
    for k in _T_ATTRS[:2]:
        v = getattr(model, k, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    found = {
        getattr(m, k)
        for m in model.modules()
        for k in _T_ATTRS
        if isinstance(getattr(m, k, None), int) and not isinstance(getattr(m, k), bool) and getattr(m, k) > 0
    }
    return found.pop() if len(found) == 1 else None


def _example_batch(T: int) -> int:
    return 3 if T == 2 else 2  # B != T and B != 1: the trace tells the T and B axes apart by size


def _consumes_sequence(fxg: fx.Graph, model: nn.Module, name: str) -> bool:
    """Whether placeholder ``name`` reaches a multi-step module or a ``multi_step_forward`` through ops that
    keep its axes (layers without a step mode, elementwise ops), before anything that could add a T axis."""
    ph = next(n for n in fxg.nodes if n.op == "placeholder" and n.target == name)
    todo, seen = list(ph.users), set()
    while todo:
        u = todo.pop()
        if u in seen:
            continue
        seen.add(u)
        if u.op == "call_module" and is_multi_step(model.get_submodule(u.target)):
            return True
        if u.op == "call_function" and u.target in (drive_multi_step, drive_seq_to_ann):
            return True
        if u.op == "call_method" and u.target in _ADDS_AXES or u.op == "call_function" and u.target in _ADDS_AXES:
            continue
        if u.op in ("call_module", "call_function", "call_method") and isinstance(u.meta.get("val"), torch.Tensor):
            todo.extend(u.users)
    return False


_ADDS_AXES = ("unsqueeze", "expand", "repeat", "view", "reshape", "unflatten", operator.getitem, torch.unsqueeze)


def _capture(model: nn.Module, fn_name: str, examples: dict[str, Any]) -> tuple[SpikingTracer, fx.Graph]:
    err: Exception | None = None
    for fake in (True, False):  # FakeTensors first (fast); real example values if an op has no fake kernel
        tracer = SpikingTracer(examples, has_rule, fake=fake)
        tracer.traced_func_name = fn_name
        sj_functional.reset_net(model)
        try:
            with drivers_patched(tracer, model):
                return tracer, tracer.trace(model)
        except SdmcError:
            raise
        except Exception as e:  # fx.proxy.TraceError and errors from evaluating the example
            err = e
        finally:
            tracer.cleanup()
    raise UnsupportedOpError(
        f"{type(model).__name__}.{fn_name}: torch.fx cannot trace it: {err} "
        "(data-dependent control flow? make it a leaf module or simplify)"
    ) from err


def trace(
    model: nn.Module,
    example_shape: tuple[int, ...] | None = None,
    *,
    T: int | None = None,
    example_inputs: tuple[Any, ...] | None = None,
    timing: str | None = None,
    check: bool = True,
) -> ir.Graph:
    """Trace ``model`` into a checked :class:`sdmc.ir.Graph`.

    ``example_shape``: the first input's shape, ``[B, C, H, W]`` for a static image or ``[T, B, ...]`` for a
    per-step sequence (B is ignored: the IR is batch-agnostic).  A second forward argument (a diffusion
    UNet's step ``t``) gets an int64 ``[B]`` example.  Or pass ``example_inputs`` directly.  ``timing``:
    ``'static'`` or ``'per-step'`` for the first input (default: inferred, see the module docstring).
    ``T`` defaults to what the model declares (:func:`steps_of`).
    """
    T = T or steps_of(model)
    if T is None:
        raise SdmcError(f"trace: cannot tell the number of SNN steps of {type(model).__name__}; pass T=...")
    if timing is not None and timing not in TIMINGS:
        raise SdmcError(f"trace: timing must be 'static' or 'per-step', got {timing!r}")
    fn_name = "_forward" if hasattr(type(model), "_forward") else "forward"
    sig = inspect.signature(getattr(type(model), fn_name))
    params = [p for p in list(sig.parameters)[1:] if sig.parameters[p].kind not in (inspect.Parameter.VAR_KEYWORD,)]
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if example_inputs is None and example_shape is None:
        raise SdmcError("trace: give example_shape (e.g. (1, 3, 32, 32)) or example_inputs")
    shape0 = tuple(example_inputs[0].shape) if example_inputs is not None else tuple(example_shape)
    if timing is not None:
        candidates = [TIMINGS[timing]]
    elif len(shape0) >= 3 and shape0[0] == T and any(is_multi_step(m) for m in model.modules()):
        candidates = ["TB", "S"]
    else:
        candidates = ["S"]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        for i, layout in enumerate(candidates):
            examples, B = _examples(model, params, fn_name, shape0, example_inputs, layout, T, dtype, device)
            last = i == len(candidates) - 1
            try:
                tracer, fxg = _capture(model, fn_name, examples)
            except UnsupportedOpError:
                if last:
                    raise
                continue
            if layout == "TB" and timing is None and not _consumes_sequence(fxg, model, params[0]) and not last:
                continue
            graph = Lowering(model, tracer, T, B, {params[0]: layout}).run(fxg)
            break
    finally:
        sj_functional.reset_net(model)
        for m, mode in modes.items():
            m.training = mode
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        graph.meta["model_config"] = cfg.to_dict()
    graph.meta["source"] = type(model).__name__
    return ir.check(graph) if check else graph


def _examples(model, params, fn_name, shape0, given, layout, T, dtype, device) -> tuple[dict[str, Any], int]:
    if given is not None:
        if len(given) != len(params):
            raise SdmcError(
                f"trace: {type(model).__name__}.{fn_name} takes {len(params)} inputs {params}, "
                f"got {len(given)} example(s)"
            )
        return dict(zip(params, given)), int(given[0].shape[1 if layout == "TB" else 0])
    B = _example_batch(T)
    shape = (T, B) + shape0[2:] if layout == "TB" else (B,) + shape0[1:]
    g = torch.Generator().manual_seed(0)
    ex: tuple = (torch.randn(shape, generator=g, dtype=dtype).to(device),)
    if len(params) >= 2:
        ex += (torch.zeros(B, dtype=torch.long, device=device),)
    if len(ex) != len(params):
        raise SdmcError(
            f"trace: {type(model).__name__}.{fn_name} takes {len(params)} inputs {params}; "
            "pass example_inputs for all of them"
        )
    return dict(zip(params, ex)), B


def from_checkpoint(
    path, weights: str = "auto", snn_steps: int | None = None, img_size: int | None = None, unsafe: bool = False
) -> ir.Graph:
    """Load a released ``.pt`` or native ``.safetensors`` model (``sdmc.checkpoint.load_model``; ``unsafe``
    allows unpickling arbitrary objects) and trace it."""
    from sdmc.checkpoint import load_model

    model, cfg = load_model(path, weights=weights, snn_steps=snn_steps, img_size=img_size, unsafe=unsafe)
    m = cfg.model
    g = trace(model, (1, m.img_ch, m.img_size, m.img_size))
    g.meta["sdmc_config"] = json.loads(cfg.to_json())
    return g
