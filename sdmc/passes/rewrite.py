"""Rewriting passes: fold BN, fuse TSM, hoist static work, dead code, split concat, compose the residual stream.

Every pass preserves the golden simulator's outputs (eval mode; ``hoist_static``, ``dead_code`` and
``split_concat`` also in training mode).  Pure tensor functions (``fold_bn_weights``, ``fuse_tsm_weights``,
``compose_1x1``) sit beside the graph wrappers.  New parameters get new names (``<node>.weight``, ...);
the source's parameters stay in the store until ``dead_code`` drops the unused ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .. import ir
from ..ir.graph import REAL, STATIC
from .manager import register_pass


# ------------------------------------------------------------------------------------------ helpers
def _arr(g: ir.Graph, name: str | None) -> np.ndarray | None:
    return None if name is None else np.asarray(g.params[name], dtype=np.float64)


def _new_param(g: ir.Graph, base: str, value: np.ndarray, like: str | None = None) -> str:
    """Store ``value`` under a fresh name derived from ``base``, in the dtype of parameter ``like``."""
    name, i = base, 0
    while name in g.params:
        i += 1
        name = f"{base}_{i}"
    dtype = g.params[like].dtype if like in g.params else value.dtype
    g.add_param(name, np.asarray(value, dtype=dtype))
    return name


def _only_user(g: ir.Graph, name: str) -> str | None:
    users = g.users(name)
    return users[0] if len(users) == 1 else None


def _drop(g: ir.Graph, keep: str, gone: str) -> None:
    """Make the readers of ``gone`` read ``keep`` and delete ``gone``."""
    g.replace_uses(gone, keep)
    g.remove(gone)


# ------------------------------------------------------------------------------------------ fold_bn
def fold_bn_weights(
    w: np.ndarray,
    b: np.ndarray | None,
    mean: np.ndarray,
    var: np.ndarray,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold eval-mode BN into the affine op before it (output channel = axis 0 of ``w``)::

        s = gamma / sqrt(var + eps)      W' = W * s[o]      b' = (b - mean) * s + beta

    ``b`` is ``[O]``, ``[T, O]`` (per-step bias) or ``None`` (zero); ``gamma`` / ``beta`` ``None`` mean 1 / 0.
    Returns ``(W', b')`` in float64.
    """
    w = np.asarray(w, dtype=np.float64)
    mean, var = np.asarray(mean, dtype=np.float64), np.asarray(var, dtype=np.float64)
    s = 1.0 / np.sqrt(var + eps)
    if gamma is not None:
        s = s * np.asarray(gamma, dtype=np.float64)
    w2 = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    b0 = np.zeros_like(mean) if b is None else np.asarray(b, dtype=np.float64)
    b2 = (b0 - mean) * s
    if beta is not None:
        b2 = b2 + np.asarray(beta, dtype=np.float64)
    return w2, b2


def _bn_args(g: ir.Graph, bn: ir.BatchNorm) -> dict:
    return dict(
        mean=_arr(g, bn.running_mean),
        var=_arr(g, bn.running_var),
        gamma=_arr(g, bn.weight),
        beta=_arr(g, bn.bias),
        eps=float(bn.eps),
    )


@register_pass("fold_bn", "fold eval-mode BatchNorm into the conv / linear before it (sole reader only)")
def fold_bn(g: ir.Graph) -> dict:
    folded, kept = [], {}
    for name in [n.name for n in g.order() if n.op == "batchnorm"]:
        bn = g[name]  # re-read: folding an earlier BN may have rewired this one
        prod = g[bn.inputs[0]]
        if prod.op not in ir.SYNAPTIC:
            kept[bn.name] = f"no conv/linear before it (input {prod.name!r} is {prod.op})"
            continue
        if g.users(prod.name) != [bn.name]:
            kept[bn.name] = f"{prod.name!r} has other readers {g.users(prod.name)} (fan-out)"
            continue
        if prod.op == "linear" and len(prod.type.shape) != 1:
            kept[bn.name] = (
                f"linear {prod.name!r} output has rank {len(prod.type.shape)}; BN's channel is not its feature axis"
            )
            continue
        w, b = fold_bn_weights(_arr(g, prod.weight), _arr(g, prod.bias), **_bn_args(g, bn))
        new = prod.replace(
            weight=_new_param(g, f"{prod.name}.weight.fold_bn", w, prod.weight),
            bias=_new_param(g, f"{prod.name}.bias.fold_bn", b, prod.weight),
        )
        g.nodes[prod.name] = new
        _drop(g, prod.name, bn.name)
        folded.append([bn.name, prod.name])
    return {"folded": folded, "kept": kept}


# ------------------------------------------------------------------------------------------ fuse_tsm
def fuse_tsm_weights(
    w: np.ndarray, b: np.ndarray | None, p: np.ndarray, bn: dict | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """TSM conv (+ BN) as per-step weights ``W_t = p_t W'`` and biases, stored factorised ``(W', p, b_t)``::

        no BN:  W' = W                b_t = p_t b
        BN:     W' = W * gamma/sigma  b_t = (p_t b - mean) * gamma/sigma + beta

    ``bn``: ``dict(mean, var, gamma, beta, eps)`` or ``None``.  ``p`` has T entries; ``b_t`` is ``[T, O]``.
    """
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    bt = None if b is None else p[:, None] * np.asarray(b, dtype=np.float64)[None, :]
    if bn is None:
        return np.asarray(w, dtype=np.float64), p, bt
    w2, b2 = fold_bn_weights(w, bt, **bn)
    if b2.ndim == 1:
        b2 = np.broadcast_to(b2, (p.size, b2.size)).copy()
    return w2, p, b2


@register_pass("fuse_tsm", "fuse TSM scale (+ the BN after it) into per-step conv weights and biases")
def fuse_tsm(g: ir.Graph) -> dict:
    fused, kept = [], {}
    for name in [n.name for n in g.order() if n.op == "tsm_scale"]:
        tsm = g[name]
        conv = g[tsm.inputs[0]]
        if conv.op != "conv2d":
            kept[tsm.name] = f"input {conv.name!r} is {conv.op}, not a conv2d"
            continue
        if g.users(conv.name) != [tsm.name]:
            kept[tsm.name] = f"conv {conv.name!r} has other readers (fan-out)"
            continue
        user = _only_user(g, tsm.name)
        bn = g[user] if user is not None and g[user].op == "batchnorm" else None
        w, p, bt = fuse_tsm_weights(
            _arr(g, conv.weight), _arr(g, conv.bias), _arr(g, tsm.scale), _bn_args(g, bn) if bn is not None else None
        )
        w_name = conv.weight if bn is None else _new_param(g, f"{tsm.name}.weight.fuse_tsm", w, conv.weight)
        b_name = None if bt is None else _new_param(g, f"{tsm.name}.bias.fuse_tsm", bt, conv.weight)
        new = ir.ScaledConv2d(
            name=tsm.name,
            inputs=conv.inputs,
            weight=w_name,
            scale=tsm.scale,
            bias=b_name,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
        )
        g.nodes[tsm.name] = new
        g.remove(conv.name)
        if bn is not None:
            _drop(g, tsm.name, bn.name)
        fused.append([conv.name, tsm.name] + ([bn.name] if bn is not None else []))
    return {"fused": fused, "kept": kept}


# ------------------------------------------------------------------------------------------ hoist_static
@register_pass("hoist_static", "move time-invariant work on repeated static values out of the time loop")
def hoist_static(g: ir.Graph) -> dict:
    hoisted = []
    for name in [n.name for n in g.order()]:
        node = g.nodes[name]
        ins = [g.nodes[i] for i in node.inputs]
        reps = [i for i in ins if i.op == "repeat"]
        if not reps:
            continue
        if node.op in ir.PER_STEP_PARAMS:  # accept a static input, still per-step out
            g.nodes[name] = node.replace(inputs=(reps[0].inputs[0],))
            hoisted.append(name)
            continue
        if node.op not in ir.TIME_INVARIANT:
            continue
        ir.infer_types(g)
        if any(i.type.per_step and i.op != "repeat" for i in ins):
            continue
        g.nodes[name] = node.replace(inputs=tuple(i.inputs[0] if i.op == "repeat" else i.name for i in ins))
        rep = g.fresh_name(f"{name}.repeat")
        g.add(ir.Repeat(name=rep, inputs=(name,)))
        g.replace_uses(name, rep)
        hoisted.append(name)
    ir.infer_types(g)
    static = [n.name for n in g.nodes.values() if n.op not in ("input", "output") and n.type.timing == STATIC]
    return {"hoisted": hoisted, "static_nodes": len(static)}


# ------------------------------------------------------------------------------------------ hoist_affine
@register_pass(
    "hoist_affine", "training-safe hoisting: synapses and per-step scales read the static value, not its repeat"
)
def hoist_affine(g: ir.Graph) -> dict:
    """A synapse (conv / Conv3d / linear) or a per-step-parameter op (TSM scale, scaled conv) reading
    ``repeat(x)`` reads ``x`` instead (``f(repeat(x)) == repeat(f(x))``; a synapse's static output is repeated
    for its readers).  BatchNorm stays per-step so its batch statistics and running-variance correction
    (``n = T*B*H*W``) stay those of the source model: unlike ``hoist_static`` this keeps training outputs."""
    hoisted = []
    for name in [n.name for n in g.order()]:
        node = g.nodes[name]
        if not (node.op in ir.SYNAPTIC or node.op in ir.PER_STEP_PARAMS) or len(node.inputs) != 1:
            continue
        src = g.nodes[node.inputs[0]]
        if src.op != "repeat":
            continue
        g.nodes[name] = node.replace(inputs=(src.inputs[0],))
        if node.op not in ir.PER_STEP_PARAMS:  # static out: repeat it for the readers
            rep = g.fresh_name(f"{name}.repeat")
            g.add(ir.Repeat(name=rep, inputs=(name,)))
            g.replace_uses(name, rep)
            g.nodes[rep] = g.nodes[rep].replace(inputs=(name,))
        hoisted.append(name)
    unused = [k for k, n in g.nodes.items() if n.op == "repeat" and not g.users(k)]
    for k in unused:
        g.remove(k)
    return {"hoisted": hoisted}


# ------------------------------------------------------------------------------------------ dead_code
@register_pass("dead_code", "remove nodes that reach no output, and unused parameters")
def dead_code(g: ir.Graph) -> dict:
    live = _live(g)
    dead = [k for k, n in g.nodes.items() if k not in live and n.op != "input"]
    for k in dead:
        del g.nodes[k]
    used = set(g.param_names())
    unused = [k for k in g.params if k not in used]
    for k in unused:
        del g.params[k]
    return {"removed_nodes": dead, "removed_params": len(unused)}


# ------------------------------------------------------------------------------------------ split_concat
def _channelwise(op: str) -> bool:
    """Ops pushed through a channel concat, ``f(cat(a, b)) = cat(f(a), f(b))``: neurons and upsampling."""
    return op in ir.NEURON or op == "upsample"


def _channel_concat(g: ir.Graph, name: str) -> ir.Concat | None:
    n = g.nodes[name]
    if n.op == "concat" and len(n.inputs) > 1 and n.axis % len(n.type.shape) == 0:
        return n
    return None


@register_pass("split_concat", "IF(cat(a,b)) -> cat(IF(a),IF(b)); conv(cat(a,b)) -> conv_a(a) + conv_b(b)")
def split_concat(g: ir.Graph) -> dict:
    pushed, split = [], []
    work = [n.name for n in g.order()]
    while work:  # a worklist: pieces pushed through a concat may read a nested concat in turn
        name = work.pop(0)
        if name not in g.nodes:
            continue
        node = g.nodes[name]
        cat = _channel_concat(g, node.inputs[0]) if node.inputs else None
        if node.op in ir.NEURON and cat is not None and any(g.nodes[i].type.kind == ir.SPIKE for i in cat.inputs):
            continue  # a spike piece cannot feed a neuron on its own
        if _channelwise(node.op) and cat is not None:
            parts = []
            for i, src in enumerate(cat.inputs):
                if node.op in ir.NEURON and not g.nodes[src].type.per_step:
                    src = g.add(ir.Repeat(name=g.fresh_name(f"{name}.{i}.repeat"), inputs=(src,)))
                parts.append(g.add(node.replace(name=g.fresh_name(f"{name}.{i}"), inputs=(src,))))
            new = g.add(ir.Concat(name=g.fresh_name(f"{name}.cat"), inputs=tuple(parts), axis=0))
            _drop(g, new, name)
            ir.infer_types(g)
            pushed.append(name)
            work[:0] = parts
        elif node.op in ir.CONV2D and node.groups == 1 and cat is not None:
            w = g.params[node.weight]
            off, terms = 0, []
            for i, src in enumerate(cat.inputs):
                c = g.nodes[src].type.shape[0]
                wi = _new_param(g, f"{name}.{i}.weight", np.ascontiguousarray(w[:, off : off + c]))
                off += c
                terms.append(
                    g.add(
                        node.replace(
                            name=g.fresh_name(f"{name}.{i}"),
                            inputs=(src,),
                            weight=wi,
                            bias=None if terms else node.bias,  # the bias once, on the first term
                        )
                    )
                )
            acc = terms[0]
            for t in terms[1:]:
                acc = g.add(ir.Add(name=g.fresh_name(f"{name}.sum"), inputs=(acc, t)))
            _drop(g, acc, name)
            ir.infer_types(g)
            split.append(name)
            work[:0] = terms
    return {"pushed_through": pushed, "split": split}


# ------------------------------------------------------------------------------------------ compose_residual
@dataclass
class _Conv:
    """An affine projection ``y[t] = scale[t] * conv(x[t], W) + b`` (scale None = 1; b ``[O]``, ``[T, O]`` or None)."""

    weight: np.ndarray
    scale: np.ndarray | None
    bias: np.ndarray | None
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    like: str | None = None  # a weight parameter whose dtype the composed parameters take

    @classmethod
    def of(cls, g: ir.Graph, n: ir.Node) -> _Conv:
        scale = _arr(g, n.scale).reshape(-1) if n.op == "scaled_conv2d" and n.scale is not None else None
        return cls(
            _arr(g, n.weight),
            scale,
            _arr(g, n.bias),
            tuple(n.stride),
            tuple(n.padding),
            tuple(n.dilation),
            int(n.groups),
            n.weight,
        )

    @property
    def is_1x1(self) -> bool:
        return (
            self.weight.shape[2:] == (1, 1)
            and self.groups == 1
            and tuple(self.stride) == (1, 1)
            and tuple(self.padding) == (0, 0)
        )


def compose_1x1(outer: _Conv, inner: _Conv) -> _Conv:
    """``outer(inner(x))`` for a 1x1 stride-1 unpadded ``outer`` ``(S, q, c)`` and ungrouped ``inner`` ``(W, p, b)``::

        W' = S @ W (over channels)    scale' = q * p    b' = q * (S @ b) + c

    exact, since a 1x1 conv acts on each pixel alone.
    """
    S = outer.weight[:, :, 0, 0]
    w = (S @ inner.weight.reshape(inner.weight.shape[0], -1)).reshape((S.shape[0],) + inner.weight.shape[1:])
    b = None if inner.bias is None else inner.bias @ S.T
    if b is not None and outer.scale is not None:
        b = outer.scale[:, None] * (b if b.ndim == 2 else b[None, :])
    if outer.bias is not None:
        b = outer.bias if b is None else b + outer.bias
    if outer.scale is None or inner.scale is None:
        scale = outer.scale if inner.scale is None else inner.scale
    else:
        scale = outer.scale * inner.scale
    return _Conv(w, scale, b, inner.stride, inner.padding, inner.dilation, inner.groups, inner.like)


@dataclass
class _Term:
    """One summand of a real value: ``conv(src)``, or ``src`` itself when ``conv`` is None.  ``node`` names an
    existing node computing exactly this summand (reused instead of rebuilt)."""

    src: str
    conv: _Conv | None = None
    node: str | None = None


_NOT_COMPOSED = {
    "batchnorm": "through batchnorm (not folded: no conv / linear right before it); composing past it is not done",
    "tsm_scale": "TSM scale not fused (run fuse_tsm first)",
    "concat": "concat not split (run split_concat first)",
    "conv3d": "conv3d is not composed by this pass",
    "linear": "linear is not composed by this pass",
    "upsample": "upsample of a real value is not composed by this pass",
    "reshape": "reshape is not composed by this pass",
    "repeat": None,
}


class _Composer:
    def __init__(self, g: ir.Graph) -> None:
        self.g = g
        self.memo: dict[str, tuple[list[_Term], bool]] = {}
        self.reasons: dict[str, str] = {}

    def opaque(self, v: str, why: str | None) -> tuple[list[_Term], bool]:
        t = self.g.nodes[v].type
        if why and t.per_step and t.kind == REAL:
            self.reasons[v] = why
        return [_Term(v, None, v)], False

    def expand(self, v: str) -> tuple[list[_Term], bool]:
        """Summands of value ``v`` and whether a 1x1 composition happened on the way (memoised)."""
        if v not in self.memo:
            self.memo[v] = self._expand(v)
        return self.memo[v]

    def _expand(self, v: str) -> tuple[list[_Term], bool]:
        g, n = self.g, self.g.nodes[v]
        t = n.type
        if n.op == "add":
            ins = [g.nodes[i] for i in n.inputs]
            if all(x.type.shape != t.shape for x in ins):
                return self.opaque(v, "add of two broadcast operands")
            full, part, composed = [], [], False
            for x in ins:
                if x.type.shape == t.shape:
                    ts, c = self.expand(x.name)
                    full += ts
                    composed |= c
                else:
                    part.append(_Term(x.name, None, x.name))  # broadcast operand, e.g. the time-embedding bias
            return full + part, composed
        if n.op in ir.CONV2D:
            u = g.nodes[n.inputs[0]]
            conv = _Conv.of(g, n)
            if u.type.kind != REAL or not u.type.per_step:
                return [_Term(u.name, conv, v)], False  # a synapse from spikes (or static work): already direct
            if not conv.is_1x1:
                k = "x".join(map(str, conv.weight.shape[2:]))
                return self.opaque(
                    v,
                    f"{k} conv (stride {list(conv.stride)}, groups {conv.groups}) on the "
                    f"real-valued {u.name!r}: composing it with the convs feeding it is not exact",
                )
            inner, inner_composed = self.expand(u.name)
            if not all(x.conv is None or x.conv.groups == 1 for x in inner):
                return self.opaque(v, "1x1 conv over a grouped conv")
            out = []
            for i, x in enumerate(inner):
                c = conv if i == 0 else replace(conv, bias=None)  # the outer bias is added once, not per summand
                out.append(_Term(x.src, compose_1x1(c, x.conv) if x.conv is not None else c))
            # a composition happened if a conv met this 1x1 (here or further in); a 1x1 over values that cannot
            # be composed is left as it is
            return out, inner_composed or any(x.conv is not None for x in inner)
        return self.opaque(v, _NOT_COMPOSED.get(n.op, f"through {n.op} (not linear)"))


def _same_geometry(c: _Conv, d: _Conv) -> bool:
    return (
        d.weight.shape == c.weight.shape
        and d.stride == c.stride
        and d.padding == c.padding
        and d.dilation == c.dilation
        and d.groups == c.groups
        and (
            (d.scale is None and c.scale is None)
            or (d.scale is not None and c.scale is not None and np.array_equal(d.scale, c.scale))
        )
    )


def _merge(terms: list[_Term]) -> list[_Term]:
    """Sum the weights of terms reading one source with one geometry and scale; gather the new terms' biases."""
    out: list[_Term] = []
    for t in terms:
        hit = next(
            (
                o
                for o in out
                if t.conv is not None and o.conv is not None and o.src == t.src and _same_geometry(t.conv, o.conv)
            ),
            None,
        )
        if hit is None:
            out.append(_Term(t.src, t.conv, t.node))
            continue
        c, d = t.conv, hit.conv
        bias = d.bias if c.bias is None else c.bias if d.bias is None else d.bias + c.bias
        hit.conv, hit.node = replace(d, weight=d.weight + c.weight, bias=bias), None
    new = [t for t in out if t.conv is not None and t.node is None]
    if new:
        total = None
        for t in new:
            if t.conv.bias is not None:
                total = t.conv.bias if total is None else total + t.conv.bias
            t.conv = replace(t.conv, bias=None)
        new[0].conv = replace(new[0].conv, bias=total)
    return out


def _live(g: ir.Graph) -> set[str]:
    return g.ancestors(n.name for n in g.output_nodes)


def _synapses(g: ir.Graph, spike_only: bool) -> int:
    """Dense connection count per sample and step, ``O*Ho*Wo*(C/groups)*kh*kw``, over the live conv nodes."""
    n = 0
    for k in _live(g):
        node = g.nodes[k]
        if node.op in ir.CONV2D and (not spike_only or g.nodes[node.inputs[0]].type.kind != REAL):
            O, Ho, Wo = node.type.shape
            n += O * Ho * Wo * int(np.prod(g.params[node.weight].shape[1:]))
    return n


@register_pass(
    "compose_residual",
    "compose the real-valued residual stream into direct spike->neuron projections",
    requires=("fuse_tsm", "split_concat"),
)
def compose_residual(g: ir.Graph) -> dict:
    """Each consumer of a real per-step value that is a sum of convs reached through adds and 1x1 convs
    (the SDDPM/SDM residual stream with its 1x1 shortcuts) reads instead a sum of projections straight from
    the spike sources (weights composed with :func:`compose_1x1`).  Values it cannot compose are logged
    in ``not_composed`` with the reason; the stream nodes left unused are removed by ``dead_code``.
    """
    before = {"spike_driven": _synapses(g, True), "all": _synapses(g, False)}
    comp = _Composer(g)
    built: dict[str, str] = {}

    def build(v: str) -> str:
        if v in built:
            return built[v]
        names = []
        for t in _merge(comp.expand(v)[0]):
            if t.node is not None:  # an existing node computes this summand
                names.append(t.node)
                continue
            c = t.conv  # a new projection (every term without a node carries one)
            base = g.fresh_name(f"{v}.from.{t.src}")
            like = c.like
            w = _new_param(g, f"{base}.weight", c.weight, like)
            b = None if c.bias is None else _new_param(g, f"{base}.bias", c.bias, like)
            kw = dict(name=base, inputs=(t.src,), weight=w, bias=b, stride=c.stride, padding=c.padding)
            kw.update(dilation=c.dilation, groups=c.groups)
            if c.scale is None and (c.bias is None or c.bias.ndim == 1):
                node = ir.Conv2d(**kw)
            else:
                s = None if c.scale is None else _new_param(g, f"{base}.scale", c.scale, like)
                node = ir.ScaledConv2d(scale=s, **kw)
            names.append(g.add(node))
        acc = names[0]
        for nm in names[1:]:
            acc = g.add(ir.Add(name=g.fresh_name(f"{v}.sum"), inputs=(acc, nm)))
        ir.infer_types(g)
        built[v] = acc
        return acc

    rewritten = []
    for node in list(g.order()):
        if node.op == "add" or (
            node.op in ir.CONV2D
            and g.params[node.weight].shape[2:] == (1, 1)
            and node.groups == 1
            and tuple(node.stride) == (1, 1)
            and tuple(node.padding) == (0, 0)
        ):
            continue  # the stream itself
        new_inputs = tuple(
            build(i) if g.nodes[i].type.kind == REAL and g.nodes[i].type.per_step and comp.expand(i)[1] else i
            for i in node.inputs
        )
        if new_inputs != node.inputs:
            g.nodes[node.name] = node.replace(inputs=new_inputs)
            g.nodes[node.name].meta["type"] = node.type  # same value, new wiring
            rewritten.append(node.name)
    after = {"spike_driven": _synapses(g, True), "all": _synapses(g, False)}
    live = _live(g)
    fan_in = [_fan_in(g, n.inputs[0]) for n in g.nodes.values() if n.op in ir.NEURON and n.name in live]
    return {
        "rewritten": rewritten,
        "synapses_before": before,
        "synapses_after": after,
        "max_projections_per_neuron": max(fan_in, default=0),
        "not_composed": {k: v for k, v in sorted(comp.reasons.items()) if k in live},
    }


def _fan_in(g: ir.Graph, v: str) -> int:
    """Number of summands (add-tree leaves) feeding value ``v``."""
    n = g.nodes[v]
    return sum(_fan_in(g, i) for i in n.inputs) if n.op == "add" else 1
