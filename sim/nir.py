"""A small NIR interpreter: the numpy reference for NIR graphs (what sdmc exports and imports are tested on).

NIR nodes are continuous-time systems; each simulator picks its discretisation.  This one is forward Euler
with step ``dt`` (default 1e-4, the convention of SpikingJelly's and nirtorch's NIR exchange), advancing the
whole graph once per step in topological order, float64 throughout.  Per node, with ``x`` the **sum** of the
values on its incoming edges at this step (NIR's fan-in convention, as nirtorch executes it)::

    Affine  y = W x + b        Linear  y = W x        Scale  y = s * x       Flatten  reshape per sample
    Conv1d / Conv2d            (zero padding; 'same' / 'valid' allowed)
    SumPool2d  window sums     AvgPool2d  window sums / (kh kw)     Threshold  z = [x > theta]
    Delay   y[t] = x[t - d],  d = delay / dt steps (an integer)
    I       v += dt r x                                           -> v
    IF      v += dt r x;  z = [v > v_threshold];  v = v_reset where z    -> z
    LI      v += dt/tau ((v_leak - v) + r x)                      -> v
    LIF     LI's update, then IF's threshold and reset            -> z
    CubaLI  i += dt/tau_syn (w_in x - i);  v += dt/tau_mem ((v_leak - v) + r i)   -> v
    CubaLIF CubaLI's update (new i), then threshold and reset     -> z

States start at 0.  An edge that closes a cycle (found by depth-first search from the inputs) carries the
previous step's value (0 at step 0), so recurrent graphs run.  Nested graphs (one Input, one Output) are
inlined.  Host ops (``host=``; sdmc's extension nodes, see
:mod:`sdmc.backends.nir`) compute an Input node's value from Output nodes within the same step.

    >>> out = run(graph, {"x": x}, T=4)            # x: [T, B, *shape] or static [B, *shape]
    >>> out["output"]                              # [T, B, *shape] per Output node
    >>> vals = run(graph, {"x": x}, T=4, record=True)   # every node's value per step
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import nir
import numpy as np

from sdmc.errors import SdmcError

from .golden import conv2d

DT = 1e-4


# ------------------------------------------------------------------------------------------ node kernels
def _f(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def int_tuple(v, n: int) -> tuple[int, ...]:
    """A NIR integer attribute (int, tuple or array) as ``n`` ints (a single value repeated)."""
    a = np.asarray(v).reshape(-1)
    return tuple(int(x) for x in (np.repeat(a, n) if a.size == 1 else a))


def _conv_nd(node, x: np.ndarray, nd: int) -> np.ndarray:
    w = _f(node.weight)
    if nd == 1:  # [B, C, L] as [B, C, 1, L]
        x, w = x[:, :, None, :], w[:, :, None, :]
    k = w.shape[2:]
    stride, dil = int_tuple(node.stride, nd), int_tuple(node.dilation, nd)
    if nd == 1:
        stride, dil = (1,) + stride, (1,) + dil
    pad = node.padding.decode() if isinstance(node.padding, bytes) else node.padding
    if isinstance(pad, str):
        if pad == "valid":
            pads = [(0, 0), (0, 0)]
        elif pad == "same":
            tot = [d * (kk - 1) for d, kk in zip(dil, k)]
            pads = [(p // 2, p - p // 2) for p in tot]
        else:
            raise SdmcError(f"NIR conv: unknown padding {pad!r}")
    else:
        p = int_tuple(pad, nd)
        pads = [(pp, pp) for pp in ((0,) + p if nd == 1 else p)]
    x = np.pad(x, ((0, 0), (0, 0), *pads))
    y = conv2d(x, w, _f(node.bias), stride, (0, 0), dil, int(np.asarray(node.groups)))
    return y[:, :, 0, :] if nd == 1 else y


def _pool(node, x: np.ndarray, avg: bool) -> np.ndarray:
    k, s, p = int_tuple(node.kernel_size, 2), int_tuple(node.stride, 2), int_tuple(node.padding, 2)
    C = x.shape[1]
    y = conv2d(x, np.ones((C, 1) + k), None, s, p, (1, 1), C)
    return y / (k[0] * k[1]) if avg else y


def _flatten(node, x: np.ndarray) -> np.ndarray:
    rank = x.ndim - 1
    a, b = int(node.start_dim) % rank, int(node.end_dim) % rank
    shape = x.shape[1:]
    return x.reshape((x.shape[0],) + shape[:a] + (int(np.prod(shape[a : b + 1])),) + shape[b + 1 :])


def _affine(node, x: np.ndarray) -> np.ndarray:
    w = _f(node.weight)
    if w.ndim != 2:
        raise SdmcError(f"NIR {type(node).__name__}: weight of rank {w.ndim} is not supported (2-d [out, in] only)")
    y = x @ w.T
    return y + _f(node.bias) if isinstance(node, nir.Affine) else y


STATELESS: dict[str, Callable] = {
    "Affine": lambda n, x, c: _affine(n, x),
    "Linear": lambda n, x, c: _affine(n, x),
    "Scale": lambda n, x, c: x * _f(n.scale),
    "Conv1d": lambda n, x, c: _conv_nd(n, x, 1),
    "Conv2d": lambda n, x, c: _conv_nd(n, x, 2),
    "SumPool2d": lambda n, x, c: _pool(n, x, False),
    "AvgPool2d": lambda n, x, c: _pool(n, x, True),
    "Flatten": lambda n, x, c: _flatten(n, x),
    "Threshold": lambda n, x, c: (x > _f(n.threshold)).astype(np.float64),
    "Input": lambda n, x, c: x,
    "Output": lambda n, x, c: x,
}


def _fire(n, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = v > _f(n.v_threshold)
    return z.astype(np.float64), np.where(z, _f(n.v_reset), v)


def _leak(v, x, a, v_leak, r) -> np.ndarray:
    return v + a * ((v_leak - v) + r * x)


def _i(n, x, st, c):
    st["v"] = st["v"] + (c.dt * _f(n.r)) * x
    return st["v"]


def _if(n, x, st, c):
    z, st["v"] = _fire(n, st["v"] + (c.dt * _f(n.r)) * x)
    return z


def _li(n, x, st, c):
    st["v"] = _leak(st["v"], x, c.dt / _f(n.tau), _f(n.v_leak), _f(n.r))
    return st["v"]


def _lif(n, x, st, c):
    z, st["v"] = _fire(n, _leak(st["v"], x, c.dt / _f(n.tau), _f(n.v_leak), _f(n.r)))
    return z


def _cuba(n, x, st, c):
    st["i"] = st["i"] + (c.dt / _f(n.tau_syn)) * (_f(n.w_in) * x - st["i"])
    return _leak(st["v"], st["i"], c.dt / _f(n.tau_mem), _f(n.v_leak), _f(n.r))


def _cubali(n, x, st, c):
    st["v"] = _cuba(n, x, st, c)
    return st["v"]


def _cubalif(n, x, st, c):
    z, st["v"] = _fire(n, _cuba(n, x, st, c))
    return z


def _delay(n, x, st, c):
    d = np.asarray(n.delay, np.float64) / c.dt
    steps = np.rint(d)
    if np.any(np.abs(d - steps) > 1e-6 * np.maximum(1.0, np.abs(d))) or np.any(steps < 0):
        raise SdmcError(f"NIR Delay: delay {np.asarray(n.delay).ravel()[:4]} is not a whole number of steps dt={c.dt}")
    st.setdefault("hist", []).append(x)
    hist = np.stack(st["hist"])  # [t+1, B, ...]
    idx = c.t - np.broadcast_to(steps.astype(np.int64), x.shape[1:])
    out = np.zeros_like(x)
    ok = idx >= 0
    src = np.take_along_axis(hist, np.clip(idx, 0, None)[None, None].repeat(x.shape[0], 1), axis=0)[0]
    out[:, ok] = src[:, ok]
    return out


STATEFUL: dict[str, Callable] = {
    "I": _i,
    "IF": _if,
    "LI": _li,
    "LIF": _lif,
    "CubaLI": _cubali,
    "CubaLIF": _cubalif,
    "Delay": _delay,
}
NODE_TYPES = tuple(STATELESS) + tuple(STATEFUL)


# ------------------------------------------------------------------------------------------ graph walk
@dataclass
class _Ctx:
    dt: float
    t: int = 0


def flatten_graph(graph: nir.NIRGraph, prefix: str = "") -> tuple[dict, list]:
    """Inline nested graphs: ``(nodes, edges)`` with names ``outer.inner``; a nested graph needs exactly one
    Input and one Output, which become pass-throughs."""
    nodes, edges, entry, exit_ = {}, [], {}, {}
    for k, n in graph.nodes.items():
        name = prefix + k
        if isinstance(n, nir.NIRGraph):
            sub_nodes, sub_edges = flatten_graph(n, name + ".")
            ins = [s for s, v in n.nodes.items() if isinstance(v, nir.Input)]
            outs = [s for s, v in n.nodes.items() if isinstance(v, nir.Output)]
            if len(ins) != 1 or len(outs) != 1:
                raise SdmcError(f"NIR graph: nested graph {name!r} must have one Input and one Output node")
            nodes.update(sub_nodes)
            edges += sub_edges
            entry[k], exit_[k] = f"{name}.{ins[0]}", f"{name}.{outs[0]}"
        else:
            nodes[name] = n
    for a, b in graph.edges:
        edges.append((prefix + exit_[a] if a in exit_ else prefix + a, prefix + entry[b] if b in entry else prefix + b))
    return nodes, [(a if a in nodes else a, b) for a, b in edges]


def order(nodes: Mapping, edges: list[tuple[str, str]], roots: list[str]) -> tuple[list[str], set[tuple[str, str]]]:
    """Evaluation order and the back edges (edges closing a cycle, found by DFS from ``roots`` then from
    the remaining nodes in insertion order)."""
    succ: dict[str, list[str]] = {k: [] for k in nodes}
    for a, b in edges:
        succ[a].append(b)
    back, state = set(), {}
    for r in list(roots) + list(nodes):
        if r in state:
            continue
        stack = [(r, iter(succ[r]))]
        state[r] = 1
        while stack:
            u, it = stack[-1]
            v = next(it, None)
            if v is None:
                state[u] = 2
                stack.pop()
            elif state.get(v) == 1:
                back.add((u, v))
            elif v not in state:
                state[v] = 1
                stack.append((v, iter(succ[v])))
    indeg = {k: 0 for k in nodes}
    for a, b in edges:
        if (a, b) not in back:
            indeg[b] += 1
    pos = {k: i for i, k in enumerate(nodes)}
    ready = sorted((k for k, d in indeg.items() if d == 0), key=pos.__getitem__)
    out = []
    while ready:
        u = ready.pop(0)
        out.append(u)
        for v in succ[u]:
            if (u, v) in back:
                continue
            indeg[v] -= 1
            if indeg[v] == 0:
                ready.append(v)
                ready.sort(key=pos.__getitem__)
    return out, back


class HostOp:
    """An op computed outside the NIR graph at every step: reads the graph's Output nodes ``ports`` and
    supplies the value of one Input node (an sdmc extension node, see :mod:`sdmc.backends.nir`)."""

    ports: tuple[str, ...] = ()

    def __call__(self, t: int, values: dict[str, np.ndarray]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def _step(n, x: np.ndarray, st: dict, ctx: _Ctx) -> np.ndarray:
    """One node at one step (its state ``st`` starts empty: potentials and currents at 0)."""
    name = type(n).__name__
    if name not in STATEFUL:
        return STATELESS[name](n, x, ctx)
    if not st and name != "Delay":
        st.update(v=np.zeros_like(x), i=np.zeros_like(x))
    return STATEFUL[name](n, x, st, ctx)


def _bind(nodes: Mapping, need: list[str], inputs: Mapping, T: int | None) -> tuple[dict, int]:
    """The input arrays (float64; ``[T, B, *shape]`` or static ``[B, *shape]``) checked against the Input nodes'
    shapes, and the number of steps."""
    arrays = {}
    for k in need:
        a = _f(inputs[k])
        shape = tuple(int(s) for s in np.asarray(nodes[k].input_type["input"]).reshape(-1))
        lead = a.ndim - len(shape)
        if lead not in (1, 2) or a.shape[lead:] != shape:
            raise SdmcError(f"NIR run: input {k!r} has shape {list(a.shape)}, expected [T, B, *{list(shape)}]")
        if lead == 2:
            T = a.shape[0] if T is None else T
            if a.shape[0] != T:
                raise SdmcError(f"NIR run: input {k!r} has {a.shape[0]} steps, expected T={T}")
        arrays[k] = a
    if T is None or T < 1:
        raise SdmcError("NIR run: give T (no per-step input fixes the number of steps)")
    return arrays, int(T)


def run(
    graph: nir.NIRGraph,
    inputs: Mapping[str, np.ndarray],
    T: int | None = None,
    dt: float = DT,
    record: bool = False,
    host: Mapping[str, HostOp] | None = None,
) -> dict[str, np.ndarray]:
    """Simulate ``graph`` for ``T`` steps; returns every Output node's values ``[T, B, *shape]`` (and, with
    ``record``, every node's).  ``inputs``: one array per Input node not fed by a ``host`` op (``{Input node:
    HostOp}``), ``[T, B, *shape]`` or static ``[B, *shape]`` (repeated at every step).  ``T`` defaults to the
    inputs'."""
    if not isinstance(graph, nir.NIRGraph):
        raise SdmcError(f"NIR run: expected a nir.NIRGraph, got {type(graph).__name__}")
    nodes, edges = flatten_graph(graph)
    for k, n in nodes.items():
        if type(n).__name__ not in NODE_TYPES:
            raise SdmcError(f"NIR run: node {k!r} has type {type(n).__name__}, which this interpreter does not run")
    ins = [k for k, n in nodes.items() if isinstance(n, nir.Input) and k in graph.nodes]
    outs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Output)]
    ext = dict(host or {})
    bad = [k for k in ext if k not in ins] + [p for op in ext.values() for p in op.ports if p not in outs]
    if bad:
        raise SdmcError(f"NIR run: host ops name unknown Input / Output node(s) {bad}")
    need = [k for k in ins if k not in ext]
    missing, unknown = [k for k in need if k not in inputs], sorted(set(inputs) - set(need))
    if missing or unknown:
        raise SdmcError(f"NIR run: inputs {sorted(inputs)} do not match the graph's Input nodes {need}")
    arrays, T = _bind(nodes, need, inputs, T)
    for port, op in ext.items():
        edges += [(src, port) for src in op.ports]
    seq, back = order(nodes, edges, ins)
    preds: dict[str, list[tuple[str, bool]]] = {k: [] for k in nodes}
    for a, b in edges:
        if b in ext and a in ext[b].ports:
            continue  # the extension reads its ports itself
        preds[b].append((a, (a, b) in back))
    ctx, states = _Ctx(float(dt)), {k: {} for k in nodes}
    prev: dict[str, np.ndarray] = {}
    hist: dict[str, list] = {k: [] for k in (nodes if record else outs)}
    for t in range(T):
        ctx.t, cur = t, {}
        for k in seq:
            n = nodes[k]
            if k in ext:
                cur[k] = ext[k](t, {p: cur[p] for p in ext[k].ports})
            elif k in arrays:
                a = arrays[k]
                cur[k] = a[t] if a.ndim == len(n.input_type["input"]) + 2 else a
            else:
                parts = [prev[a] if is_back else cur[a] for a, is_back in preds[k] if not is_back or a in prev]
                if not parts:
                    raise SdmcError(f"NIR run: node {k!r} has no input at step {t}")
                x = parts[0]
                for p in parts[1:]:  # fan-in: the sum of the incoming edges
                    x = x + p
                cur[k] = _step(n, x, states[k], ctx)
        for k in hist:
            hist[k].append(cur[k])
        prev = cur
    return {k: np.stack(v) for k, v in hist.items()}
