"""The golden interpreter: float64 numpy semantics of the spiking IR, the definition of correct.

Written for clarity, not speed: explicit loops over T for the neurons, convolutions as im2col over
padded windows and a matmul.  Values are held as ``[B, *shape]`` (static) or ``[T, B, *shape]``
(per-step); every float computation is float64, spikes are 0.0 / 1.0.

    >>> out = run(graph, {"x": x, "t": t})["out"]            # outputs by output-node name
    >>> vals = run(graph, [x, t], all_values=True)           # every node's value, spikes included
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import expit

from sdmc.ir import Graph, IRError, Node, ValueType, check
from sdmc.ir.graph import FLOAT_DTYPES


# ------------------------------------------------------------------------------------ pure functions
def conv2d(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups: int = 1
) -> np.ndarray:
    """``y[n, o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] * xpad[n, g*C/G + c, i*s + u*d, j*s + v*d]``.

    ``x`` ``[N, C, H, W]``, ``w`` ``[O, C/groups, kh, kw]``.
    """
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    G = groups
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # [N, C, Ho, Wo, kh, kw]
    Ho, Wo = win.shape[2:4]
    # im2col: rows are output pixels, columns (c, u, v) of one group; then one matmul per group
    cols = win.reshape(N, G, Cg, Ho, Wo, kh, kw).transpose(0, 1, 3, 4, 2, 5, 6).reshape(N, G, Ho * Wo, Cg * kh * kw)
    y = np.matmul(cols, w.reshape(G, O // G, Cg * kh * kw).transpose(0, 2, 1))  # [N, G, Ho*Wo, O/G]
    y = y.transpose(0, 1, 3, 2).reshape(N, O, Ho, Wo)
    if b is not None:
        y = y + b[None, :, None, None]
    return y


def neuron(x: np.ndarray, node: Node, w: np.ndarray | None = None) -> np.ndarray:
    """Run an IF / LIF / PLIF node over ``x`` ``[T, ...]``, one explicit step at a time; returns spikes
    (-1 / 0 / 1 for a signed IF)."""
    th, vr = float(node.threshold), node.v_reset
    r = 0.0 if vr is None else float(vr)
    v = np.full(x.shape[1:], r if node.v_init is None else float(node.v_init))
    signed = bool(getattr(node, "signed", False))
    count = np.zeros(x.shape[1:])
    out = np.empty_like(x)
    if node.op == "plif":
        q = float(expit(np.float64(w).reshape(())))
    for t in range(x.shape[0]):
        if node.op == "if":
            h = v + x[t]
        elif node.op == "lif":
            h = v + (x[t] - (v - r)) / node.tau if node.decay_input else v - (v - r) / node.tau + x[t]
        elif node.op == "plif":
            h = v + (x[t] - (v - r)) * q if node.decay_input else v - (v - r) * q + x[t]
        else:  # pragma: no cover - guarded by the dispatch table
            raise node.fail("not a neuron")
        s = (h >= th).astype(np.float64)
        if signed:
            s = s - ((h < 0) & (count > 0)).astype(np.float64)
            count = count + s
        v = h - s * th if vr is None else s * r + (1.0 - s) * h
        out[t] = s
    return out


def batchnorm(
    x: np.ndarray,
    caxis: int,
    mean: np.ndarray,
    var: np.ndarray,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    eps: float,
) -> np.ndarray:
    """``(x - mean) / sqrt(var + eps) * gamma + beta`` with per-channel vectors on axis ``caxis``."""
    shp = [1] * x.ndim
    shp[caxis] = -1
    y = (x - mean.reshape(shp)) / np.sqrt(var.reshape(shp) + eps)
    if gamma is not None:
        y = y * gamma.reshape(shp)
    if beta is not None:
        y = y + beta.reshape(shp)
    return y


def groupnorm(
    x: np.ndarray,
    groups: int,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    eps: float,
    stats: np.ndarray | None = None,
) -> np.ndarray:
    """GroupNorm of ``x`` ``[N, C, ...]`` with the biased mean / variance of each (sample, group) of
    ``stats`` (default ``x``): ``(x - mu) / sqrt(var + eps) * gamma[c] + beta[c]``."""
    N, C = x.shape[:2]
    s = (x if stats is None else stats).reshape(N, groups, -1)
    mu, var = s.mean(-1, keepdims=True), s.var(-1, keepdims=True)
    y = ((x.reshape(N, groups, -1) - mu) / np.sqrt(var + eps)).reshape(x.shape)
    shp = (1, C) + (1,) * (x.ndim - 2)
    if gamma is not None:
        y = y * gamma.reshape(shp)
    return y + beta.reshape(shp) if beta is not None else y


def pool2d(x: np.ndarray, mode: str, kernel, stride, padding, count_include_pad: bool = True) -> np.ndarray:
    """Max / avg / sum pooling of ``x`` ``[N, C, H, W]`` over ``kernel`` windows (``sdmc.ir.pool`` maths):
    the input is padded with ``-inf`` (max) or 0, windows are gathered with a strided view and reduced."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    fill = -np.inf if mode == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]  # [N, C, Ho, Wo, kh, kw]
    if mode == "max":
        return win.max(axis=(-2, -1))
    y = win.sum(axis=(-2, -1))
    if mode == "sum":
        return y
    if count_include_pad:
        return y / (kh * kw)
    ones = np.pad(np.ones(x.shape[2:]), ((ph, ph), (pw, pw)))
    count = sliding_window_view(ones, (kh, kw))[::sh, ::sw].sum(axis=(-2, -1))  # [Ho, Wo] real positions
    return y / count


# ------------------------------------------------------------------------------------ interpreter
class _Ctx:
    def __init__(self, graph: Graph, B: int, training: bool):
        self.g, self.T, self.B, self.training = graph, graph.T, B, training

    def p(self, name: str | None) -> np.ndarray | None:
        if name is None:
            return None
        a = self.g.params[name]
        return a.astype(np.float64) if a.dtype.kind == "f" else a

    def lead(self, t: ValueType) -> int:
        return 2 if t.per_step else 1

    def align(self, a: np.ndarray, t: ValueType, per_step: bool, rank: int) -> np.ndarray:
        """View ``a`` as ``[T|1, B, 1.., *shape]`` (per_step) or ``[B, 1.., *shape]`` with sample rank ``rank``."""
        lead = a.shape[: self.lead(t)]
        if per_step and not t.per_step:
            lead = (1,) + lead
        return a.reshape(lead + (1,) * (rank - len(t.shape)) + t.shape)

    def fold(self, a: np.ndarray, t: ValueType) -> np.ndarray:
        """``[T, B, ...]`` -> ``[T*B, ...]`` (static values unchanged)."""
        return a.reshape((-1,) + a.shape[2:]) if t.per_step else a

    def unfold(self, a: np.ndarray, t: ValueType) -> np.ndarray:
        return a.reshape((self.T, self.B) + a.shape[1:]) if t.per_step else a


def _conv2d(c: _Ctx, n, xs, ts):
    y = conv2d(c.fold(xs[0], ts[0]), c.p(n.weight), c.p(n.bias), n.stride, n.padding, n.dilation, n.groups)
    return c.unfold(y, ts[0])


def _conv3d(c: _Ctx, n, xs, ts):
    y = conv2d(c.fold(xs[0], ts[0]), c.p(n.weight)[..., 0], c.p(n.bias), n.stride, n.padding)
    return c.unfold(y, ts[0])


def _scaled_conv2d(c: _Ctx, n, xs, ts):
    y = c.unfold(
        conv2d(c.fold(xs[0], ts[0]), c.p(n.weight), None, n.stride, n.padding, n.dilation, n.groups),
        ts[0],
    )
    if not ts[0].per_step:
        y = np.broadcast_to(y[None], (c.T,) + y.shape)
    if n.scale is not None:
        y = y * c.p(n.scale).reshape((c.T,) + (1,) * (y.ndim - 1))
    if n.bias is not None:
        b = c.p(n.bias)
        y = y + (b.reshape(c.T, 1, -1, 1, 1) if b.ndim == 2 else b.reshape(1, 1, -1, 1, 1))
    return np.array(y)


def _pool2d(c: _Ctx, n, xs, ts):
    y = pool2d(c.fold(xs[0], ts[0]), n.mode, n.kernel, n.stride, n.padding, n.count_include_pad)
    return c.unfold(y, ts[0])


def _linear(c: _Ctx, n, xs, ts):
    y = xs[0] @ c.p(n.weight).T
    return y + c.p(n.bias) if n.bias is not None else y


def _tsm(c: _Ctx, n, xs, ts):
    p = c.p(n.scale).reshape(c.T)
    x = xs[0] if ts[0].per_step else np.broadcast_to(xs[0][None], (c.T,) + xs[0].shape)
    return x * p.reshape((c.T,) + (1,) * (x.ndim - 1))


def _bn(c: _Ctx, n, xs, ts):
    x, t = xs[0], ts[0]
    ca = c.lead(t)
    if c.training:
        axes = tuple(i for i in range(x.ndim) if i != ca)
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    else:
        mean, var = c.p(n.running_mean), c.p(n.running_var)
    return batchnorm(x, ca, mean, var, c.p(n.weight), c.p(n.bias), n.eps)


def _gn(c: _Ctx, n, xs, ts):
    x, t = xs[0], ts[0]
    g, b, G = c.p(n.weight), c.p(n.bias), int(n.num_groups)
    if not n.running:
        return c.unfold(groupnorm(c.fold(x, t), G, g, b, n.eps), t)
    out = np.empty_like(x)
    total = np.zeros(x.shape[1:])
    for k in range(x.shape[0]):  # step k: statistics of the mean input over steps 0..k
        total = total + x[k]
        out[k] = groupnorm(x[k], G, g, b, n.eps, stats=total / (k + 1))
    return out


def _neuron(c: _Ctx, n, xs, ts):
    return neuron(xs[0], n, c.p(n.w) if n.op == "plif" else None)


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def run(c: _Ctx, n, xs, ts):
        ps = any(t.per_step for t in ts)
        rank = max(len(t.shape) for t in ts)
        return fn(*(c.align(x, t, ps, rank) for x, t in zip(xs, ts)))

    return run


def _concat(c: _Ctx, n, xs, ts):
    ps = any(t.per_step for t in ts)
    rank = len(ts[0].shape)
    parts = []
    for x, t in zip(xs, ts):
        if ps and not t.per_step:
            x = np.broadcast_to(x[None], (c.T,) + x.shape)
        parts.append(x)
    return np.concatenate(parts, axis=(2 if ps else 1) + n.axis % rank)


def _upsample(c: _Ctx, n, xs, ts):
    k = int(n.scale)
    return np.repeat(np.repeat(xs[0], k, axis=-2), k, axis=-1)


def _reshape(c: _Ctx, n, xs, ts):
    x = xs[0]
    return x.reshape(x.shape[: c.lead(ts[0])] + tuple(n.shape))


def _repeat(c: _Ctx, n, xs, ts):
    return np.broadcast_to(xs[0][None], (c.T,) + xs[0].shape).copy()


def _embedding(c: _Ctx, n, xs, ts):
    w = c.p(n.weight)
    idx = xs[0]
    if idx.size and (idx.min() < 0 or idx.max() >= w.shape[0]):
        raise n.fail(f"index out of range [0, {w.shape[0]}): got values in [{idx.min()}, {idx.max()}]")
    return w[idx]


def _readout(c: _Ctx, n, xs, ts):
    x = xs[0]
    coef = float(n.decay) ** np.arange(c.T - 1, -1, -1, dtype=np.float64)
    y = np.zeros(x.shape[1:])
    for t in range(c.T):
        y = y + coef[t] * x[t]
    return y


KERNELS: dict[str, Callable] = {
    "conv2d": _conv2d,
    "scaled_conv2d": _scaled_conv2d,
    "conv3d": _conv3d,
    "linear": _linear,
    "tsm_scale": _tsm,
    "batchnorm": _bn,
    "groupnorm": _gn,
    "pool2d": _pool2d,
    "if": _neuron,
    "lif": _neuron,
    "plif": _neuron,
    "add": _binary(np.add),
    "mul": _binary(np.multiply),
    "swish": lambda c, n, xs, ts: xs[0] * expit(xs[0]),
    "sigmoid": lambda c, n, xs, ts: expit(xs[0]),
    "scale": lambda c, n, xs, ts: xs[0] * float(n.factor),
    "concat": _concat,
    "upsample": _upsample,
    "reshape": _reshape,
    "repeat": _repeat,
    "embedding": _embedding,
    "membrane_readout": _readout,
    "output": lambda c, n, xs, ts: xs[0],
}


def _bind_inputs(graph: Graph, inputs) -> dict[str, np.ndarray]:
    ins = graph.input_nodes
    if isinstance(inputs, Mapping):
        unknown = set(inputs) - {n.name for n in ins}
        if unknown:
            raise IRError(f"golden.run: unknown input name(s) {sorted(unknown)}; graph inputs: {[n.name for n in ins]}")
        missing = [n.name for n in ins if n.name not in inputs]
        if missing:
            raise IRError(f"golden.run: missing value(s) for graph input(s) {missing}")
        return {k: np.asarray(v) for k, v in inputs.items()}
    inputs = list(inputs)
    if len(inputs) != len(ins):
        raise IRError(f"golden.run: graph has {len(ins)} input(s) {[n.name for n in ins]}, got {len(inputs)} array(s)")
    return {n.name: np.asarray(v) for n, v in zip(ins, inputs)}


def _bind_overrides(graph: Graph, overrides: Mapping[str, np.ndarray], B: int) -> dict[str, np.ndarray]:
    out = {}
    for k, v in overrides.items():
        if k not in graph.nodes:
            raise IRError(f"golden.run: overrides names unknown node {k!r}")
        t = graph.nodes[k].type
        a = np.asarray(v, np.float64)
        if a.shape != t.full_shape(graph.T, B):
            raise IRError(
                f"golden.run: override for node {k!r} has shape {list(a.shape)}, expected "
                f"{list(t.full_shape(graph.T, B))}"
            )
        out[k] = a
    return out


def run(
    graph: Graph,
    inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    *,
    training: bool = False,
    all_values: bool = False,
    keep: Sequence[str] = (),
    overrides: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Interpret ``graph`` on ``inputs`` (by input-node name, or in input-node order).

    Returns ``{output name: array}`` plus the values of the nodes named in ``keep``, or with
    ``all_values`` every node's value (float64; spikes 0/1).
    ``training`` switches BatchNorm to batch statistics (pooled over T*B*H*W); running stats are not
    updated.  ``overrides`` ``{node: value}`` substitutes values for those nodes (e.g. spikes from a
    Loihi run); nodes only they read are not computed.  The graph is checked first; a bad input array
    raises :class:`IRError` naming the input.
    """
    check(graph)
    bound = _bind_inputs(graph, inputs)
    B = None
    for n in graph.input_nodes:
        a, t = bound[n.name], n.type
        lead = 2 if t.per_step else 1
        if a.shape[lead:] != t.shape or a.ndim != lead + len(t.shape) or (t.per_step and a.shape[0] != graph.T):
            want = ", ".join(map(str, t.full_shape(graph.T, "B")))  # type: ignore[arg-type]
            raise IRError(f"input {n.name!r}: expected an array of shape [{want}], got {list(a.shape)}")
        b = a.shape[lead - 1]
        if B is not None and b != B:
            raise IRError(f"input {n.name!r}: batch size {b} differs from the other inputs' {B}")
        B = b
        if t.dtype in FLOAT_DTYPES:
            bound[n.name] = a.astype(np.float64)
        elif a.dtype.kind not in "iu":
            raise IRError(f"input {n.name!r}: expected integers ({t.dtype}), got {a.dtype}")
    if B is None:
        raise IRError("golden.run: the graph has no inputs")
    ctx = _Ctx(graph, B, training)
    vals: dict[str, np.ndarray] = {}
    order = graph.order()
    last_use = {}
    for i, n in enumerate(order):
        if n.name in (overrides or {}):
            continue
        for s in n.inputs:
            last_use[s] = i
    outs = {n.name for n in graph.output_nodes}
    unknown = [k for k in keep if k not in graph.nodes]
    if unknown:
        raise IRError(f"golden.run: keep names unknown node(s) {unknown}")
    kept = outs | set(keep)
    over = _bind_overrides(graph, overrides or {}, B)
    needed = graph.ancestors(kept, stop=over) if over and not all_values else None
    for i, n in enumerate(order):
        if n.name in over:
            vals[n.name] = over[n.name]
            continue
        if needed is not None and n.name not in needed:
            continue
        if n.op == "input":
            vals[n.name] = bound[n.name]
            continue
        xs = [vals[s] for s in n.inputs]
        ts = [graph.nodes[s].type for s in n.inputs]
        vals[n.name] = KERNELS[n.op](ctx, n, xs, ts)
        if not all_values:
            for s in set(n.inputs):
                if last_use[s] == i and s not in kept:
                    del vals[s]  # free values nobody reads any more
    if all_values:
        return vals
    res = {n.name: vals[n.name] for n in graph.output_nodes}
    res.update({k: vals[k] for k in keep})
    return res
