"""What a training run writes besides checkpoints: ``metrics.jsonl`` (kept consistent across resumes), sample
grids, TensorBoard scalars, stale temp files removed at start, and the exported EMA model."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import SdmcConfig
from ..errors import ConfigError, TrainingError
from ..utils import atomic_write_text
from .checkpoints import (
    _rng_state,
    checkpoint_path,
    list_checkpoints,
    save_checkpoint,
    state_fingerprint,
    synced_entries,
)
from .schedule import NoiseSchedule
from .train_config import TrainConfig

if TYPE_CHECKING:  # the run whose outputs these are
    from .train import _Run


# ---------------------------------------------------------------------------------------- sampling
def sample_grid(model: nn.Module, cfg: SdmcConfig, n: int, steps: int, seed: int, device: torch.device) -> torch.Tensor:
    """``n`` DDIM samples in [-1, 1] from fixed noise (``seed``); the global RNG states are left as they were."""
    from .sampling import sample_images

    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return sample_images(
            model, NoiseSchedule(cfg.diffusion), n, solver="ddim", steps=steps, seed=seed, device=device, progress=False
        )


def _tensorboard_writer(cfg: TrainConfig, out: Path):
    if cfg.tensorboard is False:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if cfg.tensorboard:
            raise ConfigError("train.tensorboard=True but tensorboard is not installed") from None
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


# -------------------------------------------------------------------------------------- outputs
# the temporary files sdmc.utils.atomic_path writes beside each output of a run (".NAME.XXXXXXXX.tmp")
_TEMP_RE = {
    ".": re.compile(r"^\.(metrics\.jsonl|train_config\.json|model\.safetensors)\.[^/]+\.tmp$"),
    "checkpoints": re.compile(r"^\.step_\d{8,}\.pt\.[^/]+\.tmp$"),
    "samples": re.compile(r"^\.step_\d{8,}\.png\.[^/]+\.tmp$"),
}


def remove_stale_temps(out: str | os.PathLike) -> list[str]:
    """Delete the temporary files a killed run left beside its outputs in ``out`` (only those: names of the
    run's own outputs in ``atomic_path``'s pattern); returns their names.  Call it as the only writer of ``out``
    (the CLI holds ``out``'s lock)."""
    removed = []
    for sub, pattern in _TEMP_RE.items():
        d = Path(out) / sub
        if not d.is_dir():
            continue
        for f in d.iterdir():
            if pattern.match(f.name) and f.is_file():
                f.unlink(missing_ok=True)
                removed.append(str(Path(sub) / f.name) if sub != "." else f.name)
    return sorted(removed)


def read_metrics(path: Path, step: int | None = None, say=None) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (all, or those up to ``step``: on resume, where the checkpoint
    was written; a record after it belongs to the part of the run that is about to be redone).  Lines that are
    not a JSON object with an integer ``step`` (a torn or hand-edited file) are dropped, with a warning to
    ``say`` when given.  A missing file has no records."""
    path = Path(path)
    if not path.is_file():
        return []
    records, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not (isinstance(rec, dict) and isinstance(rec.get("step"), int)):
            bad += 1
            continue
        if step is None or rec["step"] <= step:
            records.append(rec)
    if bad and say is not None:
        say(f"{path}: dropped {bad} unreadable line(s)")
    return records


class _Outputs:
    """What rank 0 writes while training: checkpoints (every rank takes part in their collectives),
    ``metrics.jsonl``, sample grids, ``train_config.json`` and TensorBoard scalars."""

    def __init__(self, run: _Run, state: dict[str, Any] | None, say) -> None:
        self.run = run
        self.records: list[dict[str, Any]] = []
        self.writer = None
        self.t_start = time.perf_counter()
        if run.d.main:
            out = run.out
            out.mkdir(parents=True, exist_ok=True)
            removed = remove_stale_temps(out)
            if removed:
                say(f"removed {len(removed)} temporary file(s) an interrupted run left: {', '.join(removed[:3])}")
            if state is not None:
                self.records = read_metrics(out / "metrics.jsonl", run.step, say)
            atomic_write_text(out / "train_config.json", run.cfg.to_json())
            self.writer = _tensorboard_writer(run.cfg, out)
        if run.cfg.device.startswith("cuda") or run.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _gather_rng(self) -> list[dict[str, Any]]:
        import torch.distributed as dist

        mine = _rng_state()
        if self.run.d.world == 1:
            return [mine]
        allr: list[Any] = [None] * self.run.d.world
        dist.all_gather_object(allr, mine)
        return allr

    def _gather_fingerprints(self) -> torch.Tensor:
        import torch.distributed as dist

        run = self.run
        mine = state_fingerprint(synced_entries(run.model.state_dict()))
        if run.d.world == 1:
            return mine[None]
        mine = mine.to(run.device)
        allf = [torch.empty_like(mine) for _ in range(run.d.world)]
        dist.all_gather(allf, mine)
        return torch.stack([f.cpu() for f in allf])

    def checkpoint(self, last_loss: float) -> None:
        """Save the state at ``run.step`` (collectives: every rank calls this) and drop the oldest ones."""
        import torch.distributed as dist

        run, d, at = self.run, self.run.d, self.run.step
        rngs = self._gather_rng()
        prints = self._gather_fingerprints()
        if not (prints == prints[0]).all():
            bad = [r for r in range(d.world) if not torch.equal(prints[r], prints[0])]
            raise TrainingError(
                f"ranks {bad} hold weights different from rank 0 at step {at}; distributed training lost sync"
            )
        if d.main:
            ckpt = {
                "net_model": run.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "step": at,
                "rng": rngs,
                "loss": last_loss,
                "world_size": d.world,
                "global_batch": run.cfg.batch_size,
                "rank_fingerprints": prints,
                "metrics_window": list(run.window),
                "elapsed_s": run.elapsed + (time.perf_counter() - self.t_start),
                "sdmc_config": run.sdmc_cfg.to_json(),
                "train_config": run.cfg.to_json(),
            }
            if run.ema is not None:
                ckpt["ema_model"] = run.ema.state_dict()
            save_checkpoint(checkpoint_path(run.out, at), ckpt)
            for _, old in list_checkpoints(run.out)[: -run.cfg.keep_last]:
                old.unlink(missing_ok=True)
        if d.world > 1:
            dist.barrier()

    def log(self, rec: dict[str, Any]) -> None:
        """Append one ``metrics.jsonl`` record (rewritten atomically) and its TensorBoard scalars."""
        self.records.append(rec)
        atomic_write_text(self.run.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.records))
        if self.writer is not None:
            for k in ("loss", "lr", "grad_norm", "it_per_s"):
                self.writer.add_scalar(f"train/{k}", rec[k], rec["step"])

    def samples(self) -> None:
        run = self.run
        if not run.d.main or run.cfg.sample_n == 0:
            return
        from ..data.images import save_grid

        cfg = run.cfg
        imgs = sample_grid(run.trained, run.sdmc_cfg, cfg.sample_n, cfg.sample_steps, cfg.seed, run.device)
        save_grid(imgs.cpu(), run.out / "samples" / f"step_{run.step:08d}.png")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
