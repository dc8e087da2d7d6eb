"""Denoiser models: the SDDPM spiking UNet, the SDM TSM UNet and the pytorch-ddpm ANN UNet."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
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


def build_model(cfg: ModelConfig) -> nn.Module:
    """Instantiate the network that ``cfg`` describes (``qsnn``: a converted QANN with untrained clips)."""
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
    "set_threshold",
]
