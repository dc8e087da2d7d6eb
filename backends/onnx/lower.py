"""IR -> ONNX lowering: one function per IR op in :data:`LOWER` (the ONNX twin of the golden ``KERNELS``).

Layouts of the ONNX tensors (``B`` symbolic):

    full form   static [B, *shape]      per-step [T*B, *shape] (T folded into the batch, step-major)
    step form   static [B, *shape]      per-step [B, *shape]   (the current step only)

Neurons are unrolled over T with standard ops (full form) or advanced one step with their state as
explicit graph inputs/outputs (step form)::

    h = v + x[t]  (IF)       h = v + (x[t] - (v - vr)) / tau  (LIF, decay_input)
    s = Cast(h >= theta)     v = Where(h >= theta, vr, h)  (hard)   v = h - s * theta  (soft)

Every lowering reads only standard ai.onnx ops of opset :data:`OPSET`, so stock onnxruntime runs the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from scipy.special import expit

from sdmc import ir
from sdmc.errors import SdmcError

OPSET = 17
ONNX_DTYPES = {
    "float16": TensorProto.FLOAT16,
    "float32": TensorProto.FLOAT,
    "float64": TensorProto.DOUBLE,
    "int64": TensorProto.INT64,
    "int32": TensorProto.INT32,
}


@dataclass
class State:
    """One explicit state tensor of the step form: graph input ``name``, output ``name + '.next'``, filled with
    ``init`` before step 0, of per-sample ``shape``."""

    name: str
    shape: tuple[int, ...]
    init: float


@dataclass
class Lowering:
    """Builds one ONNX graph: nodes, initializers, and the ONNX tensor holding each IR value."""

    graph: ir.Graph
    form: str  # "full" | "step"
    dtype: str  # the float compute dtype ("float32" / "float64")
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)
    states: list[State] = field(default_factory=list)
    step_input: str | None = None  # the step form's current-step index (int64 scalar), once needed
    _n: int = 0

    @property
    def T(self) -> int:
        return self.graph.T

    @property
    def full(self) -> bool:
        return self.form == "full"

    # ---- building blocks
    def fresh(self, base: str) -> str:
        self._n += 1
        return f"{base}__{self._n}"

    def const(self, value, base: str = "const", dtype: str | None = None) -> str:
        """An initializer holding ``value`` (float values in the compute dtype unless ``dtype`` is given)."""
        a = np.asarray(value)
        if dtype is not None:
            a = a.astype(dtype)
        elif a.dtype.kind == "f":
            a = a.astype(self.dtype)
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(a, order="C"), name))
        return name

    def param(self, key: str | None, base: str) -> str | None:
        return None if key is None else self.const(np.asarray(self.graph.params[key], np.float64), base)

    def op(self, op_type: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.fresh(base)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.graph.nodes[name].type.shape

    def step(self) -> str:
        """The step form's int64 scalar input ``step`` (0..T-1), declared on first use."""
        if self.step_input is None:
            self.step_input = "step"
        return self.step_input

    # ---- layout helpers
    def tile(self, x: str, base: str) -> str:
        """Static ``[B, ...]`` -> full-form per-step ``[T*B, ...]`` (T copies, step-major); identity in step form."""
        return self.op("Concat", [x] * self.T, base, axis=0) if self.full and self.T > 1 else x

    def split_steps(self, x: str, shape: tuple[int, ...], base: str) -> list[str]:
        """Full form ``[T*B, *shape]`` -> T tensors ``[B, *shape]``."""
        r = self.op("Reshape", [x, self.const([self.T, -1, *shape], "shape", "int64")], base)
        return [self.op("Gather", [r, self.const(np.int64(t), "t", "int64")], base, axis=0) for t in range(self.T)]

    def by_step(self, x: str, shape: tuple[int, ...], base: str) -> str:
        """Full form ``[T*B, *shape]`` -> ``[T, B, *shape]`` (for per-step arithmetic and outputs)."""
        return self.op("Reshape", [x, self.const([self.T, -1, *shape], "shape", "int64")], base)

    def fold(self, x: str, shape: tuple[int, ...], base: str) -> str:
        """``[T, B, *shape]`` -> ``[T*B, *shape]``."""
        return self.op("Reshape", [x, self.const([-1, *shape], "shape", "int64")], base)

    def per_step_const(self, value: np.ndarray, base: str, rank: int) -> str:
        """A per-step table ``value[T, *k]`` as ``[T, 1, *k']`` (full form, broadcast against ``[T, B, ...]``) or the
        current step's entry ``[1, *k']`` (step form, broadcast against ``[B, ...]``); ``k'`` is ``k`` with leading
        unit axes up to ``rank``, the per-sample rank of the value it combines with."""
        value = np.asarray(value, np.float64)
        row = value.reshape((self.T,) + (1,) * (rank - (value.ndim - 1)) + value.shape[1:])
        if self.full:
            return self.const(row.reshape((self.T, 1) + row.shape[1:]), base)
        table = self.const(row, base)
        return self.op("Unsqueeze", [self.op("Gather", [table, self.step()], base, axis=0), self.axes0()], base)

    def axes0(self) -> str:
        return self.const([0], "axes", "int64")

    def align(self, x: str, t: ir.ValueType, rank: int, base: str) -> str:
        """Insert unit axes after the batch axis so the per-sample rank becomes ``rank`` (numpy right-alignment
        of per-sample shapes, as the IR broadcasts them)."""
        k = rank - len(t.shape)
        return x if k == 0 else self.op("Unsqueeze", [x, self.const(list(range(1, k + 1)), "axes", "int64")], base)

    def state(self, base: str, shape: tuple[int, ...], init: float) -> str:
        """Declare a step-form state tensor; returns its input name (write the next value to ``name + '.next'``)."""
        s = State(f"state.{base}", tuple(shape), float(init))
        self.states.append(s)
        return s.name

    def set_state(self, st: str, value: str) -> None:
        self.nodes.append(helper.make_node("Identity", [value], [st + ".next"], name=st + ".next"))


Lower = Callable[[Lowering, ir.Node, list[str]], str]


def _conv(c: Lowering, x: str, w: np.ndarray, b: str | None, n, groups: int = 1, dilation=(1, 1)) -> str:
    ph, pw = n.padding
    return c.op(
        "Conv",
        [x, c.const(w, f"{n.name}.weight")] + ([b] if b is not None else []),
        n.name,
        strides=list(n.stride),
        pads=[ph, pw, ph, pw],
        dilations=list(dilation),
        group=int(groups),
    )


def _conv2d(c: Lowering, n: ir.Conv2d, xs: list[str]) -> str:
    w = np.asarray(c.graph.params[n.weight], np.float64)
    return _conv(c, xs[0], w, c.param(n.bias, f"{n.name}.bias"), n, n.groups, n.dilation)


def _conv3d(c: Lowering, n: ir.Conv3d, xs: list[str]) -> str:
    w = np.asarray(c.graph.params[n.weight], np.float64)[..., 0]
    return _conv(c, xs[0], w, c.param(n.bias, f"{n.name}.bias"), n)


def _per_step_affine(c: Lowering, n: ir.Node, y: str, static_in: bool, scale: str | None, bias: str | None) -> str:
    """``y[t] = scale[t] * y + bias[t]`` for the per-step gains of TSM / fused TSM convs (``bias`` ``[T, O]`` or
    ``[O]``); a static ``y`` becomes per-step."""
    shape = n.type.shape
    rank = len(shape)
    if c.full:
        y = c.op("Unsqueeze", [y, c.axes0()], n.name) if static_in else c.by_step(y, shape, n.name)
    if scale is not None:
        p = np.asarray(c.graph.params[scale], np.float64).reshape(c.T)
        y = c.op("Mul", [y, c.per_step_const(p, f"{n.name}.scale", rank)], n.name)
    elif c.full and static_in:  # no gain: still broadcast the static value to T steps
        y = c.op("Expand", [y, c.const([c.T, 1] + [1] * rank, "shape", "int64")], n.name)
    if bias is not None:
        b = np.asarray(c.graph.params[bias], np.float64)
        if b.ndim == 2:  # per step [T, O] -> [T, O, 1, 1]
            y = c.op(
                "Add", [y, c.per_step_const(b.reshape(b.shape + (1,) * (rank - 1)), f"{n.name}.bias", rank)], n.name
            )
        else:
            y = c.op("Add", [y, c.const(b.reshape(b.shape + (1,) * (rank - 1)), f"{n.name}.bias")], n.name)
    return c.fold(y, shape, n.name) if c.full else y


def _scaled_conv2d(c: Lowering, n: ir.ScaledConv2d, xs: list[str]) -> str:
    w = np.asarray(c.graph.params[n.weight], np.float64)
    y = _conv(c, xs[0], w, None, n, n.groups, n.dilation)
    return _per_step_affine(c, n, y, not c.graph.nodes[n.inputs[0]].type.per_step, n.scale, n.bias)


def _tsm(c: Lowering, n: ir.TSMScale, xs: list[str]) -> str:
    return _per_step_affine(c, n, xs[0], not c.graph.nodes[n.inputs[0]].type.per_step, n.scale, None)


def _linear(c: Lowering, n: ir.Linear, xs: list[str]) -> str:
    w = np.asarray(c.graph.params[n.weight], np.float64)
    y = c.op("MatMul", [xs[0], c.const(w.T, f"{n.name}.weight")], n.name)
    return y if n.bias is None else c.op("Add", [y, c.param(n.bias, f"{n.name}.bias")], n.name)


def _batchnorm(c: Lowering, n: ir.BatchNorm, xs: list[str]) -> str:
    C = n.type.shape[0]
    gamma = c.param(n.weight, f"{n.name}.weight") or c.const(np.ones(C), f"{n.name}.weight")
    beta = c.param(n.bias, f"{n.name}.bias") or c.const(np.zeros(C), f"{n.name}.bias")
    mean, var = c.param(n.running_mean, f"{n.name}.mean"), c.param(n.running_var, f"{n.name}.var")
    return c.op("BatchNormalization", [xs[0], gamma, beta, mean, var], n.name, epsilon=float(n.eps))


def _group_stats(c: Lowering, n: ir.GroupNorm, x: str, stats: str, lead: int) -> str:
    """GroupNorm of ``x`` with the biased mean / variance of ``stats`` per (leading axes, group); ``lead`` = number
    of leading (batch / step) axes."""
    G, shape = int(n.num_groups), n.type.shape
    grouped = c.const([0] * lead + [G, -1], "shape", "int64")
    xg, sg = c.op("Reshape", [x, grouped], n.name), c.op("Reshape", [stats, grouped], n.name)
    mu = c.op("ReduceMean", [sg], n.name, axes=[lead + 1], keepdims=1)
    d = c.op("Sub", [sg, mu], n.name)
    var = c.op("ReduceMean", [c.op("Mul", [d, d], n.name)], n.name, axes=[lead + 1], keepdims=1)
    den = c.op("Sqrt", [c.op("Add", [var, c.const(np.float64(n.eps), "eps")], n.name)], n.name)
    y = c.op("Div", [c.op("Sub", [xg, mu], n.name), den], n.name)
    y = c.op("Reshape", [y, c.const([0] * lead + list(shape), "shape", "int64")], n.name)
    chan = (-1,) + (1,) * (len(shape) - 1)  # per-channel vectors against [..., C, *spatial]
    if n.weight is not None:
        y = c.op("Mul", [y, c.const(np.asarray(c.graph.params[n.weight], np.float64).reshape(chan), "gamma")], n.name)
    if n.bias is not None:
        y = c.op("Add", [y, c.const(np.asarray(c.graph.params[n.bias], np.float64).reshape(chan), "beta")], n.name)
    return y


def _groupnorm(c: Lowering, n: ir.GroupNorm, xs: list[str]) -> str:
    x, shape = xs[0], n.type.shape
    if not n.running:
        return _group_stats(c, n, x, x, 1)
    if c.full:  # statistics of the running mean over steps 0..t: CumSum over T / (t + 1)
        xt = c.by_step(x, shape, n.name)
        cum = c.op("CumSum", [xt, c.const(np.int64(0), "axis", "int64")], n.name)
        mean = c.op(
            "Div",
            [cum, c.const(np.arange(1, c.T + 1, dtype=np.float64).reshape((c.T,) + (1,) * (len(shape) + 1)), "k")],
            n.name,
        )
        return c.fold(_group_stats(c, n, xt, mean, 2), shape, n.name)
    total = c.state(f"{n.name}.total", shape, 0.0)
    new_total = c.op("Add", [total, x], n.name)
    c.set_state(total, new_total)
    k = c.op(
        "Cast", [c.op("Add", [c.step(), c.const(np.int64(1), "one", "int64")], n.name)], n.name, to=ONNX_DTYPES[c.dtype]
    )
    return _group_stats(c, n, x, c.op("Div", [new_total, k], n.name), 1)


def _neuron(c: Lowering, n: ir.NeuronNode, xs: list[str]) -> str:
    """IF / LIF / PLIF with the golden simulator's operation order (see the module docstring)."""
    shape = n.type.shape
    th, vr = float(n.threshold), n.v_reset
    r = 0.0 if vr is None else float(vr)
    v0 = r if n.v_init is None else float(n.v_init)
    signed = bool(getattr(n, "signed", False))
    th_c, r_c = c.const(np.float64(th), "theta"), c.const(np.float64(r), "v_reset")
    if n.op == "lif":
        div = c.const(np.float64(n.tau), "tau")
    elif n.op == "plif":
        q = c.const(np.float64(expit(np.float64(np.asarray(c.graph.params[n.w]).reshape(())))), "q")

    def charge(v: str, x: str) -> str:
        if n.op == "if":
            return c.op("Add", [v, x], n.name)
        leak = c.op("Sub", [v, r_c], n.name)
        if n.decay_input:
            d = c.op("Sub", [x, leak], n.name)
            return c.op(
                "Add", [v, c.op("Div", [d, div], n.name) if n.op == "lif" else c.op("Mul", [d, q], n.name)], n.name
            )
        d = c.op("Div", [leak, div], n.name) if n.op == "lif" else c.op("Mul", [leak, q], n.name)
        return c.op("Add", [c.op("Sub", [v, d], n.name), x], n.name)

    def fire(v: str, count: str | None, x: str) -> tuple[str, str, str | None]:
        h = charge(v, x)
        ge = c.op("GreaterOrEqual", [h, th_c], n.name)
        s = c.op("Cast", [ge], n.name, to=ONNX_DTYPES[c.dtype])
        if signed:
            zero = c.const(np.float64(0.0), "zero")
            neg = c.op("And", [c.op("Less", [h, zero], n.name), c.op("Greater", [count, zero], n.name)], n.name)
            s = c.op("Sub", [s, c.op("Cast", [neg], n.name, to=ONNX_DTYPES[c.dtype])], n.name)
            count = c.op("Add", [count, s], n.name)
        v_next = (
            c.op("Sub", [h, c.op("Mul", [s, th_c], n.name)], n.name)
            if vr is None
            else c.op("Where", [ge, r_c, h], n.name)
        )
        return s, v_next, count

    if c.full:
        v, count, spikes = c.const(np.float64(v0), "v_init"), c.const(np.float64(0.0), "count"), []
        for x in c.split_steps(xs[0], shape, n.name):
            s, v, count = fire(v, count, x)
            spikes.append(s)
        return c.op("Concat", spikes, n.name, axis=0)
    v_in = c.state(f"{n.name}.v", shape, v0)
    count_in = c.state(f"{n.name}.count", shape, 0.0) if signed else None
    s, v_next, count = fire(v_in, count_in, xs[0])
    c.set_state(v_in, v_next)
    if signed:
        c.set_state(count_in, count)
    return s


def _binary(op_type: str) -> Lower:
    def run(c: Lowering, n: ir.Node, xs: list[str]) -> str:
        ts = [c.graph.nodes[i].type for i in n.inputs]
        rank = max(len(t.shape) for t in ts)
        per_step = any(t.per_step for t in ts)
        args = []
        for x, t in zip(xs, ts):
            if per_step and not t.per_step:
                x = c.tile(x, n.name)
            args.append(c.align(x, t, rank, n.name))
        return c.op(op_type, args, n.name)

    return run


def _concat(c: Lowering, n: ir.Concat, xs: list[str]) -> str:
    ts = [c.graph.nodes[i].type for i in n.inputs]
    per_step = any(t.per_step for t in ts)
    args = [c.tile(x, n.name) if per_step and not t.per_step else x for x, t in zip(xs, ts)]
    return c.op("Concat", args, n.name, axis=1 + n.axis % len(ts[0].shape))


def _upsample(c: Lowering, n: ir.Upsample, xs: list[str]) -> str:
    k = float(n.scale)
    scales = c.const(np.array([1.0, 1.0, k, k]), "scales", "float32")
    return c.op(
        "Resize",
        [xs[0], "", scales],
        n.name,
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )


def _reshape(c: Lowering, n: ir.Reshape, xs: list[str]) -> str:
    return c.op("Reshape", [xs[0], c.const([0, *n.shape], "shape", "int64")], n.name)


def _readout(c: Lowering, n: ir.MembraneReadout, xs: list[str]) -> str:
    """``y = sum_t decay**(T-1-t) x[t]``; step form: ``y <- decay * y + x[t]`` (the same sum, Horner's rule)."""
    shape = n.type.shape
    if c.full:
        coef = float(n.decay) ** np.arange(c.T - 1, -1, -1, dtype=np.float64)
        w = c.const(coef.reshape((c.T, 1) + (1,) * len(shape)), f"{n.name}.coef")
        y = c.op("Mul", [c.by_step(xs[0], shape, n.name), w], n.name)
        return c.op("ReduceSum", [y, c.axes0()], n.name, keepdims=0)
    acc = c.state(f"{n.name}.acc", shape, 0.0)
    y = c.op("Add", [c.op("Mul", [acc, c.const(np.float64(n.decay), "decay")], n.name), xs[0]], n.name)
    c.set_state(acc, y)
    return y


def _pool2d(c: Lowering, n: ir.Pool2d, xs: list[str]) -> str:
    """max: MaxPool (padding never wins); avg: AveragePool with the node's ``count_include_pad``; sum: a depthwise
    Conv of ones (exact window sums, also of spikes in float32, unlike AveragePool x kh kw)."""
    (kh, kw), (ph, pw) = n.kernel, n.padding
    attrs = {"kernel_shape": [kh, kw], "strides": list(n.stride), "pads": [ph, pw, ph, pw]}
    if n.mode == "max":
        return c.op("MaxPool", xs, n.name, **attrs)
    if n.mode == "avg":
        return c.op("AveragePool", xs, n.name, count_include_pad=int(n.count_include_pad), **attrs)
    C = n.type.shape[0]
    return _conv(c, xs[0], np.ones((C, 1, kh, kw)), None, n, groups=C)


def _swish(c: Lowering, n: ir.Node, xs: list[str]) -> str:
    return c.op("Mul", [xs[0], c.op("Sigmoid", [xs[0]], n.name)], n.name)


LOWER: dict[str, Lower] = {
    "conv2d": _conv2d,
    "conv3d": _conv3d,
    "scaled_conv2d": _scaled_conv2d,
    "linear": _linear,
    "tsm_scale": _tsm,
    "batchnorm": _batchnorm,
    "groupnorm": _groupnorm,
    "if": _neuron,
    "lif": _neuron,
    "plif": _neuron,
    "add": _binary("Add"),
    "mul": _binary("Mul"),
    "swish": _swish,
    "sigmoid": lambda c, n, xs: c.op("Sigmoid", xs, n.name),
    "scale": lambda c, n, xs: c.op("Mul", [xs[0], c.const(np.float64(n.factor), "factor")], n.name),
    "concat": _concat,
    "upsample": _upsample,
    "reshape": _reshape,
    "repeat": lambda c, n, xs: c.tile(xs[0], n.name),
    "embedding": lambda c, n, xs: c.op("Gather", [c.param(n.weight, f"{n.name}.weight"), xs[0]], n.name, axis=0),
    "membrane_readout": _readout,
    "pool2d": _pool2d,
}
"""IR op -> lowering; ``input`` / ``output`` are the graph's boundary (see :mod:`.export`)."""


def lower_node(c: Lowering, n: ir.Node) -> str:
    fn = LOWER.get(n.op)
    if fn is None:
        raise SdmcError(f"ONNX export: node {n.name!r} ({n.op}): no ONNX lowering for this op")
    return fn(c, n, [c.values[i] for i in n.inputs])
