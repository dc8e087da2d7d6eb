"""DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al. 2023) for a discrete-time ε-model.

The discrete schedule is read as a continuous VP process the way the DPM-Solver authors do: with
``t_k = (k+1)/N``, ``log α(t)`` is the piecewise-linear interpolation of ``½ log ᾱ_k``; ``σ = sqrt(1-α²)``,
``λ = log α - log σ`` (half the log-SNR).  The model is called with the step index ``k = N t - 1``: rounded
to an integer (``integer_timesteps=True``, what UNets with an embedding table need, every λ then taken at
the rounded step) or as a float (for models defined at any t).

With h = λ_t - λ_s, the first-order updates are
    DPM-Solver:   x_t = (α_t/α_s) x_s - σ_t (e^h - 1) ε_s               (= DDIM with η = 0)
    DPM-Solver++: x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) x̂0_s
and the order-2/3 singlestep (intermediate points at r·h) and multistep (earlier outputs) updates add
finite-difference corrections, as in the official implementation (solver_type 'dpmsolver'), except for the
weight of the second difference in multistep order 3 (see :class:`DPMSolverConfig` ``official_3m``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, SdmcError
from .schedule import NoiseSchedule
from .solver_base import Generator, Solver, SolverOutput, as_step

SKIP_TYPES = ("time_uniform", "logSNR", "time_quadratic")
METHODS = ("singlestep", "multistep", "singlestep_fixed")
ALGORITHMS = ("dpmsolver", "dpmsolver++")


class DiscreteVP:
    """Continuous-time α(k), σ(k), λ(k) of a discrete schedule at float step index k in [0, N-1]."""

    def __init__(self, schedule: NoiseSchedule) -> None:
        self.N = schedule.num_timesteps
        self.ks = np.arange(self.N, dtype=np.float64)
        self.log_alphas = 0.5 * np.log(schedule.alphas_cumprod.numpy())

    def log_alpha(self, k: float) -> float:
        """½ log ᾱ, linearly interpolated between integer steps."""
        return float(np.interp(k, self.ks, self.log_alphas))

    def alpha(self, k: float) -> float:
        return math.exp(self.log_alpha(k))

    def sigma(self, k: float) -> float:
        return math.sqrt(-math.expm1(2.0 * self.log_alpha(k)))

    def lam(self, k: float) -> float:
        """λ = log α - log σ."""
        la = self.log_alpha(k)
        return la - 0.5 * math.log(-math.expm1(2.0 * la))

    def inverse_lambda(self, lam: float) -> float:
        """The float step index whose λ equals ``lam``."""
        la = -0.5 * np.logaddexp(0.0, -2.0 * lam)
        return float(np.interp(la, self.log_alphas[::-1], self.ks[::-1]))


@dataclass
class DPMSolverConfig:
    """DPM-Solver(++) options, named as in the official code.

    ``order`` 1..3; ``method`` multistep / singlestep (orders mixed to use exactly ``steps`` calls, as the
    official code) / singlestep_fixed (every step of ``order``, steps // order of them); ``skip_type`` the
    spacing of the outer grid from step N-1 to step 0; ``lower_order_final`` lowers the order of the last
    multistep steps when fewer than 10 steps are taken; ``denoise_to_zero`` adds one call at step 0
    returning x̂0; ``clip_sample`` clamps the data prediction to [-1, 1] (DPM-Solver++ only).

    ``official_3m``: the multistep order-3 update of the official code and diffusers weighs the
    second-difference term D2 ≈ h² f''/2 by φ3 = (e^{±h} - 1 ∓ h)/h² - 1/2; the exact weight of the Taylor
    term is 2·φ3 (our default: exact for a model output quadratic in λ, third order in h).  Set True to
    reproduce the official numbers, which converge like a second-order method.
    """

    order: int = 2
    method: str = "multistep"
    algorithm: str = "dpmsolver++"
    skip_type: str = "logSNR"
    lower_order_final: bool = True
    denoise_to_zero: bool = False
    integer_timesteps: bool = True
    clip_sample: bool = False
    official_3m: bool = False


@dataclass
class _Call:
    k: float  # step at which the model is called
    group: int  # singlestep group (or multistep step) index
    j: int  # position inside the group; -1 marks the final denoise call


class DPMSolver(Solver):
    """DPM-Solver / DPM-Solver++ with the :class:`~sdmc.diffusion.solver_base.Solver` interface."""

    Config = DPMSolverConfig
    name = "dpm-solver"

    def _validate(self) -> None:
        c = self.config
        if int(c.order) not in (1, 2, 3):
            raise ConfigError(f"dpm-solver: order must be 1, 2 or 3, got {c.order}")
        if c.method not in METHODS:
            raise ConfigError(f"dpm-solver: method {c.method!r} is unknown; choose one of {METHODS}")
        if c.algorithm not in ALGORITHMS:
            raise ConfigError(f"dpm-solver: algorithm {c.algorithm!r} is unknown; choose one of {ALGORITHMS}")
        if c.skip_type not in SKIP_TYPES:
            raise ConfigError(f"dpm-solver: skip_type {c.skip_type!r} is unknown; choose one of {SKIP_TYPES}")
        if c.clip_sample and c.algorithm != "dpmsolver++":
            raise ConfigError("dpm-solver: clip_sample needs algorithm 'dpmsolver++' (a data-prediction solver)")
        self.name = "dpm-solver++" if c.algorithm == "dpmsolver++" else f"dpm-solver-{c.order}"
        self.vp = DiscreteVP(self.schedule)

    # ------------------------------------------------------------------------------------- planning
    def outer_grid(self, steps: int) -> list[float]:
        """``steps + 1`` decreasing step indices from N-1 to 0 spaced by ``skip_type``."""
        n = self.num_train_timesteps
        last = n - 1
        if steps < 1:
            raise ConfigError(f"dpm-solver: steps must be >= 1, got {steps}")
        kind = self.config.skip_type
        if kind == "time_uniform":
            ks = np.linspace(last, 0, steps + 1)
        elif kind == "time_quadratic":  # t = (k+1)/N quadratic in sqrt(t)
            ts = np.linspace(1.0, math.sqrt(1.0 / n), steps + 1) ** 2
            ks = ts * n - 1
        else:
            lams = np.linspace(self.vp.lam(last), self.vp.lam(0), steps + 1)
            ks = np.array([self.vp.inverse_lambda(x) for x in lams])
        ks[0], ks[-1] = last, 0
        return self._snap(ks) if self.config.integer_timesteps else [float(k) for k in ks]

    def _snap(self, ks: np.ndarray) -> list[float]:
        n = self.num_train_timesteps
        if len(ks) > n:
            raise ConfigError(f"dpm-solver: {len(ks) - 1} steps do not fit in {n} integer timesteps")
        a = np.round(ks[::-1]).astype(np.int64)  # ascending
        for i in range(1, len(a)):  # strictly increasing, keeping the step count
            a[i] = max(a[i], a[i - 1] + 1)
        a[-1] = min(a[-1], n - 1)
        for i in range(len(a) - 2, -1, -1):
            a[i] = min(a[i], a[i + 1] - 1)
        return [int(x) for x in a[::-1]]

    def _intermediates(self, ks: float, kt: float, rs: Sequence[float]) -> list[float] | None:
        """The steps at λ_s + r·h for each r; with integer steps the nearest ones strictly inside (ks, kt) and
        strictly decreasing (:func:`_spread`), or None if they do not fit."""
        ls, lt = self.vp.lam(ks), self.vp.lam(kt)
        ks_ = [self.vp.inverse_lambda(ls + r * (lt - ls)) for r in rs]
        if not self.config.integer_timesteps:
            return ks_
        return _spread(ks_, int(kt) + 1, int(ks) - 1)

    def _singlestep_groups(self, outer: list[float], orders: list[int]) -> list[tuple[float, float, int, list[float]]]:
        """(k_s, k_t, order, intermediate steps) per interval; order 1 where the intermediates do not fit."""
        groups = []
        for ks, kt, o in zip(outer[:-1], outer[1:], orders):
            mids = self._intermediates(ks, kt, {1: [], 2: [0.5], 3: [1.0 / 3.0, 2.0 / 3.0]}[o])
            groups.append((ks, kt, o, mids) if mids is not None else (ks, kt, 1, []))
        return groups

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        timesteps: Sequence[float] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        """Plan a run of ``num_inference_steps`` model calls (plus one if ``denoise_to_zero``).

        ``timesteps`` instead gives the outer grid explicitly (decreasing step indices, the last the
        end point); singlestep methods then take one group per interval.
        """
        c = self.config
        if (num_inference_steps is None) == (timesteps is None):
            raise ConfigError("dpm-solver.set_timesteps: give exactly one of num_inference_steps or timesteps")
        order = int(c.order)
        if timesteps is not None:
            outer = [float(k) for k in timesteps]
            if (
                len(outer) < 2
                or any(a <= b for a, b in zip(outer, outer[1:]))
                or outer[-1] < 0
                or outer[0] > self.num_train_timesteps - 1
            ):
                raise ConfigError(
                    f"dpm-solver: timesteps must decrease strictly within 0..{self.num_train_timesteps - 1},"
                    f" got {list(timesteps)}"
                )
            if c.integer_timesteps and any(not k.is_integer() for k in outer):
                raise ConfigError("dpm-solver: integer_timesteps=True needs integer timesteps")
            orders = [order] * (len(outer) - 1)
        else:
            steps = int(num_inference_steps)
            if steps < 1:
                raise ConfigError(f"dpm-solver: steps must be >= 1, got {steps}")
            if c.method == "multistep":
                outer, orders = self.outer_grid(steps), [order] * steps
            else:
                orders = _orders(steps, order) if c.method == "singlestep" else [order] * max(1, steps // order)
                outer = self.outer_grid(len(orders))
                if c.method == "singlestep" and (
                    c.skip_type != "logSNR"
                    # integer logSNR grids crowd near t=0: an interval without room for its intermediate steps
                    # would drop to first order and lose model calls; plan on the fine grid instead
                    or any(o < want for (*_, o, _), want in zip(self._singlestep_groups(outer, orders), orders))
                ):
                    fine = self.outer_grid(steps)
                    outer = [fine[i] for i in np.cumsum([0] + orders)]
        if len(orders) != len(outer) - 1:  # one order per interval of the outer grid
            raise SdmcError(f"dpm-solver: internal error: {len(orders)} orders for {len(outer) - 1} intervals")
        self.outer = outer
        calls: list[_Call] = []
        self._groups: list[tuple[float, float, int, list[float]]] = []
        if c.method == "multistep":
            for i in range(len(outer) - 1):
                calls.append(_Call(outer[i], i, 0))
                self._groups.append((outer[i], outer[i + 1], orders[i], []))
        else:
            for g, (ks, kt, o, mids) in enumerate(self._singlestep_groups(outer, orders)):
                self._groups.append((ks, kt, o, mids))
                calls.extend(_Call(k, g, j) for j, k in enumerate([ks] + mids))
        if c.denoise_to_zero:
            calls.append(_Call(outer[-1], len(self._groups), -1))
        self._calls = calls
        dtype = torch.long if c.integer_timesteps else torch.float64
        self.timesteps = torch.tensor([cl.k for cl in calls], dtype=dtype, device=device)
        self._restart()

    def _restart(self) -> None:
        self._i = 0
        self._hist: list[tuple[float, torch.Tensor]] = []  # (λ, model output) of earlier calls
        self._x_s: torch.Tensor | None = None
        self.orders_used: list[int] = []  # order of each update, in order (for inspection)

    # ----------------------------------------------------------------------------------- stepping
    def _model_value(self, eps: torch.Tensor, x: torch.Tensor, k: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(value the update uses: ε or x̂0, x̂0) at step k."""
        a, s = self.vp.alpha(k), self.vp.sigma(k)
        x0 = (x - s * eps) / a
        if self.config.clip_sample:
            x0 = x0.clamp(-1.0, 1.0)
        return (x0 if self.config.algorithm == "dpmsolver++" else eps), x0

    def step(
        self, model_output: torch.Tensor, t: Any, sample: torch.Tensor, generator: Generator = None
    ) -> SolverOutput:
        """Consume the model output at the current call step; return the next call point (or the result)."""
        self._check_output(model_output, sample)
        if self._i >= len(self._calls):
            raise ConfigError(
                f"{self.name}.step: no steps left ({len(self._calls)} planned); call set_timesteps() to start a new run"
            )
        call = self._calls[self._i]
        got = as_step(t)
        if abs(float(got) - call.k) > 1e-9 * max(1.0, call.k):
            raise ConfigError(
                f"{self.name}.step: expected step {call.k} (call {self._i} of {len(self._calls)}), "
                f"got {got}; call set_timesteps() to restart"
            )
        self._i += 1
        m, x0 = self._model_value(model_output, sample, call.k)
        if call.j == -1:
            return SolverOutput(x0, x0)
        ks, kt, order, mids = self._groups[call.group]
        if self.config.method == "multistep":
            self._hist.append((self.vp.lam(ks), m))
            self._hist = self._hist[-3:]
            n_steps = len(self._groups)
            use = min(order, len(self._hist))
            if self.config.lower_order_final and n_steps < 10:
                use = min(use, n_steps - call.group)
            self.orders_used.append(use)
            return SolverOutput(self._multistep(sample, ks, kt, use), x0)
        if call.j == 0:
            self._x_s, self._hist = sample, []
            self.orders_used.append(order)
        self._hist.append((self.vp.lam(call.k), m))
        return SolverOutput(self._singlestep(ks, kt, order, mids, call.j), x0)

    def _first(self, x: torch.Tensor, ks: float, kt: float, m: torch.Tensor) -> torch.Tensor:
        vp = self.vp
        h = vp.lam(kt) - vp.lam(ks)
        if self.config.algorithm == "dpmsolver++":
            return (vp.sigma(kt) / vp.sigma(ks)) * x - vp.alpha(kt) * math.expm1(-h) * m
        return math.exp(vp.log_alpha(kt) - vp.log_alpha(ks)) * x - vp.sigma(kt) * math.expm1(h) * m

    def _lin(self, x: torch.Tensor, ks: float, kt: float) -> tuple[torch.Tensor, float, float]:
        """(the exactly integrated linear part at kt, h, the phi sign convention's scale)."""
        vp = self.vp
        if self.config.algorithm == "dpmsolver++":
            return (vp.sigma(kt) / vp.sigma(ks)) * x, vp.alpha(kt), -1.0
        return math.exp(vp.log_alpha(kt) - vp.log_alpha(ks)) * x, vp.sigma(kt), 1.0

    def _multistep(self, x: torch.Tensor, ks: float, kt: float, order: int) -> torch.Tensor:
        """Multistep update from ks to kt using the last ``order`` outputs (history ends at ks)."""
        (l0, m0) = self._hist[-1]
        lt = self.vp.lam(kt)
        h = lt - l0
        lin, scale, sg = self._lin(x, ks, kt)
        phi1 = math.expm1(sg * h)  # e^{±h} - 1
        if order == 1:
            return lin - scale * phi1 * m0
        l1, m1 = self._hist[-2]
        r0 = (l0 - l1) / h
        d1_0 = (m0 - m1) / r0
        if order == 2:
            return lin - scale * phi1 * m0 - 0.5 * scale * phi1 * d1_0
        l2, m2 = self._hist[-3]
        r1 = (l1 - l2) / h
        d1_1 = (m1 - m2) / r1
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi2 = phi1 / h - sg  # ++: phi1/h + 1;  dpmsolver: phi1/h - 1
        phi3 = (phi2 / h - 0.5) * (1.0 if self.config.official_3m else 2.0)
        if sg < 0:
            return lin - scale * phi1 * m0 + scale * phi2 * d1 - scale * phi3 * d2
        return lin - scale * phi1 * m0 - scale * phi2 * d1 - scale * phi3 * d2

    def _singlestep(self, ks: float, kt: float, order: int, mids: list[float], j: int) -> torch.Tensor:
        """Next point inside a singlestep group after its j-th model call (the group end after the last)."""
        x = self._x_s
        (ls, m_s) = self._hist[0]
        h = self.vp.lam(kt) - ls
        sg = -1.0 if self.config.algorithm == "dpmsolver++" else 1.0
        if order == 1:
            return self._first(x, ks, kt, m_s)
        if j == 0:
            return self._first(x, ks, mids[0], m_s)
        r1 = (self._hist[1][0] - ls) / h
        if order == 2:  # j == 1
            lin, scale, _ = self._lin(x, ks, kt)
            phi1 = math.expm1(sg * h)
            return lin - scale * phi1 * m_s - (0.5 / r1) * scale * phi1 * (self._hist[1][1] - m_s)
        r2 = (self.vp.lam(mids[1]) - ls) / h
        if j == 1:  # to s2 with the first two outputs
            lin, scale, _ = self._lin(x, ks, mids[1])
            phi12 = math.expm1(sg * r2 * h)
            phi22 = phi12 / (r2 * h) - sg
            corr = (r2 / r1) * scale * phi22 * (self._hist[1][1] - m_s)
            return lin - scale * phi12 * m_s + (corr if sg < 0 else -corr)
        lin, scale, _ = self._lin(x, ks, kt)  # j == 2
        phi1 = math.expm1(sg * h)
        phi2 = phi1 / h - sg
        corr = (1.0 / r2) * scale * phi2 * (self._hist[2][1] - m_s)
        return lin - scale * phi1 * m_s + (corr if sg < 0 else -corr)


def _spread(ks: Sequence[float], lo: int, hi: int) -> list[int] | None:
    """Integer steps for the decreasing float steps ``ks``: each rounded and clamped to ``lo..hi``, then made
    strictly decreasing by moving the later of two equal steps down (and, where that runs below ``lo``, the
    earlier ones up); None when ``len(ks)`` steps do not fit in ``lo..hi``.  Steps that already round apart
    are kept as rounded."""
    if len(ks) > hi - lo + 1:
        return None
    a = [min(max(int(round(k)), lo), hi) for k in ks]
    for i in range(1, len(a)):
        a[i] = min(a[i], a[i - 1] - 1)
    for i in range(len(a) - 1, -1, -1):
        a[i] = max(a[i], lo if i == len(a) - 1 else a[i + 1] + 1)
    return a


def _orders(steps: int, order: int) -> list[int]:
    """Orders of the singlestep groups using exactly ``steps`` calls (official DPM-Solver rule)."""
    if order == 3:
        k = steps // 3 + 1
        if steps % 3 == 0:
            return [3] * (k - 2) + [2, 1]
        if steps % 3 == 1:
            return [3] * (k - 1) + [1]
        return [3] * (k - 1) + [2]
    if order == 2:
        return [2] * (steps // 2) if steps % 2 == 0 else [2] * (steps // 2) + [1]
    return [1] * steps


__all__ = ["ALGORITHMS", "DPMSolver", "DPMSolverConfig", "DiscreteVP", "METHODS", "SKIP_TYPES"]
