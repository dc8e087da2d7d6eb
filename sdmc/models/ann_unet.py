"""The ANN UNet of pytorch-ddpm (the papers' baseline), parameter names as in its checkpoints.

``ResBlock: h = block2(block1(x) + temb_proj(temb)) + shortcut(x)`` with GroupNorm/Swish/conv blocks;
self-attention where ``attn`` names a level and in the first middle block when ``mid_attn`` (as
pytorch-ddpm, whose parameter count the SDM paper's ANN baseline matches; SDM's quantised ANN has none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init

from ..config import ModelConfig
from ..errors import ConfigError
from .spiking_unet import Swish, TimeEmbedding


def _xavier(m: nn.Module, gain: float = 1.0) -> None:
    init.xavier_uniform_(m.weight, gain=gain)
    init.zeros_(m.bias)


class DownSample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.main = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        _xavier(self.main)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class UpSample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.main = nn.Conv2d(ch, ch, 3, stride=1, padding=1)
        _xavier(self.main)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return self.main(F.interpolate(x, scale_factor=2, mode="nearest"))


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a GroupNorm in front and a residual connection."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, ch)
        self.proj_q = nn.Conv2d(ch, ch, 1)
        self.proj_k = nn.Conv2d(ch, ch, 1)
        self.proj_v = nn.Conv2d(ch, ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        for m in (self.proj_q, self.proj_k, self.proj_v):
            _xavier(m)
        _xavier(self.proj, gain=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.group_norm(x)
        q = self.proj_q(h).permute(0, 2, 3, 1).reshape(B, H * W, C)
        k = self.proj_k(h).reshape(B, C, H * W)
        w = torch.softmax(torch.bmm(q, k) * (C**-0.5), dim=-1)
        v = self.proj_v(h).permute(0, 2, 3, 1).reshape(B, H * W, C)
        h = torch.bmm(w, v).reshape(B, H, W, C).permute(0, 3, 1, 2)
        return x + self.proj(h)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, tdim: int, dropout: float, attn: bool, groups: int) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.GroupNorm(groups, in_ch), Swish(), nn.Conv2d(in_ch, out_ch, 3, 1, 1))
        self.temb_proj = nn.Sequential(Swish(), nn.Linear(tdim, out_ch))
        self.block2 = nn.Sequential(
            nn.GroupNorm(groups, out_ch), Swish(), nn.Dropout(dropout), nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        )
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attn = AttnBlock(out_ch, groups) if attn else nn.Identity()
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                _xavier(m)
        _xavier(self.block2[-1], gain=1e-5)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.temb_proj(temb)[:, :, None, None]
        h = self.block2(h) + self.shortcut(x)
        return self.attn(h)


class ANNUNet(nn.Module):
    """pytorch-ddpm ``UNet(T, ch, ch_mult, attn, num_res_blocks, dropout)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.arch not in ("ann", "qann"):
            raise ConfigError(f"ANNUNet needs arch 'ann' or 'qann', got {cfg.arch!r}")
        self.config = cfg
        ch, g = cfg.ch, cfg.norm_groups
        tdim = ch * 4
        self.time_embedding = TimeEmbedding(cfg.diffusion_steps, ch, tdim)
        self.head = nn.Conv2d(cfg.img_ch, ch, 3, 1, 1)
        _xavier(self.head)
        self.downblocks = nn.ModuleList()
        chs = [ch]
        now_ch = ch
        for i, mult in enumerate(cfg.ch_mult):
            out_ch = ch * mult
            for _ in range(cfg.num_res_blocks):
                self.downblocks.append(ResBlock(now_ch, out_ch, tdim, cfg.dropout, i in cfg.attn, g))
                now_ch = out_ch
                chs.append(now_ch)
            if i != len(cfg.ch_mult) - 1:
                self.downblocks.append(DownSample(now_ch))
                chs.append(now_ch)
        self.middleblocks = nn.ModuleList(
            [
                ResBlock(now_ch, now_ch, tdim, cfg.dropout, cfg.mid_attn, g),
                ResBlock(now_ch, now_ch, tdim, cfg.dropout, False, g),
            ]
        )
        self.upblocks = nn.ModuleList()
        for i, mult in reversed(list(enumerate(cfg.ch_mult))):
            out_ch = ch * mult
            for _ in range(cfg.num_res_blocks + 1):
                self.upblocks.append(ResBlock(chs.pop() + now_ch, out_ch, tdim, cfg.dropout, i in cfg.attn, g))
                now_ch = out_ch
            if i != 0:
                self.upblocks.append(UpSample(now_ch))
        assert not chs
        self.tail = nn.Sequential(nn.GroupNorm(g, now_ch), Swish(), nn.Conv2d(now_ch, cfg.img_ch, 3, 1, 1))
        _xavier(self.tail[-1], gain=1e-5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_embedding(t)
        h = self.head(x)
        hs = [h]
        for layer in self.downblocks:
            h = layer(h, temb)
            hs.append(h)
        for layer in self.middleblocks:
            h = layer(h, temb)
        for layer in self.upblocks:
            if isinstance(layer, ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = layer(h, temb)
        return self.tail(h)
