"""ONNX backend: onnxruntime == the golden simulator (every IR op, random graphs, the SDDPM and SDM UNets), the full
and step forms agree, float64 graphs give identical spikes, sampling through onnxruntime, hostile files."""

import numpy as np
import onnx
import pytest
import torch
from conftest import randomize_bn
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from op_examples import EXAMPLES, pool
from op_examples import inputs as example_inputs
from strategies import random_inputs, spiking_graphs

from sdmc import ir
from sdmc.backends.onnx import FORMS, LOWER, OPSET, OnnxModel, init_states, prepare, save_onnx, to_onnx
from sdmc.config import ModelConfig
from sdmc.errors import SdmcError
from sdmc.frontends import trace
from sdmc.models import build_model
from sdmc.sim import golden


def _f32(ins: dict) -> dict:
    return {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in ins.items()}


def _neurons(g: ir.Graph) -> tuple[str, ...]:
    return tuple(n.name for n in g if n.op in ir.NEURON)


def stable_spikes(g: ir.Graph, ins: dict, eps: float = 1e-4) -> bool:
    """True when no neuron's spikes change as every threshold moves by +-eps (no potential within eps of a
    threshold along the golden run), so float32 rounding cannot flip a spike."""

    def spikes(graph):
        vals = golden.run(graph, ins, all_values=True)
        return [vals[k] for k in _neurons(graph)]

    base = spikes(g)
    for d in (eps, -eps):
        moved = g.copy()
        for k in _neurons(g):
            moved.replace(k, moved[k].replace(threshold=moved[k].threshold + d))
        if any(not np.array_equal(a, b) for a, b in zip(base, spikes(ir.check(moved)))):
            return False
    return True


def stable_inputs(g: ir.Graph, B: int = 2) -> dict:
    """The first of a few fixed input draws for which :func:`stable_spikes` holds (deterministic)."""
    for seed in range(1, 8):
        ins = example_inputs(g, B, seed)
        if stable_spikes(g, ins):
            return ins
    raise AssertionError("no input draw keeps every potential 1e-4 away from the thresholds")


def _check_against_golden(ref_graph, ins, tmp_path, forms=FORMS, atol=1e-4):
    """Export ``ref_graph`` as is in each form (float32), run it in onnxruntime: outputs close to golden's, every
    neuron's spikes equal."""
    ref = golden.run(ref_graph, ins, all_values=True)
    neurons = _neurons(ref_graph)
    got = {}
    for form in forms:
        path = save_onnx(ref_graph, tmp_path / f"{form}.onnx", form=form, pipeline=None, expose=neurons)
        got[form] = OnnxModel(path).run(_f32(ins))
        for n in ref_graph.output_nodes:
            np.testing.assert_allclose(
                got[form][n.name], ref[n.name], rtol=1e-4, atol=atol, err_msg=f"{form}: {n.name}"
            )
        for k in neurons:
            np.testing.assert_array_equal(got[form][k], ref[k], err_msg=f"{form}: spikes of {k}")
    return got


# ------------------------------------------------------------------------------------------ every op
def test_every_ir_op_has_an_example_and_a_lowering():
    assert set(EXAMPLES) == set(ir.OPS), "add an example to tests/op_examples.py for every new IR op"
    assert set(ir.OPS) - {"input", "output"} <= set(LOWER)


@pytest.mark.parametrize("op", sorted(EXAMPLES))
def test_each_op_in_onnxruntime_matches_golden_in_both_forms(op, tmp_path):
    g = EXAMPLES[op]()
    _check_against_golden(g, stable_inputs(g), tmp_path)  # as written: every op lowered, none folded away first


@pytest.mark.parametrize(
    "mode, kw, onnx_op",
    [
        ("max", {}, "MaxPool"),  # padded windows: the padding never wins
        ("avg", {}, "AveragePool"),  # count_include_pad (torch's default): / 9 at the border too
        ("avg", {"count_include_pad": False}, "AveragePool"),  # / the in-bounds count
        ("sum", {"kernel": (2, 2), "stride": (1, 1), "padding": (0, 0)}, "Conv"),  # overlapping windows
    ],
)
def test_every_pooling_mode_matches_golden(mode, kw, onnx_op, tmp_path):
    g = pool(mode, **kw)()
    assert onnx_op in {n.op_type for n in to_onnx(g).graph.node}
    _check_against_golden(g, stable_inputs(g), tmp_path)


def test_model_is_standard_onnx_with_a_symbolic_batch(tmp_path):
    g = EXAMPLES["embedding"]()
    m = to_onnx(g)
    assert [(o.domain, o.version) for o in m.opset_import] == [("", OPSET)]
    assert {n.domain for n in m.graph.node} <= {""}  # no custom ops
    x = next(i for i in m.graph.input if i.name == "x")
    assert x.type.tensor_type.shape.dim[0].dim_param == "batch"
    onnx.checker.check_model(m, full_check=True)
    model = OnnxModel(save_onnx(g, tmp_path / "m.onnx"))
    for B in (1, 5):  # one file, any batch
        ins = example_inputs(g, B)
        assert model.run(_f32(ins))["out"].shape == (B, 2, 4, 4)


# ------------------------------------------------------------------------------------------ random graphs
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(spiking_graphs(dtype="float32"), st.integers(1, 3), st.integers(0, 1000), st.sampled_from([None, "inference"]))
def test_random_graphs_match_golden_and_forms_agree(g, B, seed, pipeline):
    import tempfile
    from pathlib import Path

    ins = _f32(random_inputs(g, B, seed))
    g = prepare(g, pipeline)
    assume(stable_spikes(g, ins))
    with tempfile.TemporaryDirectory() as d:
        got = _check_against_golden(g, ins, Path(d))
    for k, v in got["full"].items():  # the step form's loop reproduces the full form
        np.testing.assert_allclose(got["step"][k], v, rtol=1e-5, atol=1e-5, err_msg=k)


def _dense_graph(seed: int) -> ir.Graph:
    """Dense layers only (onnxruntime has no float64 Conv): x -> linear -> IF -> linear -> LIF -> read-out."""
    rng = np.random.default_rng(seed)
    g = ir.Graph(4)
    g.add(ir.Input(name="x", shape=(6,), dtype="float64"))
    g.add(ir.Repeat(name="xs", inputs=("x",)))
    g.add_param("w1", rng.normal(0, 0.8, (8, 6)))
    g.add_param("w2", rng.normal(0, 0.6, (5, 8)))
    g.add_param("b2", rng.normal(0, 0.2, 5))
    g.add(ir.Linear(name="l1", inputs=("xs",), weight="w1"))
    g.add(ir.IF(name="s1", inputs=("l1",), threshold=0.7))
    g.add(ir.Linear(name="l2", inputs=("s1",), weight="w2", bias="b2"))
    g.add(ir.LIF(name="s2", inputs=("l2",), threshold=0.3, tau=2.0, v_reset=None))
    g.add(ir.MembraneReadout(name="ro", inputs=("s2",), decay=0.5))
    g.add(ir.Output(name="out", inputs=("ro",)))
    return ir.check(g)


@pytest.mark.parametrize("seed", range(3))
def test_float64_graph_gives_identical_spikes(seed, tmp_path):
    g = _dense_graph(seed)
    ins = {"x": np.random.default_rng(seed + 10).normal(size=(4, 6))}
    ref = golden.run(g, ins, all_values=True)
    for form in FORMS:
        got = OnnxModel(save_onnx(g, tmp_path / f"{form}.onnx", form=form, dtype="float64", expose=("s1", "s2"))).run(
            ins
        )
        assert got["out"].dtype == np.float64
        for k in ("s1", "s2"):
            np.testing.assert_array_equal(got[k], ref[k])
        np.testing.assert_allclose(got["out"], ref["out"], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------ UNets
def _unet(arch: str) -> tuple[torch.nn.Module, ir.Graph]:
    cfg = ModelConfig(arch=arch, ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8)
    m = build_model(cfg).eval()
    randomize_bn(m)
    return m, trace(m, (1, 1, 8, 8))


@pytest.mark.parametrize("arch", ["sddpm", "sdm"])
def test_unet_in_onnxruntime_matches_golden_and_eager(arch, tmp_path):
    m, g = _unet(arch)
    p = prepare(g)  # the inference pipeline: BN folded, TSM fused, static work hoisted
    draws = ({"x": np.random.default_rng(s).normal(size=(3, 1, 8, 8)), "t": np.array([5, 480, 999])} for s in range(6))
    ins = next(i for i in draws if stable_spikes(p, i, eps=1e-5))
    got = _check_against_golden(p, ins, tmp_path)
    ref = golden.run(g, ins)["out"]  # and the graph as traced (BN, TSM unfused)
    np.testing.assert_allclose(got["full"]["out"], ref, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        eager = m(torch.from_numpy(ins["x"]).float(), torch.from_numpy(ins["t"])).numpy()
    np.testing.assert_allclose(got["step"]["out"], eager, rtol=1e-4, atol=1e-5)


def test_onnx_model_is_a_denoiser_for_the_samplers(tmp_path):
    from sdmc.diffusion.sampling import sample_images
    from sdmc.diffusion.schedule import NoiseSchedule
    from sdmc.frontends import from_checkpoint

    m, _ = _unet("sddpm")
    from sdmc.checkpoint import save_model
    from sdmc.config import SdmcConfig

    cfg = SdmcConfig()
    cfg.model = m.config
    save_model(tmp_path / "m.safetensors", m, cfg)
    g = from_checkpoint(tmp_path / "m.safetensors")
    model = OnnxModel(save_onnx(g, tmp_path / "m.onnx"))
    assert model.config == m.config and model.sdmc_config is not None
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 700])
    with torch.no_grad():
        np.testing.assert_allclose(model(x, t).numpy(), m(x, t).numpy(), rtol=1e-4, atol=1e-5)
    sched = NoiseSchedule(model.sdmc_config.diffusion)
    a = sample_images(model, sched, 3, steps=2, batch_size=3, progress=False)
    b = sample_images(model, sched, 3, steps=2, batch_size=2, progress=False)
    assert a.shape == (3, 1, 8, 8) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # per-image seeding, any batch shape


# ------------------------------------------------------------------------------------------ errors
def test_step_form_declares_its_state(tmp_path):
    g = EXAMPLES["if"]()  # soft-reset IF starting at v_init=0.3
    m = to_onnx(g, form="step")
    st_ = init_states(m, 2)
    assert st_["state.qif.v"].shape == (2, 2, 4, 4) and np.all(st_["state.qif.v"] == 0.3)
    assert {"state.readout.acc", "state.sn0.v", "state.sn1.v"} <= set(st_)
    names = {i.name for i in m.graph.input}
    assert {"step", *st_} <= names and {k + ".next" for k in st_} <= {o.name for o in m.graph.output}


def test_bad_options_are_refused():
    g = EXAMPLES["conv2d"]()
    with pytest.raises(SdmcError, match="unknown form 'loop'"):
        to_onnx(g, form="loop")
    with pytest.raises(SdmcError, match="dtype 'int8'"):
        to_onnx(g, dtype="int8")
    with pytest.raises(SdmcError, match=r"expose names unknown node\(s\) \['nope'\]"):
        to_onnx(g, expose=("nope",))


def test_hostile_files_get_one_clear_error(tmp_path):
    good = save_onnx(EXAMPLES["conv2d"](), tmp_path / "good.onnx")
    data = good.read_bytes()
    cases = {
        "garbage.onnx": (b"\x00\xffnot a protobuf" * 7, "not an ONNX model"),
        "empty.onnx": (b"", "not an ONNX model"),
        "truncated.onnx": (data[: len(data) // 2], "not an ONNX model|invalid ONNX model"),
    }
    foreign = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["a"], ["b"])],
            "g",
            [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [1])],
        )
    )
    cases["foreign.onnx"] = (foreign.SerializeToString(), "not an sdmc ONNX export")
    bad_meta = onnx.load(str(good))
    for p in bad_meta.metadata_props:
        if p.key == "sdmc.io":
            p.value = "{not json"
    cases["badmeta.onnx"] = (bad_meta.SerializeToString(), "sdmc metadata is malformed")
    external = onnx.load(str(good))
    t = external.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../../etc/passwd")
    cases["external.onnx"] = (external.SerializeToString(), "external files")
    for name, (blob, msg) in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(SdmcError, match=msg) as e:
            OnnxModel(path)
        assert str(path) in str(e.value)
    with pytest.raises(SdmcError, match="no such file"):
        OnnxModel(tmp_path / "missing.onnx")
    model = OnnxModel(good)
    with pytest.raises(SdmcError, match=r"input 'x': expected shape \['B', 2, 4, 4\], got \[2, 3\]"):
        model.run({"x": np.zeros((2, 3), np.float32)})


def test_write_is_atomic_and_refuses_a_directory(tmp_path):
    g = EXAMPLES["conv2d"]()
    (tmp_path / "d.onnx").mkdir()
    with pytest.raises(SdmcError, match="is a directory"):
        save_onnx(g, tmp_path / "d.onnx")
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(SdmcError, match="form"):
        save_onnx(g, target, form="loop", force=True)
    assert target.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["d.onnx", "m.onnx"]


def test_write_replaces_only_what_sdmc_wrote(tmp_path):
    from sdmc.backends.onnx import is_sdmc_onnx
    from sdmc.errors import OutputError
    from sdmc.utils import output_lock

    g = EXAMPLES["conv2d"]()
    foreign = tmp_path / "theirs.onnx"
    m = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []), producer_name="pytorch")
    foreign.write_bytes(m.SerializeToString())
    with pytest.raises(OutputError, match="not written by sdmc.*--force"):
        save_onnx(g, foreign)
    assert not is_sdmc_onnx(foreign) and onnx.load(str(foreign)).producer_name == "pytorch"
    save_onnx(g, foreign, force=True)
    assert is_sdmc_onnx(foreign)
    save_onnx(g, foreign, form="step")  # sdmc's own: replaced without --force
    assert "sdmc.states" in {p.key for p in onnx.load(str(foreign)).metadata_props}
    with pytest.raises(OutputError, match="is the input"):
        save_onnx(g, foreign, force=True, protect=[foreign])
    with output_lock(foreign), pytest.raises(OutputError, match="another sdmc process is writing"):
        save_onnx(g, foreign)
