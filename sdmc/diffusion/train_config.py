"""The training configuration (:class:`TrainConfig`, :func:`make_config` from a preset) and the schedules a run
follows over its steps: the learning-rate factor (warm-up, constant, linear decay) and the EMA decay."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..config import DiffusionConfig, ModelConfig
from ..errors import ConfigError
from ..validate import LIMITS, check_fields, known_fields, spec
from .presets import DEFAULT_PRESET, get_preset

MAX_SAMPLE_GRID = 4096  # images in one progress grid (a 64x64 grid of CIFAR images is a 2048x2048 PNG)
_MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}
_DIFFUSION_FIELDS = {f.name for f in dataclasses.fields(DiffusionConfig)}


# ------------------------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """A full training run. ``batch_size`` is global (summed over ranks).

    ``resume``: ``"auto"`` (continue from the newest checkpoint in ``out`` if any), ``"never"`` (refuse to
    reuse a directory that holds checkpoints) or a checkpoint path.  ``init_from``: start from the weights
    of a model file (its architecture replaces ``model``); with ``tsm`` an SDDPM file is turned into an SDM
    TSM model first (every p = 1).  ``ema_warmup`` ramps the EMA decay as ``(1+step)/(10+step)``.
    ``threads``: CPU threads for the run (``torch.set_num_threads``; ``None``: torch's default); a CPU
    run is bit-for-bit deterministic for a given seed and thread count.
    """

    preset: str = DEFAULT_PRESET
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    steps: int = spec(600, range=(1, None))
    batch_size: int = spec(32, range=(1, None))
    lr: float = spec(2e-4, range=(0, None), open_low=True)
    warmup: int = spec(0, range=(0, None))
    lr_decay: int = spec(0, range=(0, None))
    grad_clip: float = spec(1.0, range=(0, None), open_low=True)
    ema: bool = True
    ema_decay: float = spec(0.9999, range=(0, 1), open_high=True)
    ema_warmup: bool = True
    seed: int = spec(0, range=(0, 2**63 - 1))
    out: str = "runs/digits"
    device: str = "auto"
    num_workers: int = spec(0, range=(0, 1024))
    log_every: int = spec(50, range=(1, None))
    save_every: int = spec(1000, range=(1, None))
    sample_every: int = spec(1000, range=(1, None))
    sample_n: int = spec(64, range=(0, MAX_SAMPLE_GRID), limit=True)
    sample_steps: int = spec(50, range=(1, LIMITS.diffusion_steps), limit=True)
    keep_last: int = spec(3, range=(1, None))
    resume: str = "auto"
    init_from: str | None = None
    init_weights: str = spec("auto", choices=("auto", "net", "ema"))
    tsm: bool = False
    tensorboard: bool | None = None
    progress: bool = True
    eager: bool = False  # True: train the plain spikingjelly model, not the compiled torch executor
    threads: int | None = spec(None, range=(1, 4096))
    precision: str = "fp32"  # the executor's precision: fp32 or bf16 (bf16 autocast, fp32 weights)
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if isinstance(self.diffusion, dict):
            self.diffusion = DiffusionConfig.from_dict(self.diffusion)
        self.validate()

    def validate(self) -> None:
        """Types and ranges of every field (:func:`sdmc.validate.check_fields`), then the combinations."""
        check_fields(self, "train", ConfigError)
        if self.sample_n and self.sample_steps > self.diffusion.num_timesteps:
            raise ConfigError(
                f"train.sample_steps={self.sample_steps} exceeds the {self.diffusion.num_timesteps} diffusion steps"
            )
        if self.tsm and not self.init_from:
            raise ConfigError("train.tsm: TSM fine-tuning needs --init-from SDDPM_CHECKPOINT (paper stage 2)")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["model"] = self.model.to_dict()
        d["diffusion"] = self.diffusion.to_dict()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """From JSON: unknown fields are refused, every value is checked."""
        return cls(**known_fields(cls, d, "train", ConfigError))


def make_config(preset: str = DEFAULT_PRESET, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of ``preset`` with ``overrides`` applied.

    An override may name a training field (``steps``, ``lr``, ...), a model field (``ch``, ``snn_steps``,
    ``arch``, ...) or a diffusion field (``schedule``, ``mean_type``, ...); ``None`` values are ignored.
    """
    p = get_preset(preset)
    model, diffusion, train = dict(p["model"]), dict(p.get("diffusion", {})), dict(p["train"])
    given = {k: v for k, v in overrides.items() if v is not None}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "diffusion", "preset"}
    for k, v in given.items():
        if k in train_fields:
            train[k] = v
        elif k in _MODEL_FIELDS:
            model[k] = v
        elif k in _DIFFUSION_FIELDS:
            diffusion[k] = v
        else:
            raise ConfigError(f"train override {k!r} is not a training, model or diffusion setting")
    if model.get("arch") == "ann":
        model.setdefault("attn", ())
    recorded = {k: (list(v) if isinstance(v, tuple) else v) for k, v in given.items() if k != "overrides"}
    train.setdefault("out", f"runs/{preset}")
    return TrainConfig(
        preset=preset, model=ModelConfig(**model), diffusion=DiffusionConfig(**diffusion), overrides=recorded, **train
    )


# ---------------------------------------------------------------------------------- pure functions
def warmup_factor(step: int, warmup: int) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based): ``min(1, (step+1)/warmup)``."""
    return 1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup)


def lr_factor(step: int, warmup: int, steps: int, decay: int) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based): the warm-up, then constant, then (``decay``
    > 0) a linear decay over the last ``decay`` of the ``steps`` steps: ``min(1, (steps - step) / decay)``.

    A run with ``decay`` equals, step for step, the constant-rate run it resumes from until ``steps - decay``."""
    f = warmup_factor(step, warmup)
    return f if decay <= 0 else f * min(1.0, max(steps - step, 0) / decay)


def ema_decay_at(step: int, decay: float, warmup: bool = True) -> float:
    """EMA decay used after optimiser step ``step``: ``min(decay, (1+step)/(10+step))`` with warm-up."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay
