"""Models shipped inside the package, named ``bundled:NAME`` wherever sdmc takes a model file
(``sdmc sample|eval|energy|compile|info bundled:digits``, ``sdmc.checkpoint.load_model("bundled:digits")``).

========  ====================  ==============================================================================
name      file                  model
========  ====================  ==============================================================================
digits    digits.safetensors    SDDPM spiking UNet (ch 32, ch_mult 1,2, one block, T=4, IF), 1x8x8, EMA
                                weights trained on the bundled digits; ``sdmc train --preset digits-bundled``
========  ====================  ==============================================================================

Each file is the native format (safetensors weights, the :class:`~sdmc.config.SdmcConfig` JSON in the
header) with two more header entries that :func:`sdmc.models.bundled.build.build_bundled` writes from a
training checkpoint (``python -m sdmc.models.bundled.build CHECKPOINT [NAME]``):

- ``sdmc_recipe``: the run's full training configuration, the command that reproduces it, its steps,
  wall time and CPU threads (a CPU run is deterministic for a given seed and thread count);
- ``sdmc_quality``: digits-FID / digits-IS of its samples, mean ± std over seeds, the real-data floor at
  the same ``n`` (:mod:`sdmc.metrics.quality`), and the solver, steps and ``n`` that produced them, so
  ``tests/test_bundled.py`` can check that the shipped weights reproduce them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import CheckpointError

PREFIX = "bundled:"
BUNDLED_DIR = Path(__file__).resolve().parent
RECIPE_KEY = "sdmc_recipe"
QUALITY_KEY = "sdmc_quality"


@dataclass(frozen=True)
class BundledModel:
    name: str
    file: str
    preset: str
    description: str


BUNDLED: dict[str, BundledModel] = {
    "digits": BundledModel(
        "digits",
        "digits.safetensors",
        "digits-bundled",
        "SDDPM spiking UNet (ch 32, T=4) trained on the bundled digits at their native 8x8 (EMA weights)",
    ),
}

# what build_bundled measures by default (and the bundled test re-measures one seed of): n=256 images per seed,
# 6 seeds. At n=256 one seed's digits-FID spreads widely (136..299 for the shipped model, while the real-data
# floor spreads 89..97), so a 3-seed mean can read 10 % better or worse than the 6-seed mean
QUALITY_SOLVER = ("dpm-solver++", 10)
QUALITY_N = 256
QUALITY_SEEDS = (0, 1, 2, 3, 4, 5)


def is_bundled(spec: str | os.PathLike) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def bundled_path(name: str) -> Path:
    """The file of bundled model ``name``; a clear error when the name is unknown or the file is absent."""
    if name not in BUNDLED:
        raise CheckpointError(f"{PREFIX}{name}: no such bundled model; bundled: {', '.join(sorted(BUNDLED))}")
    b = BUNDLED[name]
    path = BUNDLED_DIR / b.file
    if not path.is_file():
        raise CheckpointError(
            f"{PREFIX}{name}: the weights ({path}) are not in this installation; train them with "
            f"'sdmc train --preset {b.preset}' and pass the exported model.safetensors instead"
        )
    return path


def resolve(spec: str | os.PathLike) -> Path:
    """``bundled:NAME`` -> the shipped file; anything else -> ``Path(spec)``."""
    return bundled_path(spec[len(PREFIX) :]) if is_bundled(spec) else Path(spec)


def read_extras(path: str | os.PathLike) -> dict[str, Any]:
    """``{"recipe": ..., "quality": ...}`` recorded in a (bundled) native file's header (absent keys: ``None``)."""
    from safetensors import SafetensorError, safe_open

    p = resolve(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{p}: not a readable safetensors file: {e}") from None
    out: dict[str, Any] = {}
    for key, name in ((RECIPE_KEY, "recipe"), (QUALITY_KEY, "quality")):
        try:
            out[name] = json.loads(meta[key]) if key in meta else None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{p}: header entry {key!r} is not valid JSON ({e})") from None
    return out


__all__ = [
    "BUNDLED",
    "BundledModel",
    "PREFIX",
    "bundled_path",
    "is_bundled",
    "read_extras",
    "resolve",
]
