"""Bring your own model class: build a user's ``nn.Module`` from ``file.py:Class`` or ``module:Class``,
load a checkpoint into it, and trace it (what ``sdmc compile --model`` does).

Loading a class **executes the user's Python code** (the file, or the module and its imports): that is what
the user asks for by naming it, exactly as ``python file.py`` would; nothing else is imported or run.  The
weights are read without unpickling code (``torch.load(weights_only=True)`` or safetensors), strictly: every
parameter and buffer of the model must be in the file with its shape, and nothing else.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from torch import nn

from sdmc.errors import ConfigError


def load_class(spec: str) -> type[nn.Module]:
    """The class named by ``spec``: ``path/to/file.py:ClassName`` (the file is run as a module) or
    ``package.module:ClassName`` (imported).  Raises :class:`ConfigError` naming what is missing."""
    if not isinstance(spec, str) or spec.count(":") < 1 or not spec.rsplit(":", 1)[1]:
        raise ConfigError(f"--model: expected FILE.py:ClassName or module:ClassName, got {spec!r}")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"--model: no such file {where!r}")
        mod_name = f"sdmc_user_model_{abs(hash(str(path.resolve())))}"
        spec_ = importlib.util.spec_from_file_location(mod_name, path)
        if spec_ is None or spec_.loader is None:
            raise ConfigError(f"--model: cannot load {where!r} as Python source")
        module = importlib.util.module_from_spec(spec_)
        sys.modules[mod_name] = module  # dataclasses and pickling look classes up by module name
        sys.path.insert(0, str(path.resolve().parent))  # the file's own sibling imports
        try:
            spec_.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(mod_name, None)
            raise ConfigError(f"--model: running {where!r} failed: {type(e).__name__}: {e}") from e
        finally:
            sys.path.remove(str(path.resolve().parent))
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise ConfigError(f"--model: cannot import module {where!r}: {type(e).__name__}: {e}") from e
    cls = getattr(module, name, None)
    if cls is None:
        raise ConfigError(f"--model: {where!r} has no attribute {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"--model: {spec!r} is a {type(cls).__name__}, not a torch.nn.Module subclass")
    return cls


def parse_model_args(text: str | dict | list | None) -> tuple[list, dict]:
    """``--model-args``: a JSON object (keyword arguments) or array (positional arguments)."""
    if text is None or text == "":
        return [], {}
    try:
        val = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model-args: not valid JSON ({e.msg} at column {e.colno}): {text!r}") from None
    if isinstance(val, dict):
        return [], val
    if isinstance(val, list):
        return val, {}
    raise ConfigError(f"--model-args: expected a JSON object or array, got {type(val).__name__}")


def build_user_model(
    spec: str,
    model_args: str | dict | list | None = None,
    checkpoint=None,
    weights: str = "auto",
    unsafe: bool = False,
) -> nn.Module:
    """``Class(*args, **kwargs)`` from :func:`load_class` / :func:`parse_model_args`, with ``checkpoint``'s
    weights loaded strictly (released ``{'net_model', 'ema_model'}`` files pick ``weights``), in eval mode."""
    from sdmc.checkpoint import match_state_dict, read_checkpoint

    cls = load_class(spec)
    args, kwargs = parse_model_args(model_args)
    try:
        model = cls(*args, **kwargs)
    except Exception as e:
        raise ConfigError(f"--model: {cls.__name__}(*{args}, **{kwargs}) failed: {type(e).__name__}: {e}") from e
    if checkpoint is not None:
        sd, _, _ = read_checkpoint(checkpoint, weights=weights, unsafe=unsafe)
        match_state_dict(model, sd, source=str(checkpoint), what=cls.__name__)
        model.load_state_dict(sd, strict=True)
    return model.eval()


def trace_user_model(
    spec: str,
    model_args: Any = None,
    checkpoint=None,
    *,
    input_shape: tuple[int, ...],
    T: int | None = None,
    timing: str | None = None,
    weights: str = "auto",
    unsafe: bool = False,
):
    """:func:`build_user_model` then :func:`sdmc.frontends.trace` at ``input_shape``; the graph records
    where it came from (``meta['source_class']``, ``meta['model_args']``).

    ``T``: given, else what the model declares (:func:`~sdmc.frontends.trace.steps_of`), else the first axis
    of a sequence input ``[T, B, ...]`` (``timing='per-step'``, or a model with multi-step spikingjelly
    modules and an input of rank >= 3)."""
    from .trace import is_multi_step, steps_of, trace

    shape = tuple(int(v) for v in input_shape)
    if not shape or any(v < 1 for v in shape):
        raise ConfigError(f"--input-shape: expected positive sizes, got {list(shape)}")
    model = build_user_model(spec, model_args, checkpoint, weights=weights, unsafe=unsafe)
    T = T or steps_of(model)
    if T is None and len(shape) >= 3 and timing != "static":
        if timing == "per-step" or any(is_multi_step(m) for m in model.modules()):
            T = shape[0]
    if T is None:
        raise ConfigError(
            f"--model: cannot tell the number of SNN steps of {type(model).__name__} (it declares none and the "
            "input is not a [T, B, ...] sequence); give --snn-steps"
        )
    g = trace(model, shape, T=T, timing=timing)
    g.meta["source_class"] = spec
    g.meta["model_args"] = parse_model_args(model_args)[1] or parse_model_args(model_args)[0]
    return g
