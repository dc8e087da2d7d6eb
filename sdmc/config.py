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
from .validate import LIMITS, check_fields, check_value, known_fields, parse_json, spec

ARCHS = ("sddpm", "sdm", "ann", "qann", "qsnn")
SNN_NORMS = ("step", "running")
NEURONS = ("if", "lif")
SCHEDULES = ("linear", "cosine")
MEAN_TYPES = ("epsilon", "x0", "v")
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
    Every field is type- and range-checked on construction (:func:`sdmc.validate.check_fields`); the size
    fields are bounded by :data:`sdmc.validate.LIMITS`.
    """

    arch: str = spec("sddpm", choices=ARCHS)
    ch: int = spec(128, range=(2, LIMITS.ch), limit=True)
    ch_mult: tuple[int, ...] = spec((1, 2, 2, 4), range=(1, LIMITS.ch_mult), length=(1, LIMITS.levels), limit=True)
    num_res_blocks: int = spec(2, range=(1, LIMITS.num_res_blocks), limit=True)
    snn_steps: int = spec(4, range=(1, LIMITS.snn_steps), limit=True)
    img_ch: int = spec(3, range=(1, LIMITS.img_ch), limit=True)
    img_size: int = spec(32, range=(1, LIMITS.img_size), limit=True)
    threshold: float = spec(1.0, range=(0, None), open_low=True)
    neuron: str = spec("if", choices=NEURONS)
    tau: float = spec(2.0, range=(1, None))
    soft_reset: bool = False
    diffusion_steps: int = spec(1000, range=(1, LIMITS.diffusion_steps), limit=True)
    dropout: float = spec(0.1, range=(0, 1), open_high=True)
    attn: tuple[int, ...] = spec((), range=(0, LIMITS.levels - 1), length=(0, LIMITS.levels))
    norm_groups: int = spec(32, range=(1, LIMITS.ch))
    mid_attn: bool = True
    bits: int = spec(2, range=(1, LIMITS.bits), limit=True)
    alpha_init: float = spec(6.0, range=(0, None), open_low=True)
    signed_spikes: bool = False
    snn_norm: str = spec("step", choices=SNN_NORMS)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def spiking(self) -> bool:
        return self.arch in ("sddpm", "sdm", "qsnn")

    @property
    def tsm(self) -> bool:
        return self.arch == "sdm"

    def validate(self) -> None:
        """Types and ranges of every field, then what the fields must satisfy together."""
        check_fields(self, "model", ConfigError)
        if self.ch % 2:
            raise ConfigError(f"model.ch must be even (sinusoidal embedding), got {self.ch}")
        bad_attn = [a for a in self.attn if a >= len(self.ch_mult)]
        if bad_attn:
            raise ConfigError(
                f"model.attn: level {bad_attn[0]} does not exist (ch_mult has {len(self.ch_mult)} levels)"
            )
        factor = 2 ** (len(self.ch_mult) - 1)
        if self.img_size % factor:
            raise ConfigError(
                f"model.img_size={self.img_size} is not divisible by 2**(len(ch_mult)-1)={factor}; "
                "the UNet downsamples that many times"
            )
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
        """From JSON: unknown fields are refused, every value is checked."""
        return cls(**known_fields(cls, d, "model", ConfigError))


@dataclass
class DiffusionConfig:
    """Forward process: ``beta_t`` from ``beta_1`` to ``beta_T`` over ``num_timesteps`` steps (``schedule``
    linear or cosine; the cosine schedule ignores the betas); the network predicts ``mean_type``."""

    num_timesteps: int = spec(1000, range=(1, LIMITS.diffusion_steps), limit=True)
    beta_1: float = spec(1e-4, range=(0, 1), open_low=True, open_high=True)
    beta_T: float = spec(0.02, range=(0, 1), open_low=True, open_high=True)
    schedule: str = spec("linear", choices=SCHEDULES)
    mean_type: str = spec("epsilon", choices=MEAN_TYPES)

    def __post_init__(self) -> None:
        check_fields(self, "diffusion", ConfigError)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffusionConfig:
        """From JSON: unknown fields are ignored (older files), every known value is checked."""
        return cls(**known_fields(cls, d, "diffusion", ConfigError, strict=False))


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
        d = parse_json(text, "sdmc config", ConfigError)
        if not isinstance(d, dict) or "model" not in d:
            raise ConfigError("sdmc config: missing the 'model' section")
        version = check_value(d.get("version", 0), int, {}, "sdmc config version", ConfigError)
        if version > CONFIG_VERSION:
            raise ConfigError(f"sdmc config version {version} is newer than this sdmc ({CONFIG_VERSION}); upgrade sdmc")
        return cls(
            model=ModelConfig.from_dict(d["model"]),
            diffusion=DiffusionConfig.from_dict(d.get("diffusion", {})),
            provenance=check_value(d.get("provenance", {}), dict, {}, "sdmc config provenance", ConfigError),
            version=CONFIG_VERSION,
        )
