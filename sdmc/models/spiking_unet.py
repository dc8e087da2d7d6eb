"""The SDDPM spiking UNet and the SDM TSM UNet, written with spikingjelly multi-step modules.

Parameter names and shapes are those of the released checkpoints (``SDM_TSM_8T.pt``, SDDPM ``ckpt.pt``),
so ``load_state_dict(strict=True)`` works.  Tensors inside the network are ``[T, B, C, H, W]``;
convolutions act on ``[T*B, C, H, W]``; BatchNorm in training mode pools statistics over T*B.

Forward of the whole network (T SNN steps, x the noisy image, t the diffusion step)::

    h0   = BN(conv(repeat_T(x)))                       head on the static image
    s    = IF(h0);  h = BN(conv_identity(s))            real-valued residual stream
    ResBlock:   h' = BN2(conv2(IF2(BN1(conv1(IF1(h))) + temb_proj(temb)))) + shortcut(h)
    Down:       h' = BN(conv_s2(IF(h)))      Up: h' = BN(conv(nearest_x2(IF(h))))
    tail:       y = conv(Swish(BN(h)));  y = Swish(BN(Conv3d_(3,3,1)(y))) + y
    output:     eps = sum_t 0.8**(T-1-t) * y[t]          (MembraneOutputLayer)

With TSM (SDM) every Conv2d becomes ``y[t] = p[t] * conv(x[t])`` with one learnable scalar per step.
The neuron state is reset after every call.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, neuron, surrogate
from torch import nn
from torch.nn import init

from ..config import ModelConfig
from ..errors import ConfigError

MEMBRANE_DECAY = 0.8


class Swish(nn.Module):
    """``x * sigmoid(x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class TSMConv2d(nn.Module):
    """Temporal-wise spiking mechanism conv (SDM Eq. 16): ``y[t] = p[t] * conv(x[t])``.

    Input and output are ``[T*B, C, H, W]`` with T leading; ``tsmp`` has shape ``[T, 1, 1, 1, 1]``
    (one scalar per step, shared over batch, channels and space) and starts at 1, so a freshly
    inherited SDDPM conv computes exactly what it did before.  The conv bias is scaled too.
    """

    def __init__(
        self, timestep: int, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, padding: int = 1
    ) -> None:
        super().__init__()
        self.T = timestep
        self.tsmconv = nn.Conv2d(in_ch, out_ch, kernel_size=kernel_size, stride=stride, padding=padding)
        self.tsmp = nn.Parameter(torch.ones(timestep, 1, 1, 1, 1))
        init.xavier_uniform_(self.tsmconv.weight)
        init.zeros_(self.tsmconv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tsmconv(x)
        y = y.unflatten(0, (self.T, -1)) * self.tsmp
        return y.flatten(0, 1)


class MembraneOutputLayer(nn.Module):
    """Non-firing leaky integrator read-out: ``out = sum_t decay**(T-1-t) * x[t]`` over ``x: [T, B, ...]``."""

    def __init__(self, timestep: int, decay: float = MEMBRANE_DECAY) -> None:
        super().__init__()
        self.n_steps = timestep
        self.decay = decay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        exps = torch.arange(self.n_steps - 1, -1, -1, device=x.device, dtype=x.dtype)
        coef = torch.pow(torch.as_tensor(self.decay, dtype=x.dtype, device=x.device), exps)
        return torch.einsum("t...,t->...", x, coef)


class TimeEmbedding(nn.Module):
    """Sinusoidal table (frozen, interleaved sin/cos as in pytorch-ddpm) -> Linear -> Swish -> Linear."""

    def __init__(self, steps: int, d_model: int, dim: int) -> None:
        super().__init__()
        freqs = torch.exp(-torch.arange(0, d_model, 2).float() / d_model * math.log(10000))
        ang = torch.arange(steps).float()[:, None] * freqs[None, :]
        table = torch.stack([torch.sin(ang), torch.cos(ang)], dim=-1).view(steps, d_model)
        self.timembedding = nn.Sequential(
            nn.Embedding.from_pretrained(table),
            nn.Linear(d_model, dim),
            Swish(),
            nn.Linear(dim, dim),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                init.xavier_uniform_(m.weight)
                init.zeros_(m.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.timembedding(t)


def make_neuron(cfg: ModelConfig) -> nn.Module:
    """A multi-step spikingjelly neuron as configured (IF or LIF, hard or soft reset, ATan surrogate)."""
    v_reset = None if cfg.soft_reset else 0.0
    common = dict(
        v_threshold=cfg.threshold,
        v_reset=v_reset,
        surrogate_function=surrogate.ATan(),
        detach_reset=False,
        step_mode="m",
    )
    if cfg.neuron == "if":
        return neuron.IFNode(**common)
    return neuron.LIFNode(tau=cfg.tau, decay_input=True, **common)


def make_conv(cfg: ModelConfig, in_ch: int, out_ch: int, k: int = 3, stride: int = 1, padding: int = 1) -> nn.Module:
    if cfg.tsm:
        return TSMConv2d(cfg.snn_steps, in_ch, out_ch, k, stride, padding)
    conv = nn.Conv2d(in_ch, out_ch, k, stride=stride, padding=padding)
    init.xavier_uniform_(conv.weight)
    init.zeros_(conv.bias)
    return conv


def _bn_tb(bn: nn.Module, y: torch.Tensor, T: int) -> torch.Tensor:
    """BatchNorm over ``[T*B, C, H, W]`` (statistics pooled over T*B), returned as ``[T, B, C, H, W]``."""
    return bn(y).unflatten(0, (T, -1))


class SpkDownSample(nn.Module):
    """``IF -> conv3x3 stride 2 -> BN``."""

    def __init__(self, cfg: ModelConfig, ch: int) -> None:
        super().__init__()
        self.conv = make_conv(cfg, ch, ch, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(ch)
        self.neuron = make_neuron(cfg)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        return _bn_tb(self.bn, self.conv(self.neuron(x).flatten(0, 1)), T)


class SpkUpSample(nn.Module):
    """``IF -> nearest x2 -> conv3x3 -> BN``."""

    def __init__(self, cfg: ModelConfig, ch: int) -> None:
        super().__init__()
        self.conv = make_conv(cfg, ch, ch, 3, stride=1, padding=1)
        self.bn = nn.BatchNorm2d(ch)
        self.neuron = make_neuron(cfg)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        s = F.interpolate(self.neuron(x).flatten(0, 1), scale_factor=2, mode="nearest")
        return _bn_tb(self.bn, self.conv(s), T)


class SpkResBlock(nn.Module):
    """Pre-spike residual block: ``BN2(conv2(IF2(BN1(conv1(IF1(x))) + temb_proj(temb)))) + shortcut(x)``.

    ``x`` is the real-valued residual stream; the shortcut (1x1 conv when channels change, else identity)
    acts on it directly, not on spikes.
    """

    def __init__(self, cfg: ModelConfig, in_ch: int, out_ch: int, tdim: int) -> None:
        super().__init__()
        self.temb_proj = nn.Sequential(Swish(), nn.Linear(tdim, out_ch))
        init.xavier_uniform_(self.temb_proj[1].weight)
        init.zeros_(self.temb_proj[1].bias)
        self.neuron1 = make_neuron(cfg)
        self.conv1 = make_conv(cfg, in_ch, out_ch)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.neuron2 = make_neuron(cfg)
        self.conv2 = make_conv(cfg, out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = make_conv(cfg, in_ch, out_ch, 1, 1, 0) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        h = _bn_tb(self.bn1, self.conv1(self.neuron1(x).flatten(0, 1)), T)
        h = h + self.temb_proj(temb)[None, :, :, None, None]
        h = _bn_tb(self.bn2, self.conv2(self.neuron2(h).flatten(0, 1)), T)
        return h + self.shortcut(x.flatten(0, 1)).unflatten(0, (T, -1))


class SpikingUNet(nn.Module):
    """SDDPM ``Spk_UNet`` (``cfg.arch == 'sddpm'``) or SDM ``Spk_UNet_TSM`` (``cfg.arch == 'sdm'``).

    ``forward(x, t)``: ``x`` is ``[B, img_ch, H, W]``, ``t`` integer diffusion steps ``[B]``; returns the
    predicted noise ``[B, img_ch, H, W]``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not cfg.spiking:
            raise ConfigError(f"SpikingUNet needs arch 'sddpm' or 'sdm', got {cfg.arch!r}")
        self.config = cfg
        ch, T = cfg.ch, cfg.snn_steps
        self.timestep = T
        tdim = ch * 4
        self.time_embedding = TimeEmbedding(cfg.diffusion_steps, ch, tdim)
        self.conv = make_conv(cfg, cfg.img_ch, ch)
        self.bn = nn.BatchNorm2d(ch)
        self.neuron = make_neuron(cfg)
        self.conv_identity = make_conv(cfg, ch, ch)
        self.bn_identity = nn.BatchNorm2d(ch)

        self.downblocks = nn.ModuleList()
        chs = [ch]
        now_ch = ch
        for i, mult in enumerate(cfg.ch_mult):
            out_ch = ch * mult
            for _ in range(cfg.num_res_blocks):
                self.downblocks.append(SpkResBlock(cfg, now_ch, out_ch, tdim))
                now_ch = out_ch
                chs.append(now_ch)
            if i != len(cfg.ch_mult) - 1:
                self.downblocks.append(SpkDownSample(cfg, now_ch))
                chs.append(now_ch)
        self.middleblocks = nn.ModuleList(
            [SpkResBlock(cfg, now_ch, now_ch, tdim), SpkResBlock(cfg, now_ch, now_ch, tdim)]
        )
        self.upblocks = nn.ModuleList()
        for i, mult in reversed(list(enumerate(cfg.ch_mult))):
            out_ch = ch * mult
            for _ in range(cfg.num_res_blocks + 1):
                self.upblocks.append(SpkResBlock(cfg, chs.pop() + now_ch, out_ch, tdim))
                now_ch = out_ch
            if i != 0:
                self.upblocks.append(SpkUpSample(cfg, now_ch))
        assert not chs

        self.tail_bn = nn.BatchNorm2d(now_ch)
        self.tail_swish = Swish()
        self.tail_conv = make_conv(cfg, now_ch, cfg.img_ch)
        if not cfg.tsm:  # SDDPM initialises the last conv near zero (SDM inherits weights instead)
            init.xavier_uniform_(self.tail_conv.weight, gain=1e-5)
        self.T_output_layer = nn.Conv3d(cfg.img_ch, cfg.img_ch, kernel_size=(3, 3, 1), padding=(1, 1, 0))
        self.last_bn = nn.BatchNorm2d(cfg.img_ch)
        self.swish = Swish()
        self.membrane_output_layer = MembraneOutputLayer(T)

    def check_input(self, x: torch.Tensor, t: torch.Tensor) -> None:
        """Raise a clear :class:`ConfigError` for inputs this network cannot take."""
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.img_ch:
            raise ConfigError(
                f"{type(self).__name__}: expected an image batch [B, {cfg.img_ch}, H, W], got shape {list(x.shape)}"
            )
        factor = 2 ** (len(cfg.ch_mult) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ConfigError(
                f"{type(self).__name__}: image size {tuple(x.shape[2:])} is not divisible by "
                f"{factor} (the UNet downsamples {len(cfg.ch_mult) - 1} times)"
            )
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ConfigError(f"{type(self).__name__}: t must have shape [{x.shape[0]}], got {list(t.shape)}")

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and isinstance(t, torch.Tensor):
            self.check_input(x, t)
        try:
            return self._forward(x, t)
        finally:
            functional.reset_net(self)

    def _forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        T = self.timestep
        temb = self.time_embedding(t)
        xs = x.unsqueeze(0).expand(T, *x.shape).flatten(0, 1)
        h = _bn_tb(self.bn, self.conv(xs), T)
        h = self.neuron(h)
        h = _bn_tb(self.bn_identity, self.conv_identity(h.flatten(0, 1)), T)
        hs = [h]
        for layer in self.downblocks:
            h = layer(h, temb)
            hs.append(h)
        for layer in self.middleblocks:
            h = layer(h, temb)
        for layer in self.upblocks:
            if isinstance(layer, SpkResBlock):
                h = torch.cat([h, hs.pop()], dim=2)
            h = layer(h, temb)
        h = self.tail_conv(self.tail_swish(self.tail_bn(h.flatten(0, 1)))).unflatten(0, (T, -1))
        y = self.T_output_layer(h.permute(1, 2, 3, 4, 0)).permute(4, 0, 1, 2, 3)
        y = _bn_tb(self.last_bn, y.flatten(0, 1), T)
        h = self.swish(y) + h
        return self.membrane_output_layer(h)


def set_threshold(model: nn.Module, threshold: float) -> int:
    """Threshold guidance (SDM §4.3): set every spiking neuron's threshold to ``threshold``.

    Weights are untouched.  Returns the number of neurons changed.
    """
    n = 0
    for m in model.modules():
        if isinstance(m, neuron.BaseNode) or getattr(m, "is_spiking_neuron", False):  # + torch-executor neurons
            m.v_threshold = float(threshold)
            n += 1
    return n
