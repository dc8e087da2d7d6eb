"""The main job (`sdmc demo`) runs end to end and writes every artefact it announces."""
import json

from PIL import Image

from sdmc.cli import main


def test_demo_quick_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--steps", "4", "-n", "16"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["data", "train", "sample", "compile", "energy", "lava"]
    assert summary["train"]["steps"] == 4 and (out / "train" / "model.safetensors").exists()
    rows = summary["sample"]["solvers"]
    for tag in ("ddim_5", "dpm-solver++_5"):
        assert Image.open(out / f"samples_{tag}.png").size[0] > 64
        assert rows[tag]["digits_fid"] > 0
    assert "ddim_5_threshold0.997" in rows
    c = summary["compile"]
    assert c["executor_vs_golden_maxdiff"] < 1e-6 and c["eager_vs_golden_maxdiff"] < 1e-9
    for f in ("model.ir.sdmc", "model.inference.sdmc", "model.neuromorphic.sdmc", "model.torch.sdmc", "inspect.txt",
              "energy.json", "energy.md", "energy.png", "encoder.netx.h5"):
        assert (out / f).stat().st_size > 0, f
    e = summary["energy"]
    assert 0 < e["paper_mJ_per_image"] < e["ann_mJ_per_image"] and 0 < e["mean_firing_rate"] < 1
    lava = summary["lava"]
    assert "failed" not in str(lava.get("status", "")), lava
    if "lava_spikes_equal_loihi_model" in lava:  # Lava installed (CI installs it)
        assert lava["lava_spikes_equal_loihi_model"] is True
