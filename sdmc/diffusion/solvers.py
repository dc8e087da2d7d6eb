"""Reverse-time solvers for discrete-time ε-prediction diffusion models, in a diffusers-like shape.

Every solver is built from a :class:`~sdmc.diffusion.schedule.NoiseSchedule` and a config dataclass, then::

    solver.set_timesteps(50)                      # or set_timesteps(timesteps=[999, 500, 0])
    x = torch.randn(shape)                        # solver.init_noise_sigma == 1
    for t in solver.timesteps:                    # the steps at which the model is called, in order
        eps = model(x, t.repeat(B))               # an ε-model f(x, t), t integer steps 0..N-1
        x = solver.step(eps, t, x, generator).prev_sample

``step`` returns a :class:`SolverOutput` with ``prev_sample`` (the point where the model is called next,
or the final sample) and ``pred_original_sample`` (x̂0 = (x_t - sqrt(1-ᾱ_t) ε) / sqrt(ᾱ_t)).  The shared
interface (:class:`Solver`, :func:`time_grid`, index conventions) is :mod:`sdmc.diffusion.solver_base`.

Solvers here: :class:`DDPMSolver` (ancestral; variance ``fixedlarge`` / ``fixedsmall`` / ``analytic``),
:class:`DDIMSolver` (η, optionally Analytic-DDIM variance).  DPM-Solver(++) lives in
:mod:`sdmc.diffusion.dpm_solver`; :func:`make_solver` builds any of them by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .dpm_solver import DPMSolver
from .schedule import NoiseSchedule
from .solver_base import SPACINGS, Solver, SolverOutput, check_trajectory, randn, time_grid


# ------------------------------------------------------------------------------------------------ DDPM
@dataclass
class DDPMConfig:
    """Ancestral sampling on a sub-sequence of steps.

    ``variance``: ``fixedlarge`` σ² = 1 - ᾱ_t/ᾱ_s (β_t for unit skips; pytorch-ddpm's β_1 replacement
    only affects likelihoods: no noise is added on the last step), ``fixedsmall`` σ² = (1-ᾱ_s)/(1-ᾱ_t)·
    (1 - ᾱ_t/ᾱ_s), or ``analytic`` (Analytic-DPM, needs ``gamma``).
    """

    variance: str = "fixedlarge"
    clip_sample: bool = True
    spacing: str = "seed"
    gamma: Any = None  # Analytic-DPM Γ_k = E‖ε_θ(x_k, k)‖²/d, length N (see sdmc.diffusion.analytic)
    clip_sigma_idx: int = 1  # analytic only: clip σ of the steps landing on the k smallest call steps
    clip_pixel: float = 2.0  # ... to (clip_pixel · 2/255 · sqrt(π/2))²


def analytic_sigma2(abar_t: float, abar_s: float, lam2: float, coef_x0: float, gamma_t: float) -> float:
    """Analytic-DPM optimal variance σ*² = λ² + c0² · clamp((1-ᾱ_t)/ᾱ_t · (1 - Γ_t), 0, 1).

    ``c0`` is the coefficient of x̂0 in the reverse mean; the clamp bounds the x0 covariance for data in
    [-1, 1] (and treats Γ_t > 1, an estimation error, as zero covariance).
    """
    cov_x0 = min(max((1.0 - abar_t) / abar_t * (1.0 - gamma_t), 0.0), 1.0)
    return lam2 + coef_x0**2 * cov_x0


def _clip_sigma2(sigma2: float, s: int, trajectory: list[int], idx: int, clip_pixel: float) -> float:
    """Bound σ² by (clip_pixel · 2/255 · sqrt(π/2))² on the steps landing on the ``idx`` smallest noisy
    targets (Analytic-DPM's ``clip_sigma_idx``; 0 disables)."""
    landings = sorted(x for x in trajectory[1:] if x >= 0)
    if idx <= 0 or s < 0 or s not in landings[:idx]:
        return sigma2
    return min(sigma2, (clip_pixel * 2.0 / 255.0 * math.sqrt(math.pi / 2.0)) ** 2)


def _gamma_array(gamma: Any, n: int, who: str) -> np.ndarray:
    if gamma is None:
        raise ConfigError(
            f"{who}: the analytic variance needs gamma (Γ_k, length {n}); compute it with "
            "sdmc.diffusion.analytic.estimate_gamma or `sdmc analytic-stats`"
        )
    g = np.asarray(gamma.detach().cpu() if isinstance(gamma, torch.Tensor) else gamma, dtype=np.float64)
    if g.shape != (n,) or not np.isfinite(g).all():
        raise ConfigError(f"{who}: gamma must be {n} finite values, got shape {list(g.shape)}")
    return g


class DDPMSolver(Solver):
    """DDPM ancestral sampling; x̂0 clipped to [-1, 1] (seed); the last step returns x̂0 without noise.

    From call step t to target s (ᾱ_{-1} = 1), with β̄ = 1 - ᾱ_t/ᾱ_s:
    mean = sqrt(ᾱ_s) β̄/(1-ᾱ_t) · x̂0 + sqrt(ᾱ_t/ᾱ_s) (1-ᾱ_s)/(1-ᾱ_t) · x_t, x_s = mean + σ z.
    """

    Config = DDPMConfig
    name = "ddpm"

    def _validate(self) -> None:
        c = self.config
        if c.variance not in ("fixedlarge", "fixedsmall", "analytic"):
            raise ConfigError(f"ddpm: variance {c.variance!r} is unknown; choose fixedlarge, fixedsmall or analytic")
        if c.spacing not in SPACINGS:
            raise ConfigError(f"ddpm: time spacing {c.spacing!r} is unknown; choose one of {SPACINGS}")
        self.gamma = (
            _gamma_array(c.gamma, self.num_train_timesteps, "analytic-ddpm") if c.variance == "analytic" else None
        )

    def _plan(self, steps: int) -> list[int]:
        return time_grid(self.num_train_timesteps, steps, self.config.spacing) + [-1]

    def sigma2(self, t: int, s: int) -> float:
        """Variance of the step t -> s (0 when s is the clean target)."""
        if s < 0:
            return 0.0
        at, as_ = self.abar(t), self.abar(s)
        skip_beta = 1.0 - at / as_
        small = (1.0 - as_) / (1.0 - at) * skip_beta
        v = self.config.variance
        if v == "fixedlarge":
            return skip_beta
        if v == "fixedsmall":
            return small
        coef = math.sqrt(as_) * skip_beta / (1.0 - at)
        s2 = analytic_sigma2(at, as_, small, coef, float(self.gamma[t]))
        return _clip_sigma2(s2, s, self.trajectory, self.config.clip_sigma_idx, self.config.clip_pixel)

    def _step(self, eps, t, s, x, generator) -> SolverOutput:
        x0 = self.x0_from_eps(x, eps, t, self.config.clip_sample)
        if s < 0:
            return SolverOutput(x0, x0)
        at, as_ = self.abar(t), self.abar(s)
        skip_beta = 1.0 - at / as_
        c0 = math.sqrt(as_) * skip_beta / (1.0 - at)
        ct = math.sqrt(at / as_) * (1.0 - as_) / (1.0 - at)
        mean = c0 * x0 + ct * x
        return SolverOutput(mean + math.sqrt(self.sigma2(t, s)) * randn(x, generator), x0)


# ------------------------------------------------------------------------------------------------ DDIM
@dataclass
class DDIMConfig:
    """DDIM (Song et al. 2021): η = 0 deterministic, η = 1 the DDPM-like large-noise limit.

    ``analytic``: Analytic-DDIM, noise variance λ² + c0²·cov(x0) with λ² = η²·σ_small² (needs ``gamma``).
    With ``spacing='seed'`` the run ends at step 0 (x_0 returned, as the SDDPM/SDM code); other spacings
    end at the clean target and return x̂0.
    """

    eta: float = 0.0
    clip_sample: bool = True
    spacing: str = "seed"
    analytic: bool = False
    gamma: Any = None
    clip_sigma_idx: int = 1
    clip_pixel: float = 1.0


class DDIMSolver(Solver):
    """x_s = sqrt(ᾱ_s) x̂0 + sqrt(1 - ᾱ_s - σ²) ε + σ z,  σ² = η² (1-ᾱ_s)/(1-ᾱ_t) (1 - ᾱ_t/ᾱ_s).

    x̂0 is clamped to [-1, 1] when ``clip_sample`` while ε stays the model's output (the seed's update).
    """

    Config = DDIMConfig
    name = "ddim"

    def _validate(self) -> None:
        c = self.config
        if not 0.0 <= float(c.eta) <= 1.0:
            raise ConfigError(f"ddim: eta must be in [0, 1], got {c.eta}")
        if c.spacing not in SPACINGS:
            raise ConfigError(f"ddim: time spacing {c.spacing!r} is unknown; choose one of {SPACINGS}")
        self.gamma = _gamma_array(c.gamma, self.num_train_timesteps, "analytic-ddim") if c.analytic else None

    def _plan(self, steps: int) -> list[int]:
        grid = time_grid(self.num_train_timesteps, steps, self.config.spacing)
        return grid if self.config.spacing == "seed" else grid + [-1]

    def base_sigma2(self, t: int, s: int) -> float:
        at, as_ = self.abar(t), self.abar(s)
        return float(self.config.eta) ** 2 * (1.0 - as_) / (1.0 - at) * (1.0 - at / as_)

    def sigma2(self, t: int, s: int) -> float:
        """Variance of the noise added on the step t -> s."""
        lam2 = self.base_sigma2(t, s)
        if not self.config.analytic or s < 0:
            return lam2
        at, as_ = self.abar(t), self.abar(s)
        coef = math.sqrt(as_) - math.sqrt(max(1.0 - as_ - lam2, 0.0)) * math.sqrt(at / (1.0 - at))
        s2 = analytic_sigma2(at, as_, lam2, coef, float(self.gamma[t]))
        return _clip_sigma2(s2, s, self.trajectory, self.config.clip_sigma_idx, self.config.clip_pixel)

    def _step(self, eps, t, s, x, generator) -> SolverOutput:
        x0 = self.x0_from_eps(x, eps, t, self.config.clip_sample)
        as_ = self.abar(s)
        lam2 = self.base_sigma2(t, s)
        prev = math.sqrt(as_) * x0 + math.sqrt(max(1.0 - as_ - lam2, 0.0)) * eps
        sig2 = self.sigma2(t, s)
        if sig2 > 0:
            prev = prev + math.sqrt(sig2) * randn(x, generator)
        return SolverOutput(prev, x0)


# --------------------------------------------------------------------------------------------- factory
SOLVER_NAMES = (
    "ddpm",
    "ddim",
    "analytic-ddpm",
    "analytic-ddim",
    "dpm-solver-1",
    "dpm-solver-2",
    "dpm-solver-3",
    "dpm-solver++",
)


def make_solver(name: str, schedule: NoiseSchedule | None = None, **kwargs: Any) -> Solver:
    """Build a solver by its CLI name; ``kwargs`` are config fields (``order`` / ``method`` for DPM-Solver).

    ``dpm-solver-k`` is DPM-Solver of order k (singlestep unless ``method`` says otherwise, as in the
    DPM-Solver paper); ``dpm-solver++`` is DPM-Solver++(2M), ``order=3`` for 3M.  ``None`` values are
    ignored (unset CLI options).
    """
    kw = {k: v for k, v in kwargs.items() if v is not None}
    if name == "ddpm":
        return DDPMSolver(schedule, **kw)
    if name == "ddim":
        return DDIMSolver(schedule, **kw)
    if name == "analytic-ddpm":
        return DDPMSolver(schedule, variance="analytic", **kw)
    if name == "analytic-ddim":
        return DDIMSolver(schedule, analytic=True, **kw)
    if name in ("dpm-solver-1", "dpm-solver-2", "dpm-solver-3"):
        order = int(name[-1])
        if "order" in kw and int(kw["order"]) != order:
            raise ConfigError(f"{name}: order {kw['order']} contradicts the solver name")
        kw["order"] = order
        kw.setdefault("method", "singlestep")
        return DPMSolver(schedule, algorithm="dpmsolver", **kw)
    if name == "dpm-solver++":  # DPMSolverConfig's defaults are 2M: order 2, multistep
        return DPMSolver(schedule, algorithm="dpmsolver++", **kw)
    raise ConfigError(f"unknown solver {name!r}; choose one of {', '.join(SOLVER_NAMES)}")


__all__ = [
    "DDIMConfig",
    "DDIMSolver",
    "DDPMConfig",
    "DDPMSolver",
    "SOLVER_NAMES",
    "SPACINGS",
    "Solver",
    "SolverOutput",
    "analytic_sigma2",
    "check_trajectory",
    "make_solver",
    "time_grid",
]
