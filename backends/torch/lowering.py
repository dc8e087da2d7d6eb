"""IR -> torch.fx lowering, one table entry per op (like the golden simulator's ``KERNELS``).

``LOWERINGS[op](c, node, xs, ts)`` emits the fx call computing ``node`` from its inputs' fx values ``xs``
(folded ``[T*B, ...]`` when per-step, ``[B, ...]`` when static) and their IR types ``ts``, using the
:class:`Lowering` context ``c`` for parameters (``c.p(name)``), modules (``c.module``) and the step count.
Graph inputs and outputs are placed by the executor's builder; every other registered op needs an entry here
(``tests/test_torch_exec.py`` checks that none is missing).  The kernels are in :mod:`.kernels`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from sdmc import ir

from . import kernels as K
from .neuron import NeuronModule


class Lowering:
    """What a lowering rule may use: the fx graph being built, ``T``, parameters as ``get_attr`` nodes (made
    once each), ``module(name, make)`` to place a submodule and the executor's ``training`` flag."""

    def __init__(
        self,
        fg: fx.Graph,
        T: int,
        param_attr: dict[str, str],
        place_module: Callable,
        int8: dict | None = None,
        dtype: torch.dtype = torch.float32,
        train: bool = False,
    ) -> None:
        self.fg, self.T, self._param_attr, self._place_module = fg, T, param_attr, place_module
        self.dtype = dtype  # the executor's float dtype
        self.train = train  # a training executor: spike-input convs keep uint8 inputs for the backward
        self.int8 = int8 or {}  # {node: (W_int, s)}: spike-input convs run as int8 GEMMs (precision int8)
        self._uint8: dict[fx.Node, fx.Node] = {}
        self._attrs: dict[str, fx.Node] = {}
        self._training: fx.Node | None = None

    def p(self, name: str | None) -> fx.Node | None:
        """The fx value of parameter ``name`` (``None`` stays ``None``)."""
        if name is None:
            return None
        if name not in self._attrs:
            self._attrs[name] = self.fg.get_attr(self._param_attr[name])
        return self._attrs[name]

    def call(self, fn: Callable, *args: Any) -> fx.Node:
        return self.fg.call_function(fn, args)

    def module(self, name: str, make: Callable[[], Any], *args: Any) -> fx.Node:
        """Place the module ``make()`` at ``name`` and call it on ``args``."""
        return self.fg.call_module(self._place_module(name, make), args)

    def uint8(self, x: fx.Node) -> fx.Node:
        """``x`` (spikes, exactly 0/1) as uint8, converted once however many int8 convolutions read it."""
        if x not in self._uint8:
            self._uint8[x] = self.call(K.to_uint8, x)
        return self._uint8[x]

    @property
    def training(self) -> fx.Node:
        if self._training is None:
            self._training = self.fg.get_attr("training")
        return self._training


Rule = Callable[[Lowering, ir.Node, list, list], fx.Node]


def _int8_conv(c: Lowering, n, x: fx.Node, bias: fx.Node | None = None) -> fx.Node:
    w_int, s = c.int8[n.name]
    make = lambda: K.Int8Conv(torch.from_numpy(w_int), torch.from_numpy(s), *_geom(n), dtype=c.dtype)  # noqa: E731
    return c.module(f"{n.name}_int8", make, c.uint8(x), bias)


def _conv2d(c: Lowering, n, xs, ts):
    if n.name in c.int8:
        return _int8_conv(c, n, xs[0], c.p(n.bias))
    fn = K.spike_conv2d if c.train and ts[0].kind == ir.SPIKE else K.conv2d
    return c.call(fn, xs[0], c.p(n.weight), c.p(n.bias), *_geom(n))


def _scaled_conv2d(c: Lowering, n, xs, ts):
    static_in = not ts[0].per_step
    if n.name in c.int8:
        y = _int8_conv(c, n, xs[0])
        return c.call(K._scale_and_bias, y, xs[0], c.p(n.scale), c.p(n.bias), c.T, static_in)
    return c.call(K.scaled_conv2d, xs[0], c.p(n.weight), c.p(n.scale), c.p(n.bias), c.T, static_in, *_geom(n))


def _geom(n) -> tuple:
    return (n.stride, n.padding, n.dilation, n.groups)


def _neuron(c: Lowering, n, xs, ts):
    args = (xs[0], c.p(n.w)) if n.op == "plif" else (xs[0],)
    return c.module(n.name, lambda: NeuronModule(n, c.T), *args)


def _binary(c: Lowering, n, xs, ts):
    a, b = ts
    return c.call(K.binary, n.op, xs[0], xs[1], c.T, a.per_step, b.per_step, len(a.shape), len(b.shape))


def _batchnorm(c: Lowering, n, xs, ts):
    return c.call(
        K.batchnorm,
        xs[0],
        c.p(n.weight),
        c.p(n.bias),
        c.p(n.running_mean),
        c.p(n.running_var),
        c.p(n.num_batches_tracked),
        c.training,
        n.momentum,
        float(n.eps),
    )


LOWERINGS: dict[str, Rule] = {
    "conv2d": _conv2d,
    "conv3d": lambda c, n, xs, ts: c.call(K.conv3d_t1, xs[0], c.p(n.weight), c.p(n.bias), n.stride, n.padding),
    "scaled_conv2d": _scaled_conv2d,
    "linear": lambda c, n, xs, ts: c.call(K.linear, xs[0], c.p(n.weight), c.p(n.bias)),
    "tsm_scale": lambda c, n, xs, ts: c.call(K.tsm_scale, xs[0], c.p(n.scale), c.T, not ts[0].per_step),
    "batchnorm": _batchnorm,
    "pool2d": lambda c, n, xs, ts: c.call(
        K.pool2d, xs[0], n.mode, n.kernel, n.stride, n.padding, bool(n.count_include_pad)
    ),
    # running statistics on a static value are refused by ir.check (GroupNorm.infer)
    "groupnorm": lambda c, n, xs, ts: c.call(
        K.groupnorm, xs[0], c.p(n.weight), c.p(n.bias), int(n.num_groups), float(n.eps), bool(n.running), c.T
    ),
    "if": _neuron,
    "lif": _neuron,
    "plif": _neuron,
    "add": _binary,
    "mul": _binary,
    "swish": lambda c, n, xs, ts: c.call(K.swish, xs[0]),
    "sigmoid": lambda c, n, xs, ts: c.call(K.sigmoid, xs[0]),
    "scale": lambda c, n, xs, ts: c.call(K.scale, xs[0], float(n.factor)),
    "concat": lambda c, n, xs, ts: c.call(K.concat, list(xs), [t.per_step for t in ts], c.T, n.axis % len(ts[0].shape)),
    "upsample": lambda c, n, xs, ts: c.call(K.upsample, xs[0], int(n.scale)),
    "reshape": lambda c, n, xs, ts: c.call(K.reshape, xs[0], tuple(n.shape)),
    "repeat": lambda c, n, xs, ts: c.call(K.repeat, xs[0], c.T),
    "embedding": lambda c, n, xs, ts: c.call(K.embedding, xs[0], c.p(n.weight)),
    "membrane_readout": lambda c, n, xs, ts: c.call(K.membrane_readout, xs[0], c.T, float(n.decay)),
}
