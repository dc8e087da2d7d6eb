"""Loihi fixed-point model, quantisation and the netx writer, without Lava (Lava equality: test_lava.py)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from loihi_graphs import dyadic_chain

from sdmc import ir
from sdmc.backends.lava import compat, netx_chain, quantize
from sdmc.backends.lava import network as lnet
from sdmc.backends.lava.chip_resources import chain_resources
from sdmc.backends.lava.extract import FloatChain, FloatPopulation, FloatProjection
from sdmc.errors import SdmcError, UnsupportedOpError
from sdmc.sim import golden
from sdmc.sim import loihi as lm


# ------------------------------------------------------------------------------------------ neuron step
def test_cuba_if_step_hand_computed():
    p = lnet.Cuba(vth=9)  # IF: du = 4095, dv = 0; fires on v > 9*64, i.e. v >= 10 units
    u = v = np.zeros(3, np.int64)
    u, v, s = lm.cuba_step(u, v, np.array([4, 10, -3]), 0, p)
    assert u.tolist() == [256, 640, -192] and v.tolist() == [256, 0, -192] and s.tolist() == [False, True, False]
    u, v, s = lm.cuba_step(u, v, np.array([6, 9, 0]), np.array([0, 0, 1]), p)
    assert v.tolist() == [0, 576, -128] and s.tolist() == [True, False, False]  # u is replaced (du = 4095)


def test_cuba_decays_truncate_toward_zero():
    p = lnet.Cuba(vth=1000, du=1023, dv=2048)  # keep 3/4 of u, 1/2 of v per step
    u, v, _ = lm.cuba_step(np.array([-5, 5]), np.array([-3, 3]), np.zeros(2, np.int64), 0, p)
    # -5*3072/4096 = -3.75 -> -3 (not -4); v: -3*2048/4096 = -1.5 -> -1, plus the new u
    assert u.tolist() == [-3, 3] and v.tolist() == [-1 - 3, 1 + 3]


def test_cuba_current_wraps_and_voltage_saturates_like_lava():
    p = lnet.Cuba(vth=lnet.MAX_VTH)
    u, v, s = lm.cuba_step(np.zeros(2, np.int64), np.zeros(2, np.int64), np.array([150000, 50000]), 0, p)
    assert u.tolist() == [150000 * 64 - 2**24, 50000 * 64]  # the reference's -112144 units
    assert u[0] // 64 == -112144
    v = np.array([2**23 - 100, -(2**23) + 100])
    _, v2, s2 = lm.cuba_step(np.zeros(2, np.int64), v, np.array([100, -100]), 0, p)
    # +: clipped to 2^23 - 1, which is above the largest threshold (131071 << 6): it always fires, resets
    assert v2.tolist() == [0, -(2**23) + 1] and s2.tolist() == [True, False]


def test_cuba_current_wrap_boundaries_are_lavas():
    """Lava: u wraps when u > 2^23 (so exactly 2^23 stays) and when u <= -2^23 (so exactly -2^23 wraps)."""
    p, z = lnet.Cuba(vth=lnet.MAX_VTH), np.zeros(4, np.int64)
    a = np.array([2**17, 2**17 + 1, -(2**17), -(2**17) + 1])  # a_in << 6 = +-2^23 and one unit inside/outside
    u, _, _ = lm.cuba_step(z, z, a, 0, p)
    assert u.tolist() == [2**23, 2**23 + 64 - 2**24, -(2**23) + 2**24, -(2**23) + 64]


def test_signed_clamp_wraps_into_the_24_bit_range_as_integers():
    x = np.array([2**23 - 1, 2**23, -(2**23), -(2**23) - 1, 3 * 2**24 + 5], np.int64)
    y = lm.signed_clamp(x)
    assert y.dtype == np.int64 and y.tolist() == [2**23 - 1, -(2**23), -(2**23), 2**23 - 1, 5]


def test_bias_mantissa_is_int16_in_the_simulator():
    _, v, _ = lm.cuba_step(np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.int64), 40000, lnet.Cuba(vth=5))
    assert v[0] == -25536 * 64


def test_bad_neuron_parameters_are_rejected():
    with pytest.raises(SdmcError, match="12-bit"):
        lnet.Cuba(vth=1, du=4096)
    with pytest.raises(SdmcError, match="17 bit"):
        lnet.Cuba(vth=1 << 17)


# ------------------------------------------------------------------------------------------ chains
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), B=st.integers(1, 3), bias=st.booleans())
def test_fixed_point_chain_equals_float_golden_for_dyadic_weights(seed, B, bias):
    rng = np.random.default_rng(seed)
    g = dyadic_chain(rng, bias=bias)
    fchain = netx_chain.extract_chain(g)
    q, rep = quantize.quantize_chain(fchain, pow2=True)
    assert all(r.weight_err == 0 and r.bias_err == 0 for r in rep.layers)
    x = (rng.random((g.T, B) + fchain.input_shape) < 0.4).astype(np.float64)
    gold = golden.run(g, [x], all_values=True)
    L = len(q.layers)
    res = lm.run_chain(q, x, num_steps=g.T + L, reset_interval=g.T + L)
    got = lnet.aligned_spikes(res, g.T)
    for name, s in zip(("n1", "n2", "n3"), got):
        assert np.array_equal(gold[name].astype(bool), s), name
    assert gold["n1"].sum() > 0


def test_a_spike_chain_reads_any_non_zero_input_as_one_spike():
    """Spike input (input_bits 0): x != 0 is a spike, whatever its value (a graded chain would scale by it)."""
    rng = np.random.default_rng(4)
    g = dyadic_chain(rng)
    q, _ = quantize.quantize_chain(netx_chain.extract_chain(g), pow2=True)
    assert q.input_bits == 0
    x = (rng.random((g.T, 2) + q.input_shape) < 0.4).astype(np.float64)
    n = g.T + len(q.layers)
    a, b = lm.run_chain(q, x, num_steps=n), lm.run_chain(q, 3 * x, num_steps=n)
    assert all(np.array_equal(sa, sb) for sa, sb in zip(a["spikes"], b["spikes"])) and a["spikes"][0].any()


def test_without_reset_bias_leaks_into_the_pipeline_fill():
    rng = np.random.default_rng(3)
    g = dyadic_chain(rng)
    q, _ = quantize.quantize_chain(netx_chain.extract_chain(g), pow2=True)
    q = lnet.LoihiChain(
        q.input_shape, (lnet.LoihiLayer(**{**q.layers[0].__dict__, "bias": np.full(4, 30)}),) + q.layers[1:]
    )
    x = (rng.random((g.T, 1) + q.input_shape) < 0.4).astype(np.int64)
    with_reset = lm.run_chain(q, x, reset_interval=g.T + 3)
    no_reset = lm.run_chain(q, x)
    assert not np.array_equal(with_reset["v"][0], no_reset["v"][0])


def test_batchnorm_is_folded_into_the_synapse():
    rng = np.random.default_rng(1)
    g = ir.Graph(4)
    g.add(ir.Input(name="x", shape=(3, 5, 5), kind="spike", timing="per-step"))
    g.add_param("c.w", rng.normal(0, 0.5, (4, 3, 3, 3)))
    g.add_param("bn.weight", 1 + 0.3 * rng.normal(size=4))
    g.add_param("bn.bias", 0.3 * rng.normal(size=4))
    g.add_param("bn.running_mean", 0.2 * rng.normal(size=4))
    g.add_param("bn.running_var", 0.5 + rng.random(4))
    g.add(ir.Conv2d(name="c", inputs=("x",), weight="c.w", padding=(1, 1)))
    g.add(
        ir.BatchNorm(
            name="bn",
            inputs=("c",),
            weight="bn.weight",
            bias="bn.bias",
            running_mean="bn.running_mean",
            running_var="bn.running_var",
        )
    )
    g.add(ir.IF(name="n", inputs=("bn",), threshold=0.5))
    g.add(ir.Output(name="out", inputs=("n",)))
    x = (rng.random((4, 2, 3, 5, 5)) < 0.5).astype(np.float64)
    fchain = netx_chain.extract_chain(g)
    gold = golden.run(g, [x], all_values=True)
    # the folded float chain reproduces the BN graph's currents (spikes identical away from ties)
    assert np.array_equal(netx_chain.float_reference(fchain, x)[0], gold["n"])


def test_chain_export_folds_batchnorm_with_fold_bn_weights_and_its_eps():
    """The chain export folds BN with ``passes.rewrite.fold_bn_weights`` (one fold in the code base), and that fold
    is ``W gamma / sqrt(var + eps)``, ``(b - mean) gamma / sqrt(var + eps) + beta``: with eps = 0.25 (not the
    usual 1e-5) dropping ``+ eps`` changes the folded values and the spikes."""
    from sdmc.passes.rewrite import fold_bn_weights

    rng = np.random.default_rng(6)
    eps = 0.25
    w, b = rng.normal(0, 0.6, (4, 3, 3, 3)), rng.normal(0, 0.3, 4)
    gamma, beta = 1 + 0.3 * rng.normal(size=4), 0.3 * rng.normal(size=4)
    mean, var = 0.2 * rng.normal(size=4), 0.05 + 0.2 * rng.random(4)  # small var: eps dominates
    g = ir.Graph(4)
    g.add(ir.Input(name="x", shape=(3, 5, 5), kind="spike", timing="per-step"))
    for k, v in {"c.w": w, "c.b": b, "bn.g": gamma, "bn.b": beta, "bn.m": mean, "bn.v": var}.items():
        g.add_param(k, v)
    g.add(ir.Conv2d(name="c", inputs=("x",), weight="c.w", bias="c.b", padding=(1, 1)))
    g.add(
        ir.BatchNorm(
            name="bn", inputs=("c",), weight="bn.g", bias="bn.b", running_mean="bn.m", running_var="bn.v", eps=eps
        )
    )
    g.add(ir.IF(name="n", inputs=("bn",), threshold=0.5))
    g.add(ir.Output(name="out", inputs=("n",)))
    layer = netx_chain.extract_chain(ir.check(g)).layers[0]
    fw, fb = layer.projs[0].float_weight(), layer.bias
    want_w, want_b = fold_bn_weights(w, b, mean, var, gamma, beta, eps)
    assert np.array_equal(fw, want_w) and np.array_equal(fb, want_b)  # the one fold, not a copy
    k = gamma / np.sqrt(var + eps)
    np.testing.assert_allclose(fw, w * k[:, None, None, None], rtol=1e-12)
    np.testing.assert_allclose(fb, (b - mean) * k + beta, rtol=1e-12, atol=1e-15)
    assert not np.allclose(fw, w * (gamma / np.sqrt(var))[:, None, None, None], rtol=0.05)  # eps matters here
    x = (rng.random((4, 2, 3, 5, 5)) < 0.5).astype(np.float64)  # the folded chain fires as the BN graph does
    gold = golden.run(g, [x], all_values=True)["n"]
    assert np.array_equal(netx_chain.float_reference(netx_chain.extract_chain(g), x)[0], gold) and 0 < gold.mean() < 1


def test_graded_static_input_chain():
    rng = np.random.default_rng(2)
    g = ir.Graph(3)
    g.add(ir.Input(name="img", shape=(1, 4, 4)))
    g.add(ir.Repeat(name="rep", inputs=("img",)))
    g.add_param("c.w", rng.integers(-6, 7, (2, 1, 3, 3)) / 8.0)
    g.add(ir.Conv2d(name="c", inputs=("rep",), weight="c.w", padding=(1, 1)))
    g.add(ir.IF(name="n", inputs=("c",)))
    g.add(ir.Output(name="out", inputs=("n",)))
    fchain = netx_chain.extract_chain(g)
    assert fchain.graded_input
    q, rep = quantize.quantize_chain(fchain, pow2=True, input_scale=128)
    assert q.input_bits == 16 and rep.input_scale == 128
    img = np.clip(np.rint(rng.uniform(-1, 1, (2, 1, 4, 4)) * 128), -127, 127) / 128  # exactly representable
    xq = quantize.quantize_input(q, np.broadcast_to(img, (3,) + img.shape))
    res = lm.run_chain(q, xq, reset_interval=3 + 1)
    gold = golden.run(g, [img])["out"]
    assert np.array_equal(lnet.aligned_spikes(res, 3)[0], gold.astype(bool))


# ------------------------------------------------------------------------------------------ quantisation
def test_quantisation_error_is_reported_and_bounded():
    rng = np.random.default_rng(0)
    g = ir.Graph(8)
    g.add(ir.Input(name="x", shape=(4, 8, 8), kind="spike", timing="per-step"))
    g.add_param("c1.w", rng.normal(0, 0.35, (8, 4, 3, 3)))
    g.add_param("c1.b", rng.normal(0, 0.1, 8))
    g.add(ir.Conv2d(name="c1", inputs=("x",), weight="c1.w", bias="c1.b", padding=(1, 1)))
    g.add(ir.IF(name="n1", inputs=("c1",)))
    g.add_param("c2.w", rng.normal(0, 0.3, (8, 8, 3, 3)))
    g.add(ir.Conv2d(name="c2", inputs=("n1",), weight="c2.w", padding=(1, 1)))
    g.add(ir.IF(name="n2", inputs=("c2",), threshold=0.997))  # threshold guidance value
    g.add(ir.Output(name="out", inputs=("n2",)))
    fchain = netx_chain.extract_chain(g)
    q, rep = quantize.quantize_chain(fchain)
    for r, L in zip(rep.layers, fchain.layers):
        assert r.weight_err <= 0.5 / r.scale + 1e-12  # round-to-nearest on the shared scale
        assert abs(r.theta_int / r.scale - r.theta) <= 0.5 / r.scale + 1e-12
        assert np.abs(L.projs[0].float_weight()).max() * r.scale == pytest.approx(127, rel=1e-9)  # full 8-bit range
    x = (rng.random((8, 4, 4, 8, 8)) < 0.3).astype(np.float64)
    netx_chain.evaluate(fchain, q, rep, x)
    text = rep.format()
    assert "c1" in text and "mismatch" in text
    for r in rep.layers:
        assert 0.01 < r.rate_float < 0.9
        assert r.spike_mismatch < 0.05, rep.format()  # measured: ~0.5-2 % on this net
        assert abs(r.rate_fixed - r.rate_float) < 0.02
    # coarser weights (pow2 scale) lose precision: the error grows, but stays reported
    _, rep2 = quantize.quantize_chain(fchain, pow2=True)
    assert rep2.layers[0].scale <= rep.layers[0].scale


def _float_layer(name: str, w: np.ndarray, threshold: float) -> FloatPopulation:
    """A dense netx chain layer: one float projection into IF neurons."""
    return FloatPopulation(name, (w.shape[0],), threshold, projs=[FloatProjection(name, "input", "dense", w)])


def test_current_overflow_names_the_layer_or_rescales():
    fl = _float_layer("big_fc", np.full((2, 2000), 1.0), threshold=1.0)
    chain = FloatChain((2000,), (fl,))
    with pytest.raises(SdmcError, match=r"layer 1 \(big_fc\).*current"):
        quantize.quantize_chain(chain)
    q, rep = quantize.quantize_chain(chain, on_overflow="rescale")
    assert rep.layers[0].worst_current <= lnet.MAX_CURRENT
    assert q.layers[0].weight.max() < 127


def test_threshold_too_small_for_the_scale_is_an_error():
    fl = _float_layer("fc", np.array([[100.0, -50.0]]), threshold=0.001)
    with pytest.raises(SdmcError, match=r"layer 1 \(fc\): threshold"):
        quantize.quantize_chain(FloatChain((2,), (fl,)))


# ------------------------------------------------------------------------------------------ export
def test_netx_file_layout_and_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    g = dyadic_chain(rng)
    path = tmp_path / "net.h5"
    q, _ = netx_chain.export_netx(g, path, pow2=True)
    with h5py.File(path) as f:
        types = [f[f"layer/{k}/type"][0] for k in range(len(f["layer"]))]
        assert types == [b"input", b"conv", b"conv", b"flatten", b"dense"]
        assert f["layer/0/shape"][()].tolist() == [2, 6, 5]  # torch (C, H, W) order
        assert "neuron" not in f["layer/0"]
        c2 = f["layer/2"]
        assert c2["weight"].shape == (3, 4, 3, 2) and c2["stride"][()].tolist() == [2, 1]
        assert c2["shape"][()].tolist() == [3, 3, 4]
        n = f["layer/1/neuron"]
        assert (n["type"][0], int(n["iDecay"][()]), int(n["vDecay"][()])) == (b"CUBA", 4096, 0)
        assert int(n["vThMant"][()]) == q.layers[0].neuron.vth == 127  # theta 1.0 at scale 128, minus 1
        assert f["layer/4/weight"].dtype.kind == "i"
    back = netx_chain.read_netx(path)
    assert back.input_shape == q.input_shape and len(back.layers) == 3
    for a, b in zip(back.layers, q.layers):
        assert np.array_equal(a.weight, b.weight) and a.neuron == b.neuron and a.stride == b.stride


def test_export_rejects_what_netx_cannot_express(tmp_path):
    g = ir.Graph(2)
    g.add(ir.Input(name="x", shape=(2, 4, 4), kind="spike", timing="per-step"))
    g.add_param("w", np.ones((2, 2, 1, 1)))
    g.add(ir.Conv2d(name="c", inputs=("x",), weight="w"))
    g.add(ir.IF(name="n", inputs=("c",), v_reset=None))
    g.add(ir.Output(name="out", inputs=("n",)))
    with pytest.raises(UnsupportedOpError, match="node 'n' \\(if\\).*soft reset"):
        netx_chain.export_netx(g, tmp_path / "a.h5")
    g2 = ir.Graph(2)
    g2.add(ir.Input(name="x", shape=(2, 4, 4), kind="spike", timing="per-step"))
    g2.add_param("w", np.ones((2, 2, 1, 1)))
    g2.add(ir.Conv2d(name="c", inputs=("x",), weight="w"))
    g2.add(ir.IF(name="n", inputs=("c",)))
    g2.add(ir.Add(name="res", inputs=("n", "n")))
    g2.add(ir.Output(name="out", inputs=("res",)))
    with pytest.raises(UnsupportedOpError, match="node 'res' \\(add\\)"):
        netx_chain.export_netx(g2, tmp_path / "b.h5")
    assert not (tmp_path / "a.h5").exists() and not (tmp_path / "b.h5").exists()


def test_read_netx_names_a_bad_file(tmp_path):
    p = tmp_path / "junk.h5"
    p.write_bytes(b"not hdf5")
    with pytest.raises(SdmcError, match="junk.h5"):
        netx_chain.read_netx(p)


# ------------------------------------------------------------------------------------------ compat
def test_import_fixes_rewrite_exactly_the_expected_text():
    src = (
        "from dataclasses import dataclass, InitVar\n@dataclass\nclass A:\n"
        "    x: ByteEncoder = ByteEncoder()\n    y: ByteEncoder = ByteEncoder()\n"
    )
    out = compat._fix_var_model(src)
    assert out.count("field(default_factory=ByteEncoder)") == 2 and "InitVar, field\n" in out
    sl = "import x\nfrom . import object_detection as obd\nfrom . import y\n"
    out = compat._fix_slayer_init(sl)
    ns = {}
    exec(
        compile(
            out.replace("from . import object_detection as obd", "import no_such_mod_xyz as obd")
            .replace("import x\n", "")
            .replace("from . import y\n", ""),
            "s",
            "exec",
        ),
        ns,
    )
    assert ns["obd"] is None
    with pytest.raises(compat.LavaUnavailable, match="var_model"):
        compat._fix_var_model("class A: pass\n")
    with pytest.raises(compat.LavaUnavailable, match="slayer"):
        compat._fix_slayer_init("pass\n")


def test_fast_conv_matches_torch_layout_conv_after_netx_flip():
    """conv_numpy on netx's (Cout, kW, kH, Cin) flipped weights == torch cross-correlation on (C, H, W)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        groups = int(rng.integers(1, 3))
        C, O = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        st_, pd, dl = tuple(rng.integers(1, 3, 2)), tuple(rng.integers(0, 2, 2)), tuple(rng.integers(1, 3, 2))
        x = rng.integers(0, 2, (C, 7, 6))
        w = rng.integers(-9, 9, (O, C // groups, kh, kw))
        layer = lnet.LoihiLayer(
            kind="conv", weight=w, neuron=lnet.Cuba(vth=1), stride=st_, padding=pd, dilation=dl, groups=groups
        )
        want = lm.conv_synapse(x[None], layer)[0]
        lava_w = w[:, :, ::-1, ::-1].transpose(0, 3, 2, 1).astype(np.int32)  # what netx hands to Lava
        got = compat.conv_numpy(x.transpose(2, 1, 0), lava_w, (kw, kh), st_[::-1], pd[::-1], dl[::-1], groups)
        assert np.array_equal(got.transpose(2, 1, 0), want)


def _tsm_graph(p, hoisted=False):
    rng = np.random.default_rng(4)
    T = len(p)
    g = ir.Graph(T)
    g.add(ir.Input(name="img", shape=(1, 5, 5)))
    g.add_param("c.w", rng.integers(-6, 7, (3, 1, 3, 3)) / 8.0)
    g.add_param("c.p", np.asarray(p, np.float64))
    g.add_param("c.b", np.tile(rng.integers(-2, 3, 3) / 8.0, (T, 1)))
    src = "img"
    if not hoisted:
        g.add(ir.Repeat(name="rep", inputs=("img",)))
        src = "rep"
    g.add(ir.ScaledConv2d(name="c", inputs=(src,), weight="c.w", scale="c.p", bias="c.b", padding=(1, 1)))
    g.add(ir.IF(name="n", inputs=("c",)))
    g.add(ir.Output(name="out", inputs=("n",)))
    ir.check(g)
    return g


def test_tsm_conv_is_rejected_or_approximated_by_its_mean(tmp_path):
    g = _tsm_graph([0.5, 0.5, 0.5, 0.5])
    with pytest.raises(UnsupportedOpError, match="node 'c' \\(scaled_conv2d\\).*tsm='mean'"):
        netx_chain.export_netx(g, tmp_path / "x.h5")
    # equal per-step scales: the mean is exact, spikes equal the golden TSM graph
    q, rep = netx_chain.export_netx(g, tmp_path / "x.h5", tsm="mean", pow2=True, input_scale=128)
    assert rep.tsm_approx == {"c": 0.0}
    img = np.clip(np.rint(np.random.default_rng(0).uniform(-1, 1, (2, 1, 5, 5)) * 128), -127, 127) / 128
    xq = quantize.quantize_input(q, np.broadcast_to(img, (4,) + img.shape))
    got = lnet.aligned_spikes(lm.run_chain(q, xq, reset_interval=5), 4)[0]
    assert np.array_equal(got, golden.run(g, [img])["out"].astype(bool))
    # unequal scales: approximated, and the spread is reported
    _, rep2 = netx_chain.export_netx(_tsm_graph([0.4, 0.6, 0.5, 0.5], hoisted=True), tmp_path / "y.h5", tsm="mean")
    assert rep2.tsm_approx["c"] == pytest.approx(0.2)
    assert "TSM approximated" in rep2.format()


def test_cli_lava_export_writes_netx_and_prints_the_report(tmp_path, capsys):
    from sdmc import cli

    g = dyadic_chain(np.random.default_rng(8))
    gpath = ir.save(g, tmp_path / "chain.sdmc")
    out = tmp_path / "chain.h5"
    assert cli.main(["lava", "export", str(gpath), "-o", str(out), "--pow2", "--check-samples", "2"]) == 0
    text = capsys.readouterr().out
    assert "mismatch" in text and "0.0000" in text and f"wrote {out}" in text and "synapses" in text
    assert len(netx_chain.read_netx(out).layers) == 3
    bad = ir.Graph(2)
    bad.add(ir.Input(name="x", shape=(4,), kind="spike", timing="per-step"))
    bad.add(ir.Output(name="out", inputs=("x",)))
    assert cli.main(["lava", "export", str(ir.save(bad, tmp_path / "bad.sdmc")), "-o", str(tmp_path / "b.h5")]) == 2
    assert "no conv/linear + IF layer" in capsys.readouterr().err


def test_lava_start_method_fix_tolerates_an_existing_fork_context():
    src = "import platform\nif platform.system() != 'Windows':\n    mp.set_start_method('fork')\n"
    code = compile(compat._fix_lava_multiprocessing(src), "m", "exec")

    class FakeMP:
        def __init__(self, method):
            self.method, self.calls = method, []

        def get_start_method(self, allow_none=False):
            return self.method

        def set_start_method(self, m):
            self.calls.append(m)

    for method, calls in ((None, ["fork"]), ("fork", [])):
        mp = FakeMP(method)
        exec(code, {"mp": mp})
        assert mp.calls == calls
    with pytest.raises(RuntimeError, match="'spawn'"):
        exec(code, {"mp": FakeMP("spawn")})
    with pytest.raises(compat.LavaUnavailable):
        compat._fix_lava_multiprocessing("pass\n")


def test_resources_count_conv_connections_without_padding_taps():
    w = np.ones((2, 1, 3, 3), np.int64)
    conv = lnet.LoihiLayer(kind="conv", weight=w, neuron=lnet.Cuba(vth=1), padding=(1, 1), name="c")
    fc = lnet.LoihiLayer(kind="dense", weight=np.ones((3, 2 * 4 * 4), np.int64), neuron=lnet.Cuba(vth=1), name="fc")
    r = chain_resources(lnet.LoihiChain((1, 4, 4), (conv, fc)))
    # 4x4 image, 3x3 kernel, pad 1: interior 4 pixels x 9 taps, 8 edge x 6, 4 corner x 4 = 100 per out channel
    assert r[0] == {
        "layer": "c",
        "kind": "conv",
        "neurons": 32,
        "axons": 16,
        "weights": 18,
        "synapses": 200,
        "max_fan_in": 9,
    }
    assert r[1]["synapses"] == 96 and r[1]["max_fan_in"] == 32 and r[1]["neurons"] == 3


# ------------------------------------------------- corners the exhaustive mutation run found unchecked
def test_bias_exponent_shifts_left_and_right():
    """``bias_mant << bias_exp`` for ``bias_exp >= 0`` and ``>> -bias_exp`` below (Lava's effective bias)."""
    z = np.zeros(2, np.int64)
    for exp, want in [(2, [52, -52]), (0, [13, -13]), (-2, [3, -4])]:  # -13 >> 2 = -4 (arithmetic shift)
        _, v, _ = lm.cuba_step(z, z, z, np.array([13, -13]), lnet.Cuba(vth=lnet.MAX_VTH, bias_exp=exp))
        assert v.tolist() == want, exp


def test_conv2d_f64_defaults_are_a_plain_convolution():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(2, 3, 5, 6)), rng.normal(size=(4, 3, 3, 3))
    np.testing.assert_allclose(lm.conv2d_f64(x, w), F.conv2d(torch.tensor(x), torch.tensor(w)).numpy(), atol=1e-12)


def _small_chain(weight=None, du=lnet.DECAY_UNITY - 1):
    w = np.array([[2, -1], [1, 1]], np.int64) if weight is None else weight
    layer = lnet.LoihiLayer(kind="dense", weight=w, neuron=lnet.Cuba(vth=lnet.MAX_VTH, du=du), name="fc")
    return lnet.LoihiChain((2,), (layer,), input_bits=8)


def test_run_chain_checks_its_chain_and_its_input():
    with pytest.raises(SdmcError, match=r"Loihi layer 1 \(fc\): weights span \[-1, 300\]"):
        lm.run_chain(_small_chain(np.array([[300, -1], [1, 1]], np.int64)), np.zeros((1, 1, 2)))
    for bad in [np.zeros((1, 2)), np.zeros((1, 1, 3))]:  # a wrong rank, a wrong shape of the right rank
        with pytest.raises(SdmcError, match=r"run_chain: input must be \[N, B, 2\]"):
            lm.run_chain(_small_chain(), bad)


def test_run_chain_of_one_input_step_then_silence():
    """N = 1: the single input step, then zeros (not the input again) while the pipeline drains."""
    r = lm.run_chain(_small_chain(), np.array([[[3, 4]]]), num_steps=3)
    # a_in reaches the neuron one step after the synapse: step 2 has [2*3 - 4, 3 + 4] = [2, 7], step 3 nothing
    assert (r["u"][0][:, 0] // 64).tolist() == [[0, 0], [2, 7], [0, 0]]


def test_a_reset_interval_zeroes_the_current_too():
    """With a current that decays slowly (du = 0), the periodic reset clears u as well as v."""
    x = np.array([[[1, 0]]])  # one input step: a_in = [2, 1] lands at step 2
    kept = lm.run_chain(_small_chain(du=0), x, num_steps=6)
    reset = lm.run_chain(_small_chain(du=0), x, num_steps=6, reset_interval=3)  # resets at steps 2 and 5
    assert (kept["u"][0][1, 0] // 64).tolist() == [2, 1] and (kept["u"][0][4:] != 0).all()
    assert np.array_equal(reset["u"][0][:4], kept["u"][0][:4])  # the step-2 reset comes before a_in lands
    assert (reset["u"][0][4:] == 0).all() and (reset["v"][0][4:] == 0).all()
