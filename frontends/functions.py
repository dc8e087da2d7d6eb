"""Lowering rules for torch functions (:data:`FUNCTIONS`, keyed by the function) and tensor methods
(:data:`METHODS`, keyed by name).  Both share the op implementations below; rules receive the lowering
state, the fx node and the node's arguments with traced tensors as :class:`~.layouts.V` and parameters or
computed constants as :class:`~.layouts.Const`.

Structures recognised by what they compute (TSM, membrane read-out, Swish) are in :mod:`.structures`.
"""

from __future__ import annotations

import inspect
import operator
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from sdmc import ir

from . import modules as M
from .capture import drive_multi_step, drive_seq_to_ann
from .layouts import LEAD, Const, V
from .structures import per_step_scale_source, swish, tsm, weighted_sum

if TYPE_CHECKING:  # the rules take the Lowering that calls them: a type, not an import cycle
    from .lowering import Lowering

FnRule = Callable[["Lowering", fx.Node, tuple, dict], Any]
FUNCTIONS: dict[Any, FnRule] = {}
METHODS: dict[str, FnRule] = {}


def function(*fns: Any) -> Callable[[FnRule], FnRule]:
    def deco(r: FnRule) -> FnRule:
        for f in fns:
            FUNCTIONS[f] = r
        return r

    return deco


def method(*names: str) -> Callable[[FnRule], FnRule]:
    def deco(r: FnRule) -> FnRule:
        for k in names:
            METHODS[k] = r
        return r

    return deco


def lower_function(lw: Lowering, n: fx.Node, fn: Any, args: tuple, kwargs: dict) -> Any:
    r = FUNCTIONS.get(fn)
    if r is None:
        name = getattr(fn, "__name__", str(fn))
        raise lw.unsupported(
            n,
            f"function {getattr(fn, '__module__', '') or ''}.{name}".lstrip("."),
            "supported functions: add, sub, mul, div by a number, sigmoid, silu, cat, interpolate (nearest), "
            "max/avg pooling, flatten, sum/mean over T, einsum('t...,t->...'), dropout; "
            "wrap the op in a module the IR supports",
        )
    return r(lw, n, args, kwargs)


def lower_method(lw: Lowering, n: fx.Node, meth: str, args: tuple, kwargs: dict) -> Any:
    if isinstance(args[0], (tuple, list)) or not isinstance(args[0], V):
        raise lw.unsupported(n, f"method {meth} of {type(args[0]).__name__}")
    r = METHODS.get(meth)
    if r is None:
        raise lw.unsupported(n, f"method Tensor.{meth}", f"supported methods: {', '.join(sorted(METHODS))}")
    return r(lw, n, args, kwargs)


def _bind(fn: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    b = inspect.signature(fn).bind(*args, **kwargs)
    b.apply_defaults()
    return dict(b.arguments)


def _dim_arg(args: tuple, kwargs: dict, i: int = 1, key: str = "dim") -> Any:
    return args[i] if len(args) > i else kwargs.get(key)


# ------------------------------------------------------------------------------------------------ values
@function(getattr)
def get_attribute(lw, n, args, kwargs):
    if args[1] in ("shape", "ndim", "dtype", "device", "is_cuda", "requires_grad"):
        return n.meta["val"]  # known from the example: T and B are fixed while tracing
    raise lw.unsupported(n, f"attribute Tensor.{args[1]}")


@method("size", "dim")
def shape_query(lw, n, args, kwargs):
    return n.meta["val"]


@method("contiguous", "clone", "detach")
def same_value(lw, n, args, kwargs):
    return args[0]


@method("to", "type_as")
def to(lw, n, args, kwargs):
    """``.to(device)`` / ``.to(x)`` keep the value; a dtype change is refused."""
    x, val = args[0], n.meta.get("val")
    if val is not None and str(val.dtype).replace("torch.", "") != lw.g.nodes[x.name].type.dtype:
        raise lw.unsupported(n, f"Tensor.to({val.dtype})", "the IR keeps one floating-point dtype per value")
    return x


@function(F.dropout, F.dropout2d)
def dropout(lw, n, args, kwargs):
    return lw.tensor(n, args[0], "dropout")


# ------------------------------------------------------------------------------------------------ elementwise
@function(operator.add, torch.add, operator.iadd)
@method("add", "add_", "__add__", "__radd__")
def add(lw, n, args, kwargs):
    if kwargs or len(args) != 2:
        raise lw.unsupported(n, f"add with arguments {len(args)} {sorted(kwargs)}")
    return binary(lw, n, "add", *args)


@function(operator.sub, torch.sub, operator.isub)
@method("sub", "sub_", "__sub__")
def sub(lw, n, args, kwargs):
    """``a - b = a + (-1) * b``."""
    if kwargs or len(args) != 2 or not (isinstance(args[0], V) and isinstance(args[1], V)):
        raise lw.unsupported(n, "sub", "only the difference of two traced tensors")
    b = args[1]
    neg = lw.add(ir.Scale(name=lw.fn_name(n, "neg"), inputs=(lw.operand(n, b),), factor=-1.0))
    pre = None if b.pre is None else lw.g.nodes[neg].type.shape
    return binary(lw, n, "add", args[0], V(neg, b.layout, b.shape, pre))


@function(operator.mul, torch.mul, operator.imul)
@method("mul", "mul_", "__mul__", "__rmul__")
def mul(lw, n, args, kwargs):
    if kwargs or len(args) != 2:
        raise lw.unsupported(n, f"mul with arguments {len(args)} {sorted(kwargs)}")
    return binary(lw, n, "mul", *args)


@function(operator.truediv, torch.div, torch.true_divide)
@method("div", "div_", "__truediv__")
def div(lw, n, args, kwargs):
    if kwargs or len(args) != 2 or not isinstance(args[0], V) or not isinstance(args[1], (int, float)):
        raise lw.unsupported(n, "div", "only dividing a traced tensor by a number")
    return scale(lw, n, args[0], 1.0 / float(args[1]))


def scale(lw: Lowering, n: fx.Node, x: V, factor: float) -> V:
    return lw.v(
        lw.add(ir.Scale(name=lw.fn_name(n, "scale"), inputs=(lw.value(n, x, "scale"),), factor=factor)), x.layout
    )


_PAIRS = {
    ("F", "F"): "F",
    ("TB", "TB"): "TB",
    ("S", "S"): "S",
    ("S1", "S1"): "S1",
    ("TBL", "TBL"): "TBL",
    ("TB", "S1"): "TB",
    ("S1", "TB"): "TB",
    ("TB", "S"): "TB",
    ("S", "TB"): "TB",
    ("S1", "S"): "S1",
    ("S", "S1"): "S1",
}


def binary(lw: Lowering, n: fx.Node, op: str, a: Any, b: Any) -> V:
    """``a + b`` / ``a * b`` of traced tensors, or of a traced tensor and a constant."""
    if not isinstance(a, V) or not isinstance(b, V):
        v, c = (a, b) if isinstance(a, V) else (b, a)
        return _with_constant(lw, n, op, v, c)
    out = _PAIRS.get((a.layout, b.layout))
    ra, rb = len(a.shape), len(b.shape)
    if out is None or ra != rb:
        raise lw.unsupported(
            n,
            f"{op} of tensors laid out {a.layout} (rank {ra}) and {b.layout} (rank {rb})",
            "operands must agree on the T and B axes",
        )
    want = tuple(n.meta["val"].shape[LEAD[out] :]) if out != "TBL" else tuple(n.meta["val"].shape[1:-1])
    xa, xb = lw.operand(n, a), lw.operand(n, b)
    if op == "mul":
        sw = swish(lw, n, xa, xb)
        if sw is not None:
            return lw.v(sw, out)
    node = (ir.Add if op == "add" else ir.Mul)(name=lw.fn_name(n, op), inputs=(xa, xb))
    name = lw.add(node)
    got = lw.g.nodes[name].type.shape
    if got == want:
        return lw.v(name, out)
    return V(name, out, want, got)  # both operands broadcast: the result is still a broadcast view


def _with_constant(lw: Lowering, n: fx.Node, op: str, x: V, c: Any) -> V:
    if isinstance(c, (int, float)) and not isinstance(c, bool):
        if op == "mul":
            return scale(lw, n, x, float(c))
        raise lw.unsupported(n, f"add of constant {c!r}", "only tensor-tensor ops and scaling by a number")
    if not isinstance(c, Const):
        raise lw.unsupported(n, f"{op} with {type(c).__name__}")
    t = c.value
    if op == "mul" and t.numel() == 1 and c.key is None:
        return scale(lw, n, x, float(t))
    rank = LEAD[x.layout] + len(x.shape)
    per_step_scalar = x.layout == "TB" and t.dim() == rank and t.shape[0] == lw.T and t.numel() == lw.T
    if op == "mul" and per_step_scalar:
        return tsm(lw, n, x, c)
    what = f"parameter {c.key!r}" if c.key else "a constant tensor"
    raise lw.unsupported(
        n,
        f"{op} by {what} of shape {list(t.shape)}",
        "supported: scaling by a number, and a per-step [T, 1, ..., 1] scale of a [T, B, ...] tensor (TSM)",
    )


@function(torch.sigmoid, F.sigmoid)
@method("sigmoid")
def sigmoid(lw, n, args, kwargs):
    x = lw.tensor(n, args[0], "sigmoid")
    return lw.v(lw.add(ir.Sigmoid(name=lw.fn_name(n, "sigmoid"), inputs=(lw.value(n, x, "sigmoid"),))), x.layout)


@function(F.silu)
def silu(lw, n, args, kwargs):
    x = lw.tensor(n, args[0], "silu")
    return lw.v(lw.add(ir.Swish(name=lw.fn_name(n, "swish"), inputs=(lw.value(n, x, "silu"),))), x.layout)


# ------------------------------------------------------------------------------------------------ over T
def _reduce_over_T(lw: Lowering, n: fx.Node, args: tuple, kwargs: dict, what: str, mean: bool) -> V:
    x = lw.tensor(n, args[0], what)
    dim = _dim_arg(args, kwargs)
    extra = {k for k, v in kwargs.items() if k != "dim" and v not in (False, None)}
    if x.layout != "TB" or dim not in (0, (0,), [0]) or extra or len(args) > 2:
        raise lw.unsupported(n, f"Tensor.{what}(dim={dim})", f"only the {what} over T (dim 0) of a [T, B, ...] tensor")
    x, w = per_step_scale_source(lw, n, x)
    return weighted_sum(lw, n, x, w / lw.T if mean else w)


@function(torch.sum)
@method("sum")
def sum_(lw, n, args, kwargs):
    return _reduce_over_T(lw, n, args, kwargs, "sum", mean=False)


@function(torch.mean)
@method("mean")
def mean(lw, n, args, kwargs):
    return _reduce_over_T(lw, n, args, kwargs, "mean", mean=True)


@function(torch.einsum)
def einsum(lw, n, args, kwargs):
    """``einsum('t...,t->...', x, w)``: a weighted sum over T."""
    eq, *ops = args
    if len(ops) == 1 and isinstance(ops[0], (tuple, list)):
        ops = list(ops[0])
    m = re.fullmatch(r"(\w)\.\.\.,(\w)->\.\.\.", str(eq).replace(" ", ""))
    if not m or m.group(1) != m.group(2) or len(ops) != 2 or not isinstance(ops[0], V) or not isinstance(ops[1], Const):
        raise lw.unsupported(n, f"einsum({eq!r})", "only 't...,t->...' (a weighted sum over T) of a [T, B, ...] tensor")
    x = lw.layout(n, ops[0], ("TB",), "einsum")
    w = ops[1].value
    if tuple(w.shape) != (lw.T,):
        raise lw.unsupported(n, f"einsum weights of shape {list(w.shape)}", f"expected [{lw.T}]")
    return weighted_sum(lw, n, x, w.detach().cpu().double().numpy())


# ------------------------------------------------------------------------------------------------ structure
@function(torch.cat, torch.concat)
def cat(lw, n, args, kwargs):
    a = _bind(lambda tensors, dim=0: None, args, kwargs)
    vs = [lw.tensor(n, t, "cat") for t in a["tensors"]]
    lay = {v.layout for v in vs}
    if len(lay) != 1 or lay <= {"S1", "TBL"}:
        raise lw.unsupported(n, f"cat of layouts {sorted(lay)}", "all inputs must share one layout (TB, F or S)")
    layout = lay.pop()
    rank = LEAD[layout] + len(vs[0].shape)
    axis = (a["dim"] % rank) - LEAD[layout]
    if axis < 0:
        raise lw.unsupported(n, f"cat(dim={a['dim']})", "concatenating over the T or batch axis")
    node = ir.Concat(name=lw.fn_name(n, "cat"), inputs=tuple(lw.value(n, v, "cat") for v in vs), axis=axis)
    return lw.v(lw.add(node), layout)


@function(F.interpolate)
def interpolate(lw, n, args, kwargs):
    a = _bind(F.interpolate, args, kwargs)
    x = lw.tensor(n, a["input"], "interpolate")
    return M.upsample(lw, n, x, a["scale_factor"], a["mode"], a["size"], lw.fn_name(n, "upsample"))


@function(F.max_pool2d, torch.max_pool2d)
def max_pool2d(lw, n, args, kwargs):
    a = _bind(
        lambda input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False: None,
        args,
        kwargs,
    )
    if a["return_indices"]:
        raise lw.unsupported(n, "max_pool2d(return_indices=True)")
    x = lw.tensor(n, a["input"], "max_pool2d")
    return M.pool2d(
        lw,
        n,
        x,
        lw.fn_name(n, "max_pool"),
        "max",
        a["kernel_size"],
        a["stride"],
        a["padding"],
        dilation=a["dilation"],
        ceil_mode=a["ceil_mode"],
    )


@function(F.avg_pool2d)
def avg_pool2d(lw, n, args, kwargs):
    a = _bind(
        lambda input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None: (
            None
        ),
        args,
        kwargs,
    )
    x = lw.tensor(n, a["input"], "avg_pool2d")
    return M.pool2d(
        lw,
        n,
        x,
        lw.fn_name(n, "avg_pool"),
        "avg",
        a["kernel_size"],
        a["stride"],
        a["padding"],
        ceil_mode=a["ceil_mode"],
        count_include_pad=a["count_include_pad"],
        divisor_override=a["divisor_override"],
    )


@function(F.adaptive_avg_pool2d)
def adaptive_avg_pool2d(lw, n, args, kwargs):
    a = _bind(lambda input, output_size: None, args, kwargs)
    x = lw.tensor(n, a["input"], "adaptive_avg_pool2d")
    return M.adaptive_avg_pool2d(lw, n, x, lw.fn_name(n, "avg_pool"), a["output_size"])


@function(drive_multi_step, drive_seq_to_ann)
def driven(lw, n, args, kwargs):
    """``functional.multi_step_forward`` / ``seq_to_ann_forward`` over submodules, as the containers."""
    x = lw.layout(n, lw.tensor(n, args[0], "multi_step_forward"), ("TB",), "multi_step_forward")
    fold = n.target is drive_seq_to_ann
    y = x.relayout("F") if fold else x
    for path in args[1]:
        y = M.lower_module(lw, path, lw.model.get_submodule(path), path, y, driven=not fold)
    return y.relayout("TB") if y.layout == "F" else y


# ------------------------------------------------------------------------------------------------ reshapes
@function(torch.flatten)
@method("flatten", "unflatten", "view", "reshape", "unsqueeze", "squeeze")
def reshape_like(lw, n, args, kwargs):
    """flatten / unflatten / view / reshape / (un)squeeze, classified by the example shapes: folding T into
    the batch and back (no node), adding or dropping the unit time axis of a static value (no node), or a
    per-sample reshape (a view)."""
    x = lw.tensor(n, args[0], "reshape")
    new = tuple(n.meta["val"].shape)
    T, B = lw.T, lw.B
    old = (
        {"S": (B,), "S1": (1, B), "TB": (T, B), "F": (T * B,), "TBL": (B,)}[x.layout]
        + x.shape
        + ((T,) if x.layout == "TBL" else ())
    )
    if x.pre is not None:
        raise lw.unsupported(n, f"reshaping an expanded tensor {list(old)} to {list(new)}")
    if x.layout == "S" and new[:2] == (1, B):
        return x.view(new[2:], "S1")
    if x.layout == "F" and new[:2] == (T, B):
        return x.view(new[2:], "TB")
    if x.layout == "TB" and new[:1] == (T * B,):
        return x.view(new[1:], "F")
    if x.layout == "S1" and new[:1] == (B,):
        return x.view(new[1:], "S")
    lead = LEAD[x.layout]
    if x.layout != "TBL" and new[:lead] == old[:lead]:
        return x.view(new[lead:])
    raise lw.unsupported(
        n,
        f"Tensor.{n.target if isinstance(n.target, str) else 'flatten'} from {list(old)} to {list(new)}",
        "only folding/unfolding T into the batch or reshaping each sample",
    )


@method("expand", "repeat")
def expand(lw, n, args, kwargs):
    """Over T: ``[1, B, ...] -> [T, B, ...]`` (a ``repeat`` node); over unit per-sample axes: a broadcast
    view (``temb[..., None, None].repeat(1, 1, H, W)`` before an add)."""
    x = lw.tensor(n, args[0], f"Tensor.{n.target}")
    val = tuple(n.meta["val"].shape)
    lead_old = LEAD[x.layout]
    if x.layout == "S1" and val[0] == lw.T and val[1:2] == (lw.B,):
        lw.need_T(n, val[0], f"Tensor.{n.target}")
        f = val[2:]
        rep = lw.add(ir.Repeat(name=lw.fn_name(n, "repeat"), inputs=(lw.value(n, x, "repeat over T"),)))
        return _broadcast(lw, n, lw.v(rep, "TB"), f)
    if x.layout == "S" and len(val) == 2 + len(x.shape) and val[0] == 1 and val[1] == lw.B:
        return _broadcast(lw, n, x.relayout("S1"), val[2:])  # repeat with one more axis: [1, B, ...]
    if x.layout in ("S", "F", "TB", "S1") and val[:lead_old] == _lead_shape(lw, x.layout):
        return _broadcast(lw, n, x, val[lead_old:])
    raise lw.unsupported(
        n, f"Tensor.{n.target} to {list(val)}", "only expanding a [1, B, ...] tensor over T, or unit per-sample axes"
    )


def _lead_shape(lw: Lowering, layout: str) -> tuple[int, ...]:
    return {"S": (lw.B,), "S1": (1, lw.B), "TB": (lw.T, lw.B), "F": (lw.T * lw.B,)}[layout]


def _broadcast(lw: Lowering, n: fx.Node, x: V, f: tuple[int, ...]) -> V:
    f = tuple(int(d) for d in f)
    if f == x.shape:
        return x
    base = x.pre if x.pre is not None else x.shape
    if len(base) != len(f) or any(b not in (1, d) for b, d in zip(base, f)):
        raise lw.unsupported(n, f"expanding {list(x.shape)} to {list(f)}", "only unit axes can be expanded")
    return V(x.name, x.layout, f, base)


@method("permute")
def permute(lw, n, args, kwargs):
    x = lw.tensor(n, args[0], "permute")
    rest = args[1:]
    perm = tuple(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else tuple(rest)
    r = LEAD[x.layout] + len(x.shape) if x.layout != "TBL" else 2 + len(x.shape)
    if x.layout == "TB" and perm == tuple(range(1, r)) + (0,):
        return lw.v(lw.value(n, x, "permute"), "TBL")
    if x.layout == "TBL" and perm == (r - 1,) + tuple(range(r - 1)):
        return x.relayout("TB")
    raise lw.unsupported(n, f"Tensor.permute{perm}", "only moving T to the last axis and back")


@function(operator.getitem)
def getitem(lw, n, args, kwargs):
    x, idx = args
    if isinstance(x, (tuple, list)):
        return x[idx]
    x = lw.tensor(n, x, "indexing")
    items = idx if isinstance(idx, tuple) else (idx,)
    full = slice(None)
    if x.layout in ("TB",) and items and isinstance(items[0], int):
        raise lw.unsupported(
            n,
            f"indexing step {items[0]} of a [T, B, ...] tensor",
            "drive single-step modules over T with MultiStepContainer or functional.multi_step_forward",
        )
    if all(i is None or (isinstance(i, slice) and i == full) or i is Ellipsis for i in items):
        return reshape_like(lw, n, (x,), {})
    raise lw.unsupported(n, f"indexing {idx}", "only inserting unit axes with None")
