"""The solver interface every reverse-time solver shares (as diffusers' ``scheduling_utils``).

:class:`Solver` holds the config handling, the call-step list and the step counter; a solver subclass adds
``Config`` (a dataclass), ``_plan(steps)`` -> trajectory and ``_step``.  :func:`time_grid` spaces the call
steps; :func:`check_trajectory` validates an explicit one.

Index conventions: discrete step ``k`` in 0..N-1 has ``ᾱ_k = schedule.alphas_cumprod[k]`` (``k`` is the
paper's t-1); the target ``-1`` means the clean data (ᾱ = 1).  A trajectory is a strictly decreasing list of
``S`` call steps followed by one target; the model is called at the call steps only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .schedule import NoiseSchedule

SPACINGS = ("seed", "linspace", "leading", "trailing")
Generator = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class SolverOutput:
    """Result of one :meth:`Solver.step`."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


# ----------------------------------------------------------------------------------------------- grids
def time_grid(num_train: int, steps: int, spacing: str = "seed") -> list[int]:
    """Strictly decreasing call steps for ``steps`` sampling steps out of ``num_train``.

    - ``seed``: ``max(int(N-1 - i*N/S), 0)`` for i = 0..S-1, then 0 appended if missing (SDDPM/SDM code;
      S=50, N=1000 gives 999, 979, ..., 19, 0).
    - ``linspace``: ``round(linspace(0, N-1, S))``; ``leading``: ``i * (N // S)``;
      ``trailing``: ``round(arange(N, 0, -N/S)) - 1`` (the diffusers conventions, steps_offset 0).
    """
    n, s = int(num_train), int(steps)
    if s < 1 or s > n:
        raise ConfigError(f"sampling steps must be in 1..{n} (the training steps), got {steps}")
    if spacing == "seed":
        grid = [max(int(n - 1 - i * n / s), 0) for i in range(s)]
        if grid[-1] != 0:
            grid.append(0)
    elif spacing == "linspace":
        grid = np.linspace(0, n - 1, s).round().astype(np.int64)[::-1].tolist()
    elif spacing == "leading":
        grid = (np.arange(s) * (n // s))[::-1].tolist()
    elif spacing == "trailing":
        # n - i*n/s for i < s exactly (np.arange with a float step can yield s+1 values)
        grid = (np.round(n - np.arange(s) * (n / s)).astype(np.int64) - 1).tolist()
    else:
        raise ConfigError(f"time spacing {spacing!r} is unknown; choose one of {SPACINGS}")
    return [int(g) for g in grid]


def check_trajectory(traj: Sequence[int], num_train: int) -> list[int]:
    """Validate a trajectory (strictly decreasing, call steps in 0..N-1, target >= -1)."""
    traj = [int(t) for t in traj]
    if len(traj) < 2:
        raise ConfigError(f"a trajectory needs at least one call step and a target, got {traj}")
    if any(a <= b for a, b in zip(traj, traj[1:])):
        raise ConfigError(f"trajectory must be strictly decreasing, got {traj}")
    if traj[0] > num_train - 1 or traj[-1] < -1:
        raise ConfigError(f"trajectory {traj[0]}..{traj[-1]} leaves the range -1..{num_train - 1}")
    return traj


# ------------------------------------------------------------------------------------------- helpers
def as_step(t: Any) -> int | float:
    """A scalar step from an int/float, a 0-d tensor or a [B] tensor whose entries are all equal."""
    if isinstance(t, torch.Tensor):
        flat = t.detach().reshape(-1)
        if flat.numel() == 0:
            raise ConfigError("step(): t is an empty tensor")
        if flat.numel() > 1 and not bool((flat == flat[0]).all()):
            raise ConfigError(f"step(): all samples of a batch must share one step, got {flat.tolist()[:8]}...")
        v = flat[0].item()
    else:
        v = t
    return int(v) if float(v).is_integer() else float(v)


def randn(sample: torch.Tensor, generator: Generator) -> torch.Tensor:
    """Standard normal noise shaped like ``sample``.

    ``generator`` may be one ``torch.Generator`` or a list with one generator per batch element (each
    element's noise then depends only on its own generator: results do not depend on the batch size).
    """
    if generator is None:
        return torch.randn_like(sample)
    if isinstance(generator, torch.Generator):
        return torch.randn(sample.shape, generator=generator, device=generator.device, dtype=sample.dtype).to(
            sample.device
        )
    gens = list(generator)
    if len(gens) != sample.shape[0]:
        raise ConfigError(f"got {len(gens)} generators for a batch of {sample.shape[0]}")
    return torch.stack(
        [torch.randn(sample.shape[1:], generator=g, device=g.device, dtype=sample.dtype) for g in gens]
    ).to(sample.device)


class Solver:
    """Base class: config handling, the call-step list and the step counter.

    Subclasses define ``Config`` (a dataclass), ``_plan(steps)`` -> trajectory and ``_step``.
    """

    Config: type = object
    name = "solver"
    init_noise_sigma = 1.0

    def __init__(self, schedule: NoiseSchedule | None = None, config: Any = None, **overrides: Any) -> None:
        self.schedule = schedule or NoiseSchedule()
        if config is None:
            config = self.Config()
        if overrides:
            known = {f.name for f in dataclasses.fields(config)}
            bad = sorted(set(overrides) - known)
            if bad:
                raise ConfigError(f"{self.name}: unknown option(s) {bad}; known: {sorted(known)}")
            config = dataclasses.replace(config, **overrides)
        self.config = config
        self.num_train_timesteps = self.schedule.num_timesteps
        abar = self.schedule.alphas_cumprod
        self._abar = torch.cat([abar, torch.ones(1, dtype=torch.float64)])  # index -1 -> 1 (clean)
        self._validate()
        self.timesteps = torch.zeros(0, dtype=torch.long)
        self._i = 0

    def _validate(self) -> None:
        pass

    def abar(self, k: int) -> float:
        """ᾱ_k for k in -1..N-1 (ᾱ_{-1} = 1)."""
        return float(self._abar[int(k)])

    @property
    def nfe(self) -> int:
        """Model calls of one full sampling run."""
        return len(self.timesteps)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        timesteps: Sequence[int] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        """Plan ``num_inference_steps`` steps, or follow an explicit trajectory (call steps + target)."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ConfigError(f"{self.name}.set_timesteps: give exactly one of num_inference_steps or timesteps")
        if timesteps is not None:
            self.trajectory = check_trajectory(timesteps, self.num_train_timesteps)
        else:
            self.trajectory = self._plan(int(num_inference_steps))
        self.timesteps = torch.tensor(self.trajectory[:-1], dtype=torch.long, device=device)
        self._i = 0

    def _plan(self, steps: int) -> list[int]:
        raise NotImplementedError

    def _next(self, t: Any) -> tuple[int, int]:
        """(call step, target) of the current step; checks that ``t`` is the expected call step."""
        if self._i >= len(self.timesteps):
            raise ConfigError(
                f"{self.name}.step: no steps left ({len(self.timesteps)} planned); "
                "call set_timesteps() to start a new run"
            )
        want = self.trajectory[self._i]
        got = as_step(t)
        if got != want:
            raise ConfigError(
                f"{self.name}.step: expected step {want} (call {self._i} of {len(self.timesteps)}), "
                f"got {got}; call set_timesteps() to restart"
            )
        return want, self.trajectory[self._i + 1]

    def _check_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> None:
        """One error line when the model's output does not have the sample's shape."""
        if model_output.shape != sample.shape:
            raise ConfigError(
                f"{self.name}.step: model output {list(model_output.shape)} does not match the "
                f"sample {list(sample.shape)}"
            )

    def step(
        self, model_output: torch.Tensor, t: Any, sample: torch.Tensor, generator: Generator = None
    ) -> SolverOutput:
        """Advance ``sample`` from call step ``t`` to the next point of the trajectory."""
        self._check_output(model_output, sample)
        t_now, t_next = self._next(t)
        out = self._step(model_output, t_now, t_next, sample, generator)
        self._i += 1
        return out

    def _step(self, eps, t, s, x, generator) -> SolverOutput:
        raise NotImplementedError

    def x0_from_eps(self, x: torch.Tensor, eps: torch.Tensor, t: int, clip: bool) -> torch.Tensor:
        """x̂0 = (x_t - sqrt(1-ᾱ_t) ε) / sqrt(ᾱ_t), clamped to [-1, 1] when ``clip``."""
        a = self.abar(t)
        x0 = (x - math.sqrt(1.0 - a) * eps) / math.sqrt(a)
        return x0.clamp(-1.0, 1.0) if clip else x0

    def scale_model_input(self, sample: torch.Tensor, t: Any = None) -> torch.Tensor:
        """The identity (VP solvers feed x_t unscaled); kept for diffusers-style loops."""
        return sample

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0) (for training loops that use a solver object)."""
        return self.schedule.q_sample(x0, t, noise)

    def sample(
        self,
        model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x_T: torch.Tensor,
        generator: Generator = None,
        callback: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Run the whole planned trajectory from ``x_T`` (call :meth:`set_timesteps` first)."""
        if not len(self.timesteps):
            raise ConfigError(f"{self.name}: call set_timesteps() before sample()")
        self._restart()
        x = x_T
        for i, t in enumerate(self.timesteps):
            tt = t.to(x.device).expand(x.shape[0]) if t.dim() == 0 else t
            x = self.step(model_fn(x, tt), t, x, generator).prev_sample
            if callback is not None:
                callback(i)
        return x

    def _restart(self) -> None:
        self._i = 0
