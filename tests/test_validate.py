"""The validation layer (sdmc.validate): typed config fields, resource limits, bounded zip reads, npz headers,
non-finite weights, unreadable files."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from sdmc import validate as V
from sdmc.checkpoint import build_and_load, load_model, read_checkpoint, save_model
from sdmc.config import ModelConfig, SdmcConfig
from sdmc.errors import CheckpointError, ConfigError, LimitError, SdmcError, first_line
from sdmc.models import build_model, parameter_bound

TINY = dict(arch="sddpm", ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8)


# ------------------------------------------------------------------------------------------ typed fields
@dataclass
class _Demo:
    n: int = V.spec(1, range=(1, 10), limit=True)
    p: float = V.spec(0.5, range=(0, 1), open_high=True)
    dims: tuple[int, ...] = V.spec((1,), range=(1, None), length=(1, 3))
    name: str | None = None
    flag: bool = False
    kind: str = V.spec("a", choices=("a", "b"))

    def __post_init__(self):
        V.check_fields(self, "demo", ConfigError)


@pytest.mark.parametrize(
    "kw,err,msg",
    [
        ({"n": "abc"}, ConfigError, "demo.n: expected an integer, got 'abc'"),
        ({"n": True}, ConfigError, "demo.n: expected an integer"),
        ({"n": 2.5}, ConfigError, "demo.n: expected an integer"),
        ({"n": 0}, ConfigError, "demo.n: must be >= 1, got 0"),
        ({"n": 11}, LimitError, "demo.n: 11 asked, the limit is 10"),
        ({"p": 1}, ConfigError, "demo.p: must be < 1"),
        ({"p": float("nan")}, ConfigError, "demo.p: expected a number"),
        ({"p": "x"}, ConfigError, "demo.p: expected a number, got 'x'"),
        ({"dims": 2}, ConfigError, "demo.dims: expected a list of integers, got 2"),
        ({"dims": [1, "a"]}, ConfigError, "expected a list of integers"),
        ({"dims": []}, ConfigError, "needs 1 to 3 entries, got 0"),
        ({"dims": [1, 0]}, ConfigError, "must be >= 1"),
        ({"name": 3}, ConfigError, "demo.name: expected a string or null"),
        ({"flag": 1}, ConfigError, "demo.flag: expected true/false"),
        ({"kind": "c"}, ConfigError, "demo.kind: 'c' is not one of 'a', 'b'"),
    ],
)
def test_check_fields_names_the_field_and_the_problem(kw, err, msg):
    with pytest.raises(err) as e:
        _Demo(**kw)
    assert msg in str(e.value)
    assert "\n" not in str(e.value)


def test_check_fields_coerces_json_forms():
    d = _Demo(n=3.0, p=0, dims=[2, 3], name=None)
    assert d.n == 3 and type(d.n) is int and d.dims == (2, 3) and isinstance(d.p, float)


# ------------------------------------------------------------------------------------------------ configs
def _cfg_json(**model) -> str:
    d = json.loads(SdmcConfig(model=ModelConfig(**TINY)).to_json())
    d["model"].update(model)
    return json.dumps(d)


@pytest.mark.parametrize(
    "field,value,err,msg",
    [
        ("ch", "abc", ConfigError, "model.ch: expected an integer, got 'abc'"),
        ("ch_mult", 2, ConfigError, "model.ch_mult: expected a list of integers, got 2"),
        ("snn_steps", "abc", ConfigError, "model.snn_steps: expected an integer"),
        ("threshold", "x", ConfigError, "model.threshold: expected a number, got 'x'"),
        ("threshold", 0, ConfigError, "model.threshold: must be > 0"),
        ("snn_steps", 10_000, LimitError, "model.snn_steps: 10000 asked, the limit is 256"),
        ("img_size", 10**5, LimitError, "model.img_size: 100000 asked, the limit is 1024"),
        ("diffusion_steps", 10**9, LimitError, "model.diffusion_steps: 1,000,000,000 asked, the limit is 10000"),
        ("dropout", 2, ConfigError, "model.dropout: must be < 1"),
        ("arch", None, ConfigError, "model.arch: expected a string, got None"),
        ("neuron", "x", ConfigError, "model.neuron: 'x' is not one of 'if', 'lif'"),
        ("bogus", 1, ConfigError, "unknown field(s) ['bogus']"),
    ],
)
def test_model_config_from_json(field, value, err, msg):
    with pytest.raises(err, match=msg.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        SdmcConfig.from_json(_cfg_json(**{field: value}))


@pytest.mark.parametrize(
    "diffusion,err,msg",
    [
        ({"num_timesteps": 0}, ConfigError, "diffusion.num_timesteps: must be >= 1, got 0"),
        ({"num_timesteps": -1}, ConfigError, "must be >= 1, got -1"),
        ({"num_timesteps": 10**9}, LimitError, "the limit is 10000"),
        ({"beta_1": 5}, ConfigError, "diffusion.beta_1: must be < 1, got 5"),
        ({"beta_T": 0}, ConfigError, "diffusion.beta_T: must be > 0"),
        ({"schedule": "cubic"}, ConfigError, "diffusion.schedule: 'cubic' is not one of"),
    ],
)
def test_diffusion_config_from_json(diffusion, err, msg):
    d = json.loads(_cfg_json())
    d["diffusion"].update(diffusion)
    with pytest.raises(err, match=msg):
        SdmcConfig.from_json(json.dumps(d))


@pytest.mark.parametrize(
    "text,msg",
    [
        ('{"model": null}', "model: expected an object"),
        ("[1]", "missing the 'model' section"),
        ("{", "not valid JSON"),
        ("[" * 100_000, "nested too deeply"),
        ('{"model": {}, "version": "x"}', "version: expected an integer"),
        ('{"model": {}, "provenance": 3}', "provenance: expected an object"),
    ],
)
def test_sdmc_config_top_level(text, msg):
    with pytest.raises(ConfigError, match=msg):
        SdmcConfig.from_json(text)


def test_parameter_limit_is_checked_before_allocation(monkeypatch):
    cfg = ModelConfig(arch="ann", ch=1024, ch_mult=(1, 16), img_size=32, norm_groups=32)
    assert parameter_bound(cfg) > V.LIMITS.params
    with pytest.raises(LimitError, match=r"model parameters \(ann, ch=1024.*asked, the limit is 1,073,741,824"):
        build_model(cfg)
    small = ModelConfig(**TINY)
    n = sum(p.numel() for p in build_model(small).parameters())
    assert n <= parameter_bound(small)  # the closed-form bound really bounds


def test_a_header_that_does_not_match_its_tensors_is_refused_before_building(tmp_path, monkeypatch):
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY)
    sd = build_model(cfg).state_dict()
    big = ModelConfig(**{**TINY, "ch": 512, "ch_mult": (1, 8)})  # 100+ M parameters, none in the file
    built: list[str] = []
    import sdmc.models as models

    real = models.build_model
    monkeypatch.setattr(models, "build_model", lambda c, device=None: built.append(str(device)) or real(c, device))
    with pytest.raises(CheckpointError, match=r"has shape \[1000, 8\], expected \[1000, 512\]"):
        build_and_load(sd, big)
    assert built == ["meta"]


# ------------------------------------------------------------------------------------------ checkpoints
def test_nonfinite_weights_refused_naming_the_tensor(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY)
    m = build_model(cfg)
    with torch.no_grad():
        m.head_conv_weight = None
        p = dict(m.named_parameters())["conv.weight"]
        p[0, 0, 0, 0] = float("nan")
        p[0, 0, 0, 1] = float("inf")
    path = save_model(tmp_path / "m.safetensors", m, SdmcConfig(model=cfg))
    with pytest.raises(CheckpointError, match=r"tensor 'conv.weight' holds 2 non-finite value\(s\).*--allow-nonfinite"):
        load_model(path)
    model, _ = load_model(path, allow_nonfinite=True)
    assert not torch.isfinite(model.conv.weight).all()


def _in_child(fn, as_nobody: bool) -> str:
    """``fn()`` in a forked child (as user ``nobody`` when we are root: root reads every file); returns the
    message of the SdmcError it raised (or ``"no error"``)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        msg = "no error"
        try:
            if as_nobody:
                os.setgid(65534)
                os.setuid(65534)
            fn()
        except SdmcError as e:
            msg = f"{type(e).__name__}: {e}"
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            msg = f"unexpected {type(e).__name__}: {e}"
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as fh:
        return fh.read()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks")
def test_unreadable_files_say_why(tmp_path_factory):
    import tempfile

    from sdmc import ir
    from sdmc.frontends import trace

    d = Path(tempfile.mkdtemp(prefix="sdmc-unreadable-"))
    d.chmod(0o755)  # traversable by anyone: only the files are unreadable
    cfg = ModelConfig(**TINY)
    model = build_model(cfg).eval()
    st = save_model(d / "m.safetensors", model, SdmcConfig(model=cfg))
    g = ir.save(trace(model, (1, 1, 8, 8)), d / "g.sdmc")
    for p in (st, g):
        p.chmod(0)
    root = os.geteuid() == 0
    got = _in_child(lambda: read_checkpoint(st), root)
    assert got.startswith("CheckpointError") and "m.safetensors: cannot read: Permission denied" in got, got
    got = _in_child(lambda: ir.load(g), root)
    assert got.startswith("IRError") and "g.sdmc: cannot read: Permission denied" in got, got
    shutil.rmtree(d)


def test_missing_and_directory_paths(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read: No such file or directory"):
        read_checkpoint(tmp_path / "none.safetensors")
    with pytest.raises(CheckpointError, match="cannot read: Is a directory"):
        read_checkpoint(tmp_path)


# ------------------------------------------------------------------------------------------- zip and npz
def test_read_member_refuses_a_bomb_on_the_header_and_while_reading(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("graph.json", b" " * 5_000_000)  # 5 MB of spaces deflate to about 5 kB
    assert path.stat().st_size < 20_000
    with zipfile.ZipFile(path) as z:
        with pytest.raises(
            LimitError, match=r"bomb.zip/graph.json: uncompressed size: 5,000,000 bytes asked, the limit"
        ):
            V.read_member(z, "graph.json", 1_000_000, str(path))
        assert len(V.read_member(z, "graph.json", 5_000_000, str(path))) == 5_000_000
    # a header that lies (says 100 bytes): the read stops at the limit anyway
    data = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = data.find(sig)
        data[i + off : i + off + 4] = (100).to_bytes(4, "little")
    liar = tmp_path / "liar.zip"
    liar.write_bytes(bytes(data))
    with zipfile.ZipFile(liar) as z:
        with pytest.raises((LimitError, zipfile.BadZipFile)):
            V.read_member(z, "graph.json", 1000, str(liar))


def test_npy_members_reads_headers_only(tmp_path):
    path = tmp_path / "x.npz"
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (4096, 4096, 4096)})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images.npy", buf.getvalue())
    assert V.npy_members(str(path), "x") == {"images": ((4096, 4096, 4096), np.dtype("u1"))}
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(SdmcError, match="not a readable .npz"):
        V.npy_members(str(tmp_path / "junk.npz"), "junk")


def test_check_finite_and_parse_json():
    V.check_finite({"a": torch.ones(3), "i": torch.arange(3)}, "w")
    with pytest.raises(SdmcError, match="tensor 'b' holds 1 non-finite"):
        V.check_finite({"a": np.ones(2), "b": np.array([1.0, np.inf])}, "w")
    with pytest.raises(LimitError, match="JSON size"):
        V.parse_json("1" * 100, "x", limit=10)
    assert V.parse_json('{"a": 1}', "x") == {"a": 1}


def test_first_line_of_a_wrapped_error():
    """A third-party error becomes one line: its first non-blank line, or its type name when it says nothing
    (``str(e).splitlines()[0]`` raised IndexError on an empty message)."""
    assert first_line(ValueError("\n  bad node 3\n  at line 7\n")) == "bad node 3"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("")) == "RuntimeError"


def test_a_compiled_graphs_model_config_is_checked_like_a_checkpoints(tmp_path):
    """A .sdmc graph's recorded model_config with an unknown field is one ConfigError line when the torch
    executor loads it (it was a raw TypeError from ModelConfig(**meta))."""
    from sdmc import ir
    from sdmc.backends.torch_exec import load_compiled
    from sdmc.config import ModelConfig
    from sdmc.errors import ConfigError
    from sdmc.frontends import trace
    from sdmc.models import build_model

    cfg = ModelConfig(arch="sddpm", ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8)
    g = trace(build_model(cfg).eval(), (1, 1, 8, 8))
    g.meta.pop("sdmc_config", None)
    ex, _ = load_compiled(ir.save(g, tmp_path / "ok.sdmc"))
    assert ex.config == cfg
    g.meta["model_config"] = {**g.meta["model_config"], "bogus": 1}
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['bogus'\]"):
        load_compiled(ir.save(g, tmp_path / "bad.sdmc"))
