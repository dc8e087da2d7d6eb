"""The diffusion formulas checked directly: the ε / x0 / v targets and their conversion back to ε, one
sampling run per prediction mode against data whose exact predictor is known, and single DDIM updates
(η = 0 and η > 0) written out from the paper's equation with an independently built ᾱ table."""

from __future__ import annotations

import math

import pytest
import torch

from sdmc.config import DiffusionConfig
from sdmc.diffusion import NoiseSchedule
from sdmc.diffusion.sampling import sample_images
from sdmc.diffusion.solvers import DDIMSolver, DDPMSolver, make_solver

F64 = torch.float64
MODES = ("epsilon", "x0", "v")
# ᾱ of the default schedule, built here from its definition (linear β 1e-4..0.02 over 1000 steps)
ABAR = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=F64), 0)


def _draw(seed: int, shape=(4, 3, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=F64), torch.randn(shape, generator=g, dtype=F64)


# ------------------------------------------------------------------------------------------- the tables
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_tables_are_their_definitions(schedule):
    """Every table NoiseSchedule documents, from β alone: ᾱ, ᾱ_prev, sqrt tables, β̃ and log-SNR."""
    s = NoiseSchedule(DiffusionConfig(schedule=schedule))
    b = s.betas
    if schedule == "linear":
        torch.testing.assert_close(b, torch.linspace(1e-4, 0.02, 1000, dtype=F64), rtol=0, atol=0)
        torch.testing.assert_close(s.alphas_cumprod, ABAR, rtol=1e-14, atol=0)
    else:  # Nichol & Dhariwal: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/N + s)/(1 + s) π/2), s = 0.008; β clipped at 0.999
        f = torch.cos((torch.arange(1001, dtype=F64) / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
        torch.testing.assert_close(b, (1 - f[1:] / f[:-1]).clamp(max=0.999), rtol=1e-12, atol=1e-15)
    abar = torch.cumprod(1 - b, 0)
    prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    torch.testing.assert_close(s.alphas, 1 - b, rtol=0, atol=0)
    torch.testing.assert_close(s.alphas_cumprod_prev, prev, rtol=1e-14, atol=0)
    torch.testing.assert_close(s.sqrt_abar, abar.sqrt(), rtol=1e-14, atol=0)
    torch.testing.assert_close(s.sqrt_one_minus_abar, (1 - abar).sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(s.posterior_variance, b * (1 - prev) / (1 - abar), rtol=1e-12, atol=0)
    torch.testing.assert_close(s.log_snr, torch.log(abar / (1 - abar)), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------- targets and conversions
@pytest.mark.parametrize("mode", MODES)
def test_targets_are_the_defined_quantities(mode):
    """ε-target = ε, x0-target = x0, v-target = sqrt(ᾱ) ε - sqrt(1-ᾱ) x0 (Salimans & Ho 2022), per sample."""
    s = NoiseSchedule(DiffusionConfig(mean_type=mode))
    x0, eps = _draw(0)
    t = torch.tensor([0, 10, 500, 999])
    a, b = ABAR[t].sqrt().view(-1, 1, 1), (1 - ABAR[t]).sqrt().view(-1, 1, 1)
    want = {"epsilon": eps, "x0": x0, "v": a * eps - b * x0}[mode]
    torch.testing.assert_close(s.target(x0, t, eps), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s.q_sample(x0, t, eps), a * x0 + b * eps, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_training_loss_is_the_mean_squared_error_to_the_target(mode):
    """loss = mean((model(x_t, t) - target)²) with x_t = sqrt(ᾱ) x0 + sqrt(1-ᾱ) ε, by hand, for a model whose
    output is neither zero nor the target (so a sign flip or a dropped term changes the value)."""
    s = NoiseSchedule(DiffusionConfig(mean_type=mode))
    x0, eps = _draw(1)
    t = torch.tensor([3, 40, 700, 999])
    a, b = ABAR[t].sqrt().view(-1, 1, 1), (1 - ABAR[t]).sqrt().view(-1, 1, 1)
    seen = {}

    def model(x_t, t_in):
        seen["x_t"], seen["t"] = x_t, t_in
        return 0.5 * x_t + 0.1 * t_in.view(-1, 1, 1).to(F64) / 1000

    want_target = {"epsilon": eps, "x0": x0, "v": a * eps - b * x0}[mode]
    x_t = a * x0 + b * eps
    want = ((0.5 * x_t + 0.1 * t.view(-1, 1, 1).to(F64) / 1000 - want_target) ** 2).mean()
    got = s.loss(model, x0, t, eps)
    torch.testing.assert_close(seen["x_t"], x_t, rtol=1e-12, atol=1e-12)
    assert torch.equal(seen["t"], t)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_training_loss_draws_one_step_and_one_noise_per_sample():
    """Without t and noise, loss draws t uniformly per sample (shape [B], not one t for the batch) and fresh
    Gaussian noise of x0's shape, from the generator given."""
    s = NoiseSchedule(DiffusionConfig())
    x0 = torch.zeros(64, 1, 2, 2, dtype=F64)
    seen = {}

    def model(x_t, t):
        seen["x_t"], seen["t"] = x_t, t
        return torch.zeros_like(x_t)

    loss = s.loss(model, x0, generator=torch.Generator().manual_seed(0))
    t = seen["t"]
    assert t.shape == (64,) and t.min() >= 0 and t.max() < 1000 and len(t.unique()) > 32
    eps = seen["x_t"] / (1 - ABAR[t]).sqrt().view(-1, 1, 1, 1)  # x0 = 0: x_t = sqrt(1 - ᾱ) ε
    assert abs(float(eps.mean())) < 0.3 and 0.7 < float(eps.std()) < 1.3
    torch.testing.assert_close(loss, (eps**2).mean(), rtol=1e-12, atol=0)  # ε-target, zero model


@pytest.mark.parametrize("mode", MODES)
def test_eps_from_output_inverts_the_target(mode):
    """Round trip: a network that outputs the exact target of (x0, ε) is converted back to exactly ε."""
    s = NoiseSchedule(DiffusionConfig(mean_type=mode))
    x0, eps = _draw(1)
    for k in (0, 1, 250, 998, 999):
        t = torch.full((4,), k)
        x_t = s.q_sample(x0, t, eps)
        torch.testing.assert_close(s.eps_from_output(s.target(x0, t, eps), x_t, t), eps, rtol=1e-9, atol=1e-9)


def test_v_and_x0_predictions_recover_x0():
    """x0 = sqrt(ᾱ) x_t - sqrt(1-ᾱ) v, and the ε from either mode gives the same x̂0 as the x0 output itself."""
    x0, eps = _draw(2)
    t = torch.tensor([3, 300, 600, 990])
    a, b = ABAR[t].sqrt().view(-1, 1, 1), (1 - ABAR[t]).sqrt().view(-1, 1, 1)
    sv, sx = NoiseSchedule(DiffusionConfig(mean_type="v")), NoiseSchedule(DiffusionConfig(mean_type="x0"))
    x_t = sv.q_sample(x0, t, eps)
    v = sv.target(x0, t, eps)
    torch.testing.assert_close(a * x_t - b * v, x0, rtol=1e-10, atol=1e-10)
    for sched, out in ((sv, v), (sx, x0)):
        e = sched.eps_from_output(out, x_t, t)
        torch.testing.assert_close((x_t - b * e) / a, x0, rtol=1e-8, atol=1e-8)


class PointMassOracle:
    """The exact predictor, in prediction mode ``schedule.config.mean_type``, for data that is always ``c``:
    ε(x_t, t) = (x_t - sqrt(ᾱ_t) c) / sqrt(1 - ᾱ_t), returned as the network of that mode would."""

    def __init__(self, schedule: NoiseSchedule, c: torch.Tensor) -> None:
        self.s, self.c, self.calls = schedule, c, 0

    def __call__(self, x, t):
        self.calls += 1
        c = self.c.expand_as(x)
        a, b = self.s.gather(self.s.sqrt_abar, t, x), self.s.gather(self.s.sqrt_one_minus_abar, t, x)
        return self.s.target(c, t, (x - a * c) / b)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "solver,kw", [("ddim", dict(spacing="trailing")), ("ddpm", {}), ("dpm-solver++", dict(denoise_to_zero=True))]
)
def test_sampling_with_each_prediction_mode_lands_on_the_data(mode, solver, kw):
    """These solvers end on x̂0 (DDIM: the clean target of the trailing grid); with the exact predictor of a
    point mass, x̂0 is the point at every step, so each image must come out as ``c`` whatever the noise."""
    sched = NoiseSchedule(DiffusionConfig(mean_type=mode))
    c = torch.tensor([0.3, -0.7, 0.05], dtype=F64)
    model = PointMassOracle(sched, c)
    sol = make_solver(solver, sched, **kw)
    imgs = sample_images(model, sched, 5, sol, steps=8, batch_size=3, seed=1, progress=False, shape=(3,), dtype=F64)
    assert imgs.shape == (5, 3) and model.calls == 2 * sol.nfe  # two batches
    torch.testing.assert_close(imgs, c.expand(5, 3), rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------------ the DDIM update
def _ddim_by_hand(x, eps, t, s, eta, clip, z=None):
    """Song et al. 2021, Eq. 12: x_s = sqrt(ᾱ_s) x̂0 + sqrt(1 - ᾱ_s - σ²) ε + σ z,
    σ² = η² (1-ᾱ_s)/(1-ᾱ_t) (1 - ᾱ_t/ᾱ_s), x̂0 = (x_t - sqrt(1-ᾱ_t) ε) / sqrt(ᾱ_t) (clamped when ``clip``)."""
    at = float(ABAR[t])
    as_ = 1.0 if s < 0 else float(ABAR[s])
    x0 = (x - math.sqrt(1 - at) * eps) / math.sqrt(at)
    if clip:
        x0 = x0.clamp(-1, 1)
    sig2 = eta**2 * (1 - as_) / (1 - at) * (1 - at / as_)
    out = math.sqrt(as_) * x0 + math.sqrt(1 - as_ - sig2) * eps
    return (out if sig2 == 0 else out + math.sqrt(sig2) * z), x0


@pytest.mark.parametrize("clip", [False, True])
def test_ddim_eta0_steps_are_the_equation(clip):
    """η = 0, one step at a time along a 4-step trajectory ending on the clean target; x_t scaled so that some
    x̂0 leave [-1, 1] (clipping changes x̂0, not the ε used in the update: the seed's update)."""
    traj = [999, 600, 150, 7, -1]
    solver = DDIMSolver(NoiseSchedule(), eta=0.0, clip_sample=clip)
    solver.set_timesteps(timesteps=traj)
    x, _ = _draw(3)
    for t, s in zip(traj, traj[1:]):
        eps = torch.tanh(x) + 0.1 * t / 1000  # any deterministic function of (x, t)
        out = solver.step(eps, t, x)
        want, x0 = _ddim_by_hand(x, eps, t, s, 0.0, clip)
        if clip and t == 999:
            assert (x0.abs() == 1).any()  # the clamp was exercised
        torch.testing.assert_close(out.pred_original_sample, x0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.prev_sample, want, rtol=1e-12, atol=1e-12)
        x = out.prev_sample
    torch.testing.assert_close(x, x0, rtol=0, atol=0)  # the clean target returns x̂0


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_ddim_stochastic_step_is_the_equation(eta):
    """η > 0: the same z the solver draws (a generator of the same seed) enters with σ, ε with sqrt(1-ᾱ_s-σ²)."""
    solver = DDIMSolver(NoiseSchedule(), eta=eta, clip_sample=False)
    solver.set_timesteps(timesteps=[800, 300, -1])
    x, eps = _draw(4)
    out = solver.step(eps, 800, x, generator=torch.Generator().manual_seed(9))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    want, x0 = _ddim_by_hand(x, eps, 800, 300, eta, False, z)
    torch.testing.assert_close(out.prev_sample, want, rtol=1e-12, atol=1e-12)
    sig2 = eta**2 * (1 - ABAR[300]) / (1 - ABAR[800]) * (1 - ABAR[800] / ABAR[300])
    assert solver.sigma2(800, 300) == pytest.approx(float(sig2), rel=1e-12)
    # the last step lands on the clean target: σ = 0 there, x̂0 is returned, no noise drawn
    last = solver.step(eps, 300, out.prev_sample, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(last.prev_sample, last.pred_original_sample, rtol=0, atol=0)


@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
def test_ddpm_step_is_the_equation(variance):
    """x_s = sqrt(ᾱ_s) β̄/(1-ᾱ_t) x̂0 + sqrt(ᾱ_t/ᾱ_s) (1-ᾱ_s)/(1-ᾱ_t) x_t + σ z with the solver's own z (a
    generator of the same seed), β̄ = 1 - ᾱ_t/ᾱ_s, σ² = β̄ (large) or (1-ᾱ_s)/(1-ᾱ_t) β̄ (small)."""
    solver = DDPMSolver(NoiseSchedule(), variance=variance, clip_sample=False)
    solver.set_timesteps(timesteps=[700, 250, -1])
    x, eps = _draw(6)
    out = solver.step(eps, 700, x, generator=torch.Generator().manual_seed(3))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    at, as_ = ABAR[700], ABAR[250]
    x0 = (x - (1 - at).sqrt() * eps) / at.sqrt()
    bbar = 1 - at / as_
    sig2 = bbar if variance == "fixedlarge" else (1 - as_) / (1 - at) * bbar
    want = as_.sqrt() * bbar / (1 - at) * x0 + (at / as_).sqrt() * (1 - as_) / (1 - at) * x + sig2.sqrt() * z
    torch.testing.assert_close(out.prev_sample, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.pred_original_sample, x0, rtol=1e-12, atol=1e-12)


def test_analytic_ddim_variance_is_the_equation():
    """Analytic-DDIM (η > 0): σ² = λ² + c0² clamp((1-ᾱ_t)/ᾱ_t (1-Γ_t), 0, 1), λ² = η² σ_small², with c0 the
    x̂0 coefficient of the mean sqrt(ᾱ_s) x̂0 + sqrt(1-ᾱ_s-λ²) ε, i.e. c0 = sqrt(ᾱ_s) - sqrt(1-ᾱ_s-λ²)
    sqrt(ᾱ_t/(1-ᾱ_t)) once ε is written through x_t and x̂0."""
    gamma = torch.full((1000,), 0.3, dtype=F64)
    solver = DDIMSolver(NoiseSchedule(), eta=0.5, analytic=True, gamma=gamma, clip_sigma_idx=0)
    solver.set_timesteps(timesteps=[600, 200, 0])
    at, as_ = ABAR[600], ABAR[200]
    lam2 = 0.25 * (1 - as_) / (1 - at) * (1 - at / as_)
    c0 = as_.sqrt() - (1 - as_ - lam2).sqrt() * (at / (1 - at)).sqrt()
    want = lam2 + c0**2 * ((1 - at) / at * (1 - 0.3)).clamp(0, 1)
    assert solver.sigma2(600, 200) == pytest.approx(float(want), rel=1e-12)


def test_a_noiseless_step_draws_no_random_numbers():
    """DDIM η = 0 and every step into the clean target add no noise, so they leave the generator untouched (a
    run's later draws do not depend on how many deterministic steps came before)."""
    x, eps = _draw(7)
    cases = [  # solver, trajectory, the noiseless steps
        (DDIMSolver(NoiseSchedule(), eta=0.0), [800, 300, 0], {0, 1}),
        (DDIMSolver(NoiseSchedule(), eta=1.0, spacing="linspace"), [800, 300, -1], {1}),
        (DDPMSolver(NoiseSchedule()), [800, 300, -1], {1}),
    ]
    for solver, traj, quiet in cases:
        solver.set_timesteps(timesteps=traj)
        g = torch.Generator().manual_seed(5)
        for i, t in enumerate(traj[:-1]):
            state = g.get_state()
            x = solver.step(eps, t, x, generator=g).prev_sample
            assert torch.equal(g.get_state(), state) == (i in quiet), (type(solver).__name__, i)
