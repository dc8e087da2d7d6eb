"""The quality-per-energy frontier (``sdmc.metrics.frontier``): settings, the match rule, the measured run."""

from __future__ import annotations

import json

import pytest
import torch

from sdmc.checkpoint import save_model
from sdmc.config import ModelConfig, SdmcConfig
from sdmc.errors import ConfigError
from sdmc.metrics.frontier import Frontier, Setting, run_frontier
from sdmc.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_settings_parse_and_refuse_nonsense():
    assert Setting.parse("ddpm:1000") == Setting("ddpm", 1000)
    s = Setting.parse("dpm-solver++:10:th0.997:T2")
    assert (s.solver, s.steps, s.threshold, s.T) == (
        "dpm-solver++",
        10,
        0.997,
        2,
    ) and s.label == "dpm-solver++:10:th0.997:T2"
    for bad in ("ddim", "ddim:x", "euler:10", "ddim:10:q3", "ddim:0", "ddim:10:th0"):
        with pytest.raises(ConfigError, match="frontier setting"):
            Setting.parse(bad)


def _point(label, fids, e_faithful, e_paper=None):
    return {
        "label": label,
        "nfe": 1,
        "T": 4,
        "quality": {
            "n": 64,
            "seeds": list(range(len(fids))),
            "per_seed": [{"digits_fid": f, "digits_is": 9.0} for f in fids],
            "floor": {"digits_fid": 50.0, "digits_is": 9.9},
        },  # fmt: skip
        "energy_mJ": {"faithful": e_faithful, "paper": e_paper or e_faithful / 2},
    }


def test_match_rule_and_best_quality_per_joule(tmp_path):
    f = Frontier(
        [
            _point("ddpm:1000", [100, 102, 104], 1000.0),  # mean 102, std 2
            _point("a", [104, 105, 106], 40.0),  # 105 <= 102 + 2 * 2 (the reference's std): matches
            _point("b", [110, 111, 112], 10.0),  # 111 > 106: no
            _point("c", [90, 91, 92], 50.0),  # better: matches
            _point("e", [100, 160, 220], 5.0),  # noisy and worse: 160 > 106 (its own std 60 does not count)
            {"label": "d:T2", "skipped": "TSM model trained for T=4"},
        ],
        {"n": 64, "seeds": [0, 1, 2], "energy_images": 2, "profile": "45nm-fp32"},
    )
    assert [f.matches(p) for p in f.measured] == [True, True, False, True, False]
    assert f.best()["label"] == "a" and f.saving(f.best(), "faithful") == pytest.approx(25.0)
    text = "\n".join(f.summary_lines())
    assert "best quality per joule: a matches ddpm:1000 at 25.0x less energy per image (faithful; 25.0x paper)" in text
    md = f.to_markdown()
    assert "| a | 1 | 4 | 105.0 ± 1.0 | 9.00 ± 0.00 | 20 | 40 | 25.0x | yes |" in md and "skipped: TSM" in md
    d = json.loads(json.dumps(f.to_dict()))
    assert d["best"]["label"] == "a" and d["points"][2]["matches_reference"] is False
    f.plot(tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    none = Frontier([_point("ref", [100, 101], 10.0), _point("x", [200, 201], 1.0)], {})
    assert none.best() is None and "no setting matches" in "\n".join(none.summary_lines())


def test_best_breaks_an_energy_tie_by_quality():
    """Settings within 1 % energy are the same cost: the better mean digits-FID wins; beyond 1 %, energy does."""
    ref = _point("ddpm:1000", [100, 110, 120], 1000.0)
    f = Frontier([ref, _point("th", [118, 119, 120], 10.0), _point("plain", [105, 106, 107], 10.09)], {})
    assert f.best()["label"] == "plain"
    f = Frontier([ref, _point("th", [118, 119, 120], 10.0), _point("plain", [105, 106, 107], 10.11)], {})
    assert f.best()["label"] == "th"


def test_run_frontier_on_a_tiny_model(tmp_path):
    cfg = ModelConfig(arch="sddpm", ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8)
    torch.manual_seed(0)
    save_model(tmp_path / "m.safetensors", build_model(cfg), SdmcConfig(model=cfg))
    logs: list[str] = []
    f = run_frontier(
        tmp_path / "m.safetensors",
        ["ddim:4", "ddim:2", "ddim:2:th0.8", "ddim:2:T1"],
        n=8,
        seeds=(0, 1),
        energy_images=1,
        log=logs.append,
    )
    assert "sampling needs ~" in logs[0] and len(f.points) == 4 and f.reference["label"] == "ddim:4"
    p4, p2, th, t1 = f.points
    assert (p4["nfe"], p2["nfe"], t1["T"], th["threshold"]) == (4, 2, 1, 0.8)
    assert all(p["quality"]["floor"]["digits_fid"] > 0 and len(p["quality"]["per_seed"]) == 2 for p in f.points)
    # energy per image: the trajectory sum: twice the calls cost about twice as much, one SNN step about half
    assert 1.5 < p4["energy_mJ"]["faithful"] / p2["energy_mJ"]["faithful"] < 2.5
    assert t1["energy_mJ"]["faithful"] < 0.75 * p2["energy_mJ"]["faithful"]
    assert th["firing_rate"] > p2["firing_rate"]  # a lower threshold fires more


def test_cli_frontier_skips_what_the_model_cannot_run(tmp_path, capsys):
    """sdmc eval --frontier: table, JSON and plot; a TSM model cannot run at another T (skipped, reason given)."""
    from sdmc.cli import main

    tsm = ModelConfig(arch="sdm", ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8)
    save_model(tmp_path / "t.safetensors", build_model(tsm), SdmcConfig(model=tsm))
    args = ["eval", str(tmp_path / "t.safetensors"), "--frontier", "--settings", "ddim:2,ddim:2:T1", "-n", "4"]
    args += ["--seeds", "2", "--energy-images", "1", "-o", str(tmp_path / "f.json"), "--plot", str(tmp_path / "f.png")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "quality per energy" in out and "skipped" in out
    d = json.loads((tmp_path / "f.json").read_text())
    assert d["reference"] == "ddim:2" and "trained for T=2" in d["points"][1]["skipped"]
    assert d["meta"]["n"] == 4 and d["meta"]["seeds"] == [0, 1] and (tmp_path / "f.png").stat().st_size > 0
    assert main(["eval", "--samples", str(tmp_path / "f.json"), "--frontier"]) == 2
    assert "--frontier needs a model" in capsys.readouterr().err
    # its outputs never overwrite the model, and that is refused before any sampling
    before = (tmp_path / "t.safetensors").read_bytes()
    for flag in ("-o", "--plot"):
        assert main(["eval", str(tmp_path / "t.safetensors"), "--frontier", flag, str(tmp_path / "t.safetensors")]) == 2
        err = capsys.readouterr().err
        assert "is the input" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "t.safetensors").read_bytes() == before
