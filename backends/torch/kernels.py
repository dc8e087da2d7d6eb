"""Tensor kernels of the torch backend: the fused multi-step neuron and the per-op functions the generated
forward calls.

Layout: a per-step value is held *folded*, ``[T*B, *shape]`` with T outermost (what convolutions want);
a static value is ``[B, *shape]``.  ``steps(x, T)`` views a folded value as ``[T, B, *shape]``.

The neuron (spikingjelly multi-step semantics, ``h[t]`` the charged potential, ``r = v_reset or 0``)::

    IF                 h[t] = v[t-1] + x[t]
    LIF, decay_input   h[t] = v[t-1] + (x[t] - (v[t-1] - r)) / tau
    LIF, otherwise     h[t] = v[t-1] - (v[t-1] - r) / tau + x[t]
    s[t] = (h[t] >= theta);   v[t] = r where s[t] else h[t]   (hard)  |  v[t] = h[t] - theta s[t]  (soft)

Surrogate gradient ATan: ``ds/dh = alpha/2 / (1 + (pi/2 alpha (h - theta))^2)``; the gradient flows through
the reset (``detach_reset=False``): hard ``dv/dh = (1 - s) + (r - h) ds/dh``, soft ``dv/dh = 1 - theta ds/dh``.
:class:`MultiStepNeuron` runs one loop over T with in-place ops into preallocated buffers and saves only
``h`` (one tensor the size of the input) for a backward pass that runs the recursion in reverse.
The Sigmoid surrogate (``ds/dh = alpha sig(alpha d) (1 - sig(alpha d))``, ``d = h - theta``) and
``detach_reset`` (no gradient through ``s`` in the reset) run in :func:`neuron_reference`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "steps",
    "neuron_forward",
    "MultiStepNeuron",
    "multistep_neuron",
    "neuron_reference",
    "atan_surrogate",
    "sigmoid_surrogate",
]


def steps(x: torch.Tensor, T: int) -> torch.Tensor:
    """View a folded per-step value ``[T*B, ...]`` as ``[T, B, ...]``."""
    return x.unflatten(0, (T, -1))


def atan_surrogate(d: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha/2 / (1 + (pi/2 alpha d)^2)`` (spikingjelly ``surrogate.ATan``'s derivative)."""
    return alpha / 2 / (1 + (math.pi / 2 * alpha * d).pow(2))


def sigmoid_surrogate(d: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha sig(alpha d) (1 - sig(alpha d))`` (spikingjelly ``surrogate.Sigmoid``'s derivative)."""
    sg = torch.sigmoid(alpha * d)
    return alpha * sg * (1 - sg)


SURROGATES = {"atan": atan_surrogate, "sigmoid": sigmoid_surrogate}


def _charge(
    kind: str,
    v: torch.Tensor,
    xt: torch.Tensor,
    r: float,
    tau: float,
    decay_input: bool,
    tmp: torch.Tensor | None,
    h: torch.Tensor,
    first: bool,
) -> None:
    """``h <- charge(v, x[t])`` (``h`` may be ``v`` itself); at the first step ``v`` is the constant ``r``."""
    if kind == "if":
        if first:
            torch.add(xt, r, out=h) if r else h.copy_(xt)
        else:
            torch.add(v, xt, out=h)
    elif decay_input:  # v + (x - (v - r)) / tau;   first step: r + x / tau
        if first:
            torch.div(xt, tau, out=h)
            if r:
                h.add_(r)
            return
        torch.sub(v, r, out=tmp)
        torch.sub(xt, tmp, out=tmp)
        tmp.div_(tau)
        torch.add(v, tmp, out=h)
    else:  # v - (v - r) / tau + x;   first step: r + x
        if first:
            torch.add(xt, r, out=h) if r else h.copy_(xt)
            return
        torch.sub(v, r, out=tmp)
        tmp.div_(tau)
        torch.sub(v, tmp, out=h)
        h.add_(xt)


@torch.no_grad()
def neuron_forward(
    x: torch.Tensor,
    T: int,
    kind: str,
    threshold: float,
    v_reset: float | None,
    tau: float = 2.0,
    decay_input: bool = True,
    save_h: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Spikes ``[T*B, ...]`` (dtype and memory format of ``x``) and, with ``save_h``, the charged potentials.

    Three passes over the state per step (charge, fire, reset; no reset after the last step), all into
    preallocated buffers; spikes are written straight into the float output (exact 0/1 in any float dtype).
    The membrane state is fp32 for bf16 / fp16 inputs (:func:`state_dtype`)."""
    if x.shape[0] % T:
        raise ValueError(f"neuron: leading dim {x.shape[0]} is not a multiple of T={T}")
    N = x.shape[0] // T
    r = 0.0 if v_reset is None else float(v_reset)
    sd = state_dtype(x.dtype)  # membranes of bf16 / fp16 currents are kept in fp32
    out = torch.empty_like(x)
    x = x.to(sd)  # (a no-op in fp32 / fp64) every step's charge computed in the state dtype
    H = torch.empty_like(x, dtype=sd) if save_h else None
    v = torch.empty_like(x[:N], dtype=sd)
    mask = torch.empty_like(v, dtype=torch.bool) if v_reset is not None and r != 0.0 else None
    tmp = torch.empty_like(v) if kind != "if" else None
    for t in range(T):
        sl = slice(t * N, (t + 1) * N)
        h = H[sl] if H is not None else v
        _charge(kind, v, x[sl], r, tau, decay_input, tmp, h, t == 0)
        st = out[sl]
        torch.ge(h, threshold, out=st)
        if t == T - 1:
            break
        if v_reset is None:  # v = h - theta s
            torch.sub(h, st, alpha=threshold, out=v)
        elif mask is None:  # v = h - h s  (exactly h or 0)
            torch.addcmul(h, h, st, value=-1, out=v)
        else:
            torch.ge(h, threshold, out=mask)
            if h is not v:
                v.copy_(h)
            v.masked_fill_(mask, r)
    return out, H


@torch.no_grad()
def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The membrane / accumulator dtype for currents of ``dtype``: fp32 for bf16 and fp16, else ``dtype``."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _neuron_backward(
    gs: torch.Tensor,
    H: torch.Tensor,
    T: int,
    kind: str,
    threshold: float,
    v_reset: float | None,
    tau: float,
    decay_input: bool,
    alpha: float,
) -> torch.Tensor:
    """``dL/dx`` from ``dL/ds`` and the saved ``h``.  The pointwise parts run once over all steps; the reverse
    recursion ``g[t] = gs[t] sg[t] + (dh/dv) g[t+1] (dv/dh)[t]`` is one fused ``addcmul_`` per step."""
    N = H.shape[0] // T
    M = (T - 1) * N
    gs = gs.contiguous(memory_format=_format_of(H))
    sg = torch.sub(H, threshold)
    sg.mul_(math.pi / 2 * alpha).square_().add_(1).reciprocal_().mul_(alpha / 2)  # ds/dh
    gx = torch.mul(gs, sg)
    if T > 1:
        dv = sg[:M]  # dv[t]/dh[t] for t < T-1, in place over ds/dh (no longer needed)
        if v_reset is None:
            dv.mul_(-threshold).add_(1)
        else:
            dv.mul_(torch.sub(H[:M], float(v_reset)).neg_())
            dv.add_(torch.lt(H[:M], threshold))
        dhdv = 1.0 if kind == "if" else 1.0 - 1.0 / tau
        for t in reversed(range(T - 1)):
            gx[t * N : (t + 1) * N].addcmul_(gx[(t + 1) * N : (t + 2) * N], dv[t * N : (t + 1) * N], value=dhdv)
    if kind != "if" and decay_input:
        gx.mul_(1.0 / tau)
    return gx


def _format_of(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class MultiStepNeuron(torch.autograd.Function):
    """Autograd wrapper of :func:`neuron_forward`; saves the charged potentials ``h`` only."""

    @staticmethod
    def forward(ctx, x, T, kind, threshold, v_reset, tau, decay_input, alpha):
        s, H = neuron_forward(x, T, kind, threshold, v_reset, tau, decay_input, save_h=True)
        ctx.save_for_backward(H)
        ctx.cfg = (T, kind, threshold, v_reset, tau, decay_input, alpha)
        return s

    @staticmethod
    def backward(ctx, gs):
        (H,) = ctx.saved_tensors
        return (_neuron_backward(gs, H, *ctx.cfg).to(gs.dtype),) + (None,) * 7


def multistep_neuron(
    x: torch.Tensor,
    T: int,
    kind: str,
    threshold: float,
    v_reset: float | None,
    tau: float = 2.0,
    decay_input: bool = True,
    alpha: float = 2.0,
) -> torch.Tensor:
    """Spikes of a multi-step IF/LIF on folded ``x``; differentiable (ATan surrogate) when grad is needed."""
    if torch.is_grad_enabled() and x.requires_grad:
        return MultiStepNeuron.apply(x, T, kind, float(threshold), v_reset, float(tau), bool(decay_input), float(alpha))
    return neuron_forward(x, T, kind, float(threshold), v_reset, float(tau), bool(decay_input))[0]


class _Heaviside(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d, alpha, surrogate="atan"):
        ctx.save_for_backward(d)
        ctx.alpha, ctx.surrogate = alpha, surrogate
        return (d >= 0).to(d.dtype)

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved_tensors
        return g * SURROGATES[ctx.surrogate](d, ctx.alpha), None, None


def neuron_reference(
    x: torch.Tensor,
    T: int,
    kind: str,
    threshold: float,
    v_reset: float | None,
    tau: float = 2.0,
    decay_input: bool = True,
    alpha: float = 2.0,
    w: torch.Tensor | None = None,
    v_init: float | None = None,
    signed: bool = False,
    surrogate: str = "atan",
    detach_reset: bool = False,
) -> torch.Tensor:
    """The same neuron in plain differentiable torch ops, step by step (PLIF: ``1/tau = sigmoid(w)``, learnable).

    Slow; the executor uses it for PLIF, an initial membrane ``v_init``, signed IF spikes (the inhibitory
    spike has no surrogate gradient), the Sigmoid surrogate and ``detach_reset`` (the reset uses ``s``
    without its gradient, as spikingjelly), and the tests use it as an oracle for :class:`MultiStepNeuron`.
    """
    r = 0.0 if v_reset is None else float(v_reset)
    xs = steps(x, T)
    v = torch.full_like(xs[0], r if v_init is None else float(v_init))
    count = torch.zeros_like(xs[0]) if signed else None
    q = torch.sigmoid(w.reshape(())) if kind == "plif" else None
    out = []
    for t in range(T):
        if kind == "if":
            h = v + xs[t]
        elif kind == "lif":
            h = v + (xs[t] - (v - r)) / tau if decay_input else v - (v - r) / tau + xs[t]
        else:
            h = v + (xs[t] - (v - r)) * q if decay_input else v - (v - r) * q + xs[t]
        s = _Heaviside.apply(h - threshold, float(alpha), surrogate)
        if signed:
            s = s - ((h < 0) & (count > 0)).to(h.dtype)
            count = count + s
        sr = s.detach() if detach_reset else s
        v = h - sr * threshold if v_reset is None else h * (1 - sr) + r * sr
        out.append(s)
    return torch.stack(out).flatten(0, 1)


# ------------------------------------------------------------------------------------------ op kernels
def pool2d(x, mode, kernel, stride, padding, count_include_pad):
    """Max / avg / sum pooling (:mod:`sdmc.ir.pool`) of a folded or static ``[N, C, H, W]`` value."""
    if mode == "max":
        return F.max_pool2d(x, kernel, stride, padding)
    div = 1 if mode == "sum" else None
    return F.avg_pool2d(x, kernel, stride, padding, count_include_pad=count_include_pad, divisor_override=div)


def conv2d(x, w, b, stride, padding, dilation, groups):
    """``F.conv2d`` on a folded or static value."""
    return F.conv2d(x, w, b, stride, padding, dilation, groups)


class SpikeConv2d(torch.autograd.Function):
    """``F.conv2d`` on spikes (exactly 0/1) that keeps its input for the backward as uint8, a quarter of fp32
    (the weight gradient needs it); the backward is the same ``aten.convolution_backward`` autograd runs for
    ``F.conv2d``, in the dtype the forward computed in (bf16 under autocast)."""

    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation, groups):
        y = F.conv2d(x, w, b, stride, padding, dilation, groups)
        ctx.save_for_backward(x.to(torch.uint8), w)
        ctx.cfg = (stride, padding, dilation, groups, None if b is None else b.dtype, x.dtype, y.dtype)
        return y

    @staticmethod
    def backward(ctx, gy):
        xs, w = ctx.saved_tensors
        stride, padding, dilation, groups, b_dtype, x_dtype, cdt = ctx.cfg
        gx, gw, gb = torch.ops.aten.convolution_backward(
            gy.to(cdt),
            xs.to(cdt),
            w.to(cdt),
            None if b_dtype is None else [w.shape[0]],
            list(stride),
            list(padding),
            list(dilation),
            False,
            [0, 0],
            groups,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], b_dtype is not None and ctx.needs_input_grad[2]],
        )
        cast = lambda g, dt: None if g is None else g.to(dt)  # noqa: E731
        return cast(gx, x_dtype), cast(gw, w.dtype), cast(gb, b_dtype), None, None, None, None


def spike_conv2d(x, w, b, stride, padding, dilation, groups):
    """:func:`conv2d` of a spike input; when a gradient is needed, through :class:`SpikeConv2d` (uint8 saved)."""
    if torch.is_grad_enabled() and (w.requires_grad or x.requires_grad or (b is not None and b.requires_grad)):
        return SpikeConv2d.apply(x, w, b, stride, padding, dilation, groups)
    return F.conv2d(x, w, b, stride, padding, dilation, groups)


def conv3d_t1(x, w, b, stride, padding):
    """The kernel-(kh, kw, 1) Conv3d as a 2-d conv per step (weight ``[O, C, kh, kw, 1]``)."""
    return F.conv2d(x, w.squeeze(-1), b, stride, padding)


def scaled_conv2d(x, w, scale, bias, T, static_in, stride, padding, dilation, groups):
    """``y[t] = scale[t] conv(x[t], W) + b[t]`` -> folded ``[T*B, O, H, W]``; a static ``x`` is convolved once."""
    return _scale_and_bias(F.conv2d(x, w, None, stride, padding, dilation, groups), x, scale, bias, T, static_in)


def _scale_and_bias(y, x, scale, bias, T, static_in):
    """``y[t] scale[t] + b[t]`` for the convolution output ``y`` of ``x`` (folded, or static when ``static_in``)."""
    O = y.shape[1]
    if static_in:
        y = y.unsqueeze(0)
    else:
        y = steps(y, T)
    s = scale.reshape(T, 1, 1, 1, 1) if scale is not None else None
    b = None if bias is None else (bias.reshape(T, 1, O, 1, 1) if bias.dim() == 2 else bias.reshape(1, 1, O, 1, 1))
    if static_in:
        if s is not None:
            y = y * s
        if b is not None:
            y = y + b
        out = torch.empty(
            (T * y.shape[1],) + tuple(y.shape[2:]), dtype=y.dtype, device=y.device, memory_format=_format_of(x)
        )
        steps(out, T).copy_(y.expand(T, *y.shape[1:]))
        return out
    if torch.is_grad_enabled():
        if s is not None:
            y = y * s
        if b is not None:
            y = y + b
        return y.flatten(0, 1)
    if s is not None and b is not None:
        torch.addcmul(b, y, s, out=y)
    elif s is not None:
        y.mul_(s)
    elif b is not None:
        y.add_(b)
    return y.flatten(0, 1)


def linear(x, w, b):
    return F.linear(x, w, b)


def tsm_scale(x, p, T, static_in):
    """``y[t] = p[t] x[t]`` -> folded."""
    xs = x.unsqueeze(0) if static_in else steps(x, T)
    return (xs * p.reshape((T,) + (1,) * (xs.dim() - 1))).flatten(0, 1)


def batchnorm(x, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps):
    """``nn.BatchNorm`` semantics on ``[N, C, ...]`` (training: batch statistics over every axis but C, running
    statistics updated in place with ``momentum`` or the cumulative average when ``momentum`` is None)."""
    factor = 0.0
    if training:
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        factor = (1.0 / float(num_batches_tracked)) if momentum is None else momentum
    return F.batch_norm(x, running_mean, running_var, weight, bias, training, factor, eps)


def groupnorm(x, weight, bias, groups, eps, running, T):
    """``nn.GroupNorm`` per (step, sample) of a folded or static value; ``running``: statistics of the running
    mean over the steps so far (folded per-step input)."""
    if not running:
        return F.group_norm(x, groups, weight, bias, eps)
    xs = steps(x, T)
    n = torch.arange(1, T + 1, dtype=x.dtype, device=x.device).reshape((T,) + (1,) * (xs.dim() - 1))
    m = (xs.cumsum(0) / n).reshape(T, xs.shape[1], groups, -1)
    mu, var = m.mean(-1, keepdim=True), m.var(-1, unbiased=False, keepdim=True)
    y = ((xs.reshape(m.shape) - mu) / torch.sqrt(var + eps)).reshape(x.shape)
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(shape)
    return y + bias.reshape(shape) if bias is not None else y


def _lead(x, per_step: bool, T: int, ps_out: bool, rank: int, x_rank: int):
    v = steps(x, T) if per_step else (x.unsqueeze(0) if ps_out else x)
    if x_rank < rank:
        lead = v.shape[: v.dim() - x_rank]
        v = v.reshape(lead + (1,) * (rank - x_rank) + v.shape[v.dim() - x_rank :])
    return v


def binary(op, a, b, T, a_ps, b_ps, ra, rb):
    """Numpy-style broadcasting of per-sample shapes; a static operand broadcasts over T."""
    op = torch.add if op == "add" else torch.mul
    ps = a_ps or b_ps
    rank = max(ra, rb)
    if a_ps == b_ps and ra == rb:
        return op(a, b)
    y = op(_lead(a, a_ps, T, ps, rank, ra), _lead(b, b_ps, T, ps, rank, rb))
    return y.flatten(0, 1) if ps else y


def concat(xs, pss, T, axis):
    """Channel (per-sample ``axis``) concatenation; static operands are repeated over T when needed."""
    ps = any(pss)
    parts = []
    for x, p in zip(xs, pss):
        if ps and not p:
            x = x.unsqueeze(0).expand(T, *x.shape).flatten(0, 1)
        parts.append(x)
    return torch.cat(parts, dim=1 + axis)


def upsample(x, scale):
    return F.interpolate(x, scale_factor=scale, mode="nearest")


def reshape(x, shape):
    return x.reshape((x.shape[0],) + tuple(shape))


def repeat(x, T):
    """Static ``[B, ...]`` -> folded per-step ``[T*B, ...]`` (one copy, memory format kept)."""
    return x.unsqueeze(0).expand(T, *x.shape).flatten(0, 1).contiguous(memory_format=_format_of(x))


def embedding(i, w):
    if not torch.compiler.is_compiling() and i.numel() and (int(i.min()) < 0 or int(i.max()) >= w.shape[0]):
        raise IndexError(
            f"embedding index out of range [0, {w.shape[0]}): got values in [{int(i.min())}, {int(i.max())}]"
        )
    return F.embedding(i, w)


def membrane_readout(x, T, decay):
    """``y = sum_t decay^(T-1-t) x[t]`` on folded ``x`` -> static (accumulated in fp32 for bf16 / fp16 ``x``)."""
    xs = steps(x, T)
    if state_dtype(x.dtype) != x.dtype:
        xs = xs.to(state_dtype(x.dtype))
    y = xs[0] * (float(decay) ** (T - 1))
    for t in range(1, T):
        y = y + xs[t] * (float(decay) ** (T - 1 - t))
    return y


def swish(x):
    return F.silu(x)


def sigmoid(x):
    return torch.sigmoid(x)


def scale(x, factor):
    return x * factor


def fold(x, T):
    """Graph input ``[T, B, ...]`` -> folded."""
    if x.shape[0] != T:
        raise ValueError(f"per-step input has {x.shape[0]} steps, expected T={T}")
    return x.flatten(0, 1)


def unfold(x, T):
    return steps(x, T)


# ------------------------------------------------------------------------------------------ int8 spike convs
class Int8Conv(torch.nn.Module):
    """A spike-input convolution as an int8 x int8 -> int32 GEMM, dequantised once: ``y = s_o * acc + b``.

    ``w_int`` ``[O, C/groups, kh, kw]`` int8 and ``w_scale`` ``[O]`` (float64) are buffers (they travel with
    ``state_dict``); the oneDNN-packed weight is built on first use and never saved.  Input: spikes, exactly 0/1,
    in any float dtype.  Float32 / bfloat16 outputs run oneDNN's int8 convolution (s32 accumulator, then one
    multiply by ``s_o`` in fp32); a float64 output computes the same int32 sums exactly through a float64
    convolution of the integer values (the reference the tests compare the fast path with)."""

    def __init__(
        self, w_int: torch.Tensor, w_scale: torch.Tensor, stride, padding, dilation, groups: int, dtype=None
    ) -> None:
        super().__init__()
        self.dtype = dtype  # output dtype (default: the input's; a uint8 input needs it)
        self.register_buffer("w_int", w_int.to(torch.int8))
        self.register_buffer("w_scale", w_scale.to(torch.float64))
        self.geom = (list(stride), list(padding), list(dilation), int(groups))
        self._packed: torch.Tensor | None = None
        self._zp: torch.Tensor | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_packed"] = None  # an opaque oneDNN tensor: rebuilt on first use
        return state

    def _onednn(self, x: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        stride, padding, dilation, groups = self.geom
        if self._packed is None:
            self._packed = torch.ops.onednn.qconv_prepack(
                self.w_int, self.w_scale, 1.0, 0, stride, padding, dilation, groups, None
            )
            self._zp = torch.zeros(self.w_int.shape[0], dtype=torch.int64)
        return torch.ops.onednn.qconv2d_pointwise(
            x,
            1.0,
            0,
            self._packed,
            self.w_scale,
            self._zp,
            None if bias is None else bias.float(),
            stride,
            padding,
            dilation,
            groups,
            1.0,
            0,
            dtype,
            "none",
            [],
            "",
        )

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: spikes as uint8 (:func:`to_uint8`) or in a float dtype; returns ``self.dtype`` (or ``x``'s)."""
        stride, padding, dilation, groups = self.geom
        dtype = self.dtype or x.dtype
        if dtype in (torch.float32, torch.bfloat16) and x.device.type == "cpu":
            return self._onednn(to_uint8(x), bias, dtype)
        acc = F.conv2d(x.double(), self.w_int.double(), None, stride, padding, dilation, groups)  # exact integers
        y = acc * self.w_scale.reshape(1, -1, 1, 1)
        if bias is not None:
            y = y + bias.double().reshape(1, -1, 1, 1)
        return y.to(dtype)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Spikes (exactly 0/1) as uint8, memory format kept (the int8 convolutions' input)."""
    return x if x.dtype == torch.uint8 else x.to(torch.uint8)
