"""The command line as a package: the explicit command list, the shared option groups, the library helpers
the commands call instead of their own numerics."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sdmc.cli import COMMANDS, build_parser, main
from sdmc.cli.base import SOLVERS


def test_every_command_is_listed_once_and_parses_its_help(capsys):
    names = [c.name for c in COMMANDS]
    assert len(names) == len(set(names))
    for name in names:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "usage: sdmc " + name in capsys.readouterr().out


def test_solver_choices_are_the_library_solvers():
    from sdmc.diffusion.solvers import SOLVER_NAMES

    assert tuple(SOLVERS) == tuple(SOLVER_NAMES)


def test_help_does_not_import_torch():
    code = "import sys; from sdmc.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_shared_groups_give_every_model_command_the_same_options():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name in ("sample", "eval", "energy", "compile", "export", "sim", "analytic-stats"):
        opts = {s for a in sub[name]._actions for s in a.option_strings}
        assert {"--weights", "--snn-steps"} <= opts, name
    for name in ("sample", "eval", "energy", "analytic-stats", "demo"):
        opts = {s for a in sub[name]._actions for s in a.option_strings}
        assert "--device" in opts, name


def test_noised_inputs_use_the_graphs_noise_schedule(monkeypatch):
    """sim.inputs.noised_inputs draws x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with the NoiseSchedule the
    graph records (here 100 cosine steps, not a hand-made copy of the default linear betas); a step outside the
    schedule is one clear error, not silently clamped."""
    import sdmc.data
    from sdmc.config import DiffusionConfig, ModelConfig
    from sdmc.diffusion.schedule import NoiseSchedule
    from sdmc.errors import SdmcError
    from sdmc.frontends import trace
    from sdmc.models import SpikingUNet
    from sdmc.sim.inputs import noised_inputs

    cfg = ModelConfig(arch="sddpm", ch=8, ch_mult=(1,), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8)
    graph = trace(SpikingUNet(cfg).eval(), (1, 1, 8, 8))
    dcfg = DiffusionConfig(num_timesteps=100, schedule="cosine")
    graph.meta["sdmc_config"] = {"diffusion": dcfg.to_dict()}

    def no_digits(*a, **k):
        raise OSError("no dataset here")

    monkeypatch.setattr(sdmc.data, "load_dataset", no_digits)  # x0 falls back to uniform noise
    got = noised_inputs(graph, 5, 70, seed=3)
    rng = np.random.default_rng(3)
    x0 = rng.uniform(-1, 1, (5, 1, 8, 8))
    abar = float(NoiseSchedule(dcfg).alphas_cumprod[70])
    want = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * rng.standard_normal(x0.shape)
    np.testing.assert_allclose(got["x"], want, rtol=0, atol=1e-12)
    assert got["t"].tolist() == [70] * 5
    with pytest.raises(SdmcError, match=r"t=100 is outside the schedule's 0\.\.99"):
        noised_inputs(graph, 1, 100)
