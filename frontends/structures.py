"""Structures recognised by what they compute, so a model's own helper classes lower like sdmc's:

- **TSM** (SDM Eq. 16): a per-step tensor ``[T, B, ...]`` times a parameter of shape ``[T, 1, ..., 1]``
  -> ``tsm_scale`` named after the module doing it (a computed constant instead of a parameter: a per-step
  scale that a following sum over T absorbs);
- **membrane read-out**: a weighted sum over T, ``sum_t w[t] x[t]`` (``(x * w).sum(0)``,
  ``einsum('t...,t->...')``, ``x.mean(0)``), with geometric weights ``w[t] = decay**(T-1-t)`` ->
  ``membrane_readout(decay)`` (times ``w[T-1]`` when that is not 1); other weights -> a per-step scale and
  a plain sum;
- **Swish**: ``x * sigmoid(x)`` -> ``swish``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch.fx as fx

from sdmc import ir

from .layouts import Const, V

if TYPE_CHECKING:  # the rules take the Lowering that calls them: a type, not an import cycle
    from .lowering import Lowering


def tsm(lw: Lowering, n: fx.Node, x: V, c: Const) -> V:
    """``x[t] * p[t]`` with ``p`` ``[T, 1, ..., 1]``: a TSM scale (a parameter) or a constant per-step scale."""
    key = c.key if c.key is not None else lw.const_param(n, c.value)
    name = lw.structure_name(n, "tsm") if c.key is not None else lw.fn_name(n, "step_scale")
    return lw.v(lw.add(ir.TSMScale(name=name, inputs=(lw.value(n, x, "TSM"),), scale=key)), "TB")


def swish(lw: Lowering, n: fx.Node, xa: str, xb: str) -> str | None:
    """``x * sigmoid(x)`` -> one ``swish`` node; the sigmoid node is dropped (only this product reads it)."""
    for x, s in ((xa, xb), (xb, xa)):
        sn = lw.g.nodes.get(s)
        if sn is None or sn.op != "sigmoid" or sn.inputs != (x,) or lw.g.users(s):
            continue
        src = [a for a in n.all_input_nodes if isinstance(lw.env.get(a), V) and lw.env[a].name == s]
        if src and all(len(a.users) == 1 for a in src):
            lw.remove(s)
            return lw.add(ir.Swish(name=lw.structure_name(n, "swish"), inputs=(x,)))
    return None


def weighted_sum(lw: Lowering, n: fx.Node, x: V, w: np.ndarray) -> V:
    """``y = sum_t w[t] x[t]`` of a per-step ``[T, B, ...]`` value, recognised as the membrane read-out."""
    T = lw.T
    w = np.asarray(w, np.float64).reshape(T)
    src = lw.value(n, x, "sum over T")
    name = lw.structure_name(n, "readout")
    decay = _geometric(w)
    if decay is not None and w[-1] != 0:
        y = lw.add(ir.MembraneReadout(name=name, inputs=(src,), decay=decay))
        if not math.isclose(w[-1], 1.0, rel_tol=1e-6):
            y = lw.add(ir.Scale(name=lw.fn_name(n, "scale"), inputs=(y,), factor=float(w[-1])))
        return lw.v(y, "S")
    key = lw.const_param(n, w.reshape((T,) + (1,) * (len(x.shape) + 1)))
    scaled = lw.add(ir.TSMScale(name=lw.fn_name(n, "step_scale"), inputs=(src,), scale=key))
    return lw.v(lw.add(ir.MembraneReadout(name=name, inputs=(scaled,), decay=1.0)), "S")


def _geometric(w: np.ndarray) -> float | None:
    """``d`` when ``w[t] == w[T-1] * d**(T-1-t)`` (to float32 precision), written as the shortest decimal
    that gives the same float32 (``float32(0.8)**k`` weights give ``d = 0.8``), else ``None``."""
    T = len(w)
    if T == 1:
        return 1.0
    if w[-1] == 0:
        return None
    d = w[-2] / w[-1]
    for cand in (float(np.format_float_positional(np.float32(d), unique=True)), float(d)):
        ref = w[-1] * cand ** np.arange(T - 1, -1, -1, dtype=np.float64)
        if np.allclose(w, ref, rtol=4e-7, atol=0):
            return cand
    return None


def per_step_scale_source(lw: Lowering, n: fx.Node, x: V) -> tuple[V, np.ndarray]:
    """For ``x = y * w`` made by the frontend from a computed constant ``w`` and read only here: ``(y, w)``;
    the scale node is dropped.  Otherwise ``(x, ones)``."""
    node = lw.g.nodes.get(x.name)
    arg = n.args[0] if n.args else None
    if (
        node is not None
        and node.op == "tsm_scale"
        and node.scale in lw.consts
        and not lw.g.users(x.name)
        and isinstance(arg, fx.Node)
        and len(arg.users) == 1
        and x.pre is None
    ):
        w = lw.g.params[node.scale].reshape(lw.T).astype(np.float64)
        src = node.inputs[0]
        lw.remove(x.name)
        return lw.v(src, "TB"), w
    return x, np.ones(lw.T)
