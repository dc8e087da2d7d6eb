"""``--model FILE.py:Class --model-args JSON --input-shape DIMS`` on ``sdmc compile / energy / export / sim``: the
three models of issue 18 (the papers' Spk_UNet_TSM-style UNet, a spikingjelly CSNN with max pooling, a
SeqToANNContainer network with average / sum pooling), each written to a file of its own in tmp_path, compile
from the command line to the graph the frontend gives in Python, their golden simulation equals the eager
model in float64, energy runs; a bad ``--model`` is one line and exit status 2."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_bn
from test_frontend_zoo import eager_with_spikes
from zoo.classifiers import CSNN, SeqToANNNet, jitter_plif

from sdmc import ir
from sdmc.cli import main
from sdmc.config import ModelConfig
from sdmc.frontends import trace
from sdmc.models import build_model
from sdmc.sim import golden

ZOO = Path(__file__).parent / "zoo"
PAPER_ARGS = '{"T": 1000, "ch": 8, "ch_mult": [1, 2], "attn": [], "num_res_blocks": 1, "dropout": 0.1, "timestep": 2}'
T = 3


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """The zoo's model sources copied to a user's folder (not importable as ``zoo``), with weights."""
    d = tmp_path_factory.mktemp("user")
    shutil.copy(ZOO / "classifiers.py", d / "my_nets.py")
    shutil.copy(ZOO / "papers_unet.py", d / "my_unet.py")
    for cls in (CSNN, SeqToANNNet):
        torch.manual_seed(0)
        net = cls()
        randomize_bn(net)
        torch.save(jitter_plif(net).state_dict(), d / f"{cls.__name__}.pt")
    torch.manual_seed(0)
    cfg = ModelConfig(arch="sdm", ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=3, img_size=8)
    net, ema = build_model(cfg), build_model(cfg)
    torch.save({"net_model": net.state_dict(), "ema_model": ema.state_dict(), "step": 3}, d / "unet.pt")
    return d


def _weights_in(cls, path):
    net = cls()
    net.load_state_dict(torch.load(path, weights_only=True))
    return net.double().eval()


@pytest.mark.parametrize("cls,shape", [(CSNN, (T, 1, 1, 8, 8)), (SeqToANNNet, (T, 1, 2, 8, 8))])
def test_classifiers_compile_from_the_cli_and_golden_equals_eager(user_files, tmp_path, capsys, cls, shape):
    ckpt, spec = user_files / f"{cls.__name__}.pt", f"{user_files / 'my_nets.py'}:{cls.__name__}"
    dims = ",".join(map(str, shape))
    out = tmp_path / "g.sdmc"
    assert main(["compile", str(ckpt), "--model", spec, "--input-shape", dims, "--passes", "none", "-o", str(out)]) == 0
    assert f"T={T}" in capsys.readouterr().out  # T from the sequence's first axis: the class declares none
    g = ir.check(ir.load(out))
    assert g.meta["source_class"] == spec and g.T == T
    assert g.input_nodes[0].timing == ir.PER_STEP
    assert sum(n.op == "pool2d" for n in g.nodes.values()) == 2
    net = _weights_in(cls, ckpt)
    ref = trace(net.float(), shape, T=T)
    assert dict(g.nodes) == dict(ref.nodes) and all(np.array_equal(g.params[k], ref.params[k]) for k in ref.params)
    net.double()
    x = torch.rand((T, 4) + shape[2:], dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    y, spikes = eager_with_spikes(net, x)
    vals = golden.run(g, [x.numpy()], keep=list(spikes))
    np.testing.assert_allclose(vals[g.output_nodes[0].name], y, rtol=0, atol=1e-9)
    assert all(np.array_equal(vals[k], s) for k, s in spikes.items())
    assert any(0 < s.mean() < 1 for s in spikes.values())

    assert main(["compile", str(ckpt), "--model", spec, "--input-shape", dims, "-o", str(tmp_path / "i.sdmc")]) == 0
    assert "passes: " in capsys.readouterr().out  # the default inference pipeline runs on the user's graph too

    assert main(["energy", str(ckpt), "--model", spec, "--input-shape", dims, "--images", "3", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in rep["layers"]}
    assert rep["calibration"]["n_images"] == 3 and rep["totals"]["faithful"]["per_call_mJ"] > 0
    assert sum(r["op"] == "pool2d" for r in rows.values()) == 2
    from sdmc.sim.inputs import noised_inputs  # what energy measures a classifier on (seed 0)

    neurons = [n.name for n in g.nodes.values() if n.op in ir.NEURON_OPS]
    vals = golden.run(g, noised_inputs(g, 3, 0, 0), keep=neurons)
    for k in neurons:
        assert rows[k]["rate"] == pytest.approx(float(vals[k].mean()), rel=1e-6, abs=1e-9), k


def test_classifier_exports_and_sim_refuses_what_loihi_cannot(user_files, tmp_path, capsys):
    ckpt, spec = user_files / "CSNN.pt", f"{user_files / 'my_nets.py'}:CSNN"
    common = [str(ckpt), "--model", spec, "--input-shape", f"{T},1,1,8,8"]
    assert main(["export", *common, "--backend", "onnx", "-o", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 0 and "ONNX opset" in capsys.readouterr().out
    as_module = [str(ckpt), "--model", "zoo.classifiers:CSNN", "--input-shape", f"{T},1,1,8,8"]  # module:Class
    assert main(["compile", *as_module, "--passes", "none", "-o", str(tmp_path / "m.sdmc")]) == 0
    assert ir.load(tmp_path / "m.sdmc").meta["source_class"] == "zoo.classifiers:CSNN"
    capsys.readouterr()
    assert main(["sim", *common]) == 2  # Loihi has no pooling nor soft reset: refused naming the first node
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "node 'conv_fc." in err and "not expressible" in err
    assert main(["sim", *common, "--target", "golden", "--samples", "2"]) == 0  # any graph: the golden simulator
    text = capsys.readouterr().out
    err = re.search(
        r"output out \[3, 2, 10\]: .* torch executor \(float64\) vs golden relative error ([0-9.e+-]+)", text
    )
    assert err and float(err.group(1)) < 1e-9, text
    assert re.search(r"firing rates: mean 0\.\d*[1-9]", text), text  # the neurons fire
    _one_line_error(capsys, ["sim", *common, "--target", "golden", "--tsm", "mean"], "--tsm: only for --target loihi")


def test_papers_unet_compiles_from_the_cli_like_sdmcs_and_energy_runs(user_files, tmp_path, capsys):
    ckpt, spec = user_files / "unet.pt", f"{user_files / 'my_unet.py'}:SpkUNetTSM"
    common = [str(ckpt), "--model", spec, "--model-args", PAPER_ARGS, "--input-shape", "1,3,8,8"]
    out = tmp_path / "u.sdmc"
    assert main(["compile", *common, "--passes", "none", "--weights", "net", "-o", str(out)]) == 0
    assert "T=2" in capsys.readouterr().out  # the class's own `timestep`
    g = ir.check(ir.load(out))
    from sdmc.frontends import from_checkpoint

    ref = from_checkpoint(ckpt, weights="net", snn_steps=2, img_size=8)  # sdmc's own UNet, same weights
    assert dict(g.nodes) == dict(ref.nodes) and all(np.array_equal(g.params[k], ref.params[k]) for k in ref.params)
    assert main(["energy", *common, "--assume-rate", "0.2", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["calibration"]["mode"] == "assumed" and rep["totals"]["faithful"]["per_image_mJ"] > 0
    assert main(["sim", *common, "--tsm", "mean", "--on-overflow", "rescale"]) == 0  # the hybrid Loihi run
    text = capsys.readouterr().out
    agree = re.search(r"torch executor vs float golden ([0-9.e+-]+)", text)
    assert "spike mismatch vs float golden" in text and agree and float(agree.group(1)) < 1e-6, text


def _one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"sdmc {argv[0]}: error: "), err
    for f in fragments:
        assert f in err, err
    return err


@pytest.mark.parametrize("command", ["compile", "energy", "export", "sim"])
def test_bad_model_options_are_one_line_exit_2(user_files, tmp_path, capsys, command):
    ckpt, nets = str(user_files / "CSNN.pt"), user_files / "my_nets.py"
    shape = ["--input-shape", f"{T},1,1,8,8"]
    out = ["-o", str(tmp_path / "x")] if command in ("compile", "export") else []
    run = [command, ckpt, *out]
    _one_line_error(capsys, [*run, "--model", str(tmp_path / "nope.py:CSNN"), *shape], "no such file", "nope.py")
    _one_line_error(capsys, [*run, "--model", f"{nets}:NoSuchNet", *shape], "has no attribute 'NoSuchNet'")
    _one_line_error(capsys, [*run, "--model", f"{nets}:CSNN", "--model-args", "{ch: 3}", *shape], "not valid JSON")
    _one_line_error(  # SeqToANNNet's weights do not fit CSNN
        capsys,
        [command, str(user_files / "SeqToANNNet.pt"), *out, "--model", f"{nets}:CSNN", *shape],
        "does not match CSNN",
        "first missing key",
    )
    _one_line_error(capsys, [command, str(tmp_path / "missing.pt"), *out, "--model", f"{nets}:CSNN", *shape], "no such")
    _one_line_error(capsys, [*run, "--model", f"{nets}:CSNN"], "--input-shape")
    _one_line_error(capsys, [*run, "--model-args", "{}"], "--model-args: only with --model")
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_the_four_commands_share_one_model_option_group():
    from sdmc.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    want = {"--model", "--model-args", "--input-shape", "--timing"}
    groups = set()
    for name in ("compile", "energy", "export", "sim"):
        opts = {s: a for a in sub[name]._actions for s in a.option_strings}
        assert want <= opts.keys(), name
        assert opts["--model"].dest == "model_class"  # the Loihi commands' positional is `model`
        groups |= {
            g.title for g in sub[name]._action_groups if any("--model" in a.option_strings for a in g._group_actions)
        }
    assert len(groups) == 1  # declared once, in sdmc.cli.base.add_user_model


def test_energy_tells_a_static_image_classifier_from_a_denoiser():
    """A static ``[C, H, W]`` input with a ``[classes]`` output and no step input is a classifier (one forward pass
    per random input, datasets refused); the same input with an image output stays a denoiser."""
    from sdmc.energy import analyze
    from sdmc.errors import ConfigError

    def graph(head: bool) -> ir.Graph:
        g = ir.Graph(2)
        g.add(ir.Input(name="x", shape=(1, 4, 4), dtype="float32"))
        w = g.add_param("c.weight", np.full((2, 1, 3, 3), 0.3, np.float32))
        g.add(ir.Conv2d(name="c", inputs=("x",), weight=w, padding=(1, 1)))
        g.add(ir.Repeat(name="rep", inputs=("c",)))
        g.add(ir.IF(name="sn", inputs=("rep",), threshold=0.5, v_reset=0.0))
        last = "sn"
        if head:
            g.add(ir.Reshape(name="flat", inputs=("sn",), shape=(32,)))
            g.add(ir.Linear(name="fc", inputs=("flat",), weight=g.add_param("fc.w", np.ones((3, 32), np.float32))))
            last = "fc"
        g.add(ir.MembraneReadout(name="ro", inputs=(last,), decay=1.0))
        g.add(ir.Output(name="out", inputs=("ro",)))
        return ir.check(g)

    rep = analyze(graph(head=True), n_images=2, ann=False)
    assert rep.calibration["mode"] == "inputs" and rep.calibration["n_images"] == 2
    with pytest.raises(ConfigError, match="not a denoiser's image"):
        analyze(graph(head=True), data="digits", ann=False)
    images = torch.rand(2, 1, 4, 4) * 2 - 1
    assert analyze(graph(head=False), images=images, calib_steps=1, steps=2, ann=False).calibration["mode"] == "data"
