"""ANN->SNN conversion of a quantised ANN UNet (SDM §6, after Fast-SNN): files and fine-tuning.

The converted layers (:class:`IFNeuron`, :class:`RunningGroupNorm`, :class:`ConvertedSNN`) and
:func:`convert` itself live in :mod:`sdmc.models.converted` (models build them without importing this
module); they are re-exported here.  This module adds loading a QANN (or quantising a plain ANN),
saving/loading converted SNNs as native files, the block-wise fine-tuning of SDM §7.3 and the
conversion error.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from .checkpoint import build_and_load, load_model, read_checkpoint, resolve_config, save_model
from .config import SdmcConfig
from .errors import CheckpointError, ConfigError
from .models.converted import (
    NORMS,
    ConvertedSNN,
    IFNeuron,
    RunningGroupNorm,
    build_converted,
    convert,
    if_step,
    running_group_norm,
)
from .models.qann import qann_model_config, quant_layers, quantize_ann


# ----------------------------------------------------------------------------------------- files
def load_qann(
    path: str | os.PathLike, bits: int | None = None, alpha_init: float = 6.0, weights: str = "auto"
) -> tuple[nn.Module, SdmcConfig, bool]:
    """Load a quantised ANN; returns ``(model, config, was_quantised)``.

    An arch ``qann`` file loads as saved (``bits`` must match when given). A plain ANN (arch ``ann``) is
    quantised with fresh clips ``alpha_init`` (``bits`` required).
    """
    sd, stored, info = read_checkpoint(path, weights=weights)
    cfg = resolve_config(sd, stored, info)
    arch = cfg.model.arch
    if arch == "qann":
        if bits is not None and int(bits) != cfg.model.bits:
            raise CheckpointError(f"{path}: trained with {cfg.model.bits}-bit activations, --bits {bits} requested")
        return build_and_load(sd, cfg.model, source=str(path)).eval(), cfg, False
    if arch != "ann":
        raise CheckpointError(
            f"{path}: conversion needs a quantised ANN UNet (arch 'qann') or a plain ANN "
            f"(arch 'ann'), got arch {arch!r}"
        )
    if bits is None:
        raise CheckpointError(f"{path}: a plain ANN; give the activation bit width (bits) to quantise it")
    model = quantize_ann(build_and_load(sd, cfg.model, source=str(path)), int(bits), alpha_init)
    cfg.model = qann_model_config(cfg.model, int(bits), alpha_init)
    model.config = cfg.model
    cfg.provenance["quantised_from_ann"] = {"bits": int(bits), "alpha_init": float(alpha_init)}
    return model.eval(), cfg, True


def save_converted(path: str | os.PathLike, snn: ConvertedSNN, cfg: SdmcConfig) -> Path:
    """Write a converted SNN as a native model (arch ``qsnn``; thresholds under ``net.*.alpha``)."""
    if getattr(snn, "config", None) is None:
        raise ConfigError("save_converted: the SNN has no sdmc config (convert an sdmc QANN UNet)")
    out = SdmcConfig.from_json(cfg.to_json())
    out.model = snn.config
    return save_model(path, snn, out)


def load_converted(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[ConvertedSNN, SdmcConfig]:
    """Inverse of :func:`save_converted` (``sdmc.checkpoint.load_model`` reads these files too)."""
    model, cfg = load_model(path, device=device)
    if cfg.model.arch != "qsnn":
        raise CheckpointError(f"{path}: not a converted SNN (arch {cfg.model.arch!r}, expected 'qsnn')")
    return model, cfg


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


def _rate(v: torch.Tensor, T: int, B: int) -> torch.Tensor:
    """A ``[T*B, ...]`` SNN value as seen by the QANN: the mean over steps (integer inputs: step 0)."""
    if v.shape[0] != T * B:
        return v
    v = v.reshape(T, B, *v.shape[1:])
    return v.mean(0) if v.is_floating_point() else v[0]


def finetune(
    snn: ConvertedSNN, qann: nn.Module, batches, steps: int, lr: float = 1e-6, progress: bool = False
) -> dict[str, tuple[float, float]]:
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
        # the hooks live for this block's iteration only, so the lambdas binding this iteration's lists is right
        hooks = [
            smods[name].register_forward_pre_hook(lambda m, a: ins.append(tuple(v.detach() for v in a))),  # noqa: B023
            smods[name].register_forward_hook(lambda m, a, o: outs.append(o.detach())),  # noqa: B023
            rmods[name].register_forward_hook(lambda m, a, o: target.append(o.detach())),  # noqa: B023
        ]
        first = last = float("nan")
        try:
            for i in range(steps):
                ins.clear(), outs.clear(), target.clear()
                x, t = batches()
                with torch.no_grad():
                    ref(x, t)
                    snn(x, t)
                B, T = x.shape[0], snn.steps
                rate_in = [_rate(v, T, B) for v in ins[0]]
                rate_out = _rate(outs[0], T, B)
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


def noised_batches(cfg: SdmcConfig, seed: int = 0, digits: bool = True):
    """A function ``batch(n) -> (x_t, t)``: ``n`` images noised to uniformly drawn steps,
    ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (:class:`sdmc.diffusion.schedule.NoiseSchedule` of
    ``cfg.diffusion``, ``t < min(num_timesteps, model.diffusion_steps)``), the inputs conversion calibrates,
    fine-tunes and is checked on.  ``x0``: bundled digits (gray repeated over the model's channels) when
    ``digits``, else uniform in [-1, 1].  One ``torch.Generator`` seeded ``seed`` draws everything in order,
    so a sequence of calls is reproducible."""
    from .data import load_dataset
    from .diffusion.schedule import NoiseSchedule

    m = cfg.model
    g = torch.Generator().manual_seed(seed)
    schedule = NoiseSchedule(cfg.diffusion)
    ds = load_dataset("digits", img_size=m.img_size) if digits else None  # loaded once, not per batch

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = torch.rand(n, m.img_ch, m.img_size, m.img_size, generator=g) * 2 - 1
        if ds is not None:
            idx = torch.randint(len(ds), (n,), generator=g)
            x0 = torch.stack([ds[int(i)][0] for i in idx])
            if x0.shape[1] != m.img_ch:
                x0 = x0[:, :1].expand(-1, m.img_ch, -1, -1)
        t = torch.randint(min(schedule.num_timesteps, m.diffusion_steps), (n,), generator=g)
        return schedule.q_sample(x0, t, torch.randn(x0.shape, generator=g)), t

    return batch


@torch.no_grad()
def conversion_error(qann: nn.Module, snn: ConvertedSNN, x: torch.Tensor, t: torch.Tensor) -> float:
    """Relative L2 error ``|snn(x,t) - qann(x,t)| / |qann(x,t)|``."""
    ref = qann(x, t)
    return float((snn(x, t) - ref).norm() / ref.norm().clamp_min(1e-30))


__all__ = [
    "NORMS",
    "ConvertedSNN",
    "IFNeuron",
    "RunningGroupNorm",
    "build_converted",
    "conversion_error",
    "convert",
    "finetune",
    "if_step",
    "load_converted",
    "load_qann",
    "noised_batches",
    "quant_layers",
    "running_group_norm",
    "save_converted",
    "unet_blocks",
]
