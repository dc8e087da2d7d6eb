"""LoihiNet checker and numpy model (sdmc.backends.lava.network.check_net, sdmc.sim.loihi.run_net): hand-computed nets, chains, a process-level
reference, contract errors.  Lava equality is tests/test_lava_net.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from strategies import loihi_net_inputs, loihi_nets

from sdmc.backends.lava import network as lnet
from sdmc.errors import SdmcError
from sdmc.sim import loihi as lm

NOFIRE = lnet.Cuba(vth=lnet.MAX_VTH)  # integrate only: v is the running sum of the input current
U = 1 << lnet.ACT_SHIFT  # one weight unit in the 24-bit state


def one(value, shape=(1, 1, 1, 1)):
    return np.full(shape, value, np.int8)


# ------------------------------------------------------------------------------------------ hand-computed
def test_two_paths_of_unequal_depth_meet_aligned_by_a_delay():
    # x -> A (w 5, theta 5: A copies x) -> C (w 3), and x -> C directly (w 2) through a delay of 1
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
    xs = np.array([1, 0, 1, 1]).reshape(4, 1, 1, 1, 1)
    r = lm.run_net(net, {"x": xs})
    assert r["spikes"]["A"].shape == (6, 1, 1, 1, 1)  # N + max_depth steps
    assert r["spikes"]["A"][1:5].ravel().tolist() == [1, 0, 1, 1]  # sample k at step k + 2
    # C integrates 3*A[k] + 2*x[k] = 5*x[k] at step k + 3: running sums 5, 5, 10, 15
    assert (r["v"]["C"][2:6].ravel() // U).tolist() == [5, 5, 10, 15]
    assert r["v"]["C"][:2].ravel().tolist() == [0, 0]  # nothing reaches C before step 3
    al = lnet.aligned_net_spikes(r, net, 4)
    assert al["A"].ravel().tolist() == [1, 0, 1, 1] and al["C"].shape == (4, 1, 1, 1, 1)
    assert r["max_current"]["C"] == 5


def test_max_current_ignores_what_arrives_before_the_reset():
    # A fires on its bias from step 1 on; B (depth 3) gets A's step-1 spike at step 3, before its reset at step 4
    x = lnet.Source("x", (1,))
    A = lnet.Population("A", (1,), lnet.Cuba(vth=0), bias=np.array([1], np.int16), depth=1)
    B = lnet.Population("B", (1,), NOFIRE, depth=3)
    net = lnet.LoihiNet(
        (x,),
        (A, B),
        (
            lnet.Projection("x", "A", "dense", np.zeros((1, 1), np.int8)),
            lnet.Projection("A", "B", "dense", np.full((1, 1), 9, np.int8), delay=1),
        ),
        ("B",),
    )
    r = lm.run_net(net, {"x": np.zeros((1, 1, 1))}, num_steps=4)
    assert r["spikes"]["A"].ravel().tolist() == [True, True, True, True]  # v = 1 > 0 every step
    assert (r["v"]["B"].ravel() // U).tolist() == [0, 0, 9, 9]  # junk at step 3, reset at 4
    assert r["max_current"]["B"] == 9
    r = lm.run_net(net, {"x": np.zeros((1, 1, 1))}, num_steps=3)  # only junk: nothing live
    assert r["max_current"]["B"] == 0


def test_split_concat_equals_one_conv_over_the_concatenated_channels():
    rng = np.random.default_rng(1)
    a, b = lnet.Source("a", (2, 4, 4)), lnet.Source("b", (1, 4, 4))
    wt = rng.integers(-9, 10, (3, 3, 3, 3)).astype(np.int8)
    P = lnet.Population("P", (3, 4, 4), NOFIRE, depth=1)
    net = lnet.LoihiNet(
        (a, b),
        (P,),
        (
            lnet.Projection("a", "P", "conv", wt[:, :2].copy(), padding=(1, 1)),
            lnet.Projection("b", "P", "conv", wt[:, 2:].copy(), padding=(1, 1)),
        ),
        ("P",),
    )
    xa, xb = (rng.random((5, 2) + s) < 0.5 for s in ((2, 4, 4), (1, 4, 4)))
    r = lm.run_net(net, {"a": xa, "b": xb})
    cat = torch.tensor(np.concatenate([xa, xb], axis=2).reshape(10, 3, 4, 4), dtype=torch.float64)
    ref = F.conv2d(cat, torch.tensor(wt, dtype=torch.float64), padding=1).numpy().reshape(5, 2, 3, 4, 4)
    assert np.array_equal(r["v"]["P"][1:6] // U, np.cumsum(ref, axis=0).astype(np.int64))


def test_upsample_conv_hand_computed_and_against_torch():
    # one spike, x2 nearest, 3x3 all-ones pad 1: every output pixel's window covers the 2x2 copies -> 4
    x = lnet.Source("x", (1, 1, 1))
    P = lnet.Population("P", (1, 2, 2), NOFIRE, depth=1)
    net = lnet.LoihiNet(
        (x,), (P,), (lnet.Projection("x", "P", "conv", one(1, (1, 1, 3, 3)), padding=(1, 1), upsample=2),), ("P",)
    )
    r = lm.run_net(net, {"x": np.ones((2, 1, 1, 1, 1))})
    assert (r["v"]["P"][1:3, 0, 0] // U).tolist() == [[[4, 4], [4, 4]], [[8, 8], [8, 8]]]

    rng = np.random.default_rng(2)
    wt = rng.integers(-128, 128, (3, 2, 3, 3)).astype(np.int8)
    x = lnet.Source("x", (2, 3, 3))
    P = lnet.Population("P", (3, 6, 6), NOFIRE, depth=1)
    net = lnet.LoihiNet((x,), (P,), (lnet.Projection("x", "P", "conv", wt, padding=(1, 1), upsample=2),), ("P",))
    xs = rng.random((3, 2, 2, 3, 3)) < 0.5
    r = lm.run_net(net, {"x": xs})
    up = F.interpolate(torch.tensor(xs.reshape(6, 2, 3, 3), dtype=torch.float64), scale_factor=2, mode="nearest")
    ref = F.conv2d(up, torch.tensor(wt, dtype=torch.float64), padding=1).numpy().reshape(3, 2, 3, 6, 6)
    assert np.array_equal(r["v"]["P"][1:4] // U, np.cumsum(ref, axis=0).astype(np.int64))


def test_a_conv_current_past_2_23_wraps_like_lavas_conv_but_not_through_the_upsampling_synapse():
    """Lava's Conv wraps its output into the signed 24-bit range; the upsampling path (a Sparse synapse)
    does not. 32 channels x 3x3 x 127 x 255 = 9,326,880 >= 2^23."""
    w, s = np.full((1, 32, 3, 3), 127, np.int8), np.full((1, 32, 3, 3), 255, np.int64)
    full = 32 * 9 * 127 * 255
    conv = lm.projection_current(lnet.Projection("x", "P", "conv", w), s, (1, 1, 1))
    assert conv.ravel().tolist() == [full - (1 << 24)]
    up = lm.projection_current(lnet.Projection("x", "P", "conv", w, upsample=2), s, (1, 4, 4))
    assert up.ravel().tolist() == [full] * 16


def test_identity_carries_a_graded_current():
    x = lnet.Source("x", (2,), bits=8)
    P = lnet.Population("P", (2,), lnet.Cuba(vth=249), depth=1)  # fires at v >= 250
    net = lnet.LoihiNet((x,), (P,), (lnet.Projection("x", "P", "identity"),), ("P",))
    r = lm.run_net(net, {"x": np.tile([100, 30], (4, 1, 1))})
    assert r["spikes"]["P"][1:5, 0].T.astype(int).tolist() == [[0, 0, 1, 0], [0, 0, 0, 0]]
    assert (r["v"]["P"][1:5, 0].T // U).tolist() == [[100, 200, 0, 100], [30, 60, 90, 120]]
    with pytest.raises(SdmcError, match="does not fit 8 bits"):
        lm.run_net(net, {"x": np.full((1, 1, 2), 256)})


def test_per_channel_and_per_neuron_bias_and_the_reset_at_depth_plus_one():
    x = lnet.Source("x", (1, 1, 1))
    pc = lnet.Population("pc", (2, 1, 2), NOFIRE, bias=np.array([1, -2], np.int16), depth=3)
    pn = lnet.Population("pn", (2, 1, 2), NOFIRE, bias=np.array([[[1, 2]], [[3, -4]]], np.int16), depth=3)
    net = lnet.LoihiNet((x,), (pc, pn), (), ("pc", "pn"))
    r = lm.run_net(net, {"x": np.zeros((2, 1, 1, 1, 1))})  # 5 steps
    assert (r["v"]["pc"][:, 0, :, 0, 0] // U).tolist() == [[1, -2], [2, -4], [3, -6], [1, -2], [2, -4]]
    assert (r["v"]["pn"][2, 0] // U).tolist() == [[[3, 6]], [[9, -12]]]  # step 3: three steps of junk
    assert (r["v"]["pn"][3, 0] // U).tolist() == [[[1, 2]], [[3, -4]]]  # step 4: reset, then one step


def test_dense_reads_the_source_flattened_in_c_h_w_order():
    x = lnet.Source("x", (2, 2, 2))
    wt = np.zeros((3, 8), np.int8)
    wt[0, 1 * 4 + 0 * 2 + 1] = 7  # (c=1, h=0, w=1)
    wt[2, 0] = -3  # (c=0, h=0, w=0)
    P = lnet.Population("P", (3,), NOFIRE, depth=1)
    net = lnet.LoihiNet((x,), (P,), (lnet.Projection("x", "P", "dense", wt),), ("P",))
    xs = np.zeros((2, 1, 2, 2, 2))
    xs[0, 0, 1, 0, 1] = 1
    xs[1, 0, 0, 0, 0] = 1
    r = lm.run_net(net, {"x": xs})
    assert (r["v"]["P"][1:3, 0] // U).tolist() == [[7, 0, 0], [7, 0, -3]]


def test_host_bias_is_per_sample_and_adds_to_the_static_bias():
    rng = np.random.default_rng(3)
    x = lnet.Source("x", (2, 3, 3))
    P = lnet.Population("P", (2, 3, 3), lnet.Cuba(vth=20), bias=np.array([2, -1], np.int16), depth=1)
    wt = rng.integers(-20, 40, (2, 2, 3, 3)).astype(np.int8)

    def mk(bias):
        return lnet.LoihiNet(
            (x,),
            (lnet.Population("P", P.shape, P.neuron, bias=bias, depth=1),),
            (lnet.Projection("x", "P", "conv", wt, padding=(1, 1)),),
            ("P",),
        )

    xs = rng.random((4, 2, 2, 3, 3)) < 0.5
    host = np.array([[5, 0], [-3, 7]], np.int64)  # [B, C]
    r = lm.run_net(mk(P.bias), {"x": xs}, host_bias={"P": host})
    for b in range(2):
        rb = lm.run_net(mk((P.bias + host[b]).astype(np.int16)), {"x": xs[:, b : b + 1]})
        assert np.array_equal(r["v"]["P"][:, b], rb["v"]["P"][:, 0])
        assert np.array_equal(r["spikes"]["P"][:, b], rb["spikes"]["P"][:, 0])
    full = np.broadcast_to(host[:, :, None, None], (2, 2, 3, 3))
    assert np.array_equal(lm.run_net(mk(P.bias), {"x": xs}, host_bias={"P": full})["v"]["P"], r["v"]["P"])
    with pytest.raises(SdmcError, match=r"host_bias\['P'\]: shape \[3, 2\]"):
        lm.run_net(mk(P.bias), {"x": xs}, host_bias={"P": np.zeros((3, 2), int)})
    with pytest.raises(SdmcError, match="no population named 'Q'"):
        lm.run_net(mk(P.bias), {"x": xs}, host_bias={"Q": host})


# ------------------------------------------------------------------------------------------ chains
def _chain(rng, input_bits=0):
    L1 = lnet.LoihiLayer(
        "conv",
        rng.integers(-40, 60, (4, 2, 3, 3)).astype(np.int8),
        lnet.Cuba(vth=63),
        bias=rng.integers(-3, 4, 4).astype(np.int16),
        padding=(1, 1),
        name="c1",
    )
    L2 = lnet.LoihiLayer(
        "conv",
        rng.integers(-40, 60, (3, 4, 3, 2)).astype(np.int8),
        lnet.Cuba(vth=50, du=3000, dv=200),
        stride=(2, 1),
        padding=(1, 0),
        name="c2",
    )
    L3 = lnet.LoihiLayer(
        "dense",
        rng.integers(-30, 50, (5, 36)).astype(np.int8),
        lnet.Cuba(vth=40),
        bias=rng.integers(-3, 4, 5).astype(np.int16),
        name="fc",
    )
    return lnet.LoihiChain((2, 6, 5), (L1, L2, L3), input_bits=input_bits)


@pytest.mark.parametrize("bits", [0, 8])
def test_run_net_equals_run_chain_on_a_chain(bits):
    rng = np.random.default_rng(4 + bits)
    chain = _chain(rng, bits)
    x = rng.integers(0, 2 if bits == 0 else 40, (6, 2, 2, 6, 5))
    net = lnet.net_from_chain(chain)
    assert [p.depth for p in net.populations] == [1, 2, 3] and net.outputs == ("layer3",)
    rn = lm.run_net(net, {"input": x})
    rc = lm.run_chain(chain, x, reset_interval=6 + 3, reset_offset=1)
    for i, p in enumerate(net.populations):
        assert np.array_equal(rn["spikes"][p.name], rc["spikes"][i])
        assert np.array_equal(rn["v"][p.name], rc["v"][i])
    assert all(s.mean() > 0.05 for s in rc["spikes"])
    al = lnet.aligned_net_spikes(rn, net, 6)
    assert all(np.array_equal(al[f"layer{n}"], a) for n, a in enumerate(lnet.aligned_spikes(rc, 6), start=1))


# ------------------------------------------------------------------------------------------ process-level reference
def _process_reference(net, inputs, steps):
    """Lava's process semantics written out step by step: sources send, delay lines send the oldest of their
    ring, synapses send last step's buffer, populations receive the sum, reset at depth + 1, fire and send."""
    B = next(iter(inputs.values())).shape[1]
    out = {}
    ring = {i: [None] * p.delay for i, p in enumerate(net.projections)}
    buf = {i: 0 for i in range(len(net.projections))}
    pops = {p.name: p for p in net.populations}
    u = {p: np.zeros((B,) + tuple(pops[p].shape), np.int64) for p in pops}
    v = {p: np.zeros_like(u[p]) for p in pops}
    spikes = {p: [] for p in pops}
    for t in range(1, steps + 1):
        for s in net.sources:
            x = inputs[s.name]
            val = x[t - 1] if t - 1 < len(x) else np.zeros_like(x[0])
            out[s.name] = (val != 0).astype(np.int64) if s.bits == 0 else val.astype(np.int64)
        for p in net.populations:
            a_in = np.zeros_like(u[p.name])
            for i, pr in enumerate(net.projections):
                if pr.dst == p.name:
                    a_in = a_in + buf[i]
            if t == p.depth + 1:
                u[p.name][...] = 0
                v[p.name][...] = 0
            u[p.name], v[p.name], s = lm.cuba_step(
                u[p.name], v[p.name], a_in, lnet.net_bias(net, None, B)[p.name], p.neuron
            )
            out[p.name] = s.astype(np.int64)
            spikes[p.name].append(s)
        for i, pr in enumerate(net.projections):  # synapses compute what they send next step
            x = out[pr.src]
            if pr.delay:
                ring[i].append(x)
                x = ring[i].pop(0)
                x = np.zeros_like(out[pr.src]) if x is None else x
            buf[i] = lm.projection_current(pr, x, tuple(pops[pr.dst].shape))
    return {p: np.stack(s) for p, s in spikes.items()}


@settings(max_examples=25, deadline=None)
@given(loihi_nets())
def test_run_net_equals_a_step_by_step_process_reference(net):
    N = 4
    x = loihi_net_inputs(net, N=N, B=2, seed=5)
    steps = N + net.max_depth + 2
    r = lm.run_net(net, x, num_steps=steps)
    ref = _process_reference(net, x, steps)
    for p in net.populations:
        assert np.array_equal(r["spikes"][p.name], ref[p.name]), p.name
    # more steps only append; samples are independent
    short = lm.run_net(net, x)
    assert all(np.array_equal(short["spikes"][p], r["spikes"][p][: N + net.max_depth]) for p in short["spikes"])
    one = lm.run_net(net, {k: a[:, 1:] for k, a in x.items()}, num_steps=steps)
    assert all(np.array_equal(one["v"][p], r["v"][p][:, 1:]) for p in one["v"])


def test_the_strategy_makes_nets_that_fire():
    rates = []

    @settings(max_examples=15, deadline=None, derandomize=True)
    @given(loihi_nets())
    def collect(net):
        al = lnet.aligned_net_spikes(lm.run_net(net, loihi_net_inputs(net)), net, 4)
        rates.extend(float(s.mean()) for s in al.values())

    collect()
    assert np.mean([0.02 < r < 0.98 for r in rates]) > 0.6


# ------------------------------------------------------------------------------------------ contract errors
def _base(**kw):
    x = lnet.Source("x", (2, 4, 4), bits=kw.pop("bits", 0))
    A = lnet.Population(
        "A", kw.pop("A_shape", (3, 4, 4)), lnet.Cuba(vth=10), bias=kw.pop("bias", None), depth=kw.pop("A_depth", 1)
    )
    proj = dict(src="x", dst="A", kind="conv", weight=np.zeros((3, 2, 3, 3), np.int8), padding=(1, 1))
    proj.update(kw.pop("proj", {}))
    pops = kw.pop("pops", (A,))
    return lnet.LoihiNet((x,), pops, (lnet.Projection(**proj),) + kw.pop("more", ()), kw.pop("outputs", ("A",)))


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(pops=(lnet.Population("x", (1,), lnet.Cuba(vth=1)),), proj=dict(dst="x")), "'x': the name is used twice"),
        (dict(bits=25), "bits must be 0 .* 1..24, got 25"),
        (dict(A_shape=(3, 4)), "population 'A': shape must be"),
        (dict(A_depth=0), "depth must be an integer >= 1"),
        (dict(bias=np.full(3, 5000, np.int16)), "bias reaches 5000, outside the 13-bit"),
        (dict(bias=np.zeros(4, np.int16)), r"bias shape \[4\] is neither \[C\]"),
        (dict(bias=np.zeros(3)), "bias must be an integer numpy array"),
        (dict(proj=dict(src="y")), r"projection x?y? ?\(?.*no source or population named 'y'"),
        (dict(proj=dict(dst="Z")), "no population named 'Z'"),
        (dict(proj=dict(dst="x")), "the destination 'x' is a source"),
        (dict(proj=dict(kind="pool")), "unknown kind 'pool'"),
        (dict(proj=dict(weight=np.full((3, 2, 3, 3), 200, np.int16))), r"weights span \[200, 200\], outside the 8-bit"),
        (dict(proj=dict(weight=np.zeros((3, 2, 3, 3)))), "weight must be an integer numpy array, got float64"),
        (
            dict(proj=dict(weight=np.zeros((3, 5, 3, 3), np.int8))),
            r"conv weight \[3, 5, 3, 3\] with groups=1 does not fit",
        ),
        (
            dict(proj=dict(upsample=2)),
            r"delivers shape \[3, 8, 8\] \(after x2 upsampling\), but 'A' has shape \[3, 4, 4\]",
        ),
        (dict(proj=dict(padding=(0, 0))), r"delivers shape \[3, 2, 2\]"),
        (dict(proj=dict(padding=(-1, 0))), "padding must be a pair of integers >= 0"),
        (
            dict(A_shape=(5,), proj=dict(kind="dense", weight=np.zeros((5, 31), np.int8), padding=(0, 0))),
            r"dense weight \[5, 31\] needs 31 inputs, 'x' has shape \[2, 4, 4\] \(32\)",
        ),
        (
            dict(A_shape=(5,), proj=dict(kind="dense", weight=np.zeros((4, 32), np.int8))),
            r"has 4 outputs, 'A' has shape \[5\]",
        ),
        (
            dict(A_shape=(5,), proj=dict(kind="dense", weight=np.zeros((5, 32), np.int8), upsample=2)),
            "only supported on conv",
        ),
        (dict(proj=dict(kind="identity", weight=None)), r"delivers shape \[2, 4, 4\], but 'A' has shape \[3, 4, 4\]"),
        (dict(A_shape=(2, 4, 4), proj=dict(kind="identity", weight=np.ones((1,), np.int8))), "takes no weight array"),
        (dict(A_depth=3, proj=dict(delay=1)), r"depth\(A\) = 3, but depth\(x\) \+ 1 \+ delay = 0 \+ 1 \+ 1 = 2"),
        (dict(proj=dict(delay=-1)), "delay must be an integer >= 0"),
        (dict(outputs=("B",)), "output 'B': no population of that name"),
        (
            dict(
                pops=(
                    lnet.Population("B", (3, 4, 4), lnet.Cuba(vth=1), depth=2),
                    lnet.Population("A", (3, 4, 4), lnet.Cuba(vth=1)),
                ),
                more=(lnet.Projection("A", "B", "identity"),),
            ),
            "population 'A' does not come before 'B'; .* topological order",
        ),
    ],
)
def test_check_net_names_what_and_where(kw, msg):
    with pytest.raises(SdmcError, match=msg):
        lnet.check_net(_base(**kw))


def test_check_net_accepts_the_base_and_run_net_checks_inputs():
    net = lnet.check_net(_base())
    with pytest.raises(SdmcError, match="no input for source 'x'"):
        lm.run_net(net, {})
    with pytest.raises(SdmcError, match=r"input 'x' must be \[N, B, 2, 4, 4\], got \[3, 1, 2, 4\]"):
        lm.run_net(net, {"x": np.zeros((3, 1, 2, 4))})
    with pytest.raises(SdmcError, match=r"at least one step and one sample, got \[N, B\] = \[0, 1\]"):
        lm.run_net(net, {"x": np.zeros((0, 1, 2, 4, 4))})
    with pytest.raises(SdmcError, match=r"unknown sources \['y'\]"):
        lm.run_net(net, {"x": np.zeros((3, 1, 2, 4, 4)), "y": np.zeros(1)})
    with pytest.raises(SdmcError, match="needs 6 steps for N = 5"):
        lnet.aligned_net_spikes(lm.run_net(net, {"x": np.zeros((3, 1, 2, 4, 4))}), net, 5)


@pytest.mark.parametrize("graded", [False, True])
def test_exact_conv_float32_path_equals_float64_up_to_its_bound(graded):
    rng = np.random.default_rng(6)
    w = rng.choice([-128, 127], (6, 64, 3, 3)).astype(np.int8)  # sum |w| per output ~ 73k
    x = rng.integers(0, 256 if graded else 2, (3, 64, 9, 9))
    bound = int(np.abs(x).max()) * int(np.abs(w.astype(np.int64)).reshape(6, -1).sum(1).max())
    assert (bound < 2**24) != graded  # graded: past float32, the f64 path
    ref = np.rint(lm.conv2d_f64(x, w, (1, 1), (1, 1))).astype(np.int64)
    assert np.array_equal(lm.exact_conv(x, w, (1, 1), (1, 1), (1, 1), 1, bound), ref)
    for g, s in ((2, (2, 1)), (64, (1, 2))):  # groups, strides
        wg = w[:, : 64 // g] if g < 64 else np.repeat(w[:1, :1], 64, axis=0)
        ref = np.rint(lm.conv2d_f64(x, wg, s, (1, 0), (1, 2), g)).astype(np.int64)
        assert np.array_equal(lm.exact_conv(x, wg, s, (1, 0), (1, 2), g, bound), ref)


def test_simulator_imports_only_the_network_ir_and_the_backend_loads_lazily():
    """``sdmc.sim.loihi`` imports the data model (``backends.lava.network``) and nothing else of the backend, whose
    package loads its modules on first use (so no import cycle runs through it); every public name resolves to
    what its module defines (``resources`` / ``segments`` are functions, not modules)."""
    import ast
    import inspect
    import types

    import sdmc.backends.lava as L

    def imported(mod) -> set[str]:
        tree = ast.parse(inspect.getsource(mod))
        return {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        }

    assert {m for m in imported(lm) if m.startswith("sdmc.backends")} == {"sdmc.backends.lava.network"}
    assert not any(m.startswith(".") or m.startswith("sdmc") for m in imported(L))  # nothing eager
    for name in L.__all__:
        obj = getattr(L, name)
        assert not isinstance(obj, types.ModuleType) and obj.__module__.startswith("sdmc.backends.lava."), name


# ------------------------------------------------------------------------------------------ fast paths
def test_exact_conv_uses_float32_only_below_2_to_the_24(monkeypatch):
    """Below 2^24 float32 holds every partial sum exactly (torch's conv); from 2^24 on, the float64 path."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (2, 3, 5, 5))
    w = rng.integers(-100, 100, (4, 3, 3, 3))
    f64 = []
    real = lm.conv2d_f64
    monkeypatch.setattr(lm, "conv2d_f64", lambda *a, **k: f64.append(1) or real(*a, **k))
    args = (x, w, (1, 1), (1, 1), (1, 1), 1)
    small, large = lm.exact_conv(*args, (1 << 24) - 1), lm.exact_conv(*args, 1 << 24)
    assert f64 == [1] and small.dtype == large.dtype == np.int64 and np.array_equal(small, large)


def test_steps_before_the_first_input_are_skipped_not_simulated(monkeypatch):
    """With zero bias nothing moves until the first non-zero input current: run_net starts a population's updates
    at that step, or at its reset step (depth + 1) if that comes first; the result is the full simulation's."""
    calls = []
    real = lm.cuba_step
    monkeypatch.setattr(lm, "cuba_step", lambda *a: calls.append(1) or real(*a))
    x = lnet.Source("x", (1, 1, 1))
    A = lnet.Population("A", (1, 1, 1), NOFIRE, depth=1)
    net = lnet.LoihiNet((x,), (A,), (lnet.Projection("x", "A", "conv", one(3)),), ("A",))
    r = lm.run_net(net, {"x": np.array([0, 0, 1, 0, 1]).reshape(5, 1, 1, 1, 1)})
    # x[k] reaches A at step k + 2; the reset (step 2) comes first: steps 2..6 are simulated
    assert (r["v"]["A"].ravel() // U).tolist() == [0, 0, 0, 3, 3, 6] and len(calls) == 5
    calls.clear()
    lm.run_net(net, {"x": np.zeros((1, 1, 1, 1, 1))}, num_steps=1)  # the run ends before A's reset: nothing
    assert calls == []
    # B (depth 3, zero bias) gets the bias-driven A's first spike at step 3, before its reset at step 4:
    # A runs steps 1..4 (it has a bias: nothing skipped), B steps 3..4
    P = lnet.Population("A", (1,), lnet.Cuba(vth=0), bias=np.array([1], np.int16), depth=1)
    B = lnet.Population("B", (1,), NOFIRE, depth=3)
    net = lnet.LoihiNet(
        (lnet.Source("x", (1,)),),
        (P, B),
        (
            lnet.Projection("x", "A", "dense", np.zeros((1, 1), np.int8)),
            lnet.Projection("A", "B", "dense", np.full((1, 1), 9, np.int8), delay=1),
        ),
        ("B",),
    )
    calls.clear()
    r = lm.run_net(net, {"x": np.zeros((1, 1, 1))}, num_steps=4)
    assert (r["v"]["B"].ravel() // U).tolist() == [0, 0, 9, 9] and len(calls) == 4 + 2


# ------------------------------------------------- corners the exhaustive mutation run found unchecked
def _one_dense_net(weight):
    x = lnet.Source("x", (2,), bits=8)
    P = lnet.Population("P", (2,), NOFIRE, depth=1)
    return lnet.LoihiNet((x,), (P,), (lnet.Projection("x", "P", "dense", weight),), ("P",))


def test_run_net_checks_its_net_and_its_step_count():
    with pytest.raises(SdmcError, match=r"outside the 8-bit range"):
        lm.run_net(_one_dense_net(np.array([[300, 0], [0, 1]], np.int16)), {"x": np.zeros((1, 1, 2), int)})
    net = _one_dense_net(np.eye(2, dtype=np.int8))
    with pytest.raises(SdmcError, match=r"run_net: num_steps must be >= 1, got 0"):
        lm.run_net(net, {"x": np.zeros((1, 1, 2), int)}, num_steps=0)
    assert lm.run_net(net, {"x": np.ones((1, 1, 2), int)}, num_steps=1)["v"]["P"].tolist() == [[[0, 0]]]


def test_projection_current_of_no_rows_is_empty():
    proj = lnet.Projection("x", "P", "conv", np.ones((1, 1, 3, 3), np.int8), padding=(1, 1))
    out = lm.projection_current(proj, np.zeros((0, 1, 4, 4), np.int64), (1, 4, 4))
    assert out.shape == (0, 1, 4, 4) and out.dtype == np.int64


def test_a_conv_whose_sums_pass_2_24_is_computed_exactly():
    """Graded inputs large enough that float32 partial sums would round (|sum| > 2^24): the exactness bound
    sends them to the float64 path, and the result equals the integer convolution, wrapped to 24 bit."""
    rng = np.random.default_rng(0)
    w = np.full((1, 4, 3, 3), 127, np.int8)
    x = (2 * rng.integers(2**15, 2**16, size=(2, 4, 5, 5)) + 1).astype(np.int64)  # odd values near 2^17
    proj = lnet.Projection("x", "P", "conv", w, padding=(1, 1))
    out = lm.projection_current(proj, x, (1, 5, 5))
    exact = np.zeros((2, 1, 5, 5), np.int64)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for i in range(5):
        for j in range(5):
            exact[:, 0, i, j] = (xp[:, :, i : i + 3, j : j + 3] * 127).sum(axis=(1, 2, 3))
    assert np.abs(exact).max() > 2**24  # the case float32 cannot hold
    np.testing.assert_array_equal(out, lm.signed_clamp(exact))
