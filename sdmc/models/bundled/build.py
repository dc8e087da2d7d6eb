"""Building a bundled model file from a training checkpoint: its EMA weights, the recipe that reproduces it
and its measured digits quality (``python -m sdmc.models.bundled.build runs/X/checkpoints/step_N.pt [NAME]``).

Kept apart from :mod:`sdmc.models.bundled` (the registry that :mod:`sdmc.checkpoint` asks to resolve
``bundled:NAME``): building needs the trainer and the checkpoint reader, which need the registry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ...errors import CheckpointError
from . import BUNDLED, BUNDLED_DIR, PREFIX, QUALITY_KEY, QUALITY_N, QUALITY_SEEDS, QUALITY_SOLVER, RECIPE_KEY

_RECIPE_FIELDS = (
    "dataset",
    "batch_size",
    "lr",
    "warmup",
    "lr_decay",
    "grad_clip",
    "ema",
    "ema_decay",
    "ema_warmup",
    "seed",
)


def recipe_command(train_config: dict[str, Any], preset: str, steps: int) -> str:
    """The ``sdmc train`` command that reproduces ``train_config`` (the JSON a run records): ``--preset
    PRESET --steps N`` when the preset gives every field that shapes the weights, else the run's own
    preset with each differing setting spelled out."""
    from ...diffusion.train import make_config

    ref = make_config(preset, steps=steps)
    same = (
        all(train_config.get(k) == getattr(ref, k) for k in _RECIPE_FIELDS)
        and train_config.get("model") == ref.model.to_dict()
        and train_config.get("diffusion") == ref.diffusion.to_dict()
    )
    threads = f" --threads {train_config['threads']}" if train_config.get("threads") else ""
    if same:
        return f"sdmc train --preset {preset} --steps {steps}{threads}"
    base = make_config(train_config.get("preset", "digits"))
    parts = [f"sdmc train --preset {base.preset} --steps {steps}{threads}"]
    for k in _RECIPE_FIELDS:
        if train_config.get(k) != getattr(base, k):
            v = train_config.get(k)
            flag = "--" + k.replace("_", "-")
            parts.append(flag if v is True else f"--no-{k.replace('_', '-')}" if v is False else f"{flag} {v}")
    if train_config.get("model") != base.model.to_dict() or train_config.get("diffusion") != base.diffusion.to_dict():
        parts.append("(model/diffusion differ from the preset: see train_config)")
    return " ".join(parts)


def build_bundled(
    checkpoint: str | os.PathLike,
    name: str = "digits",
    out: str | os.PathLike | None = None,
    n: int = QUALITY_N,
    seeds: Sequence[int] = QUALITY_SEEDS,
    solver: tuple[str, int] = QUALITY_SOLVER,
    batch_size: int = 256,
    train_seconds: float | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Write the bundled model ``name`` (default: into the package) from a training checkpoint
    (``runs/X/checkpoints/step_N.pt``): its EMA weights, config, recipe and measured quality.

    Quality: ``n`` images per seed from ``solver = (name, steps)``, digits-FID / IS per seed, the floor at
    ``n``.  ``train_seconds`` (default: summed from the run's ``metrics.jsonl`` up to the checkpoint's step).
    ``threads``: the CPU threads the run used, for a run whose configuration does not record them (a CPU run is
    deterministic only for a fixed thread count, so the recipe names it).
    """
    from ...checkpoint import build_and_load, save_model
    from ...config import SdmcConfig
    from ...diffusion.train import load_checkpoint
    from ...diffusion.train import train_seconds as loop_seconds
    from ...diffusion.train_outputs import read_metrics
    from ...metrics.quality import model_quality

    if name not in BUNDLED:
        raise CheckpointError(f"{PREFIX}{name}: no such bundled model; bundled: {', '.join(sorted(BUNDLED))}")
    ckpt = Path(checkpoint)
    state = load_checkpoint(ckpt)
    if "ema_model" not in state:
        raise CheckpointError(f"{ckpt}: has no EMA weights; the bundled models ship EMA weights")
    cfg = SdmcConfig.from_json(state["sdmc_config"])
    tc = json.loads(state["train_config"])
    if threads is not None:
        if tc.get("threads") not in (None, threads):
            raise CheckpointError(f"{ckpt}: the run recorded threads={tc['threads']}, not {threads}")
        tc["threads"] = threads
    step = int(state["step"])
    model = build_and_load(state["ema_model"], cfg.model, source=str(ckpt)).eval()
    if train_seconds is None:
        metrics = ckpt.parent.parent / "metrics.jsonl"
        if metrics.is_file():
            train_seconds = loop_seconds(read_metrics(metrics, step, say=log))
    sname, ssteps = solver
    log(
        f"bundling {ckpt} (step {step}) as {PREFIX}{name}: measuring digits quality, {sname} {ssteps} steps, "
        f"n={n}, seeds {list(seeds)}"
    )
    quality = model_quality(model, cfg.diffusion, n, seeds, sname, ssteps, batch_size=batch_size)
    log("  " + quality.line())
    preset = BUNDLED[name].preset
    recipe = {
        "command": recipe_command(tc, preset, step),
        "preset": preset,
        "steps": step,
        "train_seconds": None if train_seconds is None else round(float(train_seconds), 1),
        "threads": tc.get("threads"),
        "train_config": tc,
        "checkpoint": ckpt.name,
    }
    qual = {**quality.to_dict(), "solver": sname, "steps": ssteps, "batch_size": batch_size}
    cfg.provenance.update(
        {"bundled": name, "trained_by": "sdmc train", "preset": preset, "steps": step, "weights": "ema"}
    )
    path = Path(out) if out is not None else BUNDLED_DIR / BUNDLED[name].file
    save_model(path, model, cfg, metadata={RECIPE_KEY: json.dumps(recipe), QUALITY_KEY: json.dumps(qual)})
    log(f"wrote {path}: {recipe['command']}")
    return path


__all__ = ["build_bundled", "recipe_command"]


if __name__ == "__main__":  # python -m sdmc.models.bundled.build CHECKPOINT [NAME]: (re)build a bundled file
    import sys

    if len(sys.argv) < 2:
        print("usage: python -m sdmc.models.bundled.build runs/X/checkpoints/step_N.pt [NAME]", file=sys.stderr)
        sys.exit(2)
    build_bundled(sys.argv[1], *(sys.argv[2:3] or []))
