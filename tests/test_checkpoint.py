"""Checkpoint loading, architecture inference, the native format and SDDPM -> SDM inheritance."""

import argparse
import json

import pytest
import torch
from conftest import randomize_bn
from test_models import parse_reference

from sdmc.checkpoint import (
    describe,
    infer_config,
    inherit_tsm,
    load_model,
    read_checkpoint,
    save_model,
)
from sdmc.cli import main as cli_main
from sdmc.config import DiffusionConfig, ModelConfig, SdmcConfig
from sdmc.errors import CheckpointError
from sdmc.models import TSMConv2d, build_model


@pytest.mark.parametrize("arch", ["sdm", "sddpm"])
def test_reference_state_dict_loads_strictly_with_inferred_architecture(tmp_path, arch):
    ref = parse_reference()[arch]
    g = torch.Generator().manual_seed(0)
    sd = {
        k: (torch.zeros(s, dtype=torch.int64) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g))
        for k, s in ref.items()
    }
    path = tmp_path / "ckpt.pt"
    torch.save({"net_model": sd}, path)
    model, cfg = load_model(path)
    m = cfg.model
    assert (m.arch, m.ch, m.ch_mult, m.num_res_blocks, m.img_ch) == (arch, 128, (1, 2, 2, 4), 2, 3)
    assert m.snn_steps == (8 if arch == "sdm" else 4)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


CONFIGS = [
    dict(arch="sddpm", ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8),
    dict(arch="sdm", ch=16, ch_mult=(1, 2, 3), num_res_blocks=2, snn_steps=3, img_ch=3, img_size=16),
    dict(arch="sdm", ch=8, ch_mult=(2,), num_res_blocks=3, snn_steps=5, img_ch=2, img_size=8),
    dict(arch="sddpm", ch=12, ch_mult=(1, 1, 2, 2), num_res_blocks=1, snn_steps=4, img_ch=3, img_size=16),
    dict(arch="ann", ch=32, ch_mult=(1, 2), num_res_blocks=1, img_ch=1, img_size=8, attn=(1,)),
    dict(arch="ann", ch=16, ch_mult=(1, 2, 2), num_res_blocks=2, img_ch=3, img_size=16, norm_groups=16),
]


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: f"{kw['arch']}-{kw['ch']}-{len(kw['ch_mult'])}")
def test_architecture_inference(tmp_path, kw):
    cfg = ModelConfig(**kw)
    model = build_model(cfg)
    inferred = infer_config(
        model.state_dict(), snn_steps=cfg.snn_steps if cfg.arch == "sddpm" else None, img_size=cfg.img_size
    )
    for field in ("arch", "ch", "ch_mult", "num_res_blocks", "img_ch", "diffusion_steps", "attn"):
        assert getattr(inferred, field) == getattr(cfg, field), field
    if cfg.arch == "sdm":
        assert inferred.snn_steps == cfg.snn_steps  # read from tsmp
    if cfg.arch == "ann":
        assert inferred.norm_groups == cfg.norm_groups


def test_load_model_reproduces_outputs_with_ema_selection(tmp_path, tiny_cfg):
    torch.manual_seed(0)
    net, ema = build_model(tiny_cfg).eval(), build_model(tiny_cfg).eval()
    randomize_bn(net, 1)
    randomize_bn(ema, 2)
    path = tmp_path / "ckpt.pt"
    torch.save({"net_model": net.state_dict(), "ema_model": ema.state_dict()}, path)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 700])
    m_auto, _ = load_model(path, snn_steps=2)
    m_net, _ = load_model(path, weights="net", snn_steps=2)
    torch.testing.assert_close(m_auto(x, t), ema(x, t), rtol=0, atol=0)
    torch.testing.assert_close(m_net(x, t), net(x, t), rtol=0, atol=0)


def test_module_prefix_from_dataparallel_is_stripped(tmp_path, tiny_cfg):
    sd = {"module." + k: v for k, v in build_model(tiny_cfg).state_dict().items()}
    torch.save({"net_model": sd}, tmp_path / "dp.pt")
    _, cfg = load_model(tmp_path / "dp.pt", snn_steps=2)
    assert cfg.model.ch == 8


def test_native_round_trip_keeps_config(tmp_path, tiny_cfg):
    cfg = SdmcConfig(
        model=ModelConfig(**{**tiny_cfg.to_dict(), "threshold": 0.9, "snn_steps": 3}),
        diffusion=DiffusionConfig(num_timesteps=500, schedule="cosine"),
        provenance={"trained_on": "digits"},
    )
    model = build_model(cfg.model).eval()
    randomize_bn(model)
    path = save_model(tmp_path / "m.safetensors", model, cfg)
    loaded, cfg2 = load_model(path)
    assert cfg2.model == cfg.model and cfg2.diffusion == cfg.diffusion and cfg2.provenance == cfg.provenance
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    assert torch.equal(loaded(x, t), model(x, t))
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left


def test_saving_one_model_twice_gives_the_same_bytes(tmp_path, tiny_cfg):
    """safetensors writes its metadata map in hash order, new each call; a model's file must not depend on it
    (several header entries, several saves: with a random order of 3 entries, 8 saves agree by chance < 1e-6)."""
    model = build_model(tiny_cfg)
    cfg = SdmcConfig(model=tiny_cfg)
    extra = {"sdmc_recipe": "r", "sdmc_quality": "q"}
    blobs = {save_model(tmp_path / f"m{i}.safetensors", model, cfg, extra).read_bytes() for i in range(8)}
    assert len(blobs) == 1
    loaded, cfg2 = load_model(tmp_path / "m0.safetensors")
    assert cfg2.model == tiny_cfg
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_truncated_files_give_clear_errors(tmp_path, tiny_cfg):
    model = build_model(tiny_cfg)
    torch.save({"net_model": model.state_dict()}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: not a readable PyTorch checkpoint"):
        load_model(tmp_path / "cut.pt")
    save_model(tmp_path / "ok.safetensors", model, SdmcConfig(model=tiny_cfg))
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: not a readable safetensors file"):
        load_model(tmp_path / "cut.safetensors")
    with pytest.raises(CheckpointError, match=r"missing\.pt: cannot read: No such file"):
        load_model(tmp_path / "missing.pt")


def test_foreign_files_name_the_mismatching_key(tmp_path, tiny_cfg):
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).state_dict(), tmp_path / "f.pt")
    with pytest.raises(CheckpointError, match=r"first key: '0\.weight'"):
        load_model(tmp_path / "f.pt")
    sd = build_model(tiny_cfg).state_dict()
    del sd["downblocks.0.bn2.running_var"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"net_model": sd}, tmp_path / "g.pt")
    with pytest.raises(
        CheckpointError,
        match=r"first missing key 'downblocks\.0\.bn2\.running_var'.*"
        r"first unexpected key 'extra\.weight'",
    ):
        load_model(tmp_path / "g.pt", snn_steps=2)
    sd = build_model(tiny_cfg).state_dict()
    sd["middleblocks.0.conv2.weight"] = torch.zeros(16, 16, 1, 1)
    torch.save(sd, tmp_path / "h.pt")
    with pytest.raises(CheckpointError, match=r"'middleblocks\.0\.conv2\.weight' has shape \[16, 16, 1, 1\]"):
        load_model(tmp_path / "h.pt", snn_steps=2)


def test_pickled_objects_are_refused_by_default(tmp_path, tiny_cfg):
    torch.save({"net_model": build_model(tiny_cfg).state_dict(), "args": argparse.Namespace(lr=1)}, tmp_path / "p.pt")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        read_checkpoint(tmp_path / "p.pt")
    sd, _, _ = read_checkpoint(tmp_path / "p.pt", unsafe=True)
    assert "conv.weight" in sd


def test_tsm_inheritance_gives_identical_outputs(tmp_path, tiny_cfg):
    torch.manual_seed(0)
    sddpm = build_model(ModelConfig(**{**tiny_cfg.to_dict(), "ch_mult": (1, 2, 2)})).eval()
    randomize_bn(sddpm)
    sdm = inherit_tsm(sddpm).eval()
    assert sdm.config.arch == "sdm" and sdm.config.snn_steps == 2
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 400, 999])
    torch.testing.assert_close(sdm(x, t), sddpm(x, t), rtol=0, atol=1e-6)
    sddpm.train(), sdm.train()  # training mode (batch statistics) too
    torch.testing.assert_close(sdm(x, t), sddpm(x, t), rtol=0, atol=1e-5)
    # and through files + the CLI
    torch.save({"net_model": sddpm.state_dict()}, tmp_path / "sddpm.pt")
    assert (
        cli_main(
            ["inherit-tsm", str(tmp_path / "sddpm.pt"), "--snn-steps", "2", "-o", str(tmp_path / "sdm.safetensors")]
        )
        == 0
    )
    loaded, cfg = load_model(tmp_path / "sdm.safetensors")
    assert cfg.model.arch == "sdm" and cfg.provenance["tsm_init"] == "p=1"
    assert all(torch.equal(p, torch.ones_like(p)) for k, p in loaded.state_dict().items() if k.endswith("tsmp"))


def test_inheritance_rejects_non_sddpm(tiny_cfg):
    with pytest.raises(CheckpointError, match="expects an SDDPM"):
        inherit_tsm(build_model(ModelConfig(**{**tiny_cfg.to_dict(), "arch": "sdm"})))


def test_info_cli(tmp_path, tiny_cfg, capsys):
    model = build_model(ModelConfig(**{**tiny_cfg.to_dict(), "arch": "sdm", "snn_steps": 3}))
    n_tsm = sum(isinstance(m, TSMConv2d) for m in model.modules())
    torch.save({"net_model": model.state_dict()}, tmp_path / "m.pt")
    assert cli_main(["info", str(tmp_path / "m.pt")]) == 0
    out = capsys.readouterr().out
    assert "SDM spiking UNet with TSM" in out and "T=3" in out and "ch_mult=[1, 2]" in out
    assert cli_main(["info", "--json", str(tmp_path / "m.pt")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"]["arch"] == "sdm" and data["tsm_layers"] == n_tsm == 26
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert cli_main(["info", str(tmp_path / "bad.pt")]) == 2
    assert "bad.pt: not a readable PyTorch checkpoint" in capsys.readouterr().err


def test_describe_mentions_assumed_snn_steps(tmp_path, tiny_cfg):
    torch.save({"net_model": build_model(tiny_cfg).state_dict()}, tmp_path / "s.pt")
    assert "not recorded in the file" in describe(tmp_path / "s.pt")
