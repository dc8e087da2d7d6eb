"""Diffusion training: loss goes down, exact resume, NaN stop, EMA export, TSM fine-tuning, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sdmc.checkpoint import load_model, read_checkpoint, save_model
from sdmc.config import ModelConfig, SdmcConfig
from sdmc.data import TensorImages, digits_arrays
from sdmc.diffusion import train as tr
from sdmc.diffusion.presets import PRESETS
from sdmc.errors import CheckpointError, ConfigError, DataError, TrainingError

TINY = dict(arch="sddpm", ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8)
QUIET = dict(tensorboard=False, progress=False, sample_n=4, sample_steps=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(out: Path, **kw) -> tr.TrainConfig:
    return tr.make_config("digits", out=str(out), **{**TINY, **QUIET, "lr": 2e-3, "warmup": 2, "batch_size": 8, **kw})


def small_digits(n: int = 20) -> TensorImages:
    x, y = digits_arrays(8, train=True)
    return TensorImages(x[:n], y[:n])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_state_equal(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs"


# ----------------------------------------------------------------------------------------- pure parts
def test_warmup_and_ema_decay_schedules():
    assert tr.warmup_factor(0, 0) == 1.0
    assert [tr.warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert tr.ema_decay_at(0, 0.9999) == pytest.approx(0.1)
    assert tr.ema_decay_at(10**6, 0.9999) == 0.9999
    assert tr.ema_decay_at(0, 0.9999, warmup=False) == 0.9999


def test_ema_update_covers_bn_buffers_and_copies_integers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    ema = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    model.train()(torch.randn(4, 1, 5, 5))  # moves running stats, num_batches_tracked = 1
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    tr.ema_update_(ema, model, 0.75)
    for k, e in ema.state_dict().items():
        m = model.state_dict()[k]
        if e.is_floating_point():
            assert torch.allclose(e, 0.75 * before[k] + 0.25 * m), k
        else:
            assert torch.equal(e, m), k
    assert ema.state_dict()["1.running_mean"].abs().sum() > 0
    assert int(ema.state_dict()["1.num_batches_tracked"]) == 1


def test_presets_build_and_overrides_apply():
    for name in PRESETS:
        cfg = tr.make_config(name, **({"init_from": "x.pt"} if PRESETS[name]["train"].get("tsm") else {}))
        assert cfg.preset == name and cfg.steps >= 1
    c = tr.make_config("cifar10-sddpm-t4")
    assert (c.model.ch, c.model.ch_mult, c.model.snn_steps, c.lr, c.batch_size, c.grad_clip) == (
        128,
        (1, 2, 2, 4),
        4,
        2e-4,
        128,
        1.0,
    )
    c = tr.make_config("digits", steps=7, ch=16, snn_steps=8, arch="sdm", lr=1e-3, schedule="cosine", batch_size=None)
    assert (c.steps, c.model.ch, c.model.snn_steps, c.model.arch, c.lr, c.diffusion.schedule) == (
        7,
        16,
        8,
        "sdm",
        1e-3,
        "cosine",
    )
    assert c.batch_size == PRESETS["digits"]["train"]["batch_size"]
    assert c.overrides == {"steps": 7, "ch": 16, "snn_steps": 8, "arch": "sdm", "lr": 1e-3, "schedule": "cosine"}
    assert tr.TrainConfig.from_dict(json.loads(c.to_json())) == c
    with pytest.raises(ConfigError, match="bogus"):
        tr.make_config("digits", bogus=1)
    with pytest.raises(ConfigError, match="unknown training preset"):
        tr.make_config("imagenet")
    with pytest.raises(ConfigError, match="train.lr"):
        tr.make_config("digits", lr=-1.0)
    with pytest.raises(ConfigError, match="init-from"):
        tr.make_config("cifar10-sdm-t8")


def test_model_resets_its_neurons_after_every_call(tiny_cfg):
    from spikingjelly.activation_based import neuron

    from sdmc.models import build_model

    model = build_model(tiny_cfg).train()
    loss = model(torch.randn(3, 1, 8, 8), torch.tensor([1, 500, 999])).square().mean()
    loss.backward()
    nodes = [m for m in model.modules() if isinstance(m, neuron.BaseNode)]
    assert nodes and all(isinstance(m.v, float) and m.v == 0.0 for m in nodes)


# ------------------------------------------------------------------------------------------ training
def test_short_digits_run_learns_writes_everything_and_exports_ema(tmp_path):
    out = tmp_path / "run"
    cfg = tiny(
        out,
        steps=100,
        ch=16,
        batch_size=32,
        lr=5e-3,
        warmup=30,
        log_every=20,
        save_every=40,
        sample_every=50,
        keep_last=2,
    )
    final = tr.train(cfg)  # the real bundled digits dataset (8x8 here for speed)
    assert final == out / "model.safetensors" and final.is_file()
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [20, 40, 60, 80, 100]
    losses = [r["loss"] for r in recs]  # about (0.75, 0.37, 0.24, 0.19, 0.18)
    assert losses[-1] < 0.5 * losses[0] and max(losses[-2:]) < min(losses[:2]), losses
    assert recs[0]["lr"] < cfg.lr and recs[-1]["lr"] == pytest.approx(cfg.lr)  # warm-up
    assert all(r["global_batch"] == 32 and r["world_size"] == 1 for r in recs)
    # retention: keep the last 2 of steps 40, 80, 100
    assert [s for s, _ in tr.list_checkpoints(out)] == [80, 100]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_00000050.png", "step_00000100.png"]
    assert not list(out.rglob("*.tmp"))
    # the checkpoint is the safe format, released names, config JSON
    state = torch.load(tr.checkpoint_path(out, 100), weights_only=True)
    assert state["step"] == 100 and state["global_batch"] == 32
    assert SdmcConfig.from_json(state["sdmc_config"]).model == cfg.model
    # EMA differs from the raw weights, and the export is the EMA
    net, ema = state["net_model"], state["ema_model"]
    assert any(not torch.equal(net[k], ema[k]) for k in net if net[k].is_floating_point())
    assert not torch.equal(net["bn.running_mean"], ema["bn.running_mean"])  # BN buffers averaged too
    exported, ecfg, _ = read_checkpoint(final)
    assert_state_equal(exported, ema, "export vs EMA")
    assert ecfg.model == cfg.model and ecfg.provenance["weights"] == "ema"
    # sdmc.checkpoint reads the training checkpoint (net or EMA)
    m_net, _ = load_model(tr.checkpoint_path(out, 100), weights="net")
    assert_state_equal(m_net.state_dict(), net, "load_model(net)")
    # digits-FID of the trained (EMA) model is clearly better than the untrained model's
    from sdmc.diffusion import NoiseSchedule
    from sdmc.diffusion.sampling import sample_images
    from sdmc.metrics.digits import digits_scores
    from sdmc.models import build_model

    trained, _ = load_model(final)
    torch.manual_seed(0)
    untrained = build_model(cfg.model)
    fid = {
        name: digits_scores(
            sample_images(m, NoiseSchedule(), 200, solver="ddim", steps=10, batch_size=200, progress=False)
        )["digits_fid"]
        for name, m in (("trained", trained), ("untrained", untrained))
    }
    print("digits-FID", fid)  # measured 3583 vs 4759 (real digits at 200 samples: about 120)
    assert fid["trained"] < 0.85 * fid["untrained"], fid


def test_resume_reproduces_the_uninterrupted_run_bitwise(tmp_path):
    data = small_digits(20)  # 2 steps per epoch: the resume point (step 3) is mid-epoch
    a = tiny(tmp_path / "a", steps=6, save_every=3, sample_every=3, log_every=1)
    tr.train(a, dataset=data)
    b = tiny(tmp_path / "b", steps=3, save_every=3, sample_every=3, log_every=1)
    tr.train(b, dataset=data)
    b6 = tiny(tmp_path / "b", steps=6, save_every=3, sample_every=3, log_every=1)
    tr.train(b6, dataset=data)  # resume="auto" picks up step 3
    sa = torch.load(tr.checkpoint_path(tmp_path / "a", 6), weights_only=True)
    sb = torch.load(tr.checkpoint_path(tmp_path / "b", 6), weights_only=True)
    assert_state_equal(sa["net_model"], sb["net_model"], "net_model")
    assert_state_equal(sa["ema_model"], sb["ema_model"], "ema_model")
    for i, pa in sa["optimizer"]["state"].items():
        assert torch.equal(pa["exp_avg_sq"], sb["optimizer"]["state"][i]["exp_avg_sq"])
    assert sa["scheduler"] == sb["scheduler"]
    assert torch.equal(sa["rng"][0]["torch"], sb["rng"][0]["torch"])
    ma = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    mb = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in ma] == [json.loads(x)["loss"] for x in mb]


def test_lr_decay_schedule_and_a_constant_run_resumed_into_it(tmp_path):
    # warm-up 2, constant, then linear to 0 over the last 4 of 8 steps
    assert [tr.lr_factor(s, 2, 8, 4) for s in range(8)] == [0.5, 1, 1, 1, 1, 0.75, 0.5, 0.25]
    assert [tr.lr_factor(s, 2, 8, 0) for s in range(8)] == [tr.warmup_factor(s, 2) for s in range(8)]
    # the bundled model was trained this way: a constant-rate run, resumed at or before the decay starts with
    # --lr-decay, equals the run that had the decay from step 0, bit for bit
    data = small_digits(20)
    a = tiny(tmp_path / "a", steps=6, lr_decay=3, save_every=3, sample_every=3, log_every=1)
    tr.train(a, dataset=data)
    tr.train(tiny(tmp_path / "b", steps=3, save_every=3, sample_every=3, log_every=1), dataset=data)
    tr.train(tiny(tmp_path / "b", steps=6, lr_decay=3, save_every=3, sample_every=3, log_every=1), dataset=data)
    sa = torch.load(tr.checkpoint_path(tmp_path / "a", 6), weights_only=True)
    sb = torch.load(tr.checkpoint_path(tmp_path / "b", 6), weights_only=True)
    assert_state_equal(sa["net_model"], sb["net_model"], "net_model")
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([2e-3 * f for f in (0.5, 1, 1, 1, 2 / 3, 1 / 3)])
    with pytest.raises(ConfigError, match="lr_decay"):
        tiny(tmp_path / "c", lr_decay=-1)


def test_resume_refuses_a_different_model_and_never_mode(tmp_path):
    data = small_digits(16)
    tr.train(tiny(tmp_path, steps=1, tensorboard=True), dataset=data)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    with pytest.raises(ConfigError, match="model.ch"):
        tr.train(tiny(tmp_path, steps=2, ch=16), dataset=data)
    with pytest.raises(ConfigError, match="already holds training checkpoints"):
        tr.train(tiny(tmp_path, steps=2, resume="never"), dataset=data)
    bad = tmp_path / "junk.pt"
    torch.save({"net_model": {}}, bad)
    with pytest.raises(CheckpointError, match="not an sdmc training checkpoint"):
        tr.train(tiny(tmp_path / "c", steps=2, resume=str(bad)), dataset=data)


def test_nan_loss_stops_with_training_error_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real = tr._loss
    calls = {"n": 0}
    seen: dict[str, str] = {}

    def faulty(schedule, model, x0):
        calls["n"] += 1
        if calls["n"] == 5:
            seen.update({p.name: sha(p) for _, p in tr.list_checkpoints(tmp_path)})
            return real(schedule, model, x0) * float("nan")
        return real(schedule, model, x0)

    monkeypatch.setattr(tr, "_loss", faulty)
    with pytest.raises(
        TrainingError, match=r"non-finite loss \(nan\) at step 5; last good checkpoint: .*step_00000004"
    ):
        tr.train(tiny(tmp_path, steps=10, save_every=2, sample_every=100), dataset=small_digits(16))
    left = tr.list_checkpoints(tmp_path)
    assert [s for s, _ in left] == [2, 4]
    assert {p.name: sha(p) for _, p in left} == seen
    state = torch.load(left[-1][1], weights_only=True)
    assert state["step"] == 4 and all(
        torch.isfinite(v).all() for v in state["net_model"].values() if v.is_floating_point()
    )
    assert not (tmp_path / "model.safetensors").exists() and not list(tmp_path.rglob("*.tmp"))


def test_dataset_too_small_or_wrong_shape(tmp_path):
    with pytest.raises(DataError, match="fewer than the global batch"):
        tr.train(tiny(tmp_path / "a", steps=1, batch_size=32), dataset=small_digits(10))
    with pytest.raises(DataError, match="expects"):
        tr.train(tiny(tmp_path / "b", steps=1, img_size=16), dataset=small_digits(16))


def test_tsm_finetune_inherits_sddpm_weights_and_trains_p(tmp_path):
    from sdmc.models import build_model

    torch.manual_seed(0)
    src_cfg = ModelConfig(**TINY)
    sddpm = build_model(src_cfg)
    save_model(tmp_path / "sddpm.safetensors", sddpm, SdmcConfig(model=src_cfg))
    cfg = tiny(
        tmp_path / "ft", steps=3, init_from=str(tmp_path / "sddpm.safetensors"), tsm=True, ch=64, ema=False
    )  # the architecture comes from the file, not from --ch
    final = tr.train(cfg, dataset=small_digits(16))
    sd, ecfg, _ = read_checkpoint(final)
    assert ecfg.model.arch == "sdm" and ecfg.model.ch == 8 and ecfg.provenance["tsm_finetune"] is True
    tsmp = [v for k, v in sd.items() if k.endswith(".tsmp")]
    assert tsmp and any(not torch.equal(p, torch.ones_like(p)) for p in tsmp)  # p was fine-tuned
    # the head conv started from the SDDPM weight (lr 2e-3 x 3 steps moves it only a little)
    w0, w1 = sddpm.state_dict()["conv.weight"], sd["conv.tsmconv.weight"]
    assert (w1 - w0).abs().max() < 0.05 < w0.abs().max()


def test_cli_train_and_list_presets(tmp_path, capsys, monkeypatch):
    from sdmc.cli import main

    assert main(["train", "--list-presets"]) == 0
    listed = capsys.readouterr().out
    assert "cifar10-sdm-t8" in listed and "digits" in listed
    out = tmp_path / "cli"
    rc = main(
        [
            "train",
            "--preset",
            "digits",
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--ch",
            "8",
            "--ch-mult",
            "1,2",
            "--num-res-blocks",
            "1",
            "--snn-steps",
            "2",
            "--img-size",
            "8",
            "--out",
            str(out),
            "--sample-n",
            "4",
            "--sample-steps",
            "2",
            "--no-tensorboard",
            "--no-progress",
            "--ema-decay",
            "0.9",
        ]
    )
    assert rc == 0
    cfg = json.loads((out / "train_config.json").read_text())
    assert (cfg["steps"], cfg["batch_size"], cfg["model"]["ch"], cfg["model"]["ch_mult"], cfg["ema_decay"]) == (
        2,
        8,
        8,
        [1, 2],
        0.9,
    )
    assert (out / "model.safetensors").is_file()
    err = capsys.readouterr().err
    assert "global batch 8 = 8 per rank x 1 rank(s)" in err
    assert main(["train", "--preset", "digits", "--lr", "0", "--out", str(tmp_path / "x")]) == 2
    assert "train.lr" in capsys.readouterr().err


@pytest.mark.slow
def test_bundled_digits_preset_learns_digits(tmp_path):
    """The default ``sdmc train`` (digits preset, 16x16, T=4) end to end; minutes on a 2-core CPU."""
    from sdmc.diffusion import NoiseSchedule
    from sdmc.diffusion.sampling import sample_images
    from sdmc.metrics.digits import digits_scores
    from sdmc.models import build_model

    cfg = tr.make_config("digits", out=str(tmp_path), tensorboard=False, progress=False)
    final = tr.train(cfg)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.2 < losses[0], losses
    trained, _ = load_model(final)
    torch.manual_seed(0)
    untrained = build_model(cfg.model)
    scores = {
        name: digits_scores(sample_images(m, NoiseSchedule(), 500, solver="ddim", steps=20, progress=False))
        for name, m in (("trained", trained), ("untrained", untrained))
    }
    # measured (256 samples, DDIM 20): trained EMA 1331 / IS 6.46, untrained 5638 / IS 3.55
    assert scores["trained"]["digits_fid"] < 0.4 * scores["untrained"]["digits_fid"], scores
    assert scores["trained"]["digits_is"] > scores["untrained"]["digits_is"] + 1.5, scores
