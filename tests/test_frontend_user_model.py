"""Bring your own model class: FILE.py:Class / module:Class, JSON arguments, strict weights, one-line errors."""

from pathlib import Path

import numpy as np
import pytest
import torch

from sdmc import ir
from sdmc.config import ModelConfig
from sdmc.errors import CheckpointError, ConfigError
from sdmc.frontends import from_checkpoint
from sdmc.frontends.user_model import build_user_model, load_class, trace_user_model
from sdmc.models import build_model

ZOO = Path(__file__).parent / "zoo"
PAPER = f"{ZOO / 'papers_unet.py'}:SpkUNetTSM"
PAPER_ARGS = '{"T": 1000, "ch": 8, "ch_mult": [1, 2], "attn": [], "num_res_blocks": 1, "dropout": 0.1, "timestep": 2}'


def test_load_class_from_a_file_and_from_a_module():
    cls = load_class(PAPER)
    assert cls.__name__ == "SpkUNetTSM"
    from zoo.classifiers import CSNN

    assert load_class("zoo.classifiers:CSNN") is CSNN


@pytest.mark.parametrize(
    "spec,args,msg",
    [
        ("zoo.classifiers", None, "expected FILE.py:ClassName or module:ClassName"),
        ("no/such/file.py:Net", None, "no such file 'no/such/file.py'"),
        ("zoo.no_such_module:Net", None, "cannot import module 'zoo.no_such_module'"),
        ("zoo.classifiers:Nope", None, "'zoo.classifiers' has no attribute 'Nope'"),
        ("zoo.classifiers:jitter_plif", None, "is a function, not a torch.nn.Module subclass"),
        ("zoo.classifiers:CSNN", "{ch: 3}", "--model-args: not valid JSON"),
        ("zoo.classifiers:CSNN", "3", "expected a JSON object or array, got int"),
        ("zoo.classifiers:CSNN", '{"chanels": 3}', r"CSNN\(\*\[\], \*\*\{'chanels': 3\}\) failed: TypeError"),
    ],
)
def test_bad_model_specs_are_one_clear_error(spec, args, msg):
    with pytest.raises(ConfigError, match=msg):
        build_user_model(spec, args)


def test_a_file_that_fails_to_run_is_named(tmp_path):
    f = tmp_path / "broken.py"
    f.write_text("import torch\nraise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match=r"running '.*broken.py' failed: RuntimeError: boom"):
        load_class(f"{f}:Net")


def test_papers_class_from_a_released_checkpoint_compiles_like_sdmcs(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(arch="sdm", ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=3, img_size=8)
    net, ema = build_model(cfg), build_model(cfg)
    torch.save({"net_model": net.state_dict(), "ema_model": ema.state_dict(), "step": 3}, tmp_path / "ckpt.pt")
    model = build_user_model(PAPER, PAPER_ARGS, tmp_path / "ckpt.pt")
    assert torch.equal(model.conv.tsmconv.weight, ema.conv.tsmconv.weight)  # EMA weights by default
    g = trace_user_model(PAPER, PAPER_ARGS, tmp_path / "ckpt.pt", input_shape=(1, 3, 8, 8), weights="net")
    ref = from_checkpoint(tmp_path / "ckpt.pt", weights="net", snn_steps=2, img_size=8)
    assert dict(g.nodes) == dict(ref.nodes) and g.params.keys() == ref.params.keys()
    assert all(np.array_equal(g.params[k], ref.params[k]) for k in g.params)
    assert g.meta["source_class"] == PAPER and g.meta["model_args"]["timestep"] == 2
    ir.check(g)


def test_checkpoint_that_does_not_fit_the_class_names_the_first_mismatch(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"does not match SpkUNetTSM: first missing key 'time_embedding"):
        build_user_model(PAPER, PAPER_ARGS, tmp_path / "other.pt")
