"""Training checkpoints: where they live (``out/checkpoints/step_XXXXXXXX.pt``), atomic saving, validated
loading (``torch.load(weights_only=True)``, entries and types checked, non-finite tensors refused), the RNG
state they carry per rank, and the training time a run's ``metrics.jsonl`` records."""

from __future__ import annotations

import math
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import check_readable
from ..config import SdmcConfig
from ..errors import CheckpointError, ConfigError, first_line
from ..utils import atomic_path
from ..validate import check_finite

CKPT_RE = re.compile(r"^step_(\d{8,})\.pt$")


def _rng_state() -> dict[str, Any]:
    """Torch (CPU and current CUDA device), numpy and Python RNG states as tensors and ints."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "python": torch.tensor(py_internal, dtype=torch.int64),
        "python_version": int(py_version),
        "python_gauss": float("nan") if py_gauss is None else float(py_gauss),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            int(state["numpy_pos"]),
            int(state["numpy_has_gauss"]),
            float(state["numpy_gauss"]),
        )
    )
    gauss = state["python_gauss"]
    random.setstate(
        (
            int(state["python_version"]),
            tuple(int(v) for v in state["python"].tolist()),
            None if math.isnan(gauss) else gauss,
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def train_seconds(records: list[dict[str, Any]]) -> float:
    """Wall time of the optimisation loop from ``metrics.jsonl`` records (summed over resumes):
    ``sum_r (step_r - step_{r-1}) / it_per_s_r``."""
    total, prev = 0.0, 0
    for r in records:
        if r.get("it_per_s"):
            total += (int(r["step"]) - prev) / float(r["it_per_s"])
        prev = int(r["step"])
    return total


# ------------------------------------------------------------------------------------------ checkpoints
def checkpoint_path(out: str | os.PathLike, step: int) -> Path:
    return Path(out) / "checkpoints" / f"step_{step:08d}.pt"


def list_checkpoints(out: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of the training checkpoints in ``out/checkpoints``, oldest first."""
    d = Path(out) / "checkpoints"
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.match(p.name))]
    return sorted(found)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` atomically with ``torch.save`` (readers never see a half-written file)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


_CHECKPOINT_ENTRIES = {"net_model": dict, "optimizer": dict, "step": int, "sdmc_config": str, "train_config": str}


def load_checkpoint(path: str | os.PathLike, allow_nonfinite: bool | None = None) -> dict[str, Any]:
    """Read a training checkpoint with ``torch.load(weights_only=True)`` (no arbitrary unpickling) and check
    what training reads from it: the entries and their types, state_dicts of tensors, a config that parses, and
    finite weights (unless ``allow_nonfinite``).  Anything else is one :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training checkpoint {path} does not exist")
    check_readable(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"training checkpoint {path} cannot be read safely: {first_line(e)}") from None
    hint = "use --init-from to start from model weights"
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} is not an sdmc training checkpoint (it holds a {type(state).__name__}, not a dict); {hint}"
        )
    missing = [k for k in _CHECKPOINT_ENTRIES if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not an sdmc training checkpoint (missing {missing}); {hint}")
    for key, kind in _CHECKPOINT_ENTRIES.items():
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(state[key]).__name__}, not a {kind.__name__}")
    if state["step"] < 0:
        raise CheckpointError(f"{path}: entry 'step' is {state['step']}")
    for key in ("net_model", "ema_model"):
        sd = state.get(key)
        if sd is None:
            continue
        bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)] if isinstance(sd, dict) else [key]
        if bad:
            raise CheckpointError(f"{path}: entry {key!r} is not a state_dict of tensors (at {bad[0]!r})")
        check_finite(sd, f"{path} ({key})", CheckpointError, allow=allow_nonfinite)
    try:
        SdmcConfig.from_json(state["sdmc_config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return state


@torch.no_grad()
def state_fingerprint(state_dict: dict[str, torch.Tensor]) -> torch.Tensor:
    """float64 ``[n]``: the sum of every entry (a cheap check that ranks hold equal weights)."""
    return torch.stack([v.detach().double().sum().cpu() for v in state_dict.values()])


_PER_RANK_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def synced_entries(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state_dict entries all DDP ranks share after a step: everything but BN running statistics
    (per rank until DDP broadcasts rank 0's at the next forward)."""
    return {k: v for k, v in state_dict.items() if not k.endswith(_PER_RANK_BUFFERS)}
