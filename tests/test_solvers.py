"""Solvers against data whose exact ε-predictor is known in closed form.

For x0 ~ Σ_j π_j N(μ_j, Σ_j) and x_k = α x0 + σ ε, the marginal is Σ_j π_j N(α μ_j, C_j) with
C_j = α² Σ_j + σ² I, so the optimal ε-model is ε(x, k) = σ Σ_j w_j(x) C_j⁻¹ (x - α μ_j) with w_j the
posterior weights.  α(k), σ(k) are read at float k from the interpolated schedule (which equals the discrete
tables at integer k), so the same model serves integer-step and continuous-time solvers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdmc.config import DiffusionConfig
from sdmc.diffusion import NoiseSchedule
from sdmc.diffusion.analytic import estimate_gamma
from sdmc.diffusion.dpm_solver import DiscreteVP, DPMSolver, DPMSolverConfig, _orders
from sdmc.diffusion.solvers import DDIMSolver, DDPMSolver, analytic_sigma2, make_solver, time_grid
from sdmc.errors import ConfigError, SdmcError

F64 = torch.float64
SCHED = NoiseSchedule()
VP = DiscreteVP(SCHED)


def mm(a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """a [..., d] @ m [d, e] as a sum of d column products (thin float64 matmuls are slow on this CPU)."""
    return sum(a[..., i : i + 1] * m[i] for i in range(m.shape[0]))


class GaussianMixture:
    """Exact ε-model, moments and Γ of a Gaussian mixture in R^d."""

    def __init__(self, weights, means, covs):
        self.pi = torch.tensor(weights, dtype=F64)
        self.mu = torch.tensor(means, dtype=F64)
        self.cov = torch.tensor(covs, dtype=F64)
        self.d = self.mu.shape[1]
        self.evals, self.evecs = torch.linalg.eigh(self.cov)  # [J, d], [J, d, d]

    def mean(self) -> torch.Tensor:
        return self.pi @ self.mu

    def covariance(self) -> torch.Tensor:
        m = self.mean()
        second = sum(p * (c + torch.outer(u, u)) for p, u, c in zip(self.pi, self.mu, self.cov))
        return second - torch.outer(m, m)

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k = float(t.reshape(-1)[0])
        a, s = VP.alpha(k), VP.sigma(k)
        var = a * a * self.evals + s * s  # eigenvalues of C_j
        if len(self.pi) == 1:  # one component: ε = σ C⁻¹ (x - αμ)
            cinv = (self.evecs[0] / var[0]) @ self.evecs[0].T
            return s * mm(x - a * self.mu[0], cinv)
        logps, parts = [], []
        for j in range(len(self.pi)):
            z = mm(x - a * self.mu[j], self.evecs[j])  # coordinates in C_j's eigenbasis
            logps.append(-0.5 * (z * z / var[j]).sum(-1) - 0.5 * torch.log(var[j]).sum() + torch.log(self.pi[j]))
            parts.append(mm(z / var[j], self.evecs[j].T))  # C_j⁻¹ (x - α μ_j)
        w = torch.softmax(torch.stack(logps, 1), dim=1)  # posterior weights [B, J]
        return s * sum(w[:, j : j + 1] * parts[j] for j in range(len(parts)))

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        comp = torch.multinomial(self.pi, n, replacement=True, generator=gen)
        z = torch.randn(n, self.d, dtype=F64, generator=gen)
        chol = torch.linalg.cholesky(self.cov)
        return self.mu[comp] + (chol[comp] * z[:, None, :]).sum(-1)

    def gamma_single(self) -> torch.Tensor:
        """Γ_k = σ² tr(C⁻¹)/d, exact for one Gaussian component."""
        assert len(self.pi) == 1
        out = []
        for k in range(SCHED.num_timesteps):
            a, s = VP.alpha(k), VP.sigma(k)
            out.append(s * s * float((1.0 / (a * a * self.evals[0] + s * s)).sum()) / self.d)
        return torch.tensor(out, dtype=F64)


GAUSS = GaussianMixture([1.0], [[0.3, -0.2, 0.1]], [[[0.10, 0.02, 0.03], [0.02, 0.05, -0.025], [0.03, -0.025, 0.0725]]])
MIX = GaussianMixture(
    [0.3, 0.7], [[0.5, 0.3], [-0.4, -0.2]], [[[0.03, 0.01], [0.01, 0.02]], [[0.02, -0.005], [-0.005, 0.04]]]
)
N_SAMPLES = 8000


def run(solver, model, n=N_SAMPLES, d=3, seed=1):
    x = torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(seed))
    return solver.sample(model, x, generator=torch.Generator().manual_seed(seed + 100))


def assert_moments(y: torch.Tensor, dist: GaussianMixture, cov_tol: float = 0.06) -> None:
    """Mean within 5 standard errors; covariance within cov_tol of the largest variance (≈4 s.e. at 8000)."""
    mean, cov = dist.mean(), dist.covariance()
    se = (cov.diag() / y.shape[0]).sqrt()
    z = ((y.mean(0) - mean) / se).abs().max().item()
    assert z < 5.0, f"sample mean {y.mean(0).tolist()} vs {mean.tolist()} ({z:.1f} s.e.)"
    err = ((torch.cov(y.T) - cov).abs().max() / cov.diag().max()).item()
    assert err < cov_tol, f"covariance off by {err:.3f} (relative)\n{torch.cov(y.T)}\nvs\n{cov}"


# ------------------------------------------------------------------------------------------ grids
def test_seed_grid_matches_paper_formula():
    grid = time_grid(1000, 50, "seed")
    assert grid == [int(999 - i * 1000 / 50) for i in range(50)] + [0]
    assert grid[:3] == [999, 979, 959] and grid[-2:] == [19, 0]
    assert time_grid(1000, 1000, "seed") == list(range(999, -1, -1))  # 0 already there: not repeated
    uneven = time_grid(1000, 30, "seed")
    assert uneven[:3] == [999, 965, 932] and uneven[-1] == 0 and len(uneven) == 31


def test_diffusers_spacings():
    assert time_grid(1000, 10, "leading") == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert time_grid(1000, 10, "trailing") == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    lin = time_grid(1000, 10, "linspace")
    assert lin[0] == 999 and lin[-1] == 0 and lin[1] == 888 and len(lin) == 10


@pytest.mark.parametrize("bad", [dict(steps=0), dict(steps=1001), dict(spacing="cosine")])
def test_grid_errors(bad):
    kw = dict(steps=10, spacing="seed") | bad
    with pytest.raises(ConfigError):
        time_grid(1000, kw["steps"], kw["spacing"])


def test_solver_nfe_and_trajectories():
    ddim = DDIMSolver(SCHED)
    ddim.set_timesteps(50)
    assert ddim.nfe == 50 and ddim.trajectory[-1] == 0  # seed: ends at x_0, 50 calls
    ddpm = DDPMSolver(SCHED)
    ddpm.set_timesteps(50)
    assert ddpm.nfe == 51 and ddpm.trajectory[-2:] == [0, -1]  # seed DDPM also calls at 0, returns x̂0
    ddim_lin = DDIMSolver(SCHED, spacing="linspace")
    ddim_lin.set_timesteps(10)
    assert ddim_lin.nfe == 10 and ddim_lin.trajectory[-1] == -1
    for method, steps, nfe in [
        ("multistep", 10, 10),
        ("singlestep", 10, 10),
        ("singlestep", 20, 20),
        ("singlestep_fixed", 12, 12),
    ]:
        s = DPMSolver(SCHED, order=3, method=method)
        s.set_timesteps(steps)
        assert s.nfe == nfe, (method, steps)
        assert s.timesteps.dtype == torch.long and s.timesteps[0] == 999
        assert bool((s.timesteps[1:] < s.timesteps[:-1]).all())
    s = DPMSolver(SCHED, order=2, denoise_to_zero=True)
    s.set_timesteps(10)
    assert s.nfe == 11 and int(s.timesteps[-1]) == 0


def test_dpm_integer_grid_keeps_step_count():
    s = DPMSolver(SCHED, skip_type="logSNR")
    s.set_timesteps(200)  # logSNR crowds the low steps: rounding must not merge them
    ks = s.outer
    assert len(ks) == 201 and ks[0] == 999 and ks[-1] == 0
    assert all(a > b for a, b in zip(ks, ks[1:]))


def test_dpm_grids():
    s = DPMSolver(SCHED, skip_type="time_uniform")
    assert s.outer_grid(10) == [round(k) for k in np.linspace(999, 0, 11)]
    q = DPMSolver(SCHED, skip_type="time_quadratic", integer_timesteps=False).outer_grid(4)
    ts = np.linspace(1.0, math.sqrt(1e-3), 5) ** 2
    np.testing.assert_allclose(q[1:-1], (ts * 1000 - 1)[1:-1])
    lg = DPMSolver(SCHED, skip_type="logSNR", integer_timesteps=False).outer_grid(8)
    lams = [VP.lam(k) for k in lg]
    np.testing.assert_allclose(np.diff(lams), np.full(8, (VP.lam(0) - VP.lam(999)) / 8), rtol=1e-9)


def test_singlestep_orders_and_lower_order_final():
    from sdmc.diffusion.dpm_solver import _orders

    assert _orders(6, 3) == [3, 2, 1] and _orders(7, 3) == [3, 3, 1] and _orders(8, 3) == [3, 3, 2]
    assert _orders(5, 2) == [2, 2, 1] and _orders(6, 2) == [2, 2, 2] and _orders(3, 1) == [1, 1, 1]
    x = torch.randn(4, 3, dtype=F64)
    for steps, lof, want in [
        (6, True, [1, 2, 3, 3, 2, 1]),
        (6, False, [1, 2, 3, 3, 3, 3]),
        (12, True, [1, 2] + [3] * 10),
    ]:
        s = DPMSolver(SCHED, order=3, method="multistep", lower_order_final=lof)
        s.set_timesteps(steps)
        s.sample(GAUSS.eps, x)
        assert s.orders_used == want, (steps, lof)
    s = DPMSolver(SCHED, order=3, method="singlestep")
    s.set_timesteps(8)
    s.sample(GAUSS.eps, x)
    assert s.orders_used == [3, 3, 2]


def test_singlestep_intermediate_calls_sit_at_the_official_lambda_fractions():
    """DPM-Solver-2 calls at λ_s + h/2, DPM-Solver-3 at λ_s + h/3 and λ_s + 2h/3 (float steps: no rounding);
    one explicit interval [999, 0] is a valid grid (one group)."""
    vp = DiscreteVP(SCHED)
    for order, rs in ((2, [0.5]), (3, [1 / 3, 2 / 3])):
        s = DPMSolver(SCHED, order=order, method="singlestep_fixed", integer_timesteps=False)
        s.set_timesteps(timesteps=[999.0, 0.0])
        ks = s.timesteps.tolist()
        assert ks[0] == 999.0 and len(ks) == order
        ls, lt = vp.lam(999.0), vp.lam(0.0)
        for k, r in zip(ks[1:], rs):
            assert vp.lam(k) == pytest.approx(ls + r * (lt - ls), abs=1e-6), (order, r)


def test_step_accepts_the_planned_step_to_a_relative_1e_9():
    """t as another library passes it (a float a few ulps off) is the planned step: 1e-9 relative for steps
    above 1; further off is a caller out of step and refused."""
    s = DPMSolver(SCHED, order=2)
    s.set_timesteps(5)
    x = torch.zeros(2, 3, dtype=F64)
    k = float(s.timesteps[0])
    assert k > 100
    x = s.step(torch.zeros_like(x), k * (1 + 5e-10), x).prev_sample  # inside k * 1e-9, outside 1e-9 absolute
    with pytest.raises(ConfigError, match="expected step"):
        s.step(torch.zeros_like(x), float(s.timesteps[1]) + 1e-3, x)


def test_denoise_to_zero_returns_x0_prediction():
    s = DPMSolver(SCHED, order=2, denoise_to_zero=True)
    s.set_timesteps(10)
    x = torch.randn(16, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    for t in s.timesteps[:-1]:
        x = s.step(GAUSS.eps(x, t.repeat(16)), t, x).prev_sample
    out = s.step(GAUSS.eps(x, torch.zeros(16, dtype=torch.long)), 0, x)
    a0 = SCHED.alphas_cumprod[0].item()
    torch.testing.assert_close(out.prev_sample, (x - math.sqrt(1 - a0) * GAUSS.eps(x, torch.zeros(1))) / math.sqrt(a0))


# ------------------------------------------------------------------------------- moments (Gaussian)
GAMMA_GAUSS = GAUSS.gamma_single()

SOLVERS = [
    ("ddpm", dict(), 250),
    ("ddpm", dict(variance="fixedsmall"), 1000),
    ("analytic-ddpm", dict(gamma=GAMMA_GAUSS), 100),
    ("ddim", dict(), 200),
    ("ddim", dict(eta=1.0), 1000),
    ("analytic-ddim", dict(gamma=GAMMA_GAUSS), 100),
    ("dpm-solver-1", dict(), 200),
    ("dpm-solver-2", dict(), 50),
    ("dpm-solver-3", dict(), 30),
    ("dpm-solver-3", dict(method="multistep"), 30),
    ("dpm-solver++", dict(), 30),
    ("dpm-solver++", dict(order=3), 30),
    ("dpm-solver++", dict(method="singlestep", skip_type="time_quadratic", denoise_to_zero=True), 40),
]


@pytest.mark.parametrize(
    "name,kw,steps", SOLVERS, ids=[f"{n}-{s}-{'-'.join(map(str, k.values()))[:20]}" for n, k, s in SOLVERS]
)
def test_moments_gaussian(name, kw, steps):
    clip = {} if name.startswith("dpm") else {"clip_sample": False}
    solver = make_solver(name, SCHED, **clip, **kw)
    solver.set_timesteps(steps)
    assert_moments(run(solver, GAUSS.eps), GAUSS)


@pytest.mark.parametrize(
    "name,kw,steps",
    [
        ("ddpm", dict(clip_sample=False), 250),
        ("ddim", dict(clip_sample=False), 200),
        ("dpm-solver++", dict(order=3), 30),
    ],
)
def test_moments_mixture(name, kw, steps):
    solver = make_solver(name, SCHED, **kw)
    solver.set_timesteps(steps)
    y = run(solver, MIX.eps, d=2)
    assert_moments(y, MIX)
    # the mode weights: the projection on μ_1 - μ_2 separates the components
    u = MIX.mu[0] - MIX.mu[1]
    frac = ((y - 0.5 * (MIX.mu[0] + MIX.mu[1])) @ u > 0).double().mean().item()
    assert abs(frac - 0.3) < 5 * math.sqrt(0.3 * 0.7 / y.shape[0]) + 0.01


def test_few_steps_are_measurably_worse():
    """The moment check has power: 5-step DDIM misses the covariance."""
    solver = DDIMSolver(SCHED, clip_sample=False)
    solver.set_timesteps(5)
    with pytest.raises(AssertionError, match="covariance"):
        assert_moments(run(solver, GAUSS.eps), GAUSS)


# ---------------------------------------------------------------------------- DDIM == DPM-Solver-1
@pytest.mark.parametrize("skip", ["time_uniform", "logSNR"])
def test_ddim_eta0_equals_dpm_solver_1_step_by_step(skip):
    dpm = DPMSolver(SCHED, order=1, algorithm="dpmsolver", method="multistep", skip_type=skip)
    dpm.set_timesteps(15)
    ddim = DDIMSolver(SCHED, eta=0.0, clip_sample=False)
    ddim.set_timesteps(timesteps=[int(k) for k in dpm.outer])
    assert torch.equal(ddim.timesteps, dpm.timesteps)
    x1 = x2 = torch.randn(64, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    for t in dpm.timesteps:
        tt = t.repeat(64)
        a = dpm.step(GAUSS.eps(x1, tt), t, x1)
        b = ddim.step(GAUSS.eps(x2, tt), t, x2)
        torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(a.pred_original_sample, b.pred_original_sample, rtol=1e-10, atol=1e-12)
        x1, x2 = a.prev_sample, b.prev_sample
    # DPM-Solver++ order 1 is the same first-order update written with x̂0
    pp = DPMSolver(SCHED, order=1, algorithm="dpmsolver++", method="multistep", skip_type=skip)
    pp.set_timesteps(15)
    x0 = torch.randn(64, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(run_from(pp, x0), x1, rtol=1e-9, atol=1e-11)


def run_from(solver, x):
    return solver.sample(GAUSS.eps, x)


# ---------------------------------------------------------------------------- convergence order
def exact_flow(x: torch.Tensor, k_from: float, k_to: float) -> torch.Tensor:
    """Exact probability-flow ODE map for one Gaussian: moves N(αμ, C) quantiles linearly."""
    a1, s1, a0, s0 = VP.alpha(k_from), VP.sigma(k_from), VP.alpha(k_to), VP.sigma(k_to)
    ev, u = GAUSS.evals[0], GAUSS.evecs[0]
    mu = GAUSS.mu[0]
    y = mm(x - a1 * mu, u)
    y = y * torch.sqrt((a0**2 * ev + s0**2) / (a1**2 * ev + s1**2))
    return mm(y, u.T) + a0 * mu


def ode_errors(steps_list, **kw):
    x = torch.randn(256, 3, dtype=F64, generator=torch.Generator().manual_seed(5))
    ref = exact_flow(x, 999, 0)
    errs = []
    for steps in steps_list:
        s = DPMSolver(SCHED, **kw)
        s.set_timesteps(steps)
        errs.append((s.sample(GAUSS.eps, x) - ref).pow(2).mean().sqrt().item())  # RMS error
    return errs


def test_exact_flow_is_the_ode_solution():
    """Sanity of the reference: a very fine 3rd-order run lands on it."""
    (err,) = ode_errors([300], order=3, method="singlestep_fixed", integer_timesteps=False)
    assert err < 1e-5


# In λ (logSNR) spacing the Gaussian's ε(x_λ, λ) is smooth, so doubling the steps should divide the
# error by about 2^order once the steps are fine enough.  Measured RMS-error ratios per doubling (24→48→96
# NFE): order 1: 1.9-2.0; order 2: 3.7-4.3; DPM-Solver-3 singlestep: 10.1, 9.8 (8.5 at 192→384).
# DPM-Solver++-3 singlestep is pre-asymptotic there (1.3, 5.2: error cancellation near 24 NFE) and reaches
# 6.7, 7.4 at 96→192→384, so it is tested in that range.
@pytest.mark.parametrize(
    "kw,lo,hi",
    [
        (dict(order=1, method="multistep", algorithm="dpmsolver"), 1.8, 2.2),
        (dict(order=2, method="singlestep_fixed", algorithm="dpmsolver"), 3.5, 4.6),
        (dict(order=2, method="singlestep_fixed", algorithm="dpmsolver++"), 3.4, 4.6),
        (dict(order=2, method="multistep", algorithm="dpmsolver"), 3.5, 4.6),
        (dict(order=2, method="multistep", algorithm="dpmsolver++"), 3.5, 4.6),
    ],
)
def test_first_and_second_order_convergence(kw, lo, hi):
    errs = ode_errors([24, 48, 96], skip_type="logSNR", integer_timesteps=False, **kw)
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    assert all(lo < r < hi for r in ratios), (errs, ratios)


@pytest.mark.parametrize("method", ["singlestep_fixed", "multistep"])
def test_second_order_with_integer_steps(method):
    """Rounded to integer steps the order shows while the grid is coarse (12→24→48: 4.3/4.3 and 3.7/3.9);
    finer grids hit the integer resolution near step 0 and the error stalls (what a UNet gets)."""
    errs = ode_errors([12, 24, 48], order=2, method=method, algorithm="dpmsolver", skip_type="logSNR")
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    assert all(3.4 < r < 4.8 for r in ratios), (errs, ratios)


@pytest.mark.parametrize("algorithm,steps", [("dpmsolver", [24, 48, 96]), ("dpmsolver++", [96, 192, 384])])
def test_third_order_singlestep_convergence(algorithm, steps):
    errs = ode_errors(
        steps, order=3, method="singlestep_fixed", algorithm=algorithm, skip_type="logSNR", integer_timesteps=False
    )
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    assert all(6.0 < r < 12.0 for r in ratios), (errs, ratios)


@pytest.mark.parametrize("algorithm", ["dpmsolver", "dpmsolver++"])
def test_third_order_multistep_convergence(algorithm):
    """3M with the exact D2 weight is (at least) third order: measured ratios 14-16 (the warm-up steps
    act where ε hardly changes).  The official weight makes it second order (ratios 4.1-4.5)."""
    errs = ode_errors(
        [24, 48, 96], order=3, method="multistep", algorithm=algorithm, skip_type="logSNR", integer_timesteps=False
    )
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    assert all(6.5 < r < 20.0 for r in ratios), (errs, ratios)
    off = ode_errors(
        [24, 48, 96],
        order=3,
        method="multistep",
        algorithm=algorithm,
        skip_type="logSNR",
        integer_timesteps=False,
        official_3m=True,
    )
    ratios_off = [a / b for a, b in zip(off, off[1:])]
    assert all(3.0 < r < 5.5 for r in ratios_off), (off, ratios_off)
    assert errs[-1] < 0.2 * off[-1]


@pytest.mark.parametrize("algorithm", ["dpmsolver", "dpmsolver++"])
def test_multistep_step_is_exact_for_quadratic_outputs(algorithm):
    """One 3M step integrates the linear ODE exactly when the model output is quadratic in λ."""
    s = DPMSolver(SCHED, order=3, method="multistep", algorithm=algorithm, integer_timesteps=False)
    f = lambda lam: 0.3 + 0.2 * lam + 0.05 * lam * lam  # noqa: E731
    ks, kt = [640.0, 580.0, 500.0], 430.0
    s._hist = [(VP.lam(k), torch.full((1, 1), f(VP.lam(k)), dtype=F64)) for k in ks]
    ls, lt = VP.lam(500.0), VP.lam(kt)
    lam = np.linspace(ls, lt, 400001)
    if algorithm == "dpmsolver":  # x_t = α_t/α_s x_s - α_t ∫ e^{-λ} ε dλ
        exact = VP.alpha(kt) / VP.alpha(500.0) - VP.alpha(kt) * np.trapz(np.exp(-lam) * f(lam), lam)
    else:  # x_t = σ_t/σ_s x_s + σ_t ∫ e^{λ} x̂0 dλ
        exact = VP.sigma(kt) / VP.sigma(500.0) + VP.sigma(kt) * np.trapz(np.exp(lam) * f(lam), lam)
    got = s._multistep(torch.ones(1, 1, dtype=F64), 500.0, kt, 3).item()
    assert got == pytest.approx(exact, rel=1e-9)


# ------------------------------------------------------------------------------------ Analytic-DPM
def test_analytic_variance_between_small_and_large():
    for solver_cls, kw in [(DDPMSolver, dict(variance="analytic")), (DDIMSolver, dict(analytic=True, eta=1.0))]:
        s = solver_cls(SCHED, gamma=GAMMA_GAUSS, clip_sigma_idx=0, **kw)
        s.set_timesteps(timesteps=time_grid(1000, 50, "linspace") + [-1])
        large, small = DDPMSolver(SCHED, variance="fixedlarge"), DDPMSolver(SCHED, variance="fixedsmall")
        strictly = 0
        for t, r in zip(s.trajectory[:-2], s.trajectory[1:-1]):
            v, lo, hi = s.sigma2(t, r), small.sigma2(t, r), large.sigma2(t, r)
            assert lo - 1e-15 <= v <= hi + 1e-15, (t, r, lo, v, hi)
            strictly += lo < v < hi
        assert strictly > 40


def test_analytic_ddim_eta0_adds_variance_only_from_gamma():
    s = DDIMSolver(SCHED, analytic=True, eta=0.0, gamma=GAMMA_GAUSS, clip_sigma_idx=0)
    s.set_timesteps(20)
    assert all(s.sigma2(t, r) > 0 for t, r in zip(s.trajectory[:-1], s.trajectory[1:]))
    s1 = DDIMSolver(SCHED, analytic=True, eta=0.0, gamma=torch.ones(1000, dtype=F64), clip_sigma_idx=0)
    s1.set_timesteps(20)  # Γ = 1 means x0 is known exactly: no extra variance
    assert all(s1.sigma2(t, r) == 0 for t, r in zip(s1.trajectory[:-1], s1.trajectory[1:]))


def test_analytic_clipping_rules():
    big = torch.zeros(1000, dtype=F64)  # Γ = 0: the covariance clamp at 1 is active
    s = DDPMSolver(SCHED, variance="analytic", gamma=big, clip_sigma_idx=1, clip_pixel=2)
    s.set_timesteps(10)
    bound = (2 * 2 / 255 * math.sqrt(math.pi / 2)) ** 2
    traj = s.trajectory
    last_noisy = [(t, r) for t, r in zip(traj[:-1], traj[1:]) if r >= 0][-1]
    assert s.sigma2(*last_noisy) == pytest.approx(bound)
    t0, r0 = traj[0], traj[1]
    at, as_ = s.abar(t0), s.abar(r0)
    skip = 1 - at / as_
    expect = (1 - as_) / (1 - at) * skip + (math.sqrt(as_) * skip / (1 - at)) ** 2 * 1.0
    assert s.sigma2(t0, r0) == pytest.approx(expect)
    assert analytic_sigma2(0.5, 0.6, 0.01, 0.3, 1.7) == pytest.approx(0.01)  # Γ > 1: covariance 0


def test_estimate_gamma_matches_closed_form():
    sched = NoiseSchedule(DiffusionConfig(num_timesteps=50, beta_1=1e-3, beta_T=0.2))
    vp = DiscreteVP(sched)
    data = GAUSS.sample(4000, torch.Generator().manual_seed(0))

    def eps(x, t):  # exact ε for this shorter schedule; t may hold different steps per sample
        out = torch.empty_like(x)
        for k in t.unique():
            m = t == k
            a, s = vp.alpha(int(k)), vp.sigma(int(k))
            cinv = torch.linalg.inv(a * a * GAUSS.cov[0] + s * s * torch.eye(3, dtype=F64))
            out[m] = s * (x[m] - a * GAUSS.mu[0]) @ cinv
        return out

    g = estimate_gamma(eps, sched, data, budget=400, batch_size=997, seed=1)
    exact = torch.tensor(
        [
            vp.sigma(k) ** 2
            * float(
                torch.linalg.inv(vp.alpha(k) ** 2 * GAUSS.cov[0] + vp.sigma(k) ** 2 * torch.eye(3, dtype=F64)).trace()
            )
            / 3
            for k in range(50)
        ],
        dtype=F64,
    )
    assert g.shape == (50,) and g.dtype == F64
    # Monte-Carlo: ‖ε‖²/d has variance ≲ 2Γ²/d, so 400 draws give a relative s.e. ≲ 4%
    assert ((g - exact).abs() / exact).max() < 0.2
    assert ((g - exact).abs() / exact).mean() < 0.06
    g2 = estimate_gamma(eps, sched, data, budget=400, batch_size=997, seed=1)
    assert torch.equal(g, g2)


# -------------------------------------------------------------------------------------- bad input
def test_step_errors():
    s = DDIMSolver(SCHED)
    with pytest.raises(ConfigError, match="set_timesteps"):
        s.sample(GAUSS.eps, torch.zeros(2, 3, dtype=F64))
    s.set_timesteps(5)
    x = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ConfigError, match="expected step 999"):
        s.step(x, 500, x)
    with pytest.raises(ConfigError, match="does not match"):
        s.step(torch.zeros(2, 4, dtype=F64), 999, x)
    with pytest.raises(ConfigError, match="share one step"):
        s.step(x, torch.tensor([999, 998]), x)
    for _ in range(5):
        x = s.step(GAUSS.eps(x, torch.tensor([int(s.timesteps[s._i])])), s.timesteps[s._i], x).prev_sample
    with pytest.raises(ConfigError, match="no steps left"):
        s.step(x, 0, x)
    with pytest.raises(ConfigError, match="strictly decreasing"):
        s.set_timesteps(timesteps=[10, 20, -1])


@pytest.mark.parametrize(
    "call",
    [
        lambda: make_solver("euler"),
        lambda: make_solver("ddim", SCHED, eta=2.0),
        lambda: make_solver("ddim", SCHED, etaa=0.5),
        lambda: make_solver("analytic-ddpm", SCHED),
        lambda: make_solver("analytic-ddim", SCHED, gamma=torch.ones(10)),
        lambda: make_solver("dpm-solver-2", SCHED, order=3),
        lambda: make_solver("dpm-solver++", SCHED, order=4),
        lambda: make_solver("dpm-solver++", SCHED, skip_type="karras"),
        lambda: make_solver("dpm-solver-2", SCHED, clip_sample=True),
        lambda: make_solver("ddpm", SCHED, variance="learned"),
    ],
)
def test_bad_options_raise_one_clear_error(call):
    with pytest.raises(SdmcError):
        call()


def test_integer_dpm_solver_calls_model_with_integer_steps():
    seen = []

    def model(x, t):
        assert t.dtype == torch.long
        seen.append(int(t[0]))
        return GAUSS.eps(x, t)

    for method in ["singlestep", "multistep"]:
        seen.clear()
        s = DPMSolver(SCHED, order=3, method=method, algorithm="dpmsolver")
        s.set_timesteps(20)
        s.sample(model, torch.randn(4, 3, dtype=F64))
        assert len(seen) == 20 and len(set(seen)) == 20
        assert seen == sorted(seen, reverse=True) and all(0 <= k <= 999 for k in seen)


# ------------------------------------------------------------------------------------- properties
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 1000),
    frac=st.floats(0.0, 1.0),
    spacing=st.sampled_from(["seed", "linspace", "leading", "trailing"]),
)
def test_time_grid_properties(n, frac, spacing):
    steps = max(1, int(round(frac * n)))
    grid = time_grid(n, steps, spacing)
    assert all(a > b for a, b in zip(grid, grid[1:]))
    assert 0 <= grid[-1] and grid[0] <= n - 1
    if spacing == "seed":
        assert grid[:steps] == [max(int(n - 1 - i * n / steps), 0) for i in range(steps)]
        assert len(grid) in (steps, steps + 1)
    else:
        assert len(grid) == steps
    if spacing in ("seed", "linspace", "leading"):
        assert grid[-1] == 0


@settings(max_examples=25, deadline=None)
@given(
    steps=st.integers(1, 60),
    order=st.integers(1, 3),
    method=st.sampled_from(["singlestep", "multistep", "singlestep_fixed"]),
    skip=st.sampled_from(["logSNR", "time_uniform", "time_quadratic"]),
    integer=st.booleans(),
)
def test_dpm_solver_plans_are_valid(steps, order, method, skip, integer):
    s = DPMSolver(SCHED, order=order, method=method, skip_type=skip, integer_timesteps=integer)
    s.set_timesteps(steps)
    ts = s.timesteps.tolist()
    assert all(a > b for a, b in zip(ts, ts[1:])) and ts[0] == 999 and ts[-1] > 0 and s.outer[-1] == 0
    if method != "singlestep_fixed":
        assert s.nfe == steps
    x = torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(steps))
    y = s.sample(GAUSS.eps, x)
    assert torch.isfinite(y).all() and len(s.orders_used) == len(s.outer) - 1


def test_singlestep_logsnr_integer_plan_keeps_every_model_call():
    # hypothesis found it: the integer logSNR grid of 19 second-order intervals crowds near t=0, one interval had
    # no integer step for its midpoint, dropped to first order and the run made 37 model calls for steps=38
    for steps, order in [(38, 2), (38, 3), (59, 3), (60, 2)]:
        s = DPMSolver(SCHED, order=order, method="singlestep", skip_type="logSNR", integer_timesteps=True)
        s.set_timesteps(steps)
        ts = s.timesteps.tolist()
        assert s.nfe == steps == len(set(ts)), (steps, order)
        assert all(a > b for a, b in zip(ts, ts[1:]))
        s.sample(GAUSS.eps, torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(0)))
        assert sum(s.orders_used) == steps


def test_trailing_grid_has_exactly_the_requested_steps():
    # np.arange(n, 0, -n/s) produced s+1 values (the last one -1) for n=104, s=45
    grid = time_grid(104, 45, "trailing")
    assert len(grid) == 45 and grid[0] == 103 and grid[-1] >= 0


def test_defaults_are_the_reference_codes():
    """What a user gets without options (shared/reference/anchors.md): x̂0 clipped to [-1, 1] (DDPM and DDIM),
    Analytic-DPM's σ clipped on the last landing only, by clip_pixel 2 (DDPM) / 1 (DDIM); σ² = 0 into the
    clean target."""
    big = torch.zeros(1000, dtype=F64)  # Γ = 0: the covariance clamp at 1 is active, σ is large
    for solver_cls, kw, pixel in [(DDPMSolver, dict(variance="analytic"), 2), (DDIMSolver, dict(analytic=True), 1)]:
        s = solver_cls(SCHED, gamma=big, **kw)
        s.set_timesteps(10)
        bound = (pixel * 2 / 255 * math.sqrt(math.pi / 2)) ** 2
        steps = [(t, r) for t, r in zip(s.trajectory[:-1], s.trajectory[1:]) if r >= 0]
        assert s.sigma2(*steps[-1]) == pytest.approx(bound), solver_cls.name  # clipped: the last landing
        assert s.sigma2(*steps[-2]) > 10 * bound, solver_cls.name  # not clipped: only one landing is
    for variance in ("fixedlarge", "fixedsmall"):
        assert DDPMSolver(SCHED, variance=variance).sigma2(10, -1) == 0.0
    x = torch.full((2, 3), 0.5, dtype=F64)
    eps = torch.full((2, 3), -40.0, dtype=F64)  # x̂0 = (x - sqrt(1-ᾱ) ε)/sqrt(ᾱ) far above 1
    for solver_cls in (DDPMSolver, DDIMSolver):
        s = solver_cls(SCHED)
        s.set_timesteps(5)
        assert float(s.step(eps, s.trajectory[0], x).pred_original_sample.max()) == 1.0, solver_cls.name
        loose = solver_cls(SCHED, clip_sample=False)
        loose.set_timesteps(5)
        assert float(loose.step(eps, loose.trajectory[0], x).pred_original_sample.max()) > 1.0


def test_solver_names_build_what_they_say():
    """make_solver's names (the CLI's --solver): analytic-* switch the variance on, dpm-solver-k is order k
    singlestep (the DPM-Solver paper), dpm-solver++ is 2M (multistep, order 2); explicit options win and a
    contradicting order is refused."""
    assert make_solver("analytic-ddpm", SCHED, gamma=GAMMA_GAUSS).config.variance == "analytic"
    assert make_solver("analytic-ddim", SCHED, gamma=GAMMA_GAUSS).config.analytic
    assert make_solver("ddpm", SCHED).config.variance == "fixedlarge" and not make_solver("ddim", SCHED).config.analytic
    for k in (1, 2, 3):
        c = make_solver(f"dpm-solver-{k}", SCHED).config
        assert (c.algorithm, c.order, c.method) == ("dpmsolver", k, "singlestep")
    c = make_solver("dpm-solver++", SCHED).config
    assert (c.algorithm, c.order, c.method) == ("dpmsolver++", 2, "multistep")
    c = make_solver("dpm-solver++", SCHED, order=3, method="singlestep", skip_type=None).config
    assert (c.order, c.method) == (3, "singlestep")
    assert make_solver("dpm-solver-2", SCHED, method="multistep").config.method == "multistep"
    with pytest.raises(ConfigError, match="contradicts"):
        make_solver("dpm-solver-2", SCHED, order=3)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 40), data=st.data())
def test_dpm_snap_keeps_a_strictly_decreasing_integer_grid(n, data):
    """_snap rounds a decreasing float grid to integer steps: same length, strictly decreasing, within
    0..N-1, however crowded the grid is (many points rounding to one step, or piled at the top)."""
    s = DPMSolver(NoiseSchedule(DiffusionConfig(num_timesteps=n)))
    m = data.draw(st.integers(2, n))
    ks = sorted(data.draw(st.lists(st.floats(0, n - 1), min_size=m, max_size=m)), reverse=True)
    out = s._snap(np.asarray(ks))
    assert len(out) == m and all(0 <= k <= n - 1 for k in out)
    assert all(a > b for a, b in zip(out, out[1:]))
    assert out == s._snap(np.asarray(out))  # an integer grid is kept as it is


def test_dpm_explicit_timesteps_and_their_checks():
    """Given timesteps run the same plan as the grid they spell out; a grid that does not decrease strictly
    within 0..N-1 is refused."""
    x = torch.linspace(-1, 1, 6, dtype=F64).view(2, 3)
    for method in ("multistep", "singlestep_fixed"):
        a = DPMSolver(SCHED, algorithm="dpmsolver++", order=2, method=method)
        a.set_timesteps(6)
        b = DPMSolver(SCHED, algorithm="dpmsolver++", order=2, method=method)
        b.set_timesteps(timesteps=list(a.outer))
        assert b.outer == a.outer and torch.equal(b.timesteps, a.timesteps), method
        ya, yb = x.clone(), x.clone()
        for ta, tb in zip(a.timesteps, b.timesteps):
            ya = a.step(GAUSS.eps(ya, ta.view(1)), ta, ya).prev_sample
            yb = b.step(GAUSS.eps(yb, tb.view(1)), tb, yb).prev_sample
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    s = DPMSolver(SCHED)
    for bad in ([1000, 500, 0], [999, 999, 0], [500, 600, 0], [999, 500, -1], [999]):
        with pytest.raises(ConfigError, match="timesteps must decrease strictly"):
            s.set_timesteps(timesteps=bad)


def test_dpm_singlestep_plans_the_official_logsnr_grid_when_it_has_room():
    """Singlestep DPM-Solver-3 with 9 calls: the official orders (3, 3, 2, 1) on the logSNR grid of 4
    intervals (the official plan), kept because every group fits its intermediate steps; the lower-order
    final steps are the default for multistep runs under 10 steps."""
    s = DPMSolver(SCHED, algorithm="dpmsolver", order=3, method="singlestep")
    s.set_timesteps(9)
    assert _orders(9, 3) == [3, 3, 2, 1]
    assert s.outer == s.outer_grid(4) and [g[2] for g in s._groups] == [3, 3, 2, 1]
    assert DPMSolverConfig().lower_order_final
    x = torch.linspace(-1, 1, 6, dtype=F64).view(2, 3)
    outs = []
    for lof in (True, False, None):
        m = DPMSolver(SCHED, order=3, **({} if lof is None else {"lower_order_final": lof}))
        m.set_timesteps(5)
        y = x.clone()
        for t in m.timesteps:
            y = m.step(GAUSS.eps(y, t.view(1)), t, y).prev_sample
        outs.append(y)
    assert torch.equal(outs[0], outs[2]) and not torch.equal(outs[0], outs[1])
