"""ANN->SNN conversion of a quantised ANN UNet (SDM §6, after Fast-SNN).

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
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import SdmcConfig
from .errors import CheckpointError, ConfigError
from .models.qann import QuantReLU, qann_bits, quant_layers


def if_step(v: torch.Tensor, count: torch.Tensor, inp: torch.Tensor, theta: torch.Tensor, signed: bool
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One IF step with reset by subtraction; returns ``(spikes in {-1,0,1}, new v, new count)``."""
    v = v + inp
    s = (v >= theta).to(v.dtype)
    if signed:
        s = s - ((v < 0) & (count > 0)).to(v.dtype)
    v = v - s * theta
    return s, v, count + s


class IFNeuron(nn.Module):
    """Stateful IF neuron replacing one QuantReLU; outputs ``s * alpha`` (``alpha`` is the threshold).

    Call :meth:`reset` before each new input sequence (:class:`ConvertedSNN` does it).
    """

    def __init__(self, alpha: float | torch.Tensor, bits: int, signed: bool = False) -> None:
        super().__init__()
        a = alpha.detach().clone() if isinstance(alpha, torch.Tensor) else torch.tensor(float(alpha))
        self.alpha = nn.Parameter(a, requires_grad=False)
        self.bits = int(bits)
        self.signed = bool(signed)
        self.v: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def reset(self) -> None:
        self.v = None
        self.count = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.alpha.to(x.dtype)
        if self.v is None:
            self.v = torch.full_like(x, 0.5) * theta
            self.count = torch.zeros_like(x)
        s, self.v, self.count = if_step(self.v, self.count, x, theta, self.signed)
        return s * theta

    def extra_repr(self) -> str:
        return f"theta={float(self.alpha):.4g}, signed={self.signed}"


class RunningGroupNorm(nn.Module):
    """``y_t = weight * (x_t - mu(x̄_t)) / sqrt(var(x̄_t) + eps) + bias`` per (sample, group), ``x̄_t`` the
    running mean of the inputs since :meth:`reset`; parameter names as :class:`nn.GroupNorm`."""

    def __init__(self, gn: nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups, self.eps = gn.num_groups, gn.eps
        self.weight = nn.Parameter(gn.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(gn.bias.detach().clone(), requires_grad=False)
        self.total: torch.Tensor | None = None
        self.n = 0

    def reset(self) -> None:
        self.total, self.n = None, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.total = x if self.total is None else self.total + x
        self.n += 1
        B, C = x.shape[:2]
        mean = (self.total / self.n).reshape(B, self.num_groups, -1)
        mu = mean.mean(-1, keepdim=True)
        var = mean.var(-1, unbiased=False, keepdim=True)
        y = ((x.reshape(B, self.num_groups, -1) - mu) / torch.sqrt(var + self.eps)).reshape(x.shape)
        shape = (1, C) + (1,) * (x.dim() - 2)
        return y * self.weight.reshape(shape) + self.bias.reshape(shape)


NORMS = ("step", "running")


class ConvertedSNN(nn.Module):
    """``forward(x, t) = mean over T steps of net(x, t)`` with stateful IF neurons in ``net``."""

    def __init__(self, net: nn.Module, steps: int) -> None:
        super().__init__()
        if int(steps) < 1:
            raise ConfigError(f"ConvertedSNN: steps must be >= 1, got {steps}")
        self.net = net
        self.steps = int(steps)

    def neurons(self) -> list[IFNeuron]:
        return [m for m in self.net.modules() if isinstance(m, IFNeuron)]

    def reset(self) -> None:
        """Clear every IF neuron's membrane and every running norm's statistics."""
        for m in self.net.modules():
            if isinstance(m, (IFNeuron, RunningGroupNorm)):
                m.reset()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.reset()
        out = None
        for _ in range(self.steps):
            y = self.net(x, t)
            out = y if out is None else out + y
        self.reset()
        return out / self.steps


def convert(qann: nn.Module, signed: bool = False, steps: int | None = None, norm: str = "step") -> ConvertedSNN:
    """A converted copy of ``qann``: every QuantReLU -> IFNeuron(theta=alpha), ``T = 2**bits - 1`` by default.

    ``norm="running"`` also replaces every GroupNorm by a :class:`RunningGroupNorm`.
    """
    if norm not in NORMS:
        raise ConfigError(f"convert: norm must be one of {NORMS}, got {norm!r}")
    bits = qann_bits(qann)
    net = copy.deepcopy(qann)
    for _, mod in list(net.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, QuantReLU):
                setattr(mod, cname, IFNeuron(child.alpha.detach(), child.bits, signed))
            elif norm == "running" and isinstance(child, nn.GroupNorm):
                setattr(mod, cname, RunningGroupNorm(child))
    return ConvertedSNN(net, 2 ** bits - 1 if steps is None else steps).eval()


# ----------------------------------------------------------------------------------------- files
def qann_config(cfg: SdmcConfig, bits: int, alpha_init: float = 6.0) -> SdmcConfig:
    """A copy of ``cfg`` whose provenance marks a ``bits``-bit quantised ANN (``arch`` stays ``ann``)."""
    out = SdmcConfig.from_json(cfg.to_json())
    out.provenance["qann"] = {"bits": int(bits), "alpha_init": float(alpha_init)}
    return out


def load_qann(path: str | os.PathLike, bits: int | None = None, alpha_init: float = 6.0, weights: str = "auto"
              ) -> tuple[nn.Module, SdmcConfig, bool]:
    """Load a quantised ANN; returns ``(model, config, was_quantised)``.

    A file with ``act``-clip parameters (``*.alpha``) loads as saved (``bits`` must match the recorded
    width when given). A plain ANN file is quantised with fresh clips ``alpha_init`` (``bits`` required).
    """
    from .checkpoint import read_checkpoint, resolve_config
    from .models.qann import build_qann

    sd, stored, info = read_checkpoint(path, weights=weights)
    cfg = resolve_config(sd, stored, info)
    if cfg.model.arch != "ann":
        raise CheckpointError(f"{path}: conversion needs an ANN UNet (arch 'ann'), got arch {cfg.model.arch!r}")
    rec = cfg.provenance.get("qann")
    has_alpha = any(k.endswith(".alpha") for k in sd)
    if has_alpha:
        if rec is None:
            raise CheckpointError(f"{path}: has QuantReLU clips but no recorded bit width (provenance 'qann')")
        if bits is not None and int(bits) != int(rec["bits"]):
            raise CheckpointError(f"{path}: trained with {rec['bits']}-bit activations, --bits {bits} requested")
        bits = int(rec["bits"])
    elif bits is None:
        raise CheckpointError(f"{path}: a plain ANN; give the activation bit width (bits) to quantise it")
    model = build_qann(cfg.model, bits, alpha_init)
    expected = model.state_dict()
    if has_alpha:
        full = sd
    else:
        full = dict(sd)
        full.update({k: v for k, v in expected.items() if k.endswith(".alpha")})
    missing = [k for k in expected if k not in full]
    unexpected = [k for k in full if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not match a quantised ANN UNet: "
                              f"missing {missing[:1]} ({len(missing)}), unexpected {unexpected[:1]} ({len(unexpected)})")
    model.load_state_dict(full, strict=True)
    return model.eval(), qann_config(cfg, bits, alpha_init), not has_alpha


def save_converted(path: str | os.PathLike, snn: ConvertedSNN, cfg: SdmcConfig) -> Path:
    """Write a converted SNN as native safetensors (keys of the QANN; thresholds under ``*.alpha``)."""
    from .checkpoint import save_model

    neurons = snn.neurons()
    out = SdmcConfig.from_json(cfg.to_json())
    out.provenance["converted"] = {"steps": snn.steps, "signed": bool(neurons and neurons[0].signed),
                                   "bits": neurons[0].bits if neurons else None,
                                   "norm": "running" if any(isinstance(m, RunningGroupNorm) for m in snn.net.modules())
                                   else "step"}
    return save_model(path, snn.net, out)


def load_converted(path: str | os.PathLike) -> tuple[ConvertedSNN, SdmcConfig]:
    """Inverse of :func:`save_converted`."""
    from .checkpoint import read_checkpoint

    _, stored, _ = read_checkpoint(path)
    if stored is None or "converted" not in stored.provenance:
        raise CheckpointError(f"{path}: not a converted SNN (no provenance 'converted' in its config)")
    conv: dict[str, Any] = stored.provenance["converted"]
    qann, cfg, _ = load_qann(path)
    return convert(qann, signed=bool(conv["signed"]), steps=int(conv["steps"]), norm=conv.get("norm", "step")), cfg


# ------------------------------------------------------------------------------------- fine-tuning
def unet_blocks(net: nn.Module) -> list[str]:
    """Names of the UNet's blocks in execution order (``head``, ``downblocks.0``, ..., ``tail``)."""
    names = []
    for name, child in net.named_children():
        if isinstance(child, nn.ModuleList):
            names += [f"{name}.{i}" for i in range(len(child))]
        elif any(p.requires_grad for p in child.parameters()):
            names.append(name)
    return names


def _tie_parameters(dst: nn.Module, src: nn.Module) -> None:
    """Make ``dst``'s trainable parameters the very tensors of ``src`` (same names; IF/QuantReLU clips excluded)."""
    smods = dict(src.named_modules())
    for name, mod in dst.named_modules():
        if isinstance(mod, IFNeuron):
            continue
        for pname, _ in list(mod.named_parameters(recurse=False)):
            setattr(mod, pname, getattr(smods[name], pname))


def finetune(snn: ConvertedSNN, qann: nn.Module, batches, steps: int, lr: float = 1e-6,
             progress: bool = False) -> dict[str, tuple[float, float]]:
    """Block-wise fine-tuning (SDM §7.3), in place: each block in turn, ``steps`` Adam steps on

        loss = MSE(rate-averaged SNN block output, quantised-ANN block output)

    with gradients through a differentiable ANN copy of the block run on the rate-averaged SNN block
    inputs, whose value is replaced by the SNN's (straight-through). Clips ``alpha`` stay frozen.
    ``batches()`` returns one ``(x, t)``. Returns ``{block: (first loss, last loss)}``.
    """
    from tqdm import tqdm

    if steps < 1:
        raise ConfigError(f"finetune: steps must be >= 1, got {steps}")
    ann = copy.deepcopy(qann).train(False)
    for _, m in quant_layers(ann):
        m.alpha.requires_grad_(False)
    ref = copy.deepcopy(qann).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    _tie_parameters(snn.net, ann)
    smods, amods, rmods = dict(snn.net.named_modules()), dict(ann.named_modules()), dict(ref.named_modules())
    report: dict[str, tuple[float, float]] = {}
    blocks = unet_blocks(snn.net)
    bar = tqdm(total=len(blocks) * steps, disable=not progress, desc="finetune", unit="step")
    for name in blocks:
        params = [p for p in amods[name].parameters() if p.requires_grad]
        if not params:
            continue
        opt = torch.optim.Adam(params, lr=lr)
        ins: list[tuple] = []
        outs: list[torch.Tensor] = []
        target: list[torch.Tensor] = []
        hooks = [smods[name].register_forward_pre_hook(lambda m, a: ins.append(tuple(v.detach() for v in a))),
                 smods[name].register_forward_hook(lambda m, a, o: outs.append(o.detach())),
                 rmods[name].register_forward_hook(lambda m, a, o: target.append(o.detach()))]
        first = last = float("nan")
        try:
            for i in range(steps):
                ins.clear(), outs.clear(), target.clear()
                x, t = batches()
                with torch.no_grad():
                    ref(x, t)
                    snn(x, t)
                rate_in = [torch.stack(v).mean(0) if v[0].is_floating_point() else v[0] for v in zip(*ins)]
                rate_out = torch.stack(outs).mean(0)
                y = amods[name](*rate_in)
                y = y + (rate_out - y).detach()
                loss = torch.nn.functional.mse_loss(y, target[0])
                last = float(loss.detach())
                first = last if i == 0 else first
                if i == 0 and last <= 1e-12 * float(target[0].pow(2).mean()):
                    bar.update(steps)  # exactly converted (constant inputs): Adam would only add noise
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
                bar.update(1)
                bar.set_postfix(block=name, loss=f"{last:.3g}")
        finally:
            for h in hooks:
                h.remove()
        report[name] = (first, last)
    bar.close()
    return report


@torch.no_grad()
def conversion_error(qann: nn.Module, snn: ConvertedSNN, x: torch.Tensor, t: torch.Tensor) -> float:
    """Relative L2 error ``|snn(x,t) - qann(x,t)| / |qann(x,t)|``."""
    ref = qann(x, t)
    return float((snn(x, t) - ref).norm() / ref.norm().clamp_min(1e-30))


__all__ = ["NORMS", "ConvertedSNN", "IFNeuron", "RunningGroupNorm", "conversion_error", "convert", "if_step", "load_converted", "load_qann",
           "finetune", "qann_config", "quant_layers", "save_converted", "unet_blocks"]
