"""sample_images, the seed's DDIM/DDPM formulas on a small spiking UNet, threshold guidance, Γ cache, CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sdmc.cli import main
from sdmc.config import DiffusionConfig, ModelConfig, SdmcConfig
from sdmc.diffusion import NoiseSchedule
from sdmc.diffusion.analytic import find_cached_gamma, gamma_cache_path, load_gamma, save_gamma, weights_key
from sdmc.diffusion.sampling import image_generators, sample_images, threshold_guidance
from sdmc.diffusion.solvers import DDIMSolver, DDPMSolver
from sdmc.errors import ConfigError, SdmcError
from sdmc.models import build_model

TINY = dict(arch="sdm", ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_size=8, img_ch=1)


def tiny_model(seed: int = 0, **over) -> torch.nn.Module:
    """A small SDM UNet with randomised BN statistics so that its neurons fire and its output varies."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**(TINY | over)))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.8, 1.6)
    return model.eval()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def neurons(model):
    return [m for m in model.modules() if hasattr(m, "v_threshold")]


def noise_for(seed: int, n: int, shape=(1, 8, 8)) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in image_generators(seed, range(n))])


# --------------------------------------------------------------------------------- seed formulas
def test_seed_ddim_reproduced_exactly(model):
    """SDDPM/SDM code: t_i = int(999 - i*1000/S), 0 appended; x̂0 clamped; x_s = sqrt(ᾱ_s) x̂0 + sqrt(1-ᾱ_s) ε."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    S = 10
    t_list = [max(int(999 - 1000 / S * i), 0) for i in range(S)]
    if t_list[-1] != 0:
        t_list.append(0)
    x_T = noise_for(7, 3)
    x = x_T.clone()
    with torch.no_grad():
        for t, s in zip(t_list[:-1], t_list[1:]):
            eps = model(x, torch.full((3,), t, dtype=torch.long))
            a_t, a_s = float(abar[t]), float(abar[s])
            x0 = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1, 1)
            x = math.sqrt(a_s) * x0 + math.sqrt(1 - a_s) * eps
    ref = x
    solver = DDIMSolver(NoiseSchedule())
    solver.set_timesteps(S)
    assert solver.trajectory == t_list
    with torch.no_grad():
        got = solver.sample(model, x_T.clone())
    assert torch.equal(got, ref)
    assert ref.abs().max() > 0.05 and ref.std() > 0.01  # a real, non-trivial trajectory
    # sample_images: same noise per image (seed 7), same result, clamped to [-1, 1]
    imgs = sample_images(model, NoiseSchedule(), 3, "ddim", steps=S, batch_size=3, seed=7, progress=False)
    assert torch.equal(imgs, ref.clamp(-1, 1))


def test_seed_ddpm_reproduced(model):
    """Full ancestral chain (pytorch-ddpm / SDDPM 'ddpm', fixedlarge), on a 100-step schedule to stay fast."""
    n_steps = 100
    betas = torch.linspace(1e-4, 0.02, n_steps, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    coef1 = (abar_prev.sqrt() * betas / (1 - abar)).float()
    coef2 = ((1 - betas).sqrt() * (1 - abar_prev) / (1 - abar)).float()
    post_var = betas * (1 - abar_prev) / (1 - abar)
    log_var = torch.log(torch.cat([post_var[1:2], betas[1:]])).float()
    x_T = noise_for(3, 2)
    g = torch.Generator().manual_seed(11)
    x = x_T.clone()
    with torch.no_grad():
        for t in reversed(range(n_steps)):
            tt = torch.full((2,), t, dtype=torch.long)
            eps = model(x, tt)
            x0 = (torch.sqrt(1 / abar[t]).float() * x - torch.sqrt(1 / abar[t] - 1).float() * eps).clamp(-1, 1)
            if t > 0:
                mean = coef1[t] * x0 + coef2[t] * x
                x = mean + torch.exp(0.5 * log_var[t]) * torch.randn(x.shape, generator=g)
            else:
                x = x0
    solver = DDPMSolver(NoiseSchedule(DiffusionConfig(num_timesteps=n_steps)))
    solver.set_timesteps(n_steps)
    with torch.no_grad():
        got = solver.sample(model, x_T.clone(), generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(got, x, rtol=0, atol=2e-5)


# ------------------------------------------------------------------------------ sample_images
class LinearEps:
    """A non-spiking ε-model on R^3 (the exact predictor of N(0.2, 0.1 I))."""

    def __init__(self, schedule):
        self.abar = schedule.alphas_cumprod

    def __call__(self, x, t):
        a = self.abar[t].to(x.dtype).view(-1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * 0.2) / (0.1 * a + 1 - a)


@pytest.mark.parametrize(
    "solver,kw", [("ddpm", {}), ("ddim", {"eta": 0.5}), ("dpm-solver-3", {}), ("dpm-solver++", {"order": 3})]
)
def test_batch_size_does_not_change_images(solver, kw):
    sched = NoiseSchedule()
    f = LinearEps(sched)
    runs = [
        sample_images(
            f, sched, 7, solver, steps=12, batch_size=b, seed=5, shape=(3,), dtype=torch.float64, progress=False, **kw
        )
        for b in (1, 3, 7)
    ]
    assert runs[0].shape == (7, 3)
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    again = sample_images(
        f, sched, 7, solver, steps=12, batch_size=4, seed=5, shape=(3,), dtype=torch.float64, progress=False, **kw
    )
    assert torch.equal(again, runs[0])
    other = sample_images(
        f, sched, 7, solver, steps=12, batch_size=4, seed=6, shape=(3,), dtype=torch.float64, progress=False, **kw
    )
    assert not torch.allclose(other, runs[0])


def test_spiking_model_batches_and_training_flag(model):
    a = sample_images(model, NoiseSchedule(), 4, "dpm-solver++", steps=6, batch_size=4, seed=1, progress=False)
    b = sample_images(model, NoiseSchedule(), 4, "dpm-solver++", steps=6, batch_size=3, seed=1, progress=False)
    assert a.shape == (4, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    # per-image noise is identical; only float rounding of batched convs differs (a rare spike could flip)
    assert (a - b).abs().mean() < 1e-4 and (a - b).abs().max() < 0.1
    model.train()
    try:
        sample_images(model, NoiseSchedule(), 1, "ddim", steps=2, progress=False)
        assert model.training  # left as found
    finally:
        model.eval()


def test_sample_images_errors(model):
    with pytest.raises(ConfigError):
        sample_images(model, NoiseSchedule(), 0, progress=False)
    with pytest.raises(ConfigError, match="shape"):
        sample_images(LinearEps(NoiseSchedule()), NoiseSchedule(), 2, progress=False)
    with pytest.raises(ConfigError, match="gamma"):
        sample_images(model, NoiseSchedule(), 2, "analytic-ddpm", progress=False)
    with pytest.raises(ConfigError, match="ready solver"):
        sample_images(model, NoiseSchedule(), 2, DDIMSolver(NoiseSchedule()), eta=1.0, progress=False)
    # fractional call steps: one line for a UNet, whose time embedding is a table (was: a RuntimeError from
    # F.embedding deep in the executor); a denoiser defined at any t takes them
    with pytest.raises(ConfigError, match="table of 1000 integer steps"):
        sample_images(model, NoiseSchedule(), 2, "dpm-solver++", steps=3, integer_timesteps=False, progress=False)
    seen = []

    def any_t(x, t):
        seen.append(t)
        return 0.1 * x

    x = sample_images(any_t, NoiseSchedule(), 2, "dpm-solver++", steps=3, integer_timesteps=False, shape=(1, 8, 8),
                      progress=False)  # fmt: skip
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
    assert len(seen) == 3 and any(not float(t[0]).is_integer() for t in seen)


# --------------------------------------------------------------------------- threshold guidance
def test_threshold_guidance_changes_outputs_and_restores(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ns = neurons(model)
    ns[0].v_threshold = 1.3  # a per-neuron value must come back too
    try:
        base = sample_images(model, NoiseSchedule(), 3, "ddim", steps=5, seed=2, progress=False)
        guided = sample_images(model, NoiseSchedule(), 3, "ddim", steps=5, seed=2, progress=False, threshold=0.9)
        assert not torch.allclose(base, guided)
        assert [m.v_threshold for m in ns] == [1.3] + [1.0] * (len(ns) - 1)
        again = sample_images(model, NoiseSchedule(), 3, "ddim", steps=5, seed=2, progress=False)
        assert torch.equal(base, again)
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # weights untouched
        x = torch.randn(2, 1, 8, 8)
        t = torch.tensor([500, 500])
        with torch.no_grad(), threshold_guidance(model, 0.997) as n:
            assert n == len(ns) and all(m.v_threshold == 0.997 for m in ns)
            y_guided = model(x, t)
        with torch.no_grad():
            y = model(x, t)
        assert not torch.equal(y, y_guided)
        with pytest.raises(RuntimeError, match="boom"):
            with threshold_guidance(model, 0.5):
                raise RuntimeError("boom")
        assert [m.v_threshold for m in ns] == [1.3] + [1.0] * (len(ns) - 1)
    finally:
        ns[0].v_threshold = 1.0


def test_threshold_guidance_errors(model):
    ann = build_model(ModelConfig(arch="ann", ch=32, ch_mult=(1, 2), num_res_blocks=1, img_size=8, img_ch=1))
    with pytest.raises(ConfigError, match="no spiking neurons"):
        with threshold_guidance(ann, 0.99):
            pass
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="positive"):
            with threshold_guidance(model, bad):
                pass
    with threshold_guidance(ann, None) as n:  # no guidance: nothing to do, no error
        assert n == 0


# ------------------------------------------------------------------------------------- Γ cache
def test_gamma_cache_roundtrip_and_keys(tmp_path, model):
    key = weights_key(model)
    assert key == weights_key(model) and len(key) == 64
    with threshold_guidance(model, 0.99):
        assert weights_key(model) != key  # Γ depends on the thresholds
    other = tiny_model(seed=1)
    assert weights_key(other) != key
    ckpt = tmp_path / "m.safetensors"
    assert find_cached_gamma(ckpt, model) is None
    gamma = torch.linspace(0.01, 0.9, 1000, dtype=torch.float64)
    path = save_gamma(gamma_cache_path(ckpt, key), gamma, {"weights_sha256": key, "budget": 3})
    g, meta = load_gamma(path)
    assert torch.equal(g, gamma) and meta["budget"] == 3
    found = find_cached_gamma(ckpt, model, 1000)
    assert found is not None and torch.equal(found[0], gamma)
    assert find_cached_gamma(ckpt, other) is None
    with pytest.raises(SdmcError, match="steps"):
        find_cached_gamma(ckpt, model, 500)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(SdmcError, match="unreadable"):
        load_gamma(path)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave nothing behind


# -------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from sdmc.checkpoint import save_model

    model = tiny_model(img_size=16)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_model(path, model, SdmcConfig(model=model.config))
    return path


def test_cli_sample(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "samples"
    rc = main(
        [
            "sample",
            str(tiny_ckpt),
            "--solver",
            "dpm-solver++",
            "--steps",
            "4",
            "-n",
            "5",
            "--batch-size",
            "2",
            "--out",
            str(out),
            "--threshold",
            "0.997",
            "--seed",
            "3",
            "--no-progress",
            "--clip-x0",
        ]
    )
    assert rc == 0
    assert "wrote 5 samples" in capsys.readouterr().out
    d = np.load(out / "dpm-solver++_4.npz")
    assert d["images"].shape == (5, 16, 16, 1) and d["images"].dtype == np.uint8
    assert int(d["seed"]) == 3 and float(d["threshold"]) == pytest.approx(0.997)
    assert Image.open(out / "dpm-solver++_4.png").size[0] > 16
    rc = main(
        [
            "sample",
            str(tiny_ckpt),
            "--solver",
            "dpm-solver-2",
            "--method",
            "multistep",
            "--steps",
            "4",
            "-n",
            "5",
            "--batch-size",
            "5",
            "--out",
            str(out),
            "--threshold",
            "0.997",
            "--seed",
            "3",
            "--no-progress",
            "--name",
            "again",
        ]
    )
    assert rc == 0 and np.load(out / "again.npz")["images"].shape == (5, 16, 16, 1)


def test_cli_analytic(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "s"
    rc = main(
        [
            "sample",
            str(tiny_ckpt),
            "--solver",
            "analytic-ddpm",
            "--steps",
            "4",
            "-n",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 2 and "analytic-stats" in capsys.readouterr().err
    rc = main(
        ["analytic-stats", str(tiny_ckpt), "--data", "digits", "--budget", "1", "--batch-size", "1000", "--no-progress"]
    )
    assert rc == 0
    files = list(tiny_ckpt.parent.glob("tiny.safetensors.gamma-*.safetensors"))
    assert len(files) == 1
    g, meta = load_gamma(files[0])
    assert g.shape == (1000,) and bool((g > 0).all()) and meta["data"] == "digits"
    assert main(["analytic-stats", str(tiny_ckpt), "--budget", "1", "--no-progress"]) == 0
    assert "cached" in capsys.readouterr().out
    for solver in ("analytic-ddpm", "analytic-ddim"):
        rc = main(
            [
                "sample",
                str(tiny_ckpt),
                "--solver",
                solver,
                "--steps",
                "4",
                "-n",
                "2",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        assert rc == 0 and (out / f"{solver}_4.npz").exists()
    capsys.readouterr()
    rc = main(
        [
            "sample",
            str(tiny_ckpt),
            "--solver",
            "analytic-ddim",
            "--steps",
            "4",
            "-n",
            "2",
            "--out",
            str(out),
            "--threshold",
            "0.99",
            "--no-progress",
        ]
    )
    assert rc == 0 and "unguided" in capsys.readouterr().err  # falls back to the θ = 1 statistics, says so


def test_cli_bad_input(tiny_ckpt, tmp_path, capsys):
    assert main(["sample", str(tmp_path / "missing.pt"), "--no-progress"]) == 2
    assert main(["sample", str(tiny_ckpt), "-n", "0", "--no-progress"]) == 2
    assert (
        main(
            [
                "sample",
                str(tiny_ckpt),
                "--solver",
                "ddim",
                "--eta",
                "3",
                "--steps",
                "2",
                "-n",
                "1",
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "eta" in err
