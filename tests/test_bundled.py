"""The bundled models (``bundled:NAME``): names resolve, the file records its recipe and quality, and the
shipped digits weights reproduce the digits-FID they record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sdmc.checkpoint import load_model, save_model
from sdmc.config import ModelConfig, SdmcConfig
from sdmc.data import TensorImages, digits_arrays
from sdmc.diffusion import train as tr
from sdmc.errors import CheckpointError
from sdmc.metrics.quality import Quality, model_quality
from sdmc.models import build_model, bundled
from sdmc.models.bundled import build

TINY = dict(arch="sddpm", ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8)
SHIPPED = bundled.BUNDLED_DIR / bundled.BUNDLED["digits"].file


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A 3-step training run of a tiny digits model: its last training checkpoint."""
    out = tmp_path_factory.mktemp("run")
    x, y = digits_arrays(8, train=True)
    cfg = tr.make_config(
        "digits",
        out=str(out),
        steps=3,
        batch_size=8,
        save_every=3,
        tensorboard=False,
        progress=False,
        sample_n=0,
        **TINY,
    )
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tr.train(cfg, dataset=TensorImages(x[:16], y[:16]), log=lambda s: None)
    finally:
        torch.set_num_threads(n)
    return tr.checkpoint_path(out, 3)


def test_bundled_names_resolve_and_say_what_is_missing(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="bundled:nope: no such bundled model; bundled: digits"):
        load_model("bundled:nope")
    monkeypatch.setattr(bundled, "BUNDLED_DIR", tmp_path)
    with pytest.raises(CheckpointError, match=r"not in this installation.*sdmc train --preset digits-bundled"):
        load_model("bundled:digits")
    cfg = ModelConfig(**TINY)
    save_model(tmp_path / "digits.safetensors", build_model(cfg), SdmcConfig(model=cfg))
    model, got = load_model("bundled:digits")
    assert got.model == cfg and not model.training
    assert bundled.resolve("x/model.pt") == Path("x/model.pt")
    # caches that live beside a checkpoint go to $SDMC_CACHE for a bundled model (not into the package)
    from sdmc.diffusion.analytic import gamma_cache_path

    monkeypatch.setenv("SDMC_CACHE", str(tmp_path / "cache"))
    assert (
        gamma_cache_path("bundled:digits", "ab" * 32)
        == tmp_path / "cache" / f"bundled-digits.gamma-{'ab' * 8}.safetensors"
    )
    assert gamma_cache_path("m.pt", "ab" * 32) == Path(f"m.pt.gamma-{'ab' * 8}.safetensors")


def test_build_bundled_records_recipe_and_quality(tiny_run, tmp_path, monkeypatch, capsys):
    from sdmc.cli import main

    out = tmp_path / "digits.safetensors"
    path = build.build_bundled(tiny_run, out=out, n=8, seeds=(0, 1), solver=("ddim", 2), log=lambda s: None)
    assert path == out
    model, cfg = load_model(out)
    state = torch.load(tiny_run, weights_only=True)
    for k, v in state["ema_model"].items():  # the EMA weights, not the raw ones
        assert torch.equal(model.state_dict()[k], v), k
    assert cfg.provenance["bundled"] == "digits" and cfg.provenance["steps"] == 3
    extras = bundled.read_extras(out)
    r, q = extras["recipe"], extras["quality"]
    assert r["steps"] == 3 and r["train_config"]["model"] == cfg.model.to_dict()
    assert r["command"].startswith("sdmc train --preset digits --steps 3") and r["train_seconds"] > 0
    assert q["n"] == 8 and q["seeds"] == [0, 1] and len(q["per_seed"]) == 2 and (q["solver"], q["steps"]) == ("ddim", 2)
    assert q["floor"]["digits_fid"] > 0 and q["std"]["digits_fid"] is not None
    # the recorded quality is what measuring again gives (same seeds, same sampler)
    again = model_quality(model, cfg.diffusion, 8, [0], "ddim", 2)
    assert again.per_seed[0]["digits_fid"] == pytest.approx(q["per_seed"][0]["digits_fid"], rel=1e-6)
    # the CLI takes bundled:digits wherever it takes a model file, and `info` shows recipe and quality
    monkeypatch.setattr(bundled, "BUNDLED_DIR", tmp_path)
    assert main(["info", "bundled:digits"]) == 0
    text = capsys.readouterr().out
    assert "recipe       sdmc train --preset digits --steps 3" in text
    assert "quality      ddim 2 steps: digits-FID" in text and "(floor " in text
    assert main(["energy", "bundled:digits", "--images", "1", "--steps", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calibration"]["mode"] == "trajectory"


def test_recipe_command_names_the_preset_when_it_matches():
    from sdmc.diffusion.train import make_config

    tc = make_config("digits-bundled", steps=48000).to_dict()
    assert tc["threads"] == 1  # the preset pins the thread count its weights were trained with
    want = "sdmc train --preset digits-bundled --steps 48000 --threads 1"
    assert build.recipe_command(tc, "digits-bundled", 48000) == want
    # the same recipe spelled as overrides of the digits preset (how a run may have been started)
    tc = make_config(
        "digits",
        lr=1e-3,
        warmup=200,
        lr_decay=16000,
        ema_decay=0.999,
        batch_size=32,
        steps=48000,
        threads=1,
        img_size=8,
    ).to_dict()
    assert build.recipe_command(tc, "digits-bundled", 48000) == want
    tc = make_config("digits", lr=5e-4, threads=2).to_dict()
    assert (
        build.recipe_command(tc, "digits-bundled", 9) == "sdmc train --preset digits --steps 9 --threads 2 --lr 0.0005"
    )


@pytest.mark.skipif(not SHIPPED.is_file(), reason=f"the bundled digits weights ({SHIPPED}) are not shipped yet")
def test_shipped_digits_model_reproduces_its_recorded_quality():
    """bundled:digits loads, matches its preset, and one seed of its recorded quality measurement gives the
    value recorded for that seed (to 5 %) and lands within 3 seed standard deviations of the recorded mean
    digits-FID (and digits-IS)."""
    from sdmc.diffusion.train import make_config

    model, cfg = load_model("bundled:digits")
    extras = bundled.read_extras("bundled:digits")
    r, q = extras["recipe"], extras["quality"]
    assert r["preset"] == "digits-bundled" and make_config(r["preset"]).model == cfg.model
    assert q["floor"] is not None and q["n"] <= 360
    got = model_quality(model, cfg.diffusion, q["n"], q["seeds"][:1], q["solver"], q["steps"])
    rec = Quality(q["n"], q["seeds"], q["per_seed"], q["floor"])
    for key in ("digits_fid", "digits_is"):
        assert rec.within_spread(key, got.per_seed[0][key]), (key, got.per_seed[0][key], rec.mean, rec.std)
        # same seed, same sampler: the same images up to float rounding (bit-equal here at 1 and 2 threads;
        # weights perturbed by 1e-6 relative moved seed 0's digits-FID by 0.5 %), so 5 % allows another CPU's
        # rounding while the seed spread (+-3 std, about +-200) would allow almost any model
        assert got.per_seed[0][key] == pytest.approx(q["per_seed"][0][key], rel=0.05), key
