"""ONNX / NIR from the command line: ``sdmc export|compile --backend onnx|nir`` on released-format UNets,
``sdmc sample model.onnx`` through onnxruntime, ``.nir`` files into ``compile`` and ``export``, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import randomize_bn

from sdmc.cli import main
from sdmc.config import ModelConfig
from sdmc.models import build_model
from sdmc.sim import golden


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """Released-format checkpoints (``{'net_model': state_dict}``) of tiny SDDPM and SDM UNets (T=2, 8x8)."""
    d = tmp_path_factory.mktemp("released")
    out = {}
    for arch in ("sddpm", "sdm"):
        cfg = ModelConfig(arch=arch, ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8)
        m = build_model(cfg).eval()
        randomize_bn(m, seed=1)
        torch.save({"net_model": m.state_dict()}, d / f"{arch}.pt")
        out[arch] = (d / f"{arch}.pt", m)
    return out


def _one_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_export_onnx_then_sample_it_with_onnxruntime(released, tmp_path, capsys):
    from sdmc.backends.onnx import OnnxModel
    from sdmc.data.images import to_uint8
    from sdmc.diffusion.sampling import sample_images
    from sdmc.diffusion.schedule import NoiseSchedule

    pt, m = released["sddpm"]  # (the SDM UNet: test_compile_onnx_step_form_and_sample_refusals)
    onnx_path = tmp_path / "m.onnx"
    argv = ["export", str(pt), "--backend", "onnx", "--img-size", "8", "-o", str(onnx_path)]
    assert main(argv + ["--snn-steps", "2"]) == 0  # a plain SDDPM state_dict does not record T
    assert "ONNX opset 17, full form, T=2" in capsys.readouterr().out
    argv = ["sample", str(onnx_path), "-n", "3", "--steps", "2", "--batch-size", "2", "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "s")]) == 0
    got = np.load(tmp_path / "s" / "ddim_2.npz")["images"]
    assert got.shape == (3, 8, 8, 1) and got.dtype == np.uint8
    sched = NoiseSchedule(OnnxModel(onnx_path).sdmc_config.diffusion)
    want = to_uint8(sample_images(m, sched, 3, steps=2, batch_size=2, progress=False, shape=(1, 8, 8)))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # the eager model's images, to uint8 rounding


def test_compile_onnx_step_form_and_sample_refusals(released, tmp_path, capsys):
    from sdmc.backends.onnx import OnnxModel

    pt, _ = released["sdm"]
    full, step = tmp_path / "full.onnx", tmp_path / "step.onnx"
    small = ["--img-size", "8"]
    assert main(["compile", str(pt), "--backend", "onnx", "-o", str(full)] + small) == 0
    assert main(["compile", str(pt), "--backend", "onnx", "--onnx-form", "step", "-o", str(step)] + small) == 0
    ins = {"x": np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32), "t": np.array([3, 900])}
    a, b = OnnxModel(full).run(ins), OnnxModel(step).run(ins)
    np.testing.assert_allclose(a["out"], b["out"], rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    err = _one_error(capsys, ["sample", str(full), "--threshold", "0.9", "-n", "1", "--out", str(tmp_path / "s")])
    assert "--threshold" in err and str(full) in err
    assert not (tmp_path / "s").exists()


def test_export_nir_import_it_and_compile_it(released, tmp_path, capsys):
    from sdmc import ir
    from sdmc.backends import nir as snir
    from sdmc.frontends import from_checkpoint

    pt, _ = released["sddpm"]
    nir_path = tmp_path / "m.nir"
    model = [str(pt), "--snn-steps", "2", "--img-size", "8"]
    err = _one_error(capsys, ["export"] + model + ["--backend", "nir", "-o", str(nir_path)])
    assert "(upsample)" in err and "--nir-ext" in err and not nir_path.exists()
    assert main(["export"] + model + ["--backend", "nir", "--t", "300", "--nir-ext", "-o", str(nir_path)]) == 0
    out = capsys.readouterr().out
    assert "t=300 folded" in out and "sdmc extension nodes: swish, upsample" in out
    # the .nir file back into sdmc: the IR the exporter mapped, and its golden output
    assert main(["compile", str(nir_path), "--backend", "ir", "-o", str(tmp_path / "back.sdmc")]) == 0
    back = ir.load(tmp_path / "back.sdmc")
    g = from_checkpoint(pt, snn_steps=2, img_size=8)
    x = np.random.default_rng(1).normal(size=(2, 1, 8, 8))
    ref = golden.run(snir.prepare(g, 300), {"x": x})["out"]
    np.testing.assert_array_equal(golden.run(back, {back.input_nodes[0].name: x})["out"], ref)
    assert main(["compile", str(nir_path), "--backend", "torch", "-o", str(tmp_path / "back.torch.sdmc")]) == 0
    err = _one_error(capsys, ["compile"] + model + ["--backend", "nir", "-o", str(tmp_path / "x.nir")])
    assert "give t (--t STEP)" in err


def test_nir_chain_goes_to_loihi_and_lava_only_options_are_refused(tmp_path, capsys):
    import nir

    rng = np.random.default_rng(0)
    ng = nir.NIRGraph(
        nodes={
            "x": nir.Input(input_type=np.array([2, 6, 6])),
            "conv": nir.Conv2d(
                input_shape=(6, 6),
                weight=rng.normal(0, 0.6, (4, 2, 3, 3)),
                stride=1,
                padding=1,
                dilation=1,
                groups=1,
                bias=np.zeros(4),
            ),
            "if": nir.IF(r=np.full((4, 6, 6), 1e4), v_threshold=np.full((4, 6, 6), 0.5)),
            "flat": nir.Flatten(input_type={"input": np.array([4, 6, 6])}, start_dim=0, end_dim=-1),
            "fc": nir.Linear(weight=rng.normal(0, 0.3, (3, 144))),
            "out": nir.Output(output_type=np.array([3])),
        },
        edges=[("x", "conv"), ("conv", "if"), ("if", "flat"), ("flat", "fc"), ("fc", "out")],
    )
    path = tmp_path / "chain.nir"
    nir.write(str(path), ng)
    err = _one_error(capsys, ["export", str(path), "--backend", "lava", "-o", str(tmp_path / "lava")])
    assert "give the number of SNN steps T" in err and str(path) in err
    assert main(["export", str(path), "--backend", "lava", "--snn-steps", "4", "-o", str(tmp_path / "lava")]) == 0
    assert (tmp_path / "lava" / "manifest.json").is_file()
    assert main(["sim", str(path), "--snn-steps", "4", "--dt", "1e-4"]) == 0  # the chain as Loihi runs it
    assert "spike mismatch vs float golden" in capsys.readouterr().out
    err = _one_error(
        capsys,
        ["export", str(path), "--snn-steps", "4", "--backend", "onnx", "--tsm", "mean", "-o", str(tmp_path / "o")],
    )
    assert "--tsm: only for --backend lava" in err and not (tmp_path / "o").exists()
    # an energy report for the imported network: counted from the IR (a classifier: at an assumed firing rate)
    assert main(["energy", str(path), "--snn-steps", "4", "--assume-rate", "0.25", "--json"]) == 0
    layers = {x["name"]: x for x in json.loads(capsys.readouterr().out)["layers"]}
    assert layers["conv"]["macs"] == 4 * 4 * 2 * 9 * 36 and layers["fc"]["sops"] == pytest.approx(0.25 * 144 * 3 * 4)
    # measured (a classifier: the golden simulator on random inputs, issue 18); not on a dataset's images
    assert main(["energy", str(path), "--snn-steps", "4", "--images", "2", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["calibration"]["mode"] == "inputs" and rep["calibration"]["n_images"] == 2
    err = _one_error(capsys, ["energy", str(path), "--snn-steps", "4", "--data", "digits"])
    assert "'x'" in err and "not a denoiser's image" in err and "--assume-rate" in err


def test_bundled_reference_exports_and_its_nir_goes_to_torch_and_loihi(released, tmp_path, monkeypatch, capsys):
    """``bundled:NAME`` (a native file in the bundled directory) through ``export --backend onnx|nir``; the .nir
    back into the torch executor (== golden of the exported IR, spike for spike) and to Loihi."""
    from sdmc.backends import nir as snir
    from sdmc.backends.onnx import OnnxModel
    from sdmc.backends.torch_exec import load_compiled
    from sdmc.checkpoint import save_model
    from sdmc.config import SdmcConfig
    from sdmc.frontends import from_checkpoint
    from sdmc.models import bundled

    _, m = released["sddpm"]
    monkeypatch.setattr(bundled, "BUNDLED_DIR", tmp_path)
    save_model(tmp_path / bundled.BUNDLED["digits"].file, m, SdmcConfig(model=m.config))
    onnx_path, nir_path = tmp_path / "d.onnx", tmp_path / "d.nir"
    assert main(["export", "bundled:digits", "--backend", "onnx", "-o", str(onnx_path)]) == 0
    assert main(["export", "bundled:digits", "--backend", "nir", "--nir-ext", "--t", "300", "-o", str(nir_path)]) == 0
    g = from_checkpoint("bundled:digits")
    x = np.random.default_rng(2).normal(size=(2, 1, 8, 8))
    t = np.array([300, 300])
    got = OnnxModel(onnx_path).run({"x": x.astype(np.float32), "t": t})["out"]
    np.testing.assert_allclose(got, golden.run(g, [x, t])["out"], rtol=1e-4, atol=1e-4)
    out = tmp_path / "back.sdmc"
    assert main(["compile", str(nir_path), "--backend", "torch", "-o", str(out)]) == 0
    ex, _ = load_compiled(out, dtype=torch.float64)
    with torch.no_grad():
        y = ex(torch.tensor(x)).numpy()
    np.testing.assert_allclose(y, golden.run(snir.prepare(g, 300), {"x": x})["out"], rtol=1e-9, atol=1e-9)
    assert main(["export", str(nir_path), "--backend", "lava", "-o", str(tmp_path / "lava")]) == 0
    assert (tmp_path / "lava" / "manifest.json").is_file()
    assert "netx segment(s), T=2" in capsys.readouterr().out
    # and its energy, measured along sampling trajectories by the golden simulator
    assert main(["energy", str(nir_path), "--images", "1", "--steps", "2", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    rates = [x["rate"] for x in rep["layers"] if x["cls"] == "neuron"]
    assert rates and all(0 <= r <= 1 for r in rates) and 0 < max(rates)


def test_exports_replace_only_files_sdmc_wrote(released, tmp_path, capsys):
    """-o over a file sdmc did not write: one line naming --force, the file untouched; sdmc's own file or --force:
    replaced; the model itself: refused even with --force."""
    pt, _ = released["sddpm"]
    model = [str(pt), "--snn-steps", "2", "--img-size", "8"]
    for backend, extra in (("onnx", []), ("nir", ["--t", "5", "--nir-ext"])):
        out = tmp_path / f"notes.{backend}"
        out.write_text("my notes")
        argv = ["export"] + model + ["--backend", backend, "-o", str(out)] + extra
        err = _one_error(capsys, argv)
        assert str(out) in err and "not written by sdmc" in err and "--force" in err
        assert out.read_text() == "my notes"
        assert main(argv + ["--force"]) == 0 and main(argv) == 0  # then it is sdmc's: no --force needed
        capsys.readouterr()
        err = _one_error(capsys, ["compile", str(out), "--backend", backend, "-o", str(out), "--force"] + extra[2:])
        assert "is the input" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.nir", "notes.onnx"]


def test_nir_file_with_nan_weights_is_refused_unless_allowed(released, tmp_path, capsys):
    """A .nir model is checked like every other model file: the first non-finite parameter is named."""
    pt, m = released["sddpm"]
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["conv.weight"][0, 0, 0, 0] = float("nan")
    bad = tmp_path / "nan.pt"
    torch.save({"net_model": sd}, bad)
    nir_path = tmp_path / "nan.nir"
    model = [str(bad), "--snn-steps", "2", "--img-size", "8"]
    export = ["export", *model, "--backend", "nir", "--t", "3", "--nir-ext", "-o", str(nir_path)]
    assert "holds 1 non-finite value" in _one_error(capsys, export)  # the checkpoint itself is refused ...
    assert main(["--allow-nonfinite", *export]) == 0  # ... unless allowed (for debugging)
    capsys.readouterr()
    compile_ = ["compile", str(nir_path), "-o", str(tmp_path / "g.sdmc")]
    err = _one_error(capsys, compile_)
    assert "nan.nir" in err and "non-finite" in err and "--allow-nonfinite" in err
    assert main([*compile_, "--allow-nonfinite"]) == 0
