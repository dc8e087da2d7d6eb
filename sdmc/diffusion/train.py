"""Diffusion training: ``sdmc train`` and :func:`train`.

One optimisation step (per rank, then DistributedDataParallel averages the gradients)::

    x0 ~ data, t ~ U{0..N-1}, eps ~ N(0, I)
    loss = || model(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) - target ||^2      (target: eps, x0 or v)
    g    = clip(grad loss, max_norm=grad_clip);  Adam step with lr * min(1, (step+1) / warmup)
    ema  = d * ema + (1 - d) * state_dict     for every float entry (BN buffers too); integers copied;
           d = min(ema_decay, (1 + step) / (10 + step)) with ema_warmup
    neuron state reset (the spiking UNet also resets itself after every call)

``batch_size`` is the global batch: ``world_size`` ranks take ``batch_size / world_size`` images each.
Training checkpoints (``out/checkpoints/step_XXXXXXXX.pt``) load with ``torch.load(weights_only=True)``:
``net_model`` / ``ema_model`` state_dicts (the released-checkpoint names), ``optimizer``, ``scheduler``,
``step``, per-rank RNG states as tensors, ``sdmc_config`` (the :class:`SdmcConfig` JSON) and
``train_config`` (JSON).  Resuming from one continues bit-for-bit where the run left off.

This module is the run itself (models, devices and ranks, resume, the step and the loop); its pieces live
beside it: :mod:`.train_config` (the configuration, presets, learning-rate and EMA schedules),
:mod:`.checkpoints` (saving, validated loading, RNG state), :mod:`.train_data` (dataset, resumable sampler,
loader) and :mod:`.train_outputs` (metrics, sample grids, TensorBoard, stale temp files).  Their public names
are importable from here as before.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import SdmcConfig
from ..errors import CheckpointError, ConfigError, TrainingError
from .checkpoints import (  # noqa: F401  (the training API keeps its names here)
    CKPT_RE,
    _set_rng_state,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    state_fingerprint,
    synced_entries,
    train_seconds,
)
from .schedule import NoiseSchedule
from .train_config import MAX_SAMPLE_GRID, TrainConfig, ema_decay_at, lr_factor, make_config, warmup_factor  # noqa: F401
from .train_data import ResumableSampler, _TrainData  # noqa: F401
from .train_outputs import _Outputs, remove_stale_temps, sample_grid  # noqa: F401


@torch.no_grad()
def ema_update_(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """In place, over the whole state_dict: ``e = decay*e + (1-decay)*m`` (floats), ``e = m`` (integers)."""
    esd, msd = ema.state_dict(), model.state_dict()
    if esd.keys() != msd.keys():
        raise TrainingError(f"EMA model and model have different state_dict keys: {sorted(set(esd) ^ set(msd))[:5]}")
    floats_e, floats_m = [], []
    for k, e in esd.items():
        m = msd[k]
        if e.is_floating_point():
            floats_e.append(e)
            floats_m.append(m.detach())
        else:
            e.copy_(m)
    if floats_e:
        torch._foreach_lerp_(floats_e, floats_m, 1.0 - decay)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -------------------------------------------------------------------------------------- distributed
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str) -> _Dist:
    """Join the process group torchrun (or a test) describes through RANK / WORLD_SIZE / LOCAL_RANK."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), False)
    if world <= 1:
        return _Dist()
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), True)


def _resolve_device(name: str, d: _Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={name!r} but CUDA is not available")
        if d.world > 1 or dev.index is None:
            dev = torch.device("cuda", d.local_rank if d.world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    return dev


# -------------------------------------------------------------------------------------------- model
def _build_models(cfg: TrainConfig, log: Callable[[str], None]) -> nn.Module:
    """The model to train: built from ``cfg.model``, or loaded from ``cfg.init_from`` (then TSM-inherited)."""
    from ..models import build_model

    if not cfg.init_from:
        return build_model(cfg.model)
    from .. import checkpoint as ckpt_io

    model, loaded = ckpt_io.load_model(
        cfg.init_from, weights=cfg.init_weights, snn_steps=cfg.overrides.get("snn_steps"), device="cpu"
    )
    what = f"{loaded.model.arch} T={loaded.model.snn_steps} ch={loaded.model.ch}"
    if cfg.tsm:
        if loaded.model.arch == "sdm":
            log(f"init: {cfg.init_from} is already an SDM TSM model; fine-tuning it as is")
        elif loaded.model.arch != "sddpm":
            raise ConfigError(f"--tsm needs an SDDPM checkpoint, {cfg.init_from} holds arch {loaded.model.arch!r}")
        else:
            model = ckpt_io.inherit_tsm(model)
            log(f"init: {cfg.init_from} ({what}) -> SDM TSM model, every p = 1 (paper stage 2)")
    else:
        log(f"init: weights from {cfg.init_from} ({what})")
    cfg.model = copy.deepcopy(model.config)
    return model.train()


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _reset_neurons(model: nn.Module) -> None:
    try:
        from spikingjelly.activation_based import functional
    except ImportError:  # pragma: no cover - spikingjelly is a dependency
        return
    functional.reset_net(model)


# --------------------------------------------------------------------------------------- the trainer
def _loss(schedule: NoiseSchedule, model: nn.Module, x0: torch.Tensor) -> torch.Tensor:
    """The training loss of one batch (module-level so tests can inject faults)."""
    return schedule.loss(model, x0)


def _check_resume_compatible(state: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    saved = SdmcConfig.from_json(state["sdmc_config"])
    diffs = [
        f"model.{k}: checkpoint {v!r} != requested {getattr(cfg.model, k)!r}"
        for k, v in saved.model.to_dict().items()
        if v != cfg.model.to_dict()[k]
    ]
    diffs += [
        f"diffusion.{k}: checkpoint {v!r} != requested {getattr(cfg.diffusion, k)!r}"
        for k, v in saved.diffusion.to_dict().items()
        if v != cfg.diffusion.to_dict()[k]
    ]
    if diffs:
        raise ConfigError(
            f"cannot resume from {path}: it was trained with a different configuration ("
            + "; ".join(diffs)
            + "). Use another --out or --resume never."
        )


class TrainingInterrupted(TrainingError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint it can resume from."""


class _Interrupts:
    """While training (main thread only): the first SIGINT / SIGTERM is noted (``signum``) and acted on after the
    step in progress (:func:`_stop_if_interrupted` saves a checkpoint, then stops); a second one interrupts at
    once with ``KeyboardInterrupt`` (every file on disk stays whole: they are written atomically)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> _Interrupts:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)


Executor = Callable[[nn.Module, torch.device], nn.Module]
"""What :func:`train` calls to turn the built model into the module it trains (same state_dict names)."""


def compiled_executor(model: nn.Module, device: torch.device, precision: str = "fp32") -> nn.Module:
    """The default :data:`Executor`: the compiled torch executor in train mode (ANN UNets: the model itself);
    ``device`` picks its layout (channels-last on CPU only); ``precision`` is checked against the device."""
    from ..backends.torch_exec import prepare

    return prepare(model, "train", device=device, precision=precision)


def train(
    cfg: TrainConfig,
    dataset: torch.utils.data.Dataset | None = None,
    log: Callable[[str], None] | None = None,
    executor: Executor | None = None,
) -> Path:
    """Run (or resume) the training ``cfg`` describes; return the exported EMA model file.

    ``dataset`` replaces ``load_dataset(cfg.dataset)`` (items ``(image [C,H,W] in [-1,1], label)``).
    ``executor`` turns the model into what is trained (default :func:`compiled_executor`; ``cfg.eager``
    trains the model itself).  Under ``torchrun`` every rank calls this; rank 0 alone writes.  Raises
    :class:`TrainingError` on a non-finite loss or gradient (the checkpoints already written stay as they are).
    """
    import torch.distributed as dist

    cfg = copy.deepcopy(cfg)
    cfg.validate()
    if cfg.eager:
        executor = None
    elif executor is None:
        executor = functools.partial(compiled_executor, precision=cfg.precision)
    d = _init_distributed(
        "cuda" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    say = (lambda s: log(s)) if d.main else (lambda s: None)
    threads = torch.get_num_threads()
    try:
        if cfg.threads is not None:
            torch.set_num_threads(int(cfg.threads))
        with _Interrupts() as interrupts:
            return _train(cfg, dataset, d, say, executor, interrupts)
    finally:
        torch.set_num_threads(threads)
        if d.owns_group and dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ the run
@dataclass
class _Run:
    """Everything one training run holds: the model being trained (``net`` is its DDP wrapper or itself),
    its EMA copy, the optimiser and learning-rate schedule, and the step reached."""

    cfg: TrainConfig
    d: _Dist
    device: torch.device
    out: Path
    per_rank: int
    model: nn.Module
    ema: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    schedule: NoiseSchedule
    sdmc_cfg: SdmcConfig
    net: nn.Module | None = None
    step: int = 0
    last_loss: float = float("nan")
    window: list[float] = field(default_factory=list)  # the losses since the last metrics record
    elapsed: float = 0.0  # seconds of this run before the current process (from the resumed checkpoint)
    interrupts: _Interrupts | None = None

    @property
    def trained(self) -> nn.Module:
        """What samples and the export come from: the EMA model when there is one."""
        return self.ema if self.ema is not None else self.model


def _train(cfg: TrainConfig, dataset, d: _Dist, say, executor: Executor | None, interrupts: _Interrupts) -> Path:
    device = _resolve_device(cfg.device, d)
    if cfg.batch_size % d.world:
        raise ConfigError(f"train.batch_size={cfg.batch_size} (global) is not divisible by the {d.world} ranks")
    state, resume_path = _resume_point(cfg, Path(cfg.out), say)
    _seed_all(cfg.seed + d.rank)
    run = _build_run(cfg, d, device, state, resume_path, executor, say)
    run.interrupts = interrupts
    if state is not None:
        _restore(run, state, resume_path, say)
    run.net = _wrap_ddp(run.model, d, device)
    data = _TrainData.make(cfg, dataset, d, run.per_rank, device)
    outputs = _Outputs(run, state, say)
    _announce(run, data, say)
    _loop(run, data, outputs)
    return _export(run, outputs, say)


# --------------------------------------------------------------------------------------- resume
def _resume_point(cfg: TrainConfig, out: Path, say) -> tuple[dict[str, Any] | None, Path | None]:
    """The checkpoint ``cfg.resume`` designates, read (``(None, None)``: start from scratch).  ``auto``: the newest
    checkpoint in ``out`` that loads (one that does not, a file cut short by a crash or damaged, is skipped with a
    warning and left in place); none loading is an error, not a fresh start over them."""
    existing = list_checkpoints(out)
    if cfg.resume == "never":
        if existing:
            raise ConfigError(
                f"{out} already holds training checkpoints ({existing[-1][1].name}); "
                "use --resume auto to continue or another --out"
            )
        return None, None
    if cfg.resume != "auto":
        return load_checkpoint(cfg.resume), Path(cfg.resume)
    failures: list[str] = []
    for _, path in reversed(existing):
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            failures.append(str(e))
            say(f"resume: skipping {path.name}, it does not load: {e}")
            continue
        return state, path
    if failures:
        raise CheckpointError(
            f"none of the {len(failures)} checkpoints in {out / 'checkpoints'} loads (newest: {failures[0]}); "
            "give one with --resume PATH, or use another --out"
        )
    return None, None


def _build_run(cfg, d: _Dist, device, state, resume_path, executor: Executor | None, say) -> _Run:
    """Build the model (fresh, from ``--init-from`` or shaped for the resumed checkpoint), its EMA copy and the
    optimiser; the global RNG must be seeded: the weights are initialised from it."""
    if state is not None:
        cfg.model = SdmcConfig.from_json(state["sdmc_config"]).model if cfg.init_from else cfg.model
        _check_resume_compatible(state, cfg, resume_path)
        from ..models import build_model

        model = build_model(cfg.model)
    else:
        model = _build_models(cfg, say)
    sdmc_cfg = SdmcConfig(
        model=cfg.model,
        diffusion=cfg.diffusion,
        provenance={"trained_by": "sdmc train", "preset": cfg.preset, "dataset": cfg.dataset},
    )
    schedule = NoiseSchedule(cfg.diffusion)
    if executor is not None:  # e.g. the compiled torch executor: same state_dict names and numbers, faster
        model = executor(model, device)
    model.to(device).train()
    ema = copy.deepcopy(model).eval() if cfg.ema else None
    if ema is not None:
        ema.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    warmup = cfg.warmup
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, cfg.steps, cfg.lr_decay))
    return _Run(
        cfg, d, device, Path(cfg.out), cfg.batch_size // d.world, model, ema, optimizer, scheduler, schedule, sdmc_cfg
    )


def _restore(run: _Run, state: dict[str, Any], path: Path, say) -> None:
    """Load a training checkpoint's weights, optimiser, schedule, step and RNG states into ``run``."""
    try:
        run.model.load_state_dict(state["net_model"])
        if run.ema is not None:
            run.ema.load_state_dict(state.get("ema_model", state["net_model"]))
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"cannot resume from {path}: {e}") from None
    run.step = int(state["step"])
    window = state.get("metrics_window", [])
    run.window = [float(v) for v in window] if isinstance(window, list) else []
    run.elapsed = float(state.get("elapsed_s", 0.0)) if isinstance(state.get("elapsed_s"), (int, float)) else 0.0
    rngs = state.get("rng", [])
    if len(rngs) == run.d.world:
        _set_rng_state(rngs[run.d.rank])
    else:
        say(f"resume: checkpoint has RNG states for {len(rngs)} ranks, running {run.d.world}; reseeding")
        _seed_all(run.cfg.seed + run.d.rank + 1_000_003 * run.step)
    say(f"resuming from {path} at step {run.step}")


def _wrap_ddp(model: nn.Module, d: _Dist, device: torch.device) -> nn.Module:
    if d.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def _announce(run: _Run, data: _TrainData, say) -> None:
    cfg, m, d = run.cfg, run.cfg.model, run.d
    n_params = _count_params(run.model)
    say(
        f"sdmc train: preset {cfg.preset}: {m.arch} ch={m.ch} ch_mult={list(m.ch_mult)} res_blocks="
        f"{m.num_res_blocks} {f'T={m.snn_steps} ' if m.spiking else ''}"
        f"{f'{m.bits}-bit ' if m.arch == 'qann' else ''}{m.img_ch}x{m.img_size}x{m.img_size}, "
        f"{n_params / 1e6:.2f}M params"
    )
    say(
        f"  data {cfg.dataset}: {data.size} images; global batch {cfg.batch_size} = {run.per_rank} per rank x "
        f"{d.world} rank(s); {data.steps_per_epoch} steps/epoch; steps {run.step}->{cfg.steps}"
    )
    say(
        f"  Adam lr {cfg.lr:g}, warm-up {cfg.warmup}, grad clip {cfg.grad_clip}, "
        f"EMA {f'{cfg.ema_decay:g}' if cfg.ema else 'off'}; device {run.device}"
        f"{f' ({torch.get_num_threads()} threads)' if run.device.type == 'cpu' else ''}; out {run.out}"
    )


# ----------------------------------------------------------------------------------------- step
@dataclass
class _StepResult:
    loss: float
    grad_norm: float
    lr: float
    ema_decay: float


def _train_step(run: _Run, x0: torch.Tensor) -> _StepResult:
    """One optimisation step on the batch ``x0`` (loss averaged over ranks, clipped gradients, Adam, the
    learning-rate schedule, neuron reset, EMA); ``run.step`` advances by one."""
    import torch.distributed as dist

    cfg, d = run.cfg, run.d
    x0 = x0.to(run.device, non_blocking=True).float()
    loss = _loss(run.schedule, run.net, x0)
    loss_avg = loss.detach().clone()
    if d.world > 1:
        dist.all_reduce(loss_avg)
        loss_avg /= d.world
    loss_value = float(loss_avg)
    if not math.isfinite(loss_value):
        raise TrainingError(f"non-finite loss ({loss_value}) at step {run.step + 1}{_last_good(run.out)}")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip))
    if not math.isfinite(grad_norm):
        raise TrainingError(f"non-finite gradient norm ({grad_norm}) at step {run.step + 1}{_last_good(run.out)}")
    run.optimizer.step()
    lr_now = run.scheduler.get_last_lr()[0]
    run.scheduler.step()
    _reset_neurons(run.model)
    decay = ema_decay_at(run.step, cfg.ema_decay, cfg.ema_warmup)
    if run.ema is not None:
        ema_update_(run.ema, run.model, decay)
    run.step += 1
    return _StepResult(loss_value, grad_norm, lr_now, decay)


def _last_good(out: Path) -> str:
    good = list_checkpoints(out)
    return f"; last good checkpoint: {good[-1][1]}" if good else "; no checkpoint was written yet"


# ----------------------------------------------------------------------------------------- loop
def _loop(run: _Run, data: _TrainData, outputs: _Outputs) -> None:
    """Steps until ``cfg.steps``, logging every ``log_every`` steps (the mean loss since the last record),
    checkpointing every ``save_every`` and sampling every ``sample_every`` (and at the last step)."""
    cfg, d = run.cfg, run.d
    bar = None
    if d.main and cfg.progress and run.step < cfg.steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=run.step, desc="train", dynamic_ncols=True, file=sys.stderr)
    epoch, within = divmod(run.step, data.steps_per_epoch)
    t_window = time.perf_counter()
    timed = 0  # steps taken by this process since t_window (the rate; the window may start in a resumed run)
    last_loss = float("nan")
    try:
        while run.step < cfg.steps:
            for x0, *_ in data.epoch(epoch, within, cfg, d, run.per_rank):
                res = _train_step(run, x0)
                step = run.step
                within += 1
                timed += 1
                last_loss = res.loss
                run.window.append(res.loss)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{res.loss:.4f}", lr=f"{res.lr:.2e}", refresh=False)
                if d.main and (step % cfg.log_every == 0 or step == cfg.steps):
                    now = time.perf_counter()
                    rate = timed / max(now - t_window, 1e-9)
                    outputs.log(
                        {
                            "step": step,
                            "epoch": epoch,
                            "loss": sum(run.window) / len(run.window),
                            "lr": res.lr,
                            "grad_norm": res.grad_norm,
                            "ema_decay": res.ema_decay if cfg.ema else None,
                            "it_per_s": rate,
                            "img_per_s": rate * cfg.batch_size,
                            "elapsed_s": run.elapsed + (now - outputs.t_start),
                            "world_size": d.world,
                            "global_batch": cfg.batch_size,
                        }
                    )
                if step % cfg.log_every == 0 or step == cfg.steps:
                    run.window, t_window, timed = [], time.perf_counter(), 0
                saved = step % cfg.save_every == 0 or step == cfg.steps
                if saved:
                    outputs.checkpoint(last_loss)
                if step % cfg.sample_every == 0 or step == cfg.steps:
                    outputs.samples()
                _stop_if_interrupted(run, outputs, last_loss, saved)
                if step >= cfg.steps:
                    break
            else:
                epoch, within = epoch + 1, 0
    finally:
        if bar is not None:
            bar.close()
        outputs.close()
    run.last_loss = last_loss


def _stop_if_interrupted(run: _Run, outputs: _Outputs, last_loss: float, saved: bool) -> None:
    """After a step: if SIGINT/SIGTERM came (on any rank), save a checkpoint (unless this step just did) and stop
    with :class:`TrainingInterrupted`; the same command resumes from it."""
    got = run.interrupts.signum if run.interrupts is not None else None
    if run.d.world > 1:  # every rank must stop at the same step: the checkpoint is a collective
        import torch.distributed as dist

        flag = torch.tensor([got or 0], dtype=torch.int64, device=run.device if run.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        got = int(flag.item()) or None
    if not got:
        return
    if not saved:
        outputs.checkpoint(last_loss)
    import signal

    name = signal.Signals(got).name
    raise TrainingInterrupted(
        f"stopped by {name} at step {run.step}: saved {checkpoint_path(run.out, run.step)}; "
        "run the same command again to continue (--resume auto)"
    )


# --------------------------------------------------------------------------------------- export
def _export(run: _Run, outputs: _Outputs, say) -> Path:
    """Rank 0 writes ``out/model.safetensors`` (the EMA weights when there are any); every rank returns its path."""
    final = run.out / "model.safetensors"
    cfg = run.cfg
    if run.d.main:
        from .. import checkpoint as ckpt_io

        export_cfg = copy.deepcopy(run.sdmc_cfg)
        export_cfg.provenance.update(
            {
                "steps": run.step,
                "weights": "ema" if run.ema is not None else "net",
                "global_batch": cfg.batch_size,
                "lr": cfg.lr,
                "ema_decay": cfg.ema_decay if cfg.ema else None,
                "init_from": cfg.init_from,
                "tsm_finetune": cfg.tsm,
                "device": run.device.type,
                "threads": torch.get_num_threads() if run.device.type == "cpu" else None,
                "train_seconds": round(train_seconds(outputs.records), 1),
            }
        )
        ckpt_io.save_model(final, run.trained, export_cfg)
        say(
            f"done: step {run.step}, last loss {run.last_loss:.4f}; exported "
            f"{'EMA' if run.ema is not None else 'raw'} weights to {final}"
        )
    if run.d.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return final
