"""Sampling images with any solver, threshold guidance, per-image seeding.

Image ``i`` of a run with seed ``s`` draws all its noise (x_T and every stochastic step) from its own
generator seeded by ``SeedSequence([s, i])``, so a run is deterministic per seed and each image does not
depend on the batch size (up to floating-point differences of the model across batch shapes).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..validate import LIMITS, check_limit
from .schedule import NoiseSchedule
from .solvers import Solver, make_solver


@contextlib.contextmanager
def threshold_guidance(model: nn.Module, threshold: float | None) -> Iterator[int]:
    """Threshold guidance (SDM §4.3): every IF/LIF threshold θ becomes ``threshold`` inside the block.

    Weights are untouched; each neuron's previous θ is restored on exit, also after an error.  Yields the
    number of neurons changed (0 and no change when ``threshold`` is None).
    """
    if threshold is None:
        yield 0
        return
    from ..models import set_threshold

    th = float(threshold)
    if not math.isfinite(th) or th <= 0:
        raise ConfigError(f"threshold guidance: the threshold must be a positive number, got {threshold}")
    saved = [(m, m.v_threshold) for m in model.modules() if hasattr(m, "v_threshold")]
    try:
        n = set_threshold(model, th)
        if n == 0:
            raise ConfigError(
                f"threshold guidance: {type(model).__name__} has no spiking neurons "
                "(an ANN model cannot use --threshold)"
            )
        yield n
    finally:
        for m, v in saved:
            m.v_threshold = v


def image_generators(
    seed: int, indices: range | list[int], device: str | torch.device = "cpu"
) -> list[torch.Generator]:
    """One generator per image index, seeded from (seed, index)."""
    gens = []
    for i in indices:
        state = np.random.SeedSequence([int(seed), int(i)]).generate_state(2, dtype=np.uint32)
        g = torch.Generator(device=device)
        g.manual_seed(int(state[0]) << 32 | int(state[1]))
        gens.append(g)
    return gens


def _reset(model: Any) -> Callable[[], None]:
    """A function resetting spikingjelly neuron state, or a no-op for non-spiking models."""
    if isinstance(model, nn.Module) and any(hasattr(m, "v_threshold") for m in model.modules()):
        from spikingjelly.activation_based import functional

        return lambda: functional.reset_net(model)
    return lambda: None


def _image_shape(model: Any, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    if shape is not None:
        return tuple(int(s) for s in shape)
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "img_size"):
        raise ConfigError("sample_images: cannot tell the image shape of this model; pass shape=(C, H, W)")
    return (int(cfg.img_ch), int(cfg.img_size), int(cfg.img_size))


@torch.no_grad()
def sample_images(
    model: Any,
    schedule: NoiseSchedule,
    n: int,
    solver: str | Solver = "ddim",
    steps: int = 50,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    threshold: float | None = None,
    shape: tuple[int, ...] | None = None,
    dtype: torch.dtype = torch.float32,
    **solver_kwargs: Any,
) -> torch.Tensor:
    """Draw ``n`` samples ``[n, C, H, W]`` in [-1, 1] (on the CPU) with ``solver`` in ``steps`` steps.

    ``model(x, t)`` is the network (its output converted to ε per ``schedule.config.mean_type``);
    ``solver`` a name of :data:`sdmc.diffusion.solvers.SOLVER_NAMES` (``solver_kwargs`` are its options,
    e.g. ``eta``, ``order``, ``method``, ``gamma``) or a ready :class:`Solver`; ``threshold`` applies
    threshold guidance for the run; ``shape`` is needed when ``model`` has no ``config``.
    """
    if n < 1 or batch_size < 1:
        raise ConfigError(f"sample_images: n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    sol = solver if isinstance(solver, Solver) else make_solver(solver, schedule, **solver_kwargs)
    if isinstance(solver, Solver) and solver_kwargs:
        raise ConfigError(f"sample_images: options {sorted(solver_kwargs)} given with a ready solver object")
    sol.set_timesteps(int(steps))
    img_shape = _image_shape(model, shape)
    table = getattr(getattr(model, "config", None), "diffusion_steps", None)
    if isinstance(table, int) and schedule.num_timesteps > table:
        raise ConfigError(
            f"the model's time embedding covers {table} diffusion steps, the schedule has {schedule.num_timesteps}"
        )
    if isinstance(table, int) and sol.timesteps.is_floating_point():
        raise ConfigError(
            f"{sol.name}: calls the model at fractional steps (integer_timesteps=False), but the model's time "
            f"embedding is a table of {table} integer steps; keep integer_timesteps=True"
        )
    check_limit(f"sample_images: {n} images of shape {list(img_shape)}", n * math.prod(img_shape) * 4,
                LIMITS.npz_bytes, " bytes")  # fmt: skip
    reset = _reset(model)
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    convert = schedule.config.mean_type != "epsilon"

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(x.device)
        out = model(x, t)
        reset()
        return schedule.eps_from_output(out, x, t) if convert else out

    from tqdm import tqdm

    n_batches = (n + batch_size - 1) // batch_size
    bar = tqdm(
        total=n_batches * sol.nfe,
        disable=not progress,
        unit="call",
        desc=f"{sol.name} {steps} steps" + (f", θ'={threshold}" if threshold is not None else ""),
    )
    chunks = []
    try:
        with threshold_guidance(model, threshold):
            for lo in range(0, n, batch_size):
                idx = range(lo, min(n, lo + batch_size))
                gens = image_generators(seed, idx)
                x_T = torch.stack([torch.randn(img_shape, generator=g, dtype=dtype) for g in gens]).to(device)
                x = sol.sample(eps_fn, x_T, generator=gens, callback=lambda _i: bar.update(1))
                chunks.append(x.clamp(-1.0, 1.0).cpu())
    finally:
        bar.close()
        if was_training:
            model.train()
    return torch.cat(chunks)


__all__ = ["image_generators", "sample_images", "threshold_guidance"]
