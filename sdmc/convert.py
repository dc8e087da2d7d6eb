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

Layout: :class:`ConvertedSNN` repeats ``(x, t)`` T times along the batch axis and runs the network once
on ``[T*B, ...]`` (T folded into the batch, step-major); neurons and running norms view their input as
``[T, B, ...]``. This is the stateful step-by-step loop computed layer by layer, it keeps the QANN's
forward code unchanged, and it traces to the IR (:func:`sdmc.frontends.trace`): IF neurons become
``if`` nodes (``v_reset=None``, ``v_init=theta/2``, ``signed``) followed by ``scale(theta)``; the time
mean a ``membrane_readout(decay=1)`` and ``scale(1/T)``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from .config import SNN_NORMS, ModelConfig, SdmcConfig
from .errors import CheckpointError, ConfigError
from .models.qann import QuantReLU, qann_bits, qann_model_config, quant_layers


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
    from .models.qann import build_qann

    if cfg.arch != "qsnn":
        raise ConfigError(f"build_converted needs arch 'qsnn', got {cfg.arch!r}")
    return convert(build_qann(cfg), signed=cfg.signed_spikes, steps=cfg.snn_steps, norm=cfg.snn_norm)


# ----------------------------------------------------------------------------------------- files
def load_qann(
    path: str | os.PathLike, bits: int | None = None, alpha_init: float = 6.0, weights: str = "auto"
) -> tuple[nn.Module, SdmcConfig, bool]:
    """Load a quantised ANN; returns ``(model, config, was_quantised)``.

    An arch ``qann`` file loads as saved (``bits`` must match when given). A plain ANN (arch ``ann``) is
    quantised with fresh clips ``alpha_init`` (``bits`` required).
    """
    from .checkpoint import build_and_load, read_checkpoint, resolve_config
    from .models.qann import quantize_ann

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
    from .checkpoint import save_model

    if getattr(snn, "config", None) is None:
        raise ConfigError("save_converted: the SNN has no sdmc config (convert an sdmc QANN UNet)")
    out = SdmcConfig.from_json(cfg.to_json())
    out.model = snn.config
    return save_model(path, snn, out)


def load_converted(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[ConvertedSNN, SdmcConfig]:
    """Inverse of :func:`save_converted` (``sdmc.checkpoint.load_model`` reads these files too)."""
    from .checkpoint import load_model

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
