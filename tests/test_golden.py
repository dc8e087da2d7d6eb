"""The golden numpy interpreter: each kernel against torch / spikingjelly in float64, hand-computed neuron
traces, and whole random graphs (batch independence, spikes binary, input validation)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spikingjelly.activation_based import functional, neuron, surrogate
from strategies import random_inputs, spiking_graphs

from sdmc import ir
from sdmc.errors import IRError
from sdmc.models import MembraneOutputLayer, TSMConv2d
from sdmc.sim import golden

FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def one_op_graph(T, in_type: ir.ValueType, node: ir.Node, params=None, extra_inputs=()) -> ir.Graph:
    g = ir.Graph(T, params=params or {})
    g.add(ir.Input(name="x", shape=in_type.shape, dtype=in_type.dtype, kind=in_type.kind, timing=in_type.timing))
    for n in extra_inputs:
        g.add(n)
    g.add(node)
    g.add(ir.Output(name="out", inputs=(node.name,)))
    return ir.check(g)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.sampled_from([1, 2, 3]),
    st.integers(1, 2),
    st.integers(0, 2),
    st.integers(1, 2),
    st.sampled_from([1, 2]),
    st.integers(3, 7),
    st.integers(0, 10**6),
)
def test_conv2d_matches_torch(N, cg, k, stride, pad, dil, groups, size, seed):
    rng = np.random.default_rng(seed)
    C, O = cg * groups, groups * rng.integers(1, 3)
    if (size + 2 * pad - dil * (k - 1) - 1) < 0:
        return
    x = rng.normal(size=(N, C, size, size + 1))
    w = rng.normal(size=(O, cg, k, k))
    b = rng.normal(size=O)
    ref = F.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), stride, pad, dil, groups).numpy()
    y = golden.conv2d(x, w, b, (stride, stride), (pad, pad), (dil, dil), groups)
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-12)


def test_if_neuron_hand_computed():
    x = np.array([0.6, 0.6, 0.6, 0.6, 2.5])[:, None]
    hard = golden.neuron(x, ir.IF(name="n", threshold=1.0, v_reset=0.0))
    soft = golden.neuron(x, ir.IF(name="n", threshold=1.0, v_reset=None))
    # hard: v = .6, 1.2->0, .6, 1.2->0, 2.5->0        soft: .6, 1.2->.2, .8, 1.4->.4, 2.9->1.9
    assert hard[:, 0].tolist() == [0, 1, 0, 1, 1]
    assert soft[:, 0].tolist() == [0, 1, 0, 1, 1]
    guided = golden.neuron(np.array([0.4985, 0.4985])[:, None], ir.IF(name="n", threshold=0.997))
    assert guided[:, 0].tolist() == [0, 1]  # threshold guidance: 0.997 fires where 1.0 would not
    lif = golden.neuron(np.array([1.0, 1.0, 1.0])[:, None], ir.LIF(name="n", tau=2.0, threshold=0.9))
    # v = 0.5, 0.75, 0.875 -> never reaches 0.9
    assert lif[:, 0].tolist() == [0, 0, 0]
    lif = golden.neuron(np.array([1.0, 1.0, 1.0])[:, None], ir.LIF(name="n", tau=2.0, threshold=0.7))
    assert lif[:, 0].tolist() == [0, 1, 0]  # 0.5, 0.75 -> fire, reset 0, 0.5


def test_plif_and_signed_if_hand_computed():
    x = np.array([2.0, 1.0, 1.5, 3.0])[:, None]
    w = np.float64(0.0)  # sigmoid(0) = 1/2
    plif = golden.neuron(x, ir.PLIF(name="n", w="w", threshold=1.0, v_reset=0.0), w)
    # decay_input: h = v + (x - v)/2: 1 -> fire, 0.5, 0.5 + (1.5 - 0.5)/2 = 1 -> fire, 1.5 -> fire
    assert plif[:, 0].tolist() == [1, 0, 1, 1]
    plif = golden.neuron(x[[1, 1, 1]], ir.PLIF(name="n", w="w", threshold=1.2, v_reset=0.0, decay_input=False), w)
    # h = v - v/2 + x: 1, 1.5 -> fire, 1
    assert plif[:, 0].tolist() == [0, 1, 0]
    signed = ir.IF(name="n", threshold=1.0, v_reset=None, signed=True)
    # h = -1.5 (no spike: nothing fired yet), 1.5 -> +1 (v 0.5), -1.5 -> -1 (it had fired; v -0.5), -1.5: count
    # back at 0, so no second negative spike
    got = golden.neuron(np.array([-1.5, 3.0, -2.0, -1.0])[:, None], signed)
    assert got[:, 0].tolist() == [0, 1, -1, 0]


def test_linear_and_scale_by_hand():
    x = np.array([[[1.0, 2.0]], [[0.5, -1.0]]])  # [T=2, B=1, 2]
    w, b = np.array([[1.0, 0.0], [2.0, 3.0], [0.0, -1.0]]), np.array([0.25, -0.5, 1.0])
    for bias, want in ((None, [[1.0, 8.0, -2.0], [0.5, -2.0, 1.0]]), ("b", [[1.25, 7.5, -1.0], [0.75, -2.5, 2.0]])):
        node = ir.Linear(name="fc", inputs=("x",), weight="w", bias=bias)
        params = {"w": w} if bias is None else {"w": w, "b": b}
        got = golden.run(one_op_graph(2, PER_STEP((2,)), node, params), [x])["out"]
        assert got[:, 0].tolist() == want
    got = golden.run(one_op_graph(2, PER_STEP((2,)), ir.Scale(name="s", inputs=("x",), factor=2.5)), [x])["out"]
    assert got[:, 0].tolist() == [[2.5, 5.0], [1.25, -2.5]]


def _sj_neuron(kind, v_reset, threshold, tau, decay_input):
    common = dict(v_threshold=threshold, v_reset=v_reset, surrogate_function=surrogate.ATan(), step_mode="m")
    if kind == "if":
        return neuron.IFNode(**common)
    if kind == "lif":
        return neuron.LIFNode(tau=tau, decay_input=decay_input, **common)
    return neuron.ParametricLIFNode(init_tau=tau, decay_input=decay_input, **common)


# every neuron kind and update form is a parameter, not a draw: 30 drawn examples once never reached
# PLIF with decay_input (a mutation run found its update unguarded)
@pytest.mark.parametrize(
    "kind,decay_input", [("if", True), ("lif", True), ("lif", False), ("plif", True), ("plif", False)]
)
@settings(max_examples=10, deadline=None)
@given(
    st.sampled_from([0.0, None, -0.2]),
    st.floats(0.3, 1.5),
    st.sampled_from([1.5, 2.0, 4.0]),
    st.integers(1, 6),
    st.integers(0, 10**6),
)
def test_neurons_match_spikingjelly(kind, decay_input, v_reset, threshold, tau, T, seed):
    x = torch.tensor(np.random.default_rng(seed).normal(0.5, 1.0, (T, 3, 5)))
    m = _sj_neuron(kind, v_reset, threshold, tau, decay_input).double()
    with torch.no_grad():
        ref = m(x).numpy()
    functional.reset_net(m)
    common = dict(name="n", threshold=threshold, v_reset=v_reset)
    if kind == "if":
        node, w = ir.IF(**common), None
    elif kind == "lif":
        node, w = ir.LIF(tau=tau, decay_input=decay_input, **common), None
    else:
        node, w = ir.PLIF(w="w", decay_input=decay_input, **common), m.w.detach().numpy()
    out = golden.neuron(x.numpy(), node, w)
    assert np.array_equal(out, ref)


@pytest.mark.parametrize("training", [False, True])
def test_batchnorm_matches_torch_on_folded_time(training):
    rng = np.random.default_rng(1)
    T, B, C = 3, 2, 4
    bn = torch.nn.BatchNorm2d(C).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(rng.normal(size=C)))
        bn.bias.copy_(torch.tensor(rng.normal(size=C)))
        bn.running_mean.copy_(torch.tensor(rng.normal(size=C)))
        bn.running_var.copy_(torch.tensor(rng.random(C) + 0.5))
    params = {k: v.detach().numpy().copy() for k, v in bn.state_dict().items()}
    x = rng.normal(1.0, 2.0, (T, B, C, 3, 3))
    bn.train(training)
    with torch.no_grad():
        ref = bn(torch.tensor(x).flatten(0, 1)).unflatten(0, (T, B)).numpy()
    node = ir.BatchNorm(
        name="bn",
        inputs=("x",),
        weight="weight",
        bias="bias",
        running_mean="running_mean",
        running_var="running_var",
        num_batches_tracked="num_batches_tracked",
    )
    g = one_op_graph(T, ir.ValueType((C, 3, 3), "float64", timing=ir.PER_STEP), node, params)
    out = golden.run(g, [x], training=training)["out"]
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)
    if training:  # pooled over T*B*H*W: per-channel mean 0 after normalisation (before the affine)
        z = (out - params["bias"][:, None, None]) / params["weight"][:, None, None]
        np.testing.assert_allclose(z.mean(axis=(0, 1, 3, 4)), 0, atol=1e-12)


def test_tsm_conv3d_readout_upsample_match_their_torch_modules():
    rng = np.random.default_rng(2)
    T, B = 4, 2
    x = rng.normal(size=(T, B, 3, 4, 4))
    tsm = TSMConv2d(T, 3, 5).double()
    with torch.no_grad():
        tsm.tsmp.copy_(torch.tensor(rng.uniform(0.5, 1.5, (T, 1, 1, 1, 1))))
        tsm.tsmconv.bias.copy_(torch.tensor(rng.normal(size=5)))
        ref = tsm(torch.tensor(x).flatten(0, 1)).unflatten(0, (T, B)).numpy()
    params = {k: v.detach().numpy() for k, v in tsm.state_dict().items()}
    g = ir.Graph(T, params=params)
    g.add(ir.Input(name="x", shape=(3, 4, 4), dtype="float64", timing=ir.PER_STEP))
    g.add(ir.Conv2d(name="c", inputs=("x",), weight="tsmconv.weight", bias="tsmconv.bias", padding=(1, 1)))
    g.add(ir.TSMScale(name="s", inputs=("c",), scale="tsmp"))
    g.add(ir.Output(name="out", inputs=("s",)))
    np.testing.assert_allclose(golden.run(g, [x])["out"], ref, atol=1e-12)

    c3 = torch.nn.Conv3d(3, 2, kernel_size=(3, 3, 1), padding=(1, 1, 0)).double()
    with torch.no_grad():
        ref = c3(torch.tensor(x).permute(1, 2, 3, 4, 0)).permute(4, 0, 1, 2, 3).numpy()
    node = ir.Conv3d(name="c3", inputs=("x",), weight="w", bias="b", padding=(1, 1))
    g = one_op_graph(
        T,
        ir.ValueType((3, 4, 4), "float64", timing=ir.PER_STEP),
        node,
        {"w": c3.weight.detach().numpy(), "b": c3.bias.detach().numpy()},
    )
    np.testing.assert_allclose(golden.run(g, [x])["out"], ref, atol=1e-12)

    ref = MembraneOutputLayer(T)(torch.tensor(x)).numpy()
    g = one_op_graph(
        T,
        ir.ValueType((3, 4, 4), "float64", timing=ir.PER_STEP),
        ir.MembraneReadout(name="r", inputs=("x",), decay=0.8),
    )
    np.testing.assert_allclose(golden.run(g, [x])["out"], ref, atol=1e-12)
    assert golden.run(g, [x])["out"].shape == (B, 3, 4, 4)

    ref = F.interpolate(torch.tensor(x).flatten(0, 1), scale_factor=2, mode="nearest").unflatten(0, (T, B)).numpy()
    g = one_op_graph(
        T, ir.ValueType((3, 4, 4), "float64", timing=ir.PER_STEP), ir.Upsample(name="u", inputs=("x",), scale=2)
    )
    assert np.array_equal(golden.run(g, [x])["out"], ref)


def test_static_broadcast_concat_and_embedding():
    T, B = 3, 2
    rng = np.random.default_rng(3)
    g = ir.Graph(T, params={"emb": rng.normal(size=(7, 2))})
    g.add(ir.Input(name="x", shape=(2, 3, 3), dtype="float64", timing=ir.PER_STEP))
    g.add(ir.Input(name="t", shape=(), dtype="int64"))
    g.add(ir.Embedding(name="e", inputs=("t",), weight="emb"))
    g.add(ir.Reshape(name="er", inputs=("e",), shape=(2, 1, 1)))
    g.add(ir.Add(name="a", inputs=("x", "er")))
    g.add(ir.Input(name="s", shape=(1, 3, 3), dtype="float64"))
    g.add(ir.Concat(name="c", inputs=("a", "s")))
    g.add(ir.Output(name="out", inputs=("c",)))
    x, t, s = rng.normal(size=(T, B, 2, 3, 3)), np.array([4, 6]), rng.normal(size=(B, 1, 3, 3))
    out = golden.run(g, {"x": x, "t": t, "s": s})["out"]
    emb = g.params["emb"][t]
    assert out.shape == (T, B, 3, 3, 3)
    np.testing.assert_allclose(out[:, :, :2], x + emb[None, :, :, None, None])
    np.testing.assert_allclose(out[:, :, 2:], np.broadcast_to(s, (T, B, 1, 3, 3)))
    with pytest.raises(IRError, match=r"node 'e' \(embedding\): index out of range \[0, 7\)"):
        golden.run(g, {"x": x, "t": np.array([4, 9]), "s": s})


@FAST
@given(spiking_graphs(), st.integers(0, 1000))
def test_random_graphs_batch_independent_and_spikes_binary(g, seed):
    inputs = random_inputs(g, B=3, seed=seed)
    vals = golden.run(g, inputs, all_values=True)
    outs = golden.run(g, inputs)
    assert list(outs) == [n.name for n in g.output_nodes]
    for n in g.nodes.values():
        v = vals[n.name]
        assert v.shape == n.type.full_shape(g.T, 3), n.name
        assert np.isfinite(v).all()
        if n.type.kind == ir.SPIKE:
            assert set(np.unique(v)) <= {0.0, 1.0}
    for k in outs:
        assert np.array_equal(outs[k], vals[k])
    one = golden.run(g, {k: (v[1:2] if g[k].type.timing == ir.STATIC else v[:, 1:2]) for k, v in inputs.items()})
    for k in outs:  # sample 1 alone gives what it gave inside the batch (eval mode: no cross-batch mixing)
        got = one[k] if g[k].type.timing == ir.STATIC else one[k][:, 0:1]
        want = outs[k][1:2] if g[k].type.timing == ir.STATIC else outs[k][:, 1:2]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_input_validation_names_the_input():
    g = one_op_graph(2, ir.ValueType((3,), "float64"), ir.Swish(name="s", inputs=("x",)))
    with pytest.raises(IRError, match=r"input 'x': expected an array of shape \[B, 3\], got \[2, 4\]"):
        golden.run(g, [np.zeros((2, 4))])
    with pytest.raises(IRError, match="missing value"):
        golden.run(g, {})
    with pytest.raises(IRError, match="unknown input name"):
        golden.run(g, {"x": np.zeros((1, 3)), "y": 1})
    out = golden.run(g, [np.array([[0.0, 1.0, -2.0]], dtype=np.float32)])["out"]
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [[0.0, 1 / (1 + np.exp(-1)), -2 / (1 + np.exp(2))]])


PER_STEP = lambda shape: ir.ValueType(shape, "float64", timing=ir.PER_STEP)  # noqa: E731


def test_groupnorm_pool_and_scaled_conv_match_torch():
    """The kernels the first golden tests left out, each against torch on a per-step input [T, B, ...]:
    GroupNorm (per step, and running: step t normalised by the statistics of mean_{s<=t} x[s]), max / avg
    (with and without padding counted) / sum pooling, and a scaled conv with per-step and shared biases
    (on a per-step and on a static input)."""
    rng = np.random.default_rng(11)
    T, B = 3, 2
    x = rng.normal(size=(T, B, 4, 5, 5)) * 2 + 1
    xt = torch.tensor(x)
    gw, gb = rng.normal(size=4), rng.normal(size=4)
    for running in (False, True):
        node = ir.GroupNorm(name="gn", inputs=("x",), weight="w", bias="b", num_groups=2, running=running)
        got = golden.run(one_op_graph(T, PER_STEP((4, 5, 5)), node, {"w": gw, "b": gb}), [x])["out"]
        for t in range(T):
            stats = x[: t + 1].mean(0) if running else x[t]
            s = stats.reshape(B, 2, -1)
            mu, var = s.mean(-1).reshape(B, 2, 1), s.var(-1).reshape(B, 2, 1)
            want = ((x[t].reshape(B, 2, -1) - mu) / np.sqrt(var + 1e-5)).reshape(B, 4, 5, 5)
            want = want * gw.reshape(1, 4, 1, 1) + gb.reshape(1, 4, 1, 1)
            np.testing.assert_allclose(got[t], want, rtol=1e-10, atol=1e-12)
        if not running:
            ref = F.group_norm(xt.flatten(0, 1), 2, torch.tensor(gw), torch.tensor(gb)).unflatten(0, (T, B))
            np.testing.assert_allclose(got, ref.numpy(), rtol=1e-10, atol=1e-12)
    flat = xt.flatten(0, 1)
    pools = [
        (dict(mode="max", kernel=(3, 2), stride=(2, 1), padding=(1, 1)), F.max_pool2d(flat, (3, 2), (2, 1), (1, 1))),
        (dict(mode="avg", kernel=(3, 3), stride=(2, 2), padding=(1, 1)), F.avg_pool2d(flat, 3, 2, 1)),
        (
            dict(mode="avg", kernel=(3, 3), stride=(2, 2), padding=(1, 1), count_include_pad=False),
            F.avg_pool2d(flat, 3, 2, 1, count_include_pad=False),
        ),
        (  # not square (Wo 6 != kw 2): the count of real positions must be summed over the window's own axes
            dict(mode="avg", kernel=(3, 2), stride=(2, 1), padding=(1, 1), count_include_pad=False),
            F.avg_pool2d(flat, (3, 2), (2, 1), (1, 1), count_include_pad=False),
        ),
        (dict(mode="sum", kernel=(2, 2), stride=(2, 2), padding=(0, 0)), 4 * F.avg_pool2d(flat, 2, 2)),
    ]
    for kw, ref in pools:
        g = one_op_graph(T, PER_STEP((4, 5, 5)), ir.Pool2d(name="p", inputs=("x",), **kw))
        np.testing.assert_allclose(golden.run(g, [x])["out"], ref.unflatten(0, (T, B)).numpy(), rtol=1e-12, atol=1e-12)
    w, scale = rng.normal(size=(3, 4, 3, 3)), rng.uniform(0.5, 1.5, T)
    conv = F.conv2d(flat, torch.tensor(w), padding=1, stride=2).unflatten(0, (T, B)).numpy()
    for bias in (rng.normal(size=(T, 3)), rng.normal(size=3)):
        node = ir.ScaledConv2d(name="sc", inputs=("x",), weight="w", scale="s", bias="b", padding=(1, 1), stride=(2, 2))
        g = one_op_graph(T, PER_STEP((4, 5, 5)), node, {"w": w, "s": scale, "b": bias})
        b = bias.reshape(T, 1, 3, 1, 1) if bias.ndim == 2 else bias.reshape(1, 1, 3, 1, 1)
        want = scale.reshape(T, 1, 1, 1, 1) * conv + b
        np.testing.assert_allclose(golden.run(g, [x])["out"], want, rtol=1e-12, atol=1e-12)
    x0 = x[0]  # a static input: convolved once, the output per step
    g = one_op_graph(
        T,
        ir.ValueType((4, 5, 5), "float64"),
        ir.ScaledConv2d(name="sc", inputs=("x",), weight="w", scale="s"),
        {"w": w, "s": scale},
    )
    want = scale.reshape(T, 1, 1, 1, 1) * F.conv2d(torch.tensor(x0), torch.tensor(w)).numpy()[None]
    np.testing.assert_allclose(golden.run(g, [x0])["out"], want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        golden.conv2d(x0, w, None), F.conv2d(torch.tensor(x0), torch.tensor(w)).numpy(), atol=1e-12
    )


def test_concat_axes_and_run_options():
    """Concat along a channel or a spatial axis (also negative) of per-step and static parts; embedding row 0
    is in range; run's keep / all_values / overrides return what they name, and a wrong override shape is one
    error."""
    rng = np.random.default_rng(12)
    T, B = 2, 3
    for axis in (0, 1, -1):
        g = ir.Graph(T)
        g.add(ir.Input(name="x", shape=(2, 3, 4), dtype="float64", timing=ir.PER_STEP))
        g.add(ir.Input(name="s", shape=(2, 3, 4), dtype="float64"))
        g.add(ir.Concat(name="c", inputs=("x", "s"), axis=axis))
        g.add(ir.Output(name="out", inputs=("c",)))
        x, s = rng.normal(size=(T, B, 2, 3, 4)), rng.normal(size=(B, 2, 3, 4))
        want = np.concatenate([x, np.broadcast_to(s, x.shape)], axis=2 + axis % 3)
        np.testing.assert_array_equal(golden.run(ir.check(g), {"x": x, "s": s})["out"], want)
    g = ir.Graph(T, params={"emb": rng.normal(size=(5, 2))})
    g.add(ir.Input(name="t", shape=(), dtype="int64"))
    g.add(ir.Embedding(name="e", inputs=("t",), weight="emb"))
    g.add(ir.Swish(name="a", inputs=("e",)))
    g.add(ir.Output(name="out", inputs=("a",)))
    g = ir.check(g)
    t = np.array([0, 4, 2])
    emb = g.params["emb"][t]
    res = golden.run(g, [t], keep=["e"])
    assert set(res) == {"out", "e"} and np.array_equal(res["e"], emb)
    np.testing.assert_allclose(res["out"], emb / (1 + np.exp(-emb)))
    assert set(golden.run(g, [t])) == {"out"}
    assert set(golden.run(g, [t], all_values=True)) == {"t", "e", "a", "out"}
    fake = np.ones((3, 2))
    res = golden.run(g, [t], overrides={"e": fake}, keep=["e"])
    assert np.array_equal(res["e"], fake) and np.allclose(res["out"], 1 / (1 + np.exp(-1)))
    # what only an overridden node reads is not computed: an out-of-range index upstream of it raises nothing
    res = golden.run(g, [np.array([0, 9, 1])], overrides={"a": fake})
    assert np.array_equal(res["out"], fake)
    with pytest.raises(IRError, match="index out of range"):
        golden.run(g, [np.array([0, 9, 1])], overrides={"a": fake}, all_values=True)
    with pytest.raises(IRError, match=r"override for node 'e' has shape \[2, 2\], expected \[3, 2\]"):
        golden.run(g, [t], overrides={"e": np.ones((2, 2))})


def test_avg_pool_counts_padding_by_default_like_torch():
    """``pool2d``'s default averages over the whole window, padding included (torch's default too)."""
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 6))
    ref = F.avg_pool2d(torch.tensor(x), 3, 2, 1).numpy()
    np.testing.assert_allclose(golden.pool2d(x, "avg", (3, 3), (2, 2), (1, 1)), ref, rtol=0, atol=1e-12)


def test_float32_params_are_computed_in_float64():
    """The golden simulator reads every float parameter as float64: a float32 table looked up and fed to a
    float32 linear layer gives the float64 result bit for bit (float32 arithmetic would round ~1e-7)."""
    rng = np.random.default_rng(1)
    emb, w, b = (rng.normal(size=s).astype(np.float32) for s in [(5, 8), (4, 8), (4,)])
    g = ir.Graph(2, params={"emb": emb, "w": w, "b": b})
    g.add(ir.Input(name="t", shape=(), dtype="int64"))
    g.add(ir.Embedding(name="e", inputs=("t",), weight="emb"))
    g.add(ir.Linear(name="l", inputs=("e",), weight="w", bias="b"))
    g.add(ir.Output(name="out", inputs=("l",)))
    t = np.array([0, 3, 4])
    out = golden.run(ir.check(g), {"t": t})["out"]
    ref = emb.astype(np.float64)[t] @ w.astype(np.float64).T + b.astype(np.float64)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, ref)


def test_binary_ops_broadcast_operands_of_lower_rank_from_the_right():
    """A per-sample ``[W]`` operand added to ``[C, H, W]`` lines up with the last axis (numpy's rule, which
    the IR's shape inference states), for a static and a per-step operand."""
    T, B = 2, 3
    rng = np.random.default_rng(2)
    for timing in (ir.STATIC, ir.PER_STEP):
        g = ir.Graph(T)
        g.add(ir.Input(name="x", shape=(2, 3, 4), dtype="float64", timing=ir.PER_STEP))
        g.add(ir.Input(name="y", shape=(4,), dtype="float64", timing=timing))
        g.add(ir.Add(name="a", inputs=("x", "y")))
        g.add(ir.Mul(name="m", inputs=("a", "y")))
        g.add(ir.Output(name="out", inputs=("m",)))
        x = rng.normal(size=(T, B, 2, 3, 4))
        y = rng.normal(size=(B, 4) if timing == ir.STATIC else (T, B, 4))
        yb = y[:, None, None, :] if timing == ir.STATIC else y[:, :, None, None, :]
        out = golden.run(ir.check(g), {"x": x, "y": y})["out"]
        np.testing.assert_array_equal(out, (x + yb) * yb)


def test_tsm_scale_of_a_static_input_is_per_step():
    """TSMScale of a static input: the input is the same at every step, the output ``p[t] * x`` per step."""
    T, B = 3, 2
    rng = np.random.default_rng(4)
    p = rng.normal(size=(T, 1, 1, 1, 1))
    g = one_op_graph(T, ir.ValueType((2, 3, 3), "float64"), ir.TSMScale(name="s", inputs=("x",), scale="p"), {"p": p})
    x = rng.normal(size=(B, 2, 3, 3))
    out = golden.run(g, {"x": x})["out"]
    assert out.shape == (T, B, 2, 3, 3)
    np.testing.assert_array_equal(out, p.reshape(T, 1, 1, 1, 1) * x[None])


def test_swish_sigmoid_and_static_concat_by_value():
    T, B = 2, 3
    rng = np.random.default_rng(5)
    x = rng.normal(size=(B, 2, 3))
    for node, ref in [
        (ir.Sigmoid(name="s", inputs=("x",)), 1 / (1 + np.exp(-x))),
        (ir.Swish(name="s", inputs=("x",)), x / (1 + np.exp(-x))),
    ]:
        out = golden.run(one_op_graph(T, ir.ValueType((2, 3), "float64"), node), {"x": x})["out"]
        np.testing.assert_allclose(out, ref, rtol=1e-14)
    # two static operands: concatenated along the sample axis `axis` (no step axis in front)
    for axis, ref in [(0, np.concatenate([x, x[:, :1]], axis=1)), (-1, np.concatenate([x, x[:, :, :1]], axis=2))]:
        y = x[:, :, :1] if axis else x[:, :1]
        g = ir.Graph(T)
        g.add(ir.Input(name="x", shape=(2, 3), dtype="float64"))
        g.add(ir.Input(name="y", shape=y.shape[1:], dtype="float64"))
        g.add(ir.Concat(name="c", inputs=("x", "y"), axis=axis))
        g.add(ir.Output(name="out", inputs=("c",)))
        np.testing.assert_array_equal(golden.run(ir.check(g), {"x": x, "y": y})["out"], ref)


def test_embedding_index_equal_to_the_table_size_is_refused():
    g = ir.Graph(2, params={"emb": np.zeros((7, 2))})
    g.add(ir.Input(name="t", shape=(), dtype="int64"))
    g.add(ir.Embedding(name="e", inputs=("t",), weight="emb"))
    g.add(ir.Output(name="out", inputs=("e",)))
    g = ir.check(g)
    assert golden.run(g, {"t": np.array([0, 6])})["out"].shape == (2, 2)
    with pytest.raises(IRError, match=r"node 'e' \(embedding\): index out of range \[0, 7\)"):
        golden.run(g, {"t": np.array([7])})
