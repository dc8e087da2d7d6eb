"""DPM-Solver's planning and its guards, piece by piece: the integer spreading of intermediate steps, the grid's
end points, the step-count and call-count checks, the x̂0 clamp and the names.  (The solver's numerics are in
``test_solvers.py``; these are the rules a mutation run showed no test there pinned.)"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdmc.config import DiffusionConfig
from sdmc.diffusion import NoiseSchedule
from sdmc.diffusion.dpm_solver import METHODS, SKIP_TYPES, DPMSolver, _spread
from sdmc.diffusion.solvers import make_solver
from sdmc.errors import ConfigError

SCHED = NoiseSchedule()
N = SCHED.num_timesteps
F64 = torch.float64


# ------------------------------------------------------------------------------------ integer spreading
@pytest.mark.parametrize(
    "ks, lo, hi, want",
    [
        ([7.2, 5.0, 3.4], 1, 9, [7, 5, 3]),  # rounded apart: kept as rounded
        ([5.0], 1, 9, [5]),
        ([12.0, 0.2], 1, 9, [9, 1]),  # clamped into lo..hi
        ([5.2, 4.9], 1, 9, [5, 4]),  # two round alike: the later moves down
        ([5.2, 5.1, 4.9], 1, 9, [5, 4, 3]),
        ([1.2, 1.1], 1, 9, [2, 1]),  # ... and where that runs below lo, the earlier moves up
        ([1.4, 1.3, 0.2], 1, 9, [3, 2, 1]),
        ([3.0, 2.0, 1.0], 1, 3, [3, 2, 1]),  # exactly fits
        ([9.0, 9.0, 9.0], 1, 9, [9, 8, 7]),
        ([3.0, 2.0, 1.0], 1, 2, None),  # three steps do not fit in 1..2
    ],
)
def test_spread_by_hand(ks, lo, hi, want):
    assert _spread(ks, lo, hi) == want


@settings(max_examples=200, deadline=None)
@given(lo=st.integers(0, 20), width=st.integers(1, 12), data=st.data())
def test_spread_is_strictly_decreasing_in_range_and_moves_only_collisions(lo, width, data):
    hi = lo + width - 1
    m = data.draw(st.integers(1, width))
    ks = sorted(data.draw(st.lists(st.floats(lo - 3, hi + 3), min_size=m, max_size=m)), reverse=True)
    out = _spread(ks, lo, hi)
    assert out is not None and len(out) == m
    assert all(lo <= k <= hi for k in out)
    assert all(a > b for a, b in zip(out, out[1:]))
    rounded = [min(max(int(round(k)), lo), hi) for k in ks]
    assert all(abs(a - r) <= m - 1 for a, r in zip(out, rounded))  # a collision moves a step by < m
    if all(a > b for a, b in zip(rounded, rounded[1:])):
        assert out == rounded
    assert _spread(ks + [0.0] * (width + 1 - m), lo, hi) is None  # one step more than fits


def test_singlestep_intermediates_are_spread_on_a_crowded_interval():
    """Order-3 singlestep on the last interval of an integer grid, where λ's thirds round to the same step:
    the intermediate steps are still strictly inside the interval and strictly decreasing."""
    s = DPMSolver(SCHED, algorithm="dpmsolver", order=3, method="singlestep")
    mids = s._intermediates(4, 0, [1 / 3, 2 / 3])
    assert mids is not None and 4 > mids[0] > mids[1] > 0
    raw = DPMSolver(SCHED, algorithm="dpmsolver", integer_timesteps=False)._intermediates(4, 0, [1 / 3, 2 / 3])
    assert mids == _spread(raw, 1, 3)
    assert s._intermediates(2, 0, [1 / 3, 2 / 3]) is None  # two steps do not fit strictly inside (2, 0)


# ------------------------------------------------------------------------------------------ the grid
@pytest.mark.parametrize("skip", SKIP_TYPES)
@pytest.mark.parametrize("integer", [True, False])
def test_outer_grid_runs_from_the_last_step_to_zero_exactly(skip, integer):
    s = DPMSolver(SCHED, skip_type=skip, integer_timesteps=integer)
    for steps in (1, 2, 7, 20):
        g = s.outer_grid(steps)
        assert len(g) == steps + 1 and g[0] == N - 1 and g[-1] == 0, (skip, integer, steps)
        assert all(a > b for a, b in zip(g, g[1:]))
    with pytest.raises(ConfigError, match="steps must be >= 1, got 0"):
        s.outer_grid(0)


def test_logsnr_grid_is_uniform_in_lambda_between_the_end_steps():
    s = DPMSolver(SCHED, skip_type="logSNR", integer_timesteps=False)
    g = s.outer_grid(8)
    lam = [s.vp.lam(k) for k in g]
    want = torch.linspace(s.vp.lam(N - 1), s.vp.lam(0), 9, dtype=F64).tolist()
    assert max(abs(a - b) for a, b in zip(lam, want)) < 1e-9


def test_time_grids_are_uniform_in_their_variable():
    """time_uniform: k uniform; time_quadratic: sqrt(t) uniform with t = (k+1)/N, from t = 1 down to 1/N (the
    official code's ``t = linspace(sqrt(T), sqrt(1/N), steps+1)²``)."""
    g = DPMSolver(SCHED, skip_type="time_uniform", integer_timesteps=False).outer_grid(6)
    torch.testing.assert_close(torch.tensor(g, dtype=F64), torch.linspace(N - 1, 0, 7, dtype=F64))
    g = DPMSolver(SCHED, skip_type="time_quadratic", integer_timesteps=False).outer_grid(6)
    root = torch.tensor([(k + 1) / N for k in g], dtype=F64).sqrt()
    torch.testing.assert_close(root, torch.linspace(1.0, (1.0 / N) ** 0.5, 7, dtype=F64))


def test_an_integer_grid_may_use_every_step():
    small = NoiseSchedule(DiffusionConfig(num_timesteps=10))
    s = DPMSolver(small)
    assert s.outer_grid(9) == list(range(9, -1, -1))
    with pytest.raises(ConfigError, match="do not fit"):
        s.outer_grid(10)


@pytest.mark.parametrize("method", METHODS)
def test_zero_steps_are_refused_for_every_method(method):
    s = DPMSolver(SCHED, order=2, method=method)
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        s.set_timesteps(0)


def test_singlestep_fixed_with_fewer_steps_than_its_order_takes_one_group():
    """``singlestep_fixed`` runs every group at full order: asked for fewer steps than the order it still
    runs one group (order calls) rather than none."""
    s = DPMSolver(SCHED, algorithm="dpmsolver", order=3, method="singlestep_fixed")
    s.set_timesteps(2)
    assert s.outer == [N - 1, 0] and [g[2] for g in s._groups] == [3] and len(s.timesteps) == 3


# ------------------------------------------------------------------------------------------ stepping
def _run(s: DPMSolver, x: torch.Tensor, eps=lambda x, t: 0.5 * x) -> torch.Tensor:
    for t in s.timesteps:
        x = s.step(eps(x, t), t, x).prev_sample
    return x


def test_step_checks_the_output_shape_and_the_call_count():
    s = DPMSolver(SCHED)
    s.set_timesteps(3)
    x = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ConfigError, match="does not match"):
        s.step(torch.zeros(2, 4, dtype=F64), s.timesteps[0], x)
    _run(s, x)
    with pytest.raises(ConfigError, match="no steps left"):
        s.step(x, 0, x)


def test_clip_sample_clamps_the_data_prediction_to_unit_range():
    """DPM-Solver++ with ``clip_sample``: the x̂0 it reports and uses is (x - σ ε)/α clamped to [-1, 1]; values
    inside the range are untouched.  Without the clamp the same step reports the raw x̂0."""
    x = torch.linspace(-3, 3, 13, dtype=F64).view(1, 13)
    eps = torch.zeros_like(x)
    for clip in (True, False):
        s = DPMSolver(SCHED, algorithm="dpmsolver++", clip_sample=clip)
        s.set_timesteps(4)
        k = int(s.timesteps[1])
        s.step(eps, s.timesteps[0], x)  # advance to the second call
        a, sig = s.vp.alpha(k), s.vp.sigma(k)
        e = 0.1 * torch.ones_like(x)
        out = s.step(e, k, x)
        raw = (x - sig * e) / a
        want = raw.clamp(-1.0, 1.0) if clip else raw
        torch.testing.assert_close(out.pred_original_sample, want, rtol=1e-12, atol=1e-12)
        if clip:
            assert (out.pred_original_sample.abs() <= 1).all() and (raw.abs() > 1).any()
            inside = raw.abs() < 1
            assert torch.equal(out.pred_original_sample[inside], raw[inside])


def test_clip_changes_the_sample_only_through_out_of_range_predictions():
    """Data that is one point c = 0.3 has the exact ε = (x - α c)/σ, so every x̂0 is c and the clamp is idle:
    clipped and unclipped runs agree to the bit.  Data at 40 is clamped to 1."""
    x = torch.linspace(-2, 2, 4, dtype=F64).view(1, 4)
    runs = {}
    for clip in (True, False):
        s = DPMSolver(SCHED, algorithm="dpmsolver++", clip_sample=clip)
        s.set_timesteps(5)
        vp = s.vp
        runs[clip] = _run(s, x.clone(), eps=lambda x, t, vp=vp: (x - vp.alpha(float(t)) * 0.3) / vp.sigma(float(t)))
    assert torch.equal(runs[True], runs[False])
    far = {}
    for clip in (True, False):
        s = DPMSolver(SCHED, algorithm="dpmsolver++", clip_sample=clip)
        s.set_timesteps(5)
        far[clip] = float(_run(s, torch.full((1, 4), 40.0, dtype=F64), eps=lambda x, t: torch.zeros_like(x)).max())
    assert far[True] < 1.5 < 30 < far[False]  # x̂0 = x/α: 1 after the clamp, ~x/α without


def test_names_say_the_algorithm_and_order():
    assert make_solver("dpm-solver++", SCHED).name == "dpm-solver++"
    assert make_solver("dpm-solver++", SCHED, order=3).name == "dpm-solver++"
    for k in (1, 2, 3):
        assert make_solver(f"dpm-solver-{k}", SCHED).name == f"dpm-solver-{k}"


def test_lower_order_final_applies_below_ten_steps_only():
    """Multistep with ``lower_order_final`` (the official rule: ``steps < 10``): the last steps of a 9-step
    3M run drop to orders 2 and 1; a 10-step run keeps order 3 to the end."""
    x = torch.linspace(-1, 1, 4, dtype=F64).view(1, 4)
    used = {}
    for steps in (9, 10):
        s = DPMSolver(SCHED, algorithm="dpmsolver++", order=3)
        s.set_timesteps(steps)
        _run(s, x.clone())
        used[steps] = s.orders_used
    assert used[9] == [1, 2, 3, 3, 3, 3, 3, 2, 1]
    assert used[10] == [1, 2] + [3] * 8
