# ruff: noqa: E402  (the imports below need the nir package, checked first)
"""NIR export: every IR op exports or is refused by name; the exported graph, written and read back with the nir
package, simulated by sdmc's NIR interpreter == the golden simulator spike for spike (chains, random graphs,
residual nets, a converted QANN, the SDDPM and SDM UNets at a fixed diffusion step); SpikingJelly (through
nirtorch) runs the export too; export -> import gives back the same IR up to naming."""

import pytest

nir = pytest.importorskip("nir")  # a pyproject dependency; missing only from a venv made before it was added

import json

import numpy as np
import torch
from conftest import randomize_bn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from op_examples import EXAMPLES, pool
from op_examples import inputs as example_inputs
from strategies import random_inputs, spiking_graphs

from sdmc import ir
from sdmc.backends import nir as snir
from sdmc.config import ModelConfig
from sdmc.errors import SdmcError
from sdmc.frontends import trace
from sdmc.frontends.nir import from_nir
from sdmc.models import build_model
from sdmc.sim import golden

NIR_LACKS = {"tsm_scale", "scaled_conv2d", "swish", "sigmoid", "mul", "groupnorm", "upsample"}


def nir_names(ng: nir.NIRGraph) -> dict[str, str]:
    """IR node name -> NIR node name, from sdmc's per-node record."""
    out = {}
    for k, n in ng.nodes.items():
        h = json.loads(n.metadata["sdmc"]) if isinstance(n.metadata, dict) and "sdmc" in n.metadata else {}
        if "ir_name" in h:
            out[h["ir_name"]] = k
    return out


def same_up_to_naming(a: ir.Graph, b: ir.Graph) -> None:
    """The same nodes in the same order, wired alike, with equal attributes and parameter arrays (names aside)."""
    oa, ob = a.order(), b.order()
    assert [n.op for n in oa] == [n.op for n in ob]
    assert a.T == b.T
    names = {}
    for x, y in zip(oa, ob):
        names[x.name] = y.name
        assert tuple(names[i] for i in x.inputs) == y.inputs, (x.name, y.name)
        ra, rb = x.param_refs(), y.param_refs()
        assert set(ra) == set(rb), (x.name, ra, rb)
        for f in ra:
            pa, pb = a.params[ra[f]], b.params[rb[f]]
            assert pa.dtype == pb.dtype and np.array_equal(pa, pb), (x.name, f)
        assert {k: v for k, v in x.attrs().items() if k not in ra} == {
            k: v for k, v in y.attrs().items() if k not in rb
        }, x.name


def assert_nir_equal(a: nir.NIRGraph, b: nir.NIRGraph) -> None:
    """Node by node: same types, fields (arrays equal), metadata and edges; nested graphs likewise."""
    assert list(sorted(a.nodes)) == list(sorted(b.nodes))
    assert sorted(map(tuple, a.edges)) == sorted(map(tuple, b.edges))
    for k, x in a.nodes.items():
        y = b.nodes[k]
        assert type(x) is type(y), k
        if isinstance(x, nir.NIRGraph):
            assert_nir_equal(x, y)
            continue
        dx, dy = x.to_dict(), y.to_dict()
        assert dx.keys() == dy.keys(), k
        for f in dx:
            if f == "metadata":
                assert {m: str(v) for m, v in dx[f].items()} == {m: str(v) for m, v in dy[f].items()}, k
            else:
                np.testing.assert_array_equal(np.asarray(dx[f]), np.asarray(dy[f]), err_msg=f"{k}.{f}")
    assert str(a.metadata.get("sdmc")) == str(b.metadata.get("sdmc"))


def check_export(g: ir.Graph, ins: dict, tmp_path, t: int | None = None, extensions: bool = True, exact_out=False):
    """Export, write, read back; the interpreter's spikes == golden's on the prepared IR, outputs close; the
    import gives the prepared IR back.  Returns the NIR graph read back."""
    p = snir.prepare(g, t)
    ng = snir.export_prepared(p, extensions=extensions)
    path = snir.save_nir(ng, tmp_path / "m.nir")
    back = nir.read(str(path))
    assert_nir_equal(ng, back)
    fed = {k: v for k, v in ins.items() if k in p.nodes}
    ref = golden.run(p, fed, all_values=True)
    sim = snir.simulate(back, {nir_names(back)[k]: v for k, v in fed.items()}, record=True)
    names = nir_names(back)
    neurons = [n.name for n in p if n.op in ir.NEURON]
    for k in neurons:
        if k in names and names[k] in sim:  # neurons kept in NIR (not cut out as extensions)
            np.testing.assert_array_equal(sim[names[k]], ref[k], err_msg=f"spikes of {k}")
    for n in p.output_nodes:
        got = sim[names[n.name]]
        got = got[-1] if not n.type.per_step else got  # a static output: its value at the last step
        np.testing.assert_allclose(got, ref[n.name], rtol=1e-9, atol=0 if exact_out else 1e-9, err_msg=n.name)
    same_up_to_naming(p, from_nir(back))
    return back


# ------------------------------------------------------------------------------------------ every op
def test_every_ir_op_has_an_example():
    assert set(EXAMPLES) == set(ir.OPS), "add an example to tests/op_examples.py for every new IR op"


@pytest.mark.parametrize("op", sorted(EXAMPLES))
def test_each_op_exports_exactly_or_is_refused_by_name(op, tmp_path):
    g = EXAMPLES[op]()
    ins = example_inputs(g)
    t = None
    if "t" in ins:
        ins["t"][:] = t = 4  # one graph per diffusion step
    try:
        snir.to_nir(g, t=t)
    except snir.Refused as e:
        assert op in NIR_LACKS, f"{op} should export: {e}"
        node = next(n for n in g if n.op == op)
        assert f"node {node.name!r} ({op})" in str(e)
        assert "extensions=True" in str(e)
        back = check_export(g, ins, tmp_path, t, extensions=True)  # cut out as an sdmc extension node
        assert [e["op"] for e in snir.sdmc_meta(back)["extensions"]] == [op]
        return
    assert op not in NIR_LACKS
    back = check_export(g, ins, tmp_path, t, extensions=False)
    assert snir.sdmc_meta(back)["extensions"] == [] and "sdmc_params" not in back.metadata


@pytest.mark.parametrize(
    "mode, kw, nir_type",
    [
        ("sum", {}, "SumPool2d"),
        ("avg", {}, "AvgPool2d"),  # padded windows / kh kw: count_include_pad
        ("avg", {"kernel": (2, 2), "padding": (0, 0), "count_include_pad": False}, "AvgPool2d"),  # no padded window
    ],
)
def test_sum_and_average_pooling_export_as_nir_pools(mode, kw, nir_type, tmp_path):
    g = pool(mode, **kw)()
    back = check_export(g, example_inputs(g), tmp_path, extensions=False)  # spikes == golden, import == prepared IR
    (k,) = [k for k, n in back.nodes.items() if "Pool" in type(n).__name__]
    assert type(back.nodes[k]).__name__ == nir_type
    np.testing.assert_array_equal(back.nodes[k].kernel_size, g["pool"].kernel)
    np.testing.assert_array_equal(back.nodes[k].padding, g["pool"].padding)


@pytest.mark.parametrize(
    "mode, kw, why",
    [("max", {}, "NIR has no max pooling"), ("avg", {"count_include_pad": False}, "NIR AvgPool2d divides")],
)
def test_max_and_padded_in_bounds_average_pooling_are_refused_by_name(mode, kw, why, tmp_path):
    g = pool(mode, **kw)()
    with pytest.raises(snir.Refused, match=rf"node 'pool' \(pool2d\): {why}.*extensions=True"):
        snir.to_nir(g)
    back = check_export(g, example_inputs(g), tmp_path, extensions=True)  # cut out: sdmc closes the loop
    assert [e["ir_name"] for e in snir.sdmc_meta(back)["extensions"]] == ["pool"]


def test_refusals_name_the_node_and_the_reason():
    g = EXAMPLES["embedding"]()
    with pytest.raises(SdmcError, match=r"graph input\(s\) \['t'\].*give t \(--t STEP\)"):
        snir.to_nir(g)
    g = EXAMPLES["if"]()
    g.replace("qif", g["qif"].replace(signed=True))
    with pytest.raises(snir.Refused, match=r"node 'qif' \(if\): signed spikes"):
        snir.to_nir(ir.check(g))
    with pytest.raises(SdmcError, match="dt must be a positive number"):
        snir.to_nir(EXAMPLES["conv2d"](), dt=0.0)


def test_partial_forms_are_extensions_and_prepare_refusals_stand_with_extensions():
    """The README's table: node forms NIR lacks (a broadcasting sum, a soft-reset LIF starting off 0, a read-out
    decay outside [0, 1]) are refused by name or kept as extensions; what export folds first (a step-only value
    not summed into a bias, a BatchNorm over a rank-2 value) is refused even with extensions."""
    from op_examples import _G, C, H

    def lif_soft(b):
        return b.finish(
            b.add(ir.LIF(name="n", inputs=(b.conv("c0", "xs"),), threshold=0.5, tau=2.0, v_reset=None, v_init=0.2))
        )

    def bcast(b):  # [C, H, W] + [1, H, W]
        s = b.spikes("s0", b.conv("c0", "xs"))
        return b.finish(b.spikes("s1", b.add(ir.Add(name="n", inputs=(b.conv("c1", s), b.conv("c2", s, 1))))))

    def decay(b):
        b.add(ir.MembraneReadout(name="n", inputs=(b.spikes("s0", b.conv("c0", "xs")),), decay=1.5))
        b.add(ir.Output(name="out", inputs=("n",)))
        return ir.check(b.g)

    for build, op, why in [
        (lif_soft, "lif", "non-zero initial potential"),
        (bcast, "add", "broadcasting sum"),
        (decay, "membrane_readout", "outside"),
    ]:
        g = build(_G(0))
        with pytest.raises(snir.Refused, match=rf"node 'n' \({op}\): .*{why}"):
            snir.to_nir(g)
        ext = snir.sdmc_meta(snir.to_nir(g, extensions=True))["extensions"]
        assert op in [e["op"] for e in ext]

    b = _G(0, t_input=True)
    e = b.add(ir.Embedding(name="emb", inputs=("t",), weight=b.p("emb.w", b.rng.normal(0, 0.3, (10, C)))))
    r = b.add(ir.Reshape(name="emb.r", inputs=(e,), shape=(C, 1, 1)))
    gated = b.add(ir.Mul(name="gate", inputs=(b.spikes("s0", b.conv("c0", "xs")), r)))
    step_gate = b.finish(b.spikes("s1", b.conv("c1", gated)))
    b = _G(0)
    f = b.add(ir.Reshape(name="f", inputs=(b.spikes("s0", b.conv("c0", "xs")),), shape=(C, H * H)))
    m, v = b.p("m", np.zeros(C)), b.p("v", np.ones(C))
    bn = b.add(ir.BatchNorm(name="bn", inputs=(f,), weight=None, bias=None, running_mean=m, running_var=v))
    bn_rank2 = b.finish(b.add(ir.Reshape(name="g", inputs=(bn,), shape=(C, H, H))))
    for g, t, msg in [
        (step_gate, 3, r"node 'gate' \(mul\): reads 'emb.r'.*no constant source"),
        (bn_rank2, None, r"node 'bn' \(batchnorm\): BatchNorm over a rank-2"),
    ]:
        with pytest.raises(snir.Refused, match=msg):
            snir.to_nir(g, t=t, extensions=True)


# ------------------------------------------------------------------------------------------ chains, random graphs
def _chain(readout: bool = True) -> ir.Graph:
    """A pure-NIR chain: conv -> IF -> strided conv -> LIF -> flatten -> linear -> IF -> linear [-> read-out]."""
    rng = np.random.default_rng(7)
    g = ir.Graph(4)
    g.add(ir.Input(name="x", shape=(1, 6, 6), dtype="float64"))
    g.add(ir.Repeat(name="xs", inputs=("x",)))
    g.add_param("c1.w", rng.normal(0, 0.9, (3, 1, 3, 3)))
    g.add_param("c1.b", rng.normal(0, 0.1, 3))
    g.add_param("c2.w", rng.normal(0, 0.5, (4, 3, 3, 3)))
    g.add_param("fc.w", rng.normal(0, 0.4, (10, 36)))
    g.add_param("fc.b", rng.normal(0, 0.2, 10))
    g.add_param("out.w", rng.normal(0, 0.5, (2, 10)))
    g.add(ir.Conv2d(name="c1", inputs=("xs",), weight="c1.w", bias="c1.b", padding=(1, 1)))
    g.add(ir.IF(name="s1", inputs=("c1",), threshold=0.8))
    g.add(ir.Conv2d(name="c2", inputs=("s1",), weight="c2.w", stride=(2, 2), padding=(1, 1)))
    g.add(ir.LIF(name="s2", inputs=("c2",), threshold=0.6, tau=2.0))
    g.add(ir.Reshape(name="flat", inputs=("s2",), shape=(36,)))
    g.add(ir.Linear(name="fc", inputs=("flat",), weight="fc.w", bias="fc.b"))
    g.add(ir.IF(name="s3", inputs=("fc",), threshold=0.5, v_reset=0.2))
    g.add(ir.Linear(name="head", inputs=("s3",), weight="out.w"))
    if readout:
        g.add(ir.MembraneReadout(name="ro", inputs=("head",), decay=1.0))
    g.add(ir.Output(name="out", inputs=("ro" if readout else "head",)))
    return ir.check(g)


def test_chain_exports_as_pure_nir_and_spikingjelly_runs_it(tmp_path):
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    x = np.random.default_rng(0).normal(size=(3, 1, 6, 6))
    back = check_export(_chain(), {"x": x}, tmp_path, extensions=False)
    types = {type(n).__name__ for n in back.nodes.values()}
    assert types == {"Input", "Output", "Conv2d", "IF", "LIF", "Flatten", "Affine", "Linear", "I"}
    # an independent NIR consumer: SpikingJelly's importer (built on nirtorch; no I/LI read-out) on the file
    # sdmc wrote, run step by step; its neurons fire on v >= v_threshold, unlike NIR's v > only at exact ties
    g = _chain(readout=False)
    snir.save_nir(g, tmp_path / "sj.nir")
    net = import_from_nir(tmp_path / "sj.nir", dtype=torch.float64)
    ref = golden.run(g, {"x": x})["out"]
    state, outs = None, []
    with torch.no_grad():
        for _ in range(g.T):
            y, state = net(torch.from_numpy(x), state)
            outs.append(y.numpy())
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(np.stack(outs), ref, rtol=1e-9, atol=1e-9)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(spiking_graphs(), st.integers(1, 3), st.integers(0, 1000))
def test_random_graphs_export_simulate_and_import_exactly(g, B, seed):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        check_export(g, random_inputs(g, B, seed), Path(d))


# ------------------------------------------------------------------------------------------ UNets, QANN
def _unet(arch: str):
    cfg = ModelConfig(arch=arch, ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8)
    m = build_model(cfg).eval()
    randomize_bn(m)
    return trace(m, (1, 1, 8, 8))


@pytest.mark.parametrize("arch", ["sddpm", "sdm"])
def test_unet_at_a_fixed_step_exports_spike_for_spike(arch, tmp_path):
    g = _unet(arch)
    x = np.random.default_rng(2).normal(size=(2, 1, 8, 8))
    with pytest.raises(snir.Refused, match="upsample|tsm_scale"):
        snir.to_nir(g, t=250)
    back = check_export(g, {"x": x}, tmp_path, t=250)
    ops = {e["op"] for e in snir.sdmc_meta(back)["extensions"]}
    assert ops <= NIR_LACKS and "upsample" in ops and "swish" in ops
    assert not any(isinstance(n, nir.Input) and n.input_type["input"].size == 0 for n in back.nodes.values())
    # against the traced model at that step (BN unfolded, time embedding computed): float rounding only
    ref = golden.run(g, {"x": x, "t": np.full(2, 250)})["out"]
    out = snir.simulate(back, {"x": x})[nir_names(back)["out"]][-1]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_converted_qann_exports_spike_for_spike(tmp_path):
    from sdmc.convert import build_converted

    cfg = ModelConfig(
        arch="qsnn", ch=8, ch_mult=(1, 2), num_res_blocks=1, bits=2, img_ch=1, img_size=8, norm_groups=2, mid_attn=False
    )
    torch.manual_seed(0)  # weights independent of the tests before: a time-embedding neuron whose spikes vary
    g = trace(build_converted(cfg).eval(), (1, 1, 8, 8))  # over the SNN steps has no constant bias (refused)
    soft = [n for n in g if n.op == "if"]
    assert soft and all(n.v_reset is None and n.v_init is not None for n in soft)
    x = np.random.default_rng(4).normal(size=(2, 1, 8, 8))
    back = check_export(g, {"x": x}, tmp_path, t=600)
    subgraphs = [n for n in back.nodes.values() if isinstance(n, nir.NIRGraph)]
    assert len(subgraphs) == len([n for n in snir.prepare(g, 600) if n.op == "if"])  # soft reset: I + Threshold + Scale


def test_write_replaces_only_what_sdmc_wrote(tmp_path):
    from sdmc.errors import OutputError

    g = _chain()
    theirs = tmp_path / "theirs.nir"
    nir.write(
        str(theirs),
        nir.NIRGraph(nodes={"i": nir.Input(np.array([2])), "o": nir.Output(np.array([2]))}, edges=[("i", "o")]),
    )
    with pytest.raises(OutputError, match="not written by sdmc.*--force"):
        snir.save_nir(g, theirs)
    assert not snir.is_sdmc_nir(theirs) and set(nir.read(str(theirs)).nodes) == {"i", "o"}
    (tmp_path / "dir.nir").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        snir.save_nir(g, tmp_path / "dir.nir")
    snir.save_nir(g, theirs, force=True)
    assert snir.is_sdmc_nir(theirs)
    snir.save_nir(g, theirs, dt=1e-3)  # sdmc's own: replaced without force
    assert snir.sdmc_meta(nir.read(str(theirs)))["dt"] == 1e-3
    with pytest.raises(OutputError, match="is the input"):
        snir.save_nir(g, theirs, force=True, protect=[theirs])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.nir", "theirs.nir"]  # no temporary or lock left
