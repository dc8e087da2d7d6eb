"""The multi-step IF/LIF neuron as Triton kernels (GPU), registered as ``torch.ops.sdmc.multistep_neuron``.

Same semantics and the same floating-point operation order as :func:`.kernels.neuron_forward` and
``_neuron_backward`` (see :mod:`.kernels` for the equations), so on a GPU the spikes are those of the torch
kernel and the gradients agree to rounding:

forward   one program per ``BLOCK`` neurons runs all ``T`` steps with the membrane in registers (fp32), writes
          the spikes (in the current's dtype: exact 0/1) and, when a gradient is needed, the charged potentials
          ``h`` (fp32, the one tensor the backward needs);
backward  one program per ``BLOCK`` neurons runs the recursion in reverse time with the ATan surrogate,
          ``g[t] = gs[t] sg[t] + (dh/dv) g[t+1] (dv/dh)[t]``, the gradient of step ``t+1`` carried in registers.

The op is a ``torch.library.custom_op`` with a fake (meta) implementation and a registered autograd formula, so
``torch.compile`` traces through it and CUDA graphs capture it.  On CPU tensors the op runs the torch kernel.
``TRITON_INTERPRET=1`` runs the Triton kernels on the CPU (how the tests check them without a GPU):
:func:`triton_forward` / :func:`triton_backward` read it when they build the kernels.
"""

from __future__ import annotations

import functools
import math
import os

import torch

from . import kernels as K

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the CUDA torch wheels bring triton
    triton = tl = None

BLOCK = 1024
KINDS = {"if": 0, "lif": 1}


def available() -> bool:
    """Triton imports (the GPU path and the interpreter need it)."""
    return triton is not None


def _fwd(
    x_ptr,
    s_ptr,
    h_ptr,
    N,
    T,
    threshold,
    v_reset,
    tau,
    KIND: tl.constexpr,
    HARD: tl.constexpr,
    DECAY_INPUT: tl.constexpr,
    SAVE_H: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    r = v_reset if HARD else 0.0
    v = tl.full([BLOCK], r, tl.float32)
    for t in range(T):
        x = tl.load(x_ptr + t * N + offs, mask=mask, other=0.0).to(tl.float32)
        if KIND == 0:
            h = v + x
        elif DECAY_INPUT:
            h = v + tl.math.div_rn(x - (v - r), tau)
        else:
            h = v - tl.math.div_rn(v - r, tau) + x
        fire = h >= threshold
        tl.store(s_ptr + t * N + offs, tl.where(fire, 1.0, 0.0).to(s_ptr.dtype.element_ty), mask=mask)
        if SAVE_H:
            tl.store(h_ptr + t * N + offs, h, mask=mask)
        if HARD:
            v = tl.where(fire, r, h)
        else:
            v = h - tl.where(fire, threshold, 0.0)


def _bwd(
    gs_ptr,
    h_ptr,
    gx_ptr,
    N,
    T,
    threshold,
    v_reset,
    c,
    half_alpha,
    dhdv,
    out_scale,
    HARD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    g_next = tl.full([BLOCK], 0.0, tl.float32)
    for i in range(T):
        t = T - 1 - i
        h = tl.load(h_ptr + t * N + offs, mask=mask, other=0.0).to(tl.float32)
        gs = tl.load(gs_ptr + t * N + offs, mask=mask, other=0.0).to(tl.float32)
        d = (h - threshold) * c
        sg = tl.math.div_rn(1.0, d * d + 1.0) * half_alpha  # ds/dh, ATan
        g = gs * sg
        if i > 0:  # t < T-1: the membrane carries the gradient of step t+1 back through the reset
            if HARD:
                dv = sg * (-(h - v_reset)) + (h < threshold).to(tl.float32)
            else:
                dv = sg * (-threshold) + 1.0
            g = g + dhdv * g_next * dv
        g_next = g
        tl.store(gx_ptr + t * N + offs, (g * out_scale).to(gx_ptr.dtype.element_ty), mask=mask)


@functools.cache
def _kernels(interpret: bool):
    """The two kernels jit-compiled (``interpret``: Triton's CPU interpreter, chosen when a kernel is decorated)."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        return triton.jit(_fwd), triton.jit(_bwd)
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_forward(x, T, kind, threshold, v_reset, tau, decay_input, save_h):
    """Spikes ``[T*B, ...]`` (dtype of ``x``) and, with ``save_h``, ``h`` (fp32) from the Triton forward kernel."""
    x = x.contiguous()
    N = x.numel() // T
    s = torch.empty_like(x)
    h = torch.empty(x.shape, dtype=torch.float32, device=x.device) if save_h else s
    fwd, _ = _kernels(_interpret())
    grid = (max(1, math.ceil(N / BLOCK)),)
    hard = v_reset is not None
    fwd[grid](
        x, s, h, N, T, float(threshold), float(v_reset or 0.0), float(tau),
        KINDS[kind], hard, bool(decay_input), bool(save_h), BLOCK,
    )  # fmt: skip
    return s, (h if save_h else None)


def triton_backward(gs, h, T, kind, threshold, v_reset, tau, decay_input, alpha):
    """``dL/dx`` (dtype of ``gs``) from ``dL/ds`` and the saved ``h`` with the Triton backward kernel."""
    gs = gs.contiguous()
    N = gs.numel() // T
    gx = torch.empty_like(gs)
    _, bwd = _kernels(_interpret())
    dhdv = 1.0 if kind == "if" else 1.0 - 1.0 / tau
    out_scale = 1.0 / tau if kind != "if" and decay_input else 1.0
    grid = (max(1, math.ceil(N / BLOCK)),)
    bwd[grid](
        gs, h, gx, N, T, float(threshold), float(v_reset or 0.0), math.pi / 2 * alpha, alpha / 2,
        dhdv, out_scale, v_reset is not None, BLOCK,
    )  # fmt: skip
    return gx


def _use_triton(x: torch.Tensor) -> bool:
    return (x.is_cuda or _interpret()) and available()


# ------------------------------------------------------------------------------------------ the custom op
@torch.library.custom_op("sdmc::multistep_neuron", mutates_args=())
def multistep_neuron(
    x: torch.Tensor,
    T: int,
    kind: str,
    threshold: float,
    v_reset: float | None,
    tau: float,
    decay_input: bool,
    alpha: float,
    save_h: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spikes and (``save_h``) the charged potentials; ``h`` is an empty tensor when not saved."""
    if _use_triton(x):
        s, h = triton_forward(x, T, kind, threshold, v_reset, tau, decay_input, save_h)
    else:
        s, h = K.neuron_forward(x, T, kind, threshold, v_reset, tau, decay_input, save_h=save_h)
    return s, (h if h is not None else x.new_empty(0, dtype=torch.float32))


@multistep_neuron.register_fake
def _(x, T, kind, threshold, v_reset, tau, decay_input, alpha, save_h):
    h = torch.empty_like(x, dtype=torch.float32) if save_h else x.new_empty(0, dtype=torch.float32)
    return torch.empty_like(x), h


@torch.library.custom_op("sdmc::multistep_neuron_backward", mutates_args=())
def multistep_neuron_backward(
    gs: torch.Tensor,
    h: torch.Tensor,
    T: int,
    kind: str,
    threshold: float,
    v_reset: float | None,
    tau: float,
    decay_input: bool,
    alpha: float,
) -> torch.Tensor:
    if _use_triton(gs):
        return triton_backward(gs, h, T, kind, threshold, v_reset, tau, decay_input, alpha)
    return K._neuron_backward(gs, h, T, kind, threshold, v_reset, tau, decay_input, alpha).to(gs.dtype)


@multistep_neuron_backward.register_fake
def _(gs, h, T, kind, threshold, v_reset, tau, decay_input, alpha):
    return torch.empty_like(gs)


def _setup(ctx, inputs, output):
    x, T, kind, threshold, v_reset, tau, decay_input, alpha, save_h = inputs
    ctx.save_for_backward(output[1])
    ctx.cfg = (T, kind, threshold, v_reset, tau, decay_input, alpha)


def _backward(ctx, gs, gh):
    (h,) = ctx.saved_tensors
    return (multistep_neuron_backward(gs, h, *ctx.cfg),) + (None,) * 8


multistep_neuron.register_autograd(_backward, setup_context=_setup)


def neuron(x, T, kind, threshold, v_reset, tau=2.0, decay_input=True, alpha=2.0) -> torch.Tensor:
    """Spikes of a multi-step IF/LIF on folded ``x`` through the custom op (differentiable, ATan surrogate)."""
    save = torch.is_grad_enabled() and x.requires_grad
    return multistep_neuron(
        x, T, kind, float(threshold), None if v_reset is None else float(v_reset), float(tau), bool(decay_input),
        float(alpha), save,
    )[0]  # fmt: skip
