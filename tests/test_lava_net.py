"""LoihiNet in Lava (sdmc.backends.lava.lava_processes) against the numpy model (sdmc.sim.loihi.run_net): spikes and
voltages bit-identical.  Needs lava-nc 0.10 / lava-dl 0.6 for the Lava runs (skipped where absent)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from scipy import sparse
from strategies import loihi_net_inputs, loihi_nets

from sdmc.backends.lava import compat
from sdmc.backends.lava import lava_processes as ln
from sdmc.backends.lava import network as lnet
from sdmc.sim import loihi as lm

NOFIRE = lnet.Cuba(vth=lnet.MAX_VTH)


@pytest.fixture(scope="module")
def lava():
    compat.install_import_fixes()
    pytest.importorskip("lava.lib.dl.netx")
    return ln


def assert_lava_equals_model(net, x, res, host_bias=None):
    """Every probed population: sample 0 identical at every Lava step; all samples identical from the reset
    on (earlier steps of later samples carry the previous sample's tail); aligned spikes identical."""
    m = lm.run_net(net, x, host_bias=host_bias)
    N = next(iter(x.values())).shape[0]
    al = lnet.aligned_net_spikes(m, net, N)
    for name, raw in res.raw_spikes.items():
        d = net.depth(name)
        assert np.array_equal(raw[:, 0], m["spikes"][name][:, 0]), name
        assert np.array_equal(raw[d:], m["spikes"][name][d:]), name
        assert np.array_equal(res.spikes[name], al[name]), name
        if res.raw_v is not None:
            assert np.array_equal(res.raw_v[name][:, 0], m["v"][name][:, 0]), name
            assert np.array_equal(res.raw_v[name][d:], m["v"][name][d:]), name
    return m


# ------------------------------------------------------------------------------------------ no Lava needed
def _lava_synapse(piece, e, nwb, s):
    """What Lava's Sparse/Dense BitAcc model does with one piece: clip, truncate, dot, shift."""
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

    wgt = piece.toarray() if sparse.issparse(piece) else np.asarray(piece)
    mode = determine_sign_mode(wgt)
    wgt = truncate_weights(clip_weights(wgt, mode, num_bits=8), mode, nwb)
    acc = wgt.astype(np.int64) @ s
    return acc << e if e > 0 else acc >> -e


@pytest.mark.parametrize(
    "lo, hi, n_pieces",
    [
        (-1024, 1023, 3),
        (-512, 511, 2),
        (-256, 255, 1),
        (0, 700, 3),
        (-700, 0, 3),
        (-256, 0, 2),
        (-128, 127, 1),
        (-3, 3, 1),
    ],
)
def test_synapse_pieces_sum_exactly_through_lavas_clip_and_lsb_drop(lava, lo, hi, n_pieces):
    rng = np.random.default_rng(abs(lo * 7 + hi))
    m = rng.integers(lo, hi + 1, (9, 13))
    m[0, :2] = lo, hi  # the extremes are present
    m[1, :2] = lo | 1 if lo else 0, hi | 1 if hi > 0 else hi  # and odd entries (the LSB Lava drops)
    m = np.clip(m, lo, hi)
    s = rng.integers(0, 50, 13)
    for mat in (m, sparse.csr_matrix(m)):
        pieces = ln.synapse_pieces(mat)
        assert len(pieces) == n_pieces
        assert sum(_lava_synapse(p, e, nwb, s) for p, e, nwb in pieces).tolist() == (m @ s).tolist()
    if lo < 0 < hi or n_pieces > 1:  # a single synapse with Lava's defaults is wrong on these
        assert _lava_synapse(m, 0, 8, s).tolist() != (m @ s).tolist()


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([1, 2, 3]), st.sampled_from([1, 3]), st.sampled_from([1, 2]))
def test_projection_matrix_equals_the_model_synapse(seed, up, k, stride):
    rng = np.random.default_rng(seed)
    C, H = int(rng.integers(1, 4)), int(rng.integers(2, 5))
    groups = 1 if C == 1 or rng.random() < 0.5 else C
    O = groups * int(rng.integers(1, 3))
    pr = lnet.Projection(
        "a",
        "b",
        "conv",
        rng.integers(-128, 128, (O, C // groups, k, k)).astype(np.int8),
        stride=(stride, stride),
        padding=(k // 2, k // 2),
        groups=groups,
        upsample=up,
    )
    out = lnet.projection_out_shape(pr, (C, H, H))
    s = rng.integers(0, 2, (3, C, H, H))
    m = ln.projection_matrix(pr, (C, H, H), out)
    assert np.array_equal((m @ s.reshape(3, -1).T).T.reshape((3,) + out), lm.projection_current(pr, s, out))
    # Lava's (W, H, C) order: permuting rows and columns commutes with the transposes at the boundary
    ml = m[ln.lava_order(out)][:, ln.lava_order((C, H, H))]
    sl = ln.to_lava(s, lead=1).reshape(3, -1)
    assert np.array_equal(
        ln.from_lava((ml @ sl.T).T.reshape((3,) + ln.lava_shape(out)), lead=1), lm.projection_current(pr, s, out)
    )


def test_lava_conv_weight_layout():
    w = np.arange(2 * 3 * 2 * 4).reshape(2, 3, 2, 4)
    lw = ln.lava_conv_weight(w)
    assert lw.shape == (2, 4, 2, 3) and lw[1, 0, 0, 2] == w[1, 2, 1, 3]  # flipped in x and y, (O, kW, kH, C)


# ------------------------------------------------------------------------------------------ Lava runs
def test_two_paths_with_a_delay_line_hand_computed(lava):
    def one(v):
        return np.full((1, 1, 1, 1), v, np.int8)

    x = lnet.Source("x", (1, 1, 1))
    A = lnet.Population("A", (1, 1, 1), lnet.Cuba(vth=4), depth=1)
    C = lnet.Population("C", (1, 1, 1), NOFIRE, depth=2)
    net = lnet.LoihiNet(
        (x,),
        (A, C),
        (
            lnet.Projection("x", "A", "conv", one(5)),
            lnet.Projection("A", "C", "conv", one(3)),
            lnet.Projection("x", "C", "conv", one(2), delay=1),
        ),
        ("C",),
    )
    xs = np.array([[1, 0], [0, 1], [1, 1], [1, 0]]).reshape(4, 2, 1, 1, 1)
    res = lava.run_lava_net(net, {"x": xs}, probe=("A", "C"), read_v=True)
    assert (res.raw_v["C"][2:6, :, 0, 0, 0] // 64).T.tolist() == [[5, 5, 10, 15], [0, 5, 10, 10]]
    assert res.spikes["A"][:, :, 0, 0, 0].T.astype(int).tolist() == [[1, 0, 1, 1], [0, 1, 1, 0]]
    assert res.n_processes == 1 + 2 + 3 + 1 + 2 * 2  # ring, 2 LIF, 3 conv, 1 delay line, extractors + wires
    assert set(res.times) == {"build", "first_run", "run", "read", "stop"}
    assert_lava_equals_model(net, {"x": xs}, res)


def test_unet_parts_graded_upsample_concat_dense_identity_bias(lava):
    """Graded image -> conv (+ per-channel bias, per-sample host bias) -> IF; x2 upsample conv with weights
    whose summed taps leave 8 bits (split Sparse pieces); split-weight concat of two paths of unequal depth;
    identity from the graded source to a relay population; flatten -> dense."""
    rng = np.random.default_rng(11)
    img = lnet.Source("img", (2, 4, 4), bits=8)
    h = lnet.Population("h", (3, 4, 4), lnet.Cuba(vth=2999), bias=rng.integers(-20, 20, 3).astype(np.int16), depth=1)
    d = lnet.Population(
        "d",
        (3, 2, 2),
        lnet.Cuba(vth=99, du=3500, dv=300),
        bias=rng.integers(-5, 6, (3, 2, 2)).astype(np.int16),
        depth=2,
    )
    up = lnet.Population("up", (2, 4, 4), lnet.Cuba(vth=60), depth=4)
    rel = lnet.Population("rel", (2, 4, 4), lnet.Cuba(vth=299), depth=1)
    fc = lnet.Population("fc", (5,), lnet.Cuba(vth=30), depth=5)
    w_up = np.full((2, 3, 3, 3), 101, np.int8)
    w_up[1] = -91
    projs = (
        lnet.Projection("img", "h", "conv", rng.integers(-30, 34, (3, 2, 3, 3)).astype(np.int8), padding=(1, 1)),
        lnet.Projection(
            "h", "d", "conv", rng.integers(-40, 50, (3, 3, 3, 3)).astype(np.int8), stride=(2, 2), padding=(1, 1)
        ),
        lnet.Projection("d", "up", "conv", w_up, padding=(1, 1), upsample=2, delay=1),  # |M| up to 400
        lnet.Projection("h", "up", "conv", rng.integers(-30, 50, (2, 3, 1, 1)).astype(np.int8), delay=2),
        lnet.Projection("img", "rel", "identity"),
        lnet.Projection("up", "fc", "dense", rng.integers(-20, 40, (5, 32)).astype(np.int8)),
    )
    net = lnet.check_net(lnet.LoihiNet((img,), (h, d, up, rel, fc), projs, ("fc",)))
    assert len(ln.synapse_pieces(ln.projection_matrix(projs[2], (3, 2, 2), (2, 4, 4)))) > 1
    x = {"img": rng.integers(0, 256, (5, 2, 2, 4, 4))}
    host = {"h": np.array([[40, 0, -40], [-40, 40, 0]])}
    res = lava.run_lava_net(net, x, host_bias=host, probe=("h", "d", "up", "rel", "fc"), read_v=True)
    m = assert_lava_equals_model(net, x, res, host_bias=host)
    al = lnet.aligned_net_spikes(m, net, 5)
    assert all(0.03 < al[p].mean() < 0.97 for p in ("h", "d", "up", "rel", "fc")), {p: al[p].mean() for p in al}
    assert not np.array_equal(al["h"][:, 0], al["h"][:, 1])  # the host bias differs per sample


@settings(max_examples=4, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate))  # no shrinking:
@given(loihi_nets(max_pops=4), st.integers(0, 1000), st.sampled_from(["sparse", "subpixel"]))  # Lava is slow
def test_property_loihi_model_equals_lava_spikes_bit_identical(lava, net, seed, upsample):
    x = loihi_net_inputs(net, N=3, B=2, seed=seed)
    res = lava.run_lava_net(net, x, probe=tuple(p.name for p in net.populations), upsample=upsample)
    assert_lava_equals_model(net, x, res)


def test_disconnected_parts_and_a_bias_only_population_all_run(lava):
    a, b = lnet.Source("a", (2,)), lnet.Source("b", (1, 2, 2), bits=4)
    pa = lnet.Population("pa", (2,), lnet.Cuba(vth=0), depth=1)
    pb = lnet.Population("pb", (1, 2, 2), lnet.Cuba(vth=20), depth=1)
    pc = lnet.Population("pc", (2, 1, 1), lnet.Cuba(vth=9), bias=np.array([3, 4], np.int16), depth=2)
    net = lnet.LoihiNet(
        (a, b),
        (pa, pb, pc),
        (lnet.Projection("a", "pa", "identity"), lnet.Projection("b", "pb", "identity")),
        ("pa", "pb", "pc"),
    )
    x = {"a": np.array([[[1, 0]], [[1, 1]], [[0, 1]]]), "b": np.full((3, 1, 1, 2, 2), 9)}
    res = lava.run_lava_net(net, x, probe=("pa", "pb", "pc"))
    m = assert_lava_equals_model(net, x, res)
    # bias only, reset at step 3: v = 3, 6, 9 and 4, 8, 12; fires on v > 9
    assert res.spikes["pc"][:, 0, :, 0, 0].astype(int).tolist() == [[0, 0], [0, 0], [0, 1]]
    assert m["spikes"]["pa"][1:4, 0].astype(int).tolist() == [[1, 0], [1, 1], [0, 1]]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([2, 3]), st.sampled_from([1, 2, 3, 4]), st.sampled_from([1, 2]))
def test_subpixel_weight_is_upsample_then_conv(seed, u, k, dil):
    rng = np.random.default_rng(seed)
    C, O, H, W = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
    pad = (dil * (k - 1)) // 2
    pr = lnet.Projection(
        "a",
        "b",
        "conv",
        rng.integers(-128, 128, (O, C, k, k)).astype(np.int8),
        padding=(pad, pad),
        dilation=(dil, dil),
        upsample=u,
    )
    out = lnet.projection_out_shape(pr, (C, H, W))
    sub = ln.subpixel_weight(pr, (C, H, W), out)
    if out[1:] != (H * u, W * u):  # even kernels: the output is not u times the input
        assert sub is None
        return
    if sub is None:  # asymmetric effective padding: Sparse fallback
        return
    w_eff, (ph, pw) = sub
    s = rng.integers(0, 2, (2, C, H, W))
    y = np.rint(lm.conv2d_f64(s, w_eff, padding=(ph, pw))).astype(np.int64)  # [2, u*u*O, H, W]
    shuffled = y.reshape(2, u, u, O, H, W).transpose(0, 3, 4, 1, 5, 2).reshape(2, O, H * u, W * u)
    assert np.array_equal(shuffled, lm.projection_current(pr, s, out))


def test_subpixel_upsample_in_lava_equals_the_model(lava):
    rng = np.random.default_rng(12)
    x = lnet.Source("x", (3, 3, 2))
    d = lnet.Population("d", (2, 3, 2), lnet.Cuba(vth=40), depth=1)
    up = lnet.Population("up", (3, 6, 4), lnet.Cuba(vth=150), depth=2)
    up3 = lnet.Population("up3", (2, 9, 6), lnet.Cuba(vth=60), depth=2)
    net = lnet.LoihiNet(
        (x,),
        (d, up, up3),
        (
            lnet.Projection("x", "d", "conv", rng.integers(-20, 60, (2, 3, 3, 3)).astype(np.int8), padding=(1, 1)),
            lnet.Projection(
                "d", "up", "conv", rng.integers(-60, 128, (3, 2, 3, 3)).astype(np.int8), padding=(1, 1), upsample=2
            ),
            lnet.Projection(
                "d", "up3", "conv", rng.integers(-60, 128, (2, 2, 3, 3)).astype(np.int8), padding=(1, 1), upsample=3
            ),
        ),
        ("up", "up3"),
    )
    assert all(ln.subpixel_weight(p, (2, 3, 2), net.node(p.dst).shape) is not None for p in net.projections[1:])
    xs = {"x": rng.integers(0, 2, (4, 2, 3, 3, 2))}
    res = lava.run_lava_net(net, xs, probe=("d", "up", "up3"), read_v=True, upsample="subpixel")
    assert res.n_processes == 1 + 3 + 3 + 3 + 3  # one Conv per projection, no Sparse pieces
    m = assert_lava_equals_model(net, xs, res)
    assert 0.05 < m["spikes"]["up"].mean() < 0.95 and 0.05 < m["spikes"]["up3"].mean() < 0.95
