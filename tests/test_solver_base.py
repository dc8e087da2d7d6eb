"""The interface every solver shares (:mod:`sdmc.diffusion.solver_base`) at its edges: explicit trajectories,
the scalar step of a batch, the ``leading`` grid off the even case, and the diffusers-style loop.  (Each
solver's maths is in ``test_solvers.py``.)"""

from __future__ import annotations

import pytest
import torch

from sdmc.config import DiffusionConfig
from sdmc.diffusion import NoiseSchedule
from sdmc.diffusion.solver_base import as_step, check_trajectory, time_grid
from sdmc.diffusion.solvers import make_solver
from sdmc.errors import ConfigError

N = 20
SCHED = NoiseSchedule(DiffusionConfig(num_timesteps=N))


def test_the_leading_grid_steps_by_the_integer_ratio():
    """diffusers' ``leading``: ``i * (N // S)``, also when S does not divide N (1000 // 30 = 33)."""
    grid = time_grid(1000, 30, "leading")
    assert grid[0] == 29 * 33 and grid[-2:] == [33, 0] and len(grid) == 30


@pytest.mark.parametrize("traj", [[N - 1, -1], [5, -1], [N - 1, 0], [N - 1, N - 2, 3, -1], [0, -1]])
def test_a_trajectory_in_range_is_accepted_as_ints(traj):
    got = check_trajectory([float(t) for t in traj], N)
    assert got == traj and all(type(t) is int for t in got)


@pytest.mark.parametrize(
    "traj, why",
    [
        ([5], "at least one call step and a target"),
        ([], "at least one call step and a target"),
        ([5, 5, -1], "strictly decreasing"),
        ([5, 6, -1], "strictly decreasing"),
        ([N, -1], "leaves the range"),
        ([N + 1, 3, -1], "leaves the range"),
        ([N, 3], "leaves the range"),  # only the first is out
        ([5, -2], "leaves the range"),  # only the target is out
        ([5, 3, -2], "leaves the range"),  # the target, not the second entry
    ],
)
def test_a_trajectory_out_of_shape_or_range_is_refused(traj, why):
    with pytest.raises(ConfigError, match=why):
        check_trajectory(traj, N)
    with pytest.raises(ConfigError, match=why):  # the same check guards every solver's explicit trajectory
        make_solver("ddim", SCHED).set_timesteps(timesteps=traj)


def test_the_step_of_a_batch_is_its_shared_value():
    assert as_step(torch.tensor([7, 7, 7])) == 7 and isinstance(as_step(torch.tensor([7, 7])), int)
    assert as_step(torch.tensor([7])) == 7 and as_step(torch.tensor(7.5)) == 7.5
    assert as_step(3.0) == 3 and type(as_step(3.0)) is int
    for bad, why in ((torch.tensor([7, 8]), "share one step"), (torch.tensor([]), "empty")):
        with pytest.raises(ConfigError, match=why):
            as_step(bad)


def _eps(x, t):
    return 0.3 * x + 0.01 * t.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm-solver++"])
def test_the_diffusers_style_loop_and_sample_agree(name):
    """``x = randn * init_noise_sigma`` then ``step`` per call step (the module's documented loop) is what
    :meth:`sample` does from the same noise; ``sample`` reports each step to its callback, in order."""
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    solver = make_solver(name, SCHED)
    solver.set_timesteps(5)
    x, gen = noise * solver.init_noise_sigma, torch.Generator().manual_seed(1)
    for t in solver.timesteps:
        x = solver.step(_eps(x, t.repeat(2)), t, x, gen).prev_sample
    seen = []
    y = solver.sample(_eps, noise, torch.Generator().manual_seed(1), callback=seen.append)
    assert torch.equal(x, y) and seen == list(range(solver.nfe))


def test_sampling_before_planning_is_refused_and_abar_runs_from_the_clean_end():
    solver = make_solver("ddim", SCHED)
    assert solver.abar(-1) == 1.0 and solver.abar(N - 1) == float(SCHED.alphas_cumprod[-1])  # -1: the clean image
    assert solver.nfe == 0
    with pytest.raises(ConfigError, match="call set_timesteps"):
        solver.sample(_eps, torch.zeros(1, 1, 2, 2))
