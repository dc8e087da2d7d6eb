"""The main job (`sdmc demo`) runs end to end and writes every artefact it announces."""

import json
import math

from PIL import Image

from sdmc.cli import main


def _lava_importable() -> bool:
    from sdmc.backends.lava import compat

    try:
        compat.import_lava()
    except compat.LavaUnavailable:
        return False
    return True


def test_demo_quick_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--steps", "4", "-n", "16"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["data", "train", "sample", "compile", "energy", "lava", "convert"]
    train = summary["train"]
    assert train["steps"] == 4 and (out / "train" / "model.safetensors").exists() and "short run" in train["what"]
    assert train["solver"] == "ddim_5" and train["quality"]["seeds"] == [0, 1] and train["digits_fid_std"] is not None
    # the sample stage: the bundled model when installed, else the short run (said so); floor and spread per row
    sample = summary["sample"]
    assert sample["model"] == "bundled:digits" or "bundled:digits is not installed" in sample["model"]
    assert sample["n"] == 16 and sample["seeds"] == "0,1" and sample["floor_digits_fid"] > 0
    assert "(floor " in sample["best"] and "±" in sample["best"]
    rows = sample["solvers"]
    for tag in ("ddim_5", "dpm-solver++_5", "dpm-solver++_5_threshold0.997"):
        assert Image.open(out / f"samples_{tag}.png").size[0] > 64
        assert rows[tag]["digits_fid"] > 0 and rows[tag]["digits_fid_std"] is not None
    assert rows["reference_gaussian_noise"]["digits_fid"] > sample["floor_digits_fid"]
    c = summary["compile"]
    assert c["executor_vs_golden_maxdiff"] < 1e-6 and c["eager_vs_golden_maxdiff"] < 1e-9
    for f in (
        "model.ir.sdmc",
        "model.inference.sdmc",
        "model.neuromorphic.sdmc",
        "model.torch.sdmc",
        "inspect.txt",
        "energy.json",
        "energy.md",
        "energy.png",
        "lava_quantisation.txt",
        "lava_resources.txt",
        "convert_grid.png",
    ):
        assert (out / f).stat().st_size > 0, f
    e = summary["energy"]
    assert 0 < e["paper_mJ_per_image"] < e["ann_mJ_per_image"] and 0 < e["mean_firing_rate"] < 1
    assert "trajectories from noise" in e["measured"]
    qpe = e["quality_per_energy"]  # every sample row's energy per image beside its quality
    assert set(qpe) == {"ddim_5", "dpm-solver++_5", "dpm-solver++_5_threshold0.997"}
    assert qpe["ddim_5"]["nfe"] == 5 and qpe["ddim_5"]["digits_fid"] == rows["ddim_5"]["digits_fid"]
    assert all(r["faithful_mJ_per_image"] > 0 for r in qpe.values())

    # lava: the whole UNet compiled, exported, read back and run against the float golden
    lava = summary["lava"]
    assert "status" not in lava, lava
    from sdmc.backends.lava import load_export

    net, plan, manifest = load_export(out / "lava")
    assert len(net.populations) == lava["populations"] > 10 and manifest["resources"]["totals"]["cores"] >= 1
    assert lava["loihi2_cores"] == manifest["resources"]["totals"]["cores"]
    assert lava["netx_segments"] == len(manifest["segments"]) >= 1
    assert all((out / "lava" / seg["file"]).stat().st_size > 0 for seg in manifest["segments"])
    # 8-bit weights on a barely trained net: the host/chip output stays close to the float model's
    assert 0 < lava["output_rel_error_vs_golden"] < 0.5
    # the errors against the two float references differ by at most how far those references are apart; they
    # differ at all because the compiled graph's BN folds are rounded to float32 (a trained net's near-threshold
    # membranes turn 1e-7 into a few spike flips: 2.3 % on the bundled model's held-out digits, 2e-8 on noise)
    assert lava["golden_vs_torch_rel_error"] < 0.1
    d = abs(lava["output_rel_error_vs_torch"] - lava["output_rel_error_vs_golden"])
    assert d <= 1.1 * lava["golden_vs_torch_rel_error"] + 1e-5  # triangle inequality, norms within 10 %
    assert 0 <= lava["spike_mismatch_mean"] <= lava["spike_mismatch_max"] < 0.5
    assert "Loihi 2 resources" in (out / "lava_resources.txt").read_text()
    assert "hybrid fixed-point output vs float golden" in (out / "lava_quantisation.txt").read_text()
    if _lava_importable():  # CI installs Lava: its spikes must be the numpy model's, bit for bit
        assert lava["lava_spikes_equal_numpy_model"] is True and lava["lava_output_equal_numpy_model"] is True
        assert lava["lava_first_sample_seconds"] > 0
        # a segment file that is a net on its own runs in stock netx like the numpy model (this UNet has several)
        assert lava["netx_segment"]["stock_netx_spikes_equal_numpy_model"] is True, lava["netx_segment"]
    else:
        assert lava["lava"].startswith("not run")

    # convert: QANN -> SNN, scored like the short run, beside it
    cv = summary["convert"]
    assert "status" not in cv, cv
    assert cv["qann_train_steps"] == 4 and cv["T"] == 3 and cv["solver"] == "ddim_5" and cv["n"] == 16
    for k in ("qann_digits_fid", "converted_digits_fid"):
        assert math.isfinite(cv[k]) and cv[k] > 0 and cv[k + "_std"] is not None, k
    assert cv["direct_snn_digits_fid"] == train["digits_fid"] and cv["direct_snn_train_steps"] == 4
    assert 0 <= cv["conversion_rel_error"] < 1
    assert (out / "convert" / "converted.safetensors").exists()
    w, h = Image.open(out / "convert_grid.png").size
    assert w > h > 64  # three rows of eight


def test_demo_rejects_a_nonpositive_step_count(capsys):
    assert main(["demo", "--out", "unused", "--convert-steps", "0"]) == 2
    assert "--convert-steps must be at least 1" in capsys.readouterr().err


def test_a_failing_optional_stage_keeps_the_numbers_it_recorded(tmp_path):
    from sdmc.demo import Pipeline

    p = Pipeline(tmp_path / "demo", quick=True)

    def half_done():
        p.partial["compile_seconds"] = 1.5
        raise RuntimeError("Lava broke")

    p.stage("lava", half_done, required=False)
    assert p.summary["lava"]["status"] == "failed: RuntimeError: Lava broke"
    assert p.summary["lava"]["compile_seconds"] == 1.5

    def next_stage():
        p.partial["ok"] = 1
        return p.partial

    p.stage("convert", next_stage, required=False)  # the next stage starts with nothing recorded
    assert sorted(p.summary["convert"]) == ["ok", "seconds"]
