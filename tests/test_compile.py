"""``sdmc compile`` and ``sdmc inspect``: compile -> save -> load -> inspect on a small model via the CLI."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from spikingjelly.activation_based import neuron as sj_neuron

from sdmc import ir, passes
from sdmc.checkpoint import save_model
from sdmc.cli import main
from sdmc.config import ModelConfig, SdmcConfig
from sdmc.frontends import from_checkpoint
from sdmc.models import SpikingUNet
from sdmc.sim import golden


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    cfg = ModelConfig(
        arch="sdm", ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8, diffusion_steps=10
    )
    torch.manual_seed(0)
    m = SpikingUNet(cfg)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("tsmp"):
                p.copy_(0.5 + torch.rand_like(p))
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(path, m, SdmcConfig(model=cfg))
    n_neurons = sum(isinstance(x, sj_neuron.IFNode) for x in m.modules())
    return path, n_neurons


def test_compile_save_load_inspect(tiny_model, tmp_path, capsys):
    path, n_neurons = tiny_model
    out = tmp_path / "tiny.sdmc"
    assert main(["compile", str(path), "--backend", "ir", "-o", str(out), "--passes", "inference"]) == 0
    assert "wrote" in capsys.readouterr().out
    g = ir.load(out)
    ir.check(g)
    # the file holds exactly the traced graph after the pipeline
    ref = passes.run(from_checkpoint(path), "inference")
    assert g == ref and g.meta["passes"] == ref.meta["passes"]
    assert [e["pass"] for e in g.meta["passes"]] == list(passes.PIPELINES["inference"])
    assert not any(n.op in ("tsm_scale", "batchnorm") and n.name != "tail_bn" for n in g.nodes.values())
    x, t = np.random.default_rng(0).normal(size=(2, 1, 8, 8)), np.array([1, 9])
    assert golden.run(g, [x, t])["out"].shape == (2, 1, 8, 8)

    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    for part in (
        "graph:",
        "parameters:",
        "ops:",
        f"spike layers: {n_neurons}",
        "timing:",
        "work per call",
        "partition:",
        "pass log (4):",
        "fold_bn",
        "hoist_static",
    ):
        assert part in text, part
    assert main(["inspect", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert sum(s["ops"].values()) == s["nodes"] == len(g.nodes)
    assert s["spike_layers"]["count"] == n_neurons == s["ops"]["if"]
    assert s["spike_layers"]["neurons"] == sum(int(np.prod(n.type.shape)) for n in g.nodes.values() if n.op == "if")
    assert s["params"]["tensors"] == len(g.params)
    assert s["partition"]["host"] + s["partition"]["neuromorphic"] == s["nodes"]
    assert s["timing"]["static_nodes"] > 0 and s["work_per_call"]["static_ops"] > 0  # hoisted head + time embedding
    assert [e["pass"] for e in s["passes"]] == list(passes.PIPELINES["inference"])


def test_compile_neuromorphic_pipeline_and_snn_steps(tiny_model, tmp_path, capsys):
    path, n_neurons = tiny_model
    out = tmp_path / "n.sdmc"
    assert main(["compile", str(path), "-o", str(out), "--passes", "neuromorphic"]) == 0
    assert "backend ir" in capsys.readouterr().out
    g = ir.load(out)
    assert g.T == 2 and set(g.meta["partition"]) == set(g.nodes)
    assert main(["inspect", str(out), "--json", "--nodes"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["partition"]["nodes"]["downblocks.0.neuron1"][0] == "neuromorphic"
    assert s["partition"]["nodes"]["membrane_output_layer"][0] == "host"
    cr = next(e for e in s["passes"] if e["pass"] == "compose_residual")
    assert cr["synapses_after"]["spike_driven"] > cr["synapses_before"]["spike_driven"]
    assert s["spike_layers"]["count"] > n_neurons  # neurons on concats were split per source
    raw = tmp_path / "raw.sdmc"
    assert main(["compile", str(path), "-o", str(raw), "--passes", "none", "--img-size", "16"]) == 0
    g = ir.load(raw)
    assert "passes" not in g.meta and g["x"].shape == (1, 16, 16)


def test_compile_and_inspect_errors(tiny_model, tmp_path, capsys):
    path, _ = tiny_model
    out = tmp_path / "o.sdmc"
    assert main(["compile", str(path), "--backend", "lava", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not available in 'sdmc compile' (for Loihi: 'sdmc export" in err and not out.exists()
    assert main(["compile", str(path), "--backend", "torch", "--passes", "neuromorphic", "-o", str(out)]) == 2
    assert "'inference' or 'train'" in capsys.readouterr().err and not out.exists()
    assert main(["compile", str(path), "-o", str(out), "--passes", "inference,bogus"]) == 2
    assert "unknown pass or pipeline 'bogus'" in capsys.readouterr().err and not out.exists()
    assert main(["compile", str(tmp_path / "missing.pt"), "-o", str(out)]) == 2
    assert "missing.pt" in capsys.readouterr().err and not out.exists()
    assert main(["inspect", str(path)]) == 2
    assert "not an .sdmc" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_compile_torch_backend(tiny_model, tmp_path, capsys):
    """--backend torch writes the graph the torch executor runs; it loads and agrees with the golden sim."""
    torch_exec = pytest.importorskip("sdmc.backends.torch_exec")
    path, _ = tiny_model
    out = tmp_path / "t.sdmc"
    assert main(["compile", str(path), "--backend", "torch", "-o", str(out)]) == 0
    assert "backend torch" in capsys.readouterr().out
    ex, _ = torch_exec.load_compiled(out, dtype=torch.float64)
    g = ir.load(out)
    x, t = np.random.default_rng(1).normal(size=(2, 1, 8, 8)), np.array([0, 4])
    with torch.no_grad():
        y = ex(torch.tensor(x), torch.tensor(t)).numpy()
    np.testing.assert_allclose(y, golden.run(g, [x, t])["out"], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_inspect_full_sdm(tmp_path, capsys):
    """The full SDM (ch 128, ch_mult [1,2,2,4], T 8, CIFAR size), random weights: compile and inspect."""
    cfg = ModelConfig(arch="sdm", ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2, snn_steps=8, img_ch=3, img_size=32)
    torch.manual_seed(0)
    path = tmp_path / "sdm.safetensors"
    save_model(path, SpikingUNet(cfg), SdmcConfig(model=cfg))
    out = tmp_path / "sdm.sdmc"
    t0 = time.time()
    assert main(["compile", str(path), "-o", str(out), "--passes", "neuromorphic"]) == 0
    t1 = time.time()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    print(f"\ncompile {t1 - t0:.0f} s\n{text}")
    assert "T=8" in text and "spike layers:" in text and "compose_residual" in text
