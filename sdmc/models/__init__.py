"""Denoiser models: the SDDPM spiking UNet, the SDM TSM UNet and the pytorch-ddpm ANN UNet."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..validate import LIMITS, check_limit
from .ann_unet import ANNUNet
from .spiking_unet import (
    MembraneOutputLayer,
    SpikingUNet,
    SpkDownSample,
    SpkResBlock,
    SpkUpSample,
    Swish,
    TimeEmbedding,
    TSMConv2d,
    set_threshold,
)


def build_model(cfg: ModelConfig, device: str | torch.device | None = None) -> nn.Module:
    """Instantiate the network that ``cfg`` describes (``qsnn``: a converted QANN with untrained clips).

    Its parameter count is checked against ``LIMITS.params`` before anything is allocated.  ``device="meta"``
    builds it without storage (shapes only: what a checkpoint's tensors are compared with before loading).
    """
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            return _construct(cfg)
    if parameter_bound(cfg) > LIMITS.params:  # only then is the exact count (a meta-device build) needed
        n = sum(p.numel() for p in build_model(cfg, device="meta").parameters())
        check_limit(f"model parameters ({cfg.arch}, ch={cfg.ch}, ch_mult={list(cfg.ch_mult)})", n, LIMITS.params)
    if device is None:
        return _construct(cfg)
    with torch.device(device):
        return _construct(cfg)


def parameter_bound(cfg: ModelConfig) -> int:
    """An upper bound of the parameter count of ``cfg``'s UNet, in closed form (``W`` = the widest level):
    every res block at most ``37 W² + 4 ch W`` (two 3x3 convs from up to ``2W`` channels, shortcut, attention,
    time projection), ``(2·blocks + 1)·levels + 2`` of them, ``2·levels`` resampling convs ``9 W²``, the time
    MLP ``20 ch²``, the embedding table and the head/tail convs."""
    W = cfg.ch * max(cfg.ch_mult)
    levels = len(cfg.ch_mult)
    blocks = (2 * cfg.num_res_blocks + 1) * levels + 2
    return (
        blocks * (37 * W * W + 4 * cfg.ch * W)
        + 2 * levels * 9 * W * W
        + 20 * cfg.ch**2
        + cfg.diffusion_steps * cfg.ch
        + 18 * cfg.img_ch * cfg.ch
    )


def _construct(cfg: ModelConfig) -> nn.Module:
    if cfg.arch == "ann":
        return ANNUNet(cfg)
    if cfg.arch == "qann":
        from .qann import build_qann

        return build_qann(cfg)
    if cfg.arch == "qsnn":
        from .converted import build_converted

        return build_converted(cfg)
    return SpikingUNet(cfg)


__all__ = [
    "ANNUNet",
    "MembraneOutputLayer",
    "ModelConfig",
    "SpikingUNet",
    "SpkDownSample",
    "SpkResBlock",
    "SpkUpSample",
    "Swish",
    "TSMConv2d",
    "TimeEmbedding",
    "build_model",
    "parameter_bound",
    "set_threshold",
]
