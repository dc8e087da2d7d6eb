"""Configuration dataclasses shared by models, checkpoints, training and sampling.

A native sdmc checkpoint stores one :class:`SdmcConfig` as JSON next to the weights, so a file alone is
enough to rebuild the model and its diffusion schedule.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

ARCHS = ("sddpm", "sdm", "ann", "qann", "qsnn")
SNN_NORMS = ("step", "running")
NEURONS = ("if", "lif")
CONFIG_VERSION = 1


@dataclass
class ModelConfig:
    """Architecture of a spiking (SDDPM / SDM) or ANN (pytorch-ddpm) UNet denoiser.

    ``arch``: ``sddpm`` (spiking UNet), ``sdm`` (spiking UNet with TSM convolutions), ``ann``, ``qann``
    (the ANN with ``bits``-bit clip-floor QuantReLUs, clips initialised to ``alpha_init``) or ``qsnn`` (a
    ``qann`` converted to IF neurons, :mod:`sdmc.convert`; ``signed_spikes``, ``snn_norm`` step|running).
    ``snn_steps`` is the number of SNN time steps T (ignored for ``ann``/``qann``; ``2**bits - 1`` for a
    conversion); ``diffusion_steps`` sizes the sinusoidal time-embedding table (1000 in every released
    model).  ``mid_attn``: the ANN UNets' self-attention in the first middle block (pytorch-ddpm: on).
    """

    arch: str = "sddpm"
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    snn_steps: int = 4
    img_ch: int = 3
    img_size: int = 32
    threshold: float = 1.0
    neuron: str = "if"
    tau: float = 2.0
    soft_reset: bool = False
    diffusion_steps: int = 1000
    dropout: float = 0.1
    attn: tuple[int, ...] = ()
    norm_groups: int = 32
    mid_attn: bool = True
    bits: int = 2
    alpha_init: float = 6.0
    signed_spikes: bool = False
    snn_norm: str = "step"

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn = tuple(int(a) for a in self.attn)
        self.validate()

    @property
    def spiking(self) -> bool:
        return self.arch in ("sddpm", "sdm", "qsnn")

    @property
    def tsm(self) -> bool:
        return self.arch == "sdm"

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"model.arch: unknown architecture {self.arch!r}; choose one of {ARCHS}")
        if self.neuron not in NEURONS:
            raise ConfigError(f"model.neuron: unknown neuron {self.neuron!r}; choose one of {NEURONS}")
        for name in ("ch", "num_res_blocks", "snn_steps", "img_ch", "img_size", "diffusion_steps"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ConfigError(f"model.ch_mult must be a non-empty list of positive ints, got {list(self.ch_mult)}")
        if self.ch % 2:
            raise ConfigError(f"model.ch must be even (sinusoidal embedding), got {self.ch}")
        factor = 2 ** (len(self.ch_mult) - 1)
        if self.img_size % factor:
            raise ConfigError(
                f"model.img_size={self.img_size} is not divisible by 2**(len(ch_mult)-1)={factor}; "
                "the UNet downsamples that many times"
            )
        if self.threshold <= 0:
            raise ConfigError(f"model.threshold must be > 0, got {self.threshold}")
        if self.arch in ("qann", "qsnn"):
            if int(self.bits) < 1:
                raise ConfigError(f"model.bits must be >= 1, got {self.bits}")
            if not self.alpha_init > 0:
                raise ConfigError(f"model.alpha_init must be > 0, got {self.alpha_init}")
            if self.snn_norm not in SNN_NORMS:
                raise ConfigError(f"model.snn_norm: unknown {self.snn_norm!r}; choose one of {SNN_NORMS}")
        if self.arch in ("ann", "qann", "qsnn"):
            for m in self.ch_mult:
                if (self.ch * m) % self.norm_groups:
                    raise ConfigError(
                        f"model.norm_groups={self.norm_groups} does not divide the channel count {self.ch * m}"
                    )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["attn"] = list(self.attn)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"model config: unknown field(s) {sorted(unknown)}")
        return cls(**d)


@dataclass
class DiffusionConfig:
    """Forward process: ``beta_t`` from ``beta_1`` to ``beta_T`` over ``num_timesteps`` steps."""

    num_timesteps: int = 1000
    beta_1: float = 1e-4
    beta_T: float = 0.02
    schedule: str = "linear"
    mean_type: str = "epsilon"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffusionConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class SdmcConfig:
    """Everything a native checkpoint records besides the weights."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    provenance: dict[str, Any] = field(default_factory=dict)
    version: int = CONFIG_VERSION

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "model": self.model.to_dict(),
                "diffusion": self.diffusion.to_dict(),
                "provenance": self.provenance,
            },
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> SdmcConfig:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"sdmc config is not valid JSON: {e}") from None
        if not isinstance(d, dict) or "model" not in d:
            raise ConfigError("sdmc config: missing the 'model' section")
        version = int(d.get("version", 0))
        if version > CONFIG_VERSION:
            raise ConfigError(f"sdmc config version {version} is newer than this sdmc ({CONFIG_VERSION}); upgrade sdmc")
        return cls(
            model=ModelConfig.from_dict(d["model"]),
            diffusion=DiffusionConfig.from_dict(d.get("diffusion", {})),
            provenance=dict(d.get("provenance", {})),
            version=CONFIG_VERSION,
        )
