"""Converted-SNN layers: a quantised ANN UNet turned into IF neurons (SDM §6, after Fast-SNN).

Each ``QuantReLU(bits, alpha)`` becomes an :class:`IFNeuron` with threshold ``theta = alpha``, membrane
initialised to ``theta/2`` and reset by subtraction; the network runs ``T = 2**bits - 1`` steps on the
same input ``(x, t)`` and the output (linear after the last neuron) is averaged over T. Per step::

    v += I;   s = [v >= theta];   v -= s*theta;   out = s*theta

With a constant input ``I`` (true in the first spiking layer, where ``U = T*I``) the spike count is
``clip(floor(T*I/theta + 1/2), 0, T)``, so the rate ``theta/T * count`` equals the QuantReLU output
exactly. Deeper layers see varying inputs and accumulate conversion error.

``signed=True`` adds Fast-SNN's inhibitory spike (on in the released SDM code, off in the paper): when
``v < 0`` and the neuron has fired more positive than negative spikes so far, it emits ``s = -1`` and
``v += theta``. With constant inputs it never fires, so first-layer exactness holds in both modes.

GroupNorm between spiking layers is not linear, so applying it to each step's spikes (``norm="step"``,
the literal conversion) does not give the GroupNorm of the rate, and the UNet's conversion error then
does not fall with T. ``norm="running"`` (an sdmc option, not in the paper) normalises step ``t`` with
the statistics of the running mean input ``x̄_t = mean_{s<=t} x_s`` (:class:`RunningGroupNorm`); it equals
GroupNorm for constant inputs and makes the error fall with T (measured in ``tests/test_convert.py``).

Layout: :class:`ConvertedSNN` repeats ``(x, t)`` T times along the batch axis and runs the network once
on ``[T*B, ...]`` (T folded into the batch, step-major); neurons and running norms view their input as
``[T, B, ...]``. This is the stateful step-by-step loop computed layer by layer, it keeps the QANN's
forward code unchanged, and it traces to the IR (:func:`sdmc.frontends.trace`): IF neurons become
``if`` nodes (``v_reset=None``, ``v_init=theta/2``, ``signed``) followed by ``scale(theta)``; the time
mean a ``membrane_readout(decay=1)`` and ``scale(1/T)``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..config import SNN_NORMS, ModelConfig
from ..errors import ConfigError
from .qann import QuantReLU, build_qann, qann_bits, qann_model_config


def if_step(
    v: torch.Tensor, count: torch.Tensor, inp: torch.Tensor, theta: torch.Tensor, signed: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One IF step with reset by subtraction; returns ``(spikes in {-1,0,1}, new v, new count)``."""
    v = v + inp
    s = (v >= theta).to(v.dtype)
    if signed:
        s = s - ((v < 0) & (count > 0)).to(v.dtype)
    v = v - s * theta
    return s, v, count + s


def _steps_view(x: torch.Tensor, T: int) -> torch.Tensor:
    if x.shape[0] % T:
        raise ConfigError(
            f"converted SNN layer: batch axis {x.shape[0]} is not a multiple of T={T} "
            "(inputs must be [T*B, ...], step-major)"
        )
    return x.reshape(T, x.shape[0] // T, *x.shape[1:])


class IFNeuron(nn.Module):
    """IF neuron replacing one QuantReLU: input ``[T*B, ...]`` (step-major), output ``s * alpha`` with
    ``alpha`` the threshold, ``v[-1] = alpha/2``, reset by subtraction (multi-step, stateless between calls)."""

    def __init__(self, alpha: float | torch.Tensor, bits: int, signed: bool = False, steps: int = 1) -> None:
        super().__init__()
        a = alpha.detach().clone() if isinstance(alpha, torch.Tensor) else torch.tensor(float(alpha))
        self.alpha = nn.Parameter(a, requires_grad=False)
        self.bits = int(bits)
        self.signed = bool(signed)
        self.steps = int(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = _steps_view(x, self.steps)
        theta = self.alpha.to(x.dtype)
        v = torch.full_like(xs[0], 0.5) * theta
        count = torch.zeros_like(xs[0])
        out = []
        for t in range(self.steps):
            s, v, count = if_step(v, count, xs[t], theta, self.signed)
            out.append(s)
        return torch.stack(out).reshape(x.shape) * theta

    def extra_repr(self) -> str:
        return f"theta={float(self.alpha):.4g}, signed={self.signed}, T={self.steps}"


def running_group_norm(
    x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """``y_t = weight * (x_t - mu(x̄_t)) / sqrt(var(x̄_t) + eps) + bias`` for ``x`` ``[T, B, C, ...]``,
    ``x̄_t = mean_{s<=t} x_s``, statistics per (step, sample, group)."""
    T, B, C = x.shape[:3]
    n = torch.arange(1, T + 1, dtype=x.dtype, device=x.device).reshape((T,) + (1,) * (x.dim() - 1))
    mean = (x.cumsum(0) / n).reshape(T, B, groups, -1)
    mu = mean.mean(-1, keepdim=True)
    var = mean.var(-1, unbiased=False, keepdim=True)
    y = ((x.reshape(T, B, groups, -1) - mu) / torch.sqrt(var + eps)).reshape(x.shape)
    shape = (1, 1, C) + (1,) * (x.dim() - 3)
    if weight is not None:
        y = y * weight.reshape(shape)
    return y + bias.reshape(shape) if bias is not None else y


class RunningGroupNorm(nn.Module):
    """GroupNorm with running-mean statistics over the steps (:func:`running_group_norm`) on ``[T*B, C, ...]``;
    parameter names as :class:`nn.GroupNorm`."""

    def __init__(self, gn: nn.GroupNorm, steps: int = 1) -> None:
        super().__init__()
        self.num_groups, self.eps, self.steps = gn.num_groups, gn.eps, int(steps)
        for name in ("weight", "bias"):  # None for nn.GroupNorm(affine=False): running_group_norm accepts that
            p = getattr(gn, name)
            self.register_parameter(name, None if p is None else nn.Parameter(p.detach().clone(), requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = running_group_norm(_steps_view(x, self.steps), self.num_groups, self.weight, self.bias, self.eps)
        return y.reshape(x.shape)


NORMS = SNN_NORMS


class ConvertedSNN(nn.Module):
    """``forward(x, t) = mean over T steps of net(x, t)``: ``net`` runs once on ``(x, t)`` repeated T times
    along the batch axis; ``config`` (arch ``qsnn``) when converted from an sdmc UNet."""

    def __init__(self, net: nn.Module, steps: int, config: ModelConfig | None = None) -> None:
        super().__init__()
        if int(steps) < 1:
            raise ConfigError(f"ConvertedSNN: steps must be >= 1, got {steps}")
        self.net = net
        self.steps = int(steps)
        if config is not None:
            self.config = config

    @property
    def timestep(self) -> int:
        """T, the number of SNN steps (what :func:`sdmc.frontends.trace` reads)."""
        return self.steps

    def neurons(self) -> list[IFNeuron]:
        return [m for m in self.net.modules() if isinstance(m, IFNeuron)]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        T = self.steps
        xs = x.unsqueeze(0).expand(T, *x.shape).flatten(0, 1)
        ts = t.unsqueeze(0).expand(T, *t.shape).flatten(0, 1)
        y = self.net(xs, ts)
        return y.reshape(T, -1, *y.shape[1:]).mean(0)


def convert(qann: nn.Module, signed: bool = False, steps: int | None = None, norm: str = "step") -> ConvertedSNN:
    """A converted copy of ``qann``: every QuantReLU -> IFNeuron(theta=alpha), ``T = 2**bits - 1`` by default.

    ``norm="running"`` also replaces every GroupNorm by a :class:`RunningGroupNorm`.  A QANN UNet with an
    sdmc ``config`` gives a model with ``config.arch == "qsnn"``.
    """
    if norm not in NORMS:
        raise ConfigError(f"convert: norm must be one of {NORMS}, got {norm!r}")
    bits = qann_bits(qann)
    T = 2**bits - 1 if steps is None else int(steps)
    if T < 1:
        raise ConfigError(f"convert: steps must be >= 1, got {steps}")
    net = copy.deepcopy(qann)
    for _, mod in list(net.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, QuantReLU):
                setattr(mod, cname, IFNeuron(child.alpha.detach(), child.bits, signed, T))
            elif norm == "running" and isinstance(child, nn.GroupNorm):
                setattr(mod, cname, RunningGroupNorm(child, T))
    cfg = getattr(qann, "config", None)
    if isinstance(cfg, ModelConfig):
        cfg = ModelConfig(
            **{
                **qann_model_config(cfg, bits).to_dict(),
                "arch": "qsnn",
                "snn_steps": T,
                "signed_spikes": bool(signed),
                "snn_norm": norm,
            }
        )
    else:
        cfg = None
    return ConvertedSNN(net, T, cfg).eval()


def build_converted(cfg: ModelConfig) -> ConvertedSNN:
    """The ``qsnn`` model of ``cfg`` (clips ``alpha_init`` until weights are loaded)."""
    if cfg.arch != "qsnn":
        raise ConfigError(f"build_converted needs arch 'qsnn', got {cfg.arch!r}")
    return convert(build_qann(cfg), signed=cfg.signed_spikes, steps=cfg.snn_steps, norm=cfg.snn_norm)


__all__ = [
    "NORMS",
    "ConvertedSNN",
    "IFNeuron",
    "RunningGroupNorm",
    "build_converted",
    "convert",
    "if_step",
    "running_group_norm",
]
