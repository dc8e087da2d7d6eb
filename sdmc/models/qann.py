"""Quantised-activation ANN UNet, the source network of ANN->SNN conversion (SDM §6, Fast-SNN).

Every Swish of the pytorch-ddpm UNet (time embedding, ResBlocks, tail) becomes a :class:`QuantReLU`
with its own learnable clip ``alpha``; weights stay full precision. With ``n = 2**bits - 1`` levels::

    Q(x) = alpha / n * clip(floor(n * x / alpha + 1/2), 0, n)

``floor(z + 1/2)`` (round half up) is used instead of torch's round-half-even so that the IF neuron of
:mod:`sdmc.models.converted` reproduces ``Q`` exactly at ties too.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from .ann_unet import ANNUNet
from .spiking_unet import Swish


def quant_relu(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """``alpha/n * clip(floor(n*x/alpha + 1/2), 0, n)``, ``n = 2**bits - 1``, straight-through rounding.

    Gradients: identity through the rounding; ``alpha`` receives ``(Q - x)/alpha`` inside the range and
    1 where ``x`` is clipped at the top (LSQ/PACT-style).
    """
    n = 2**bits - 1
    z = torch.clamp(x / alpha, 0.0, 1.0) * n
    zq = z + (torch.floor(z + 0.5) - z).detach()
    return zq * (alpha / n)


class QuantReLU(nn.Module):
    """Uniform ``bits``-bit ReLU with a learnable clip ``alpha`` (initialised to ``alpha_init``)."""

    def __init__(self, bits: int = 2, alpha_init: float = 6.0) -> None:
        super().__init__()
        if int(bits) < 1:
            raise ConfigError(f"QuantReLU: bits must be >= 1, got {bits}")
        if not alpha_init > 0:
            raise ConfigError(f"QuantReLU: alpha_init must be > 0, got {alpha_init}")
        self.bits = int(bits)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    @property
    def levels(self) -> int:
        """``2**bits - 1``: the number of nonzero levels, also the SNN time steps T after conversion."""
        return 2**self.bits - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quant_relu(x, self.alpha, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={float(self.alpha):.4g}"


def quantize_ann(model: nn.Module, bits: int, alpha_init: float = 6.0) -> nn.Module:
    """Replace every :class:`Swish` in ``model`` by a fresh ``QuantReLU(bits, alpha_init)``, in place."""
    found = 0
    for _, mod in list(model.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, Swish):
                setattr(mod, cname, QuantReLU(bits, alpha_init))
                found += 1
    if not found:
        raise ConfigError(f"quantize_ann: {type(model).__name__} has no Swish activation to quantise")
    return model


def qann_model_config(cfg: ModelConfig, bits: int | None = None, alpha_init: float | None = None) -> ModelConfig:
    """``cfg`` as arch ``qann`` (``bits`` / ``alpha_init`` default to ``cfg``'s)."""
    return ModelConfig(
        **{
            **cfg.to_dict(),
            "arch": "qann",
            "bits": int(cfg.bits if bits is None else bits),
            "alpha_init": float(cfg.alpha_init if alpha_init is None else alpha_init),
        }
    )


def build_qann(cfg: ModelConfig, bits: int | None = None, alpha_init: float | None = None) -> ANNUNet:
    """The pytorch-ddpm UNet of ``cfg`` with ``bits``-bit QuantReLUs (``.config``: arch ``qann``)."""
    qcfg = qann_model_config(cfg, bits, alpha_init)
    return quantize_ann(ANNUNet(qcfg), qcfg.bits, qcfg.alpha_init)


def quant_layers(model: nn.Module) -> list[tuple[str, QuantReLU]]:
    """``(name, module)`` of every QuantReLU in execution-independent (registration) order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantReLU)]


def qann_bits(model: nn.Module) -> int:
    """The common bit width of ``model``'s QuantReLUs (error if none or mixed)."""
    bits = {m.bits for _, m in quant_layers(model)}
    if len(bits) != 1:
        raise ConfigError(f"expected one QuantReLU bit width in {type(model).__name__}, found {sorted(bits) or 'none'}")
    return bits.pop()


@torch.no_grad()
def calibrate_alpha(model: nn.Module, x: torch.Tensor, t: torch.Tensor, quantile: float = 0.999) -> dict[str, float]:
    """Set each QuantReLU's ``alpha`` to the ``quantile`` of its positive inputs on one batch ``(x, t)``.

    Layers run in order, so every layer sees inputs already quantised upstream. Returns ``{name: alpha}``.
    """
    if not 0.0 < quantile <= 1.0:
        raise ConfigError(f"calibrate_alpha: quantile must be in (0, 1], got {quantile}")
    layers = quant_layers(model)
    names = {id(m): n for n, m in layers}
    out: dict[str, float] = {}

    def hook(mod: QuantReLU, inp: tuple[torch.Tensor, ...]) -> None:
        v = inp[0].detach().flatten()
        v = v[v > 0]
        if v.numel():
            k = max(1, int(round(quantile * v.numel())))
            a = float(v.double().kthvalue(k).values)
            if a > 0:
                mod.alpha.fill_(a)
        out[names[id(mod)]] = float(mod.alpha)

    handles = [m.register_forward_pre_hook(hook) for _, m in layers]
    try:
        model(x, t)
    finally:
        for h in handles:
            h.remove()
    return out


__all__ = [
    "QuantReLU",
    "build_qann",
    "qann_model_config",
    "calibrate_alpha",
    "qann_bits",
    "quant_layers",
    "quant_relu",
    "quantize_ann",
]
