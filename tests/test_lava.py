"""Lava-DL backend against stock Lava: netx files that ``lava.lib.dl.netx.hdf5.Network`` loads and runs in
``Loihi2SimCfg(select_tag='fixed_pt')``, compared with the float golden simulator and the Loihi model.

Needs lava-nc 0.10.0 / lava-dl 0.6.0 (``python -m sdmc.backends.lava.install``); skipped where absent.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loihi_graphs import dyadic_chain

from sdmc import ir
from sdmc.backends.lava import compat, install, netx_chain, quantize
from sdmc.backends.lava import network as lnet
from sdmc.sim import golden
from sdmc.sim import loihi as lm


def test_install_commands_never_resolve_lavas_own_requirements():
    deps, wheels = install.pip_commands("PY")
    assert wheels[-2:] == ["lava-nc==0.10.0", "lava-dl==0.6.0"]
    assert "--no-deps" in wheels and "--ignore-requires-python" in wheels
    assert not any(a.startswith(("lava", "torch")) for a in deps[5:])
    assert any(a.startswith("asteval") and "<0.10" in a for a in deps)


@pytest.fixture(scope="module")
def lava():
    compat.install_import_fixes()
    pytest.importorskip("lava.lib.dl.netx")
    from sdmc.backends.lava import run_netx_chain

    return run_netx_chain


def test_fast_conv_equals_lavas_scipy_conv(lava):
    from lava.proc.conv.utils import conv_scipy

    rng = np.random.default_rng(0)
    for _ in range(60):
        g = int(rng.integers(1, 3))
        cin, cout = g * int(rng.integers(1, 3)), g * int(rng.integers(1, 3))
        k = tuple(int(a) for a in rng.integers(1, 4, 2))
        s, p, d = (tuple(int(a) for a in rng.integers(lo, 3, 2)) for lo in (1, 0, 1))
        x = rng.integers(0, 5, (int(rng.integers(6, 9)), int(rng.integers(6, 9)), cin)).astype(np.int32)
        w = rng.integers(-100, 100, (cout, k[0], k[1], cin // g)).astype(np.int32)
        want = conv_scipy(x, w, k, s, p, d, g).astype(w.dtype)
        assert np.array_equal(compat.conv_numpy(x, w, k, s, p, d, g), want)


def test_sequential_conv_if_chain_in_stock_netx_equals_float_golden(lava, tmp_path):
    rng = np.random.default_rng(7)
    g = dyadic_chain(rng, fc_bias=True)
    path = tmp_path / "chain.h5"
    q, rep = netx_chain.export_netx(g, path, pow2=True)
    assert all(r.weight_err == 0 for r in rep.layers)  # dyadic weights: lossless quantisation
    B = 2
    x = (rng.random((g.T, B, 2, 6, 5)) < 0.4).astype(np.float64)
    res = lava.run_netx(path, x)
    gold = golden.run(g, [x], all_values=True)
    for name, s in zip(("n1", "n2", "n3"), res.spikes):
        assert s.shape == gold[name].shape
        assert np.array_equal(s, gold[name].astype(bool)), name  # after the n-step delay shift
    assert gold["n1"].sum() > 20 and gold["n3"].sum() > 0
    # voltages too, against the Loihi model on the same back-to-back timeline
    L, R = 3, g.T + 3
    xs = np.concatenate([np.concatenate([x[:, b : b + 1], np.zeros((L, 1, 2, 6, 5))]) for b in range(B)])
    model = lm.run_chain(q, xs, num_steps=B * R, reset_interval=R)
    for n in range(L):
        assert np.array_equal(np.rint(res.raw_v[n]).astype(np.int64), model["v"][n][:, 0])
        assert np.array_equal(
            res.raw_spikes[n].reshape(model["spikes"][n][:, 0].shape).astype(bool), model["spikes"][n][:, 0]
        )


def test_graded_image_input_in_stock_netx_equals_float_golden(lava, tmp_path):
    rng = np.random.default_rng(3)
    g = ir.Graph(4)
    g.add(ir.Input(name="img", shape=(1, 5, 5)))
    g.add(ir.Repeat(name="rep", inputs=("img",)))
    g.add_param("c1.w", rng.integers(-6, 7, (3, 1, 3, 3)) / 8.0)
    g.add_param("c1.b", rng.integers(-2, 3, 3) / 8.0)
    g.add(ir.Conv2d(name="c1", inputs=("rep",), weight="c1.w", bias="c1.b", padding=(1, 1)))
    g.add(ir.IF(name="n1", inputs=("c1",)))
    g.add_param("c2.w", rng.integers(-6, 7, (2, 3, 3, 3)) / 8.0)
    g.add(ir.Conv2d(name="c2", inputs=("n1",), weight="c2.w", padding=(1, 1)))
    g.add(ir.IF(name="n2", inputs=("c2",)))
    g.add(ir.Output(name="out", inputs=("n2",)))
    path = tmp_path / "graded.h5"
    q, _ = netx_chain.export_netx(g, path, pow2=True, input_scale=128)
    img = np.clip(np.rint(rng.uniform(-1, 1, (2, 1, 5, 5)) * 128), -127, 127) / 128
    xq = quantize.quantize_input(q, np.broadcast_to(img, (g.T,) + img.shape))
    res = lava.run_netx(path, xq, input_message_bits=16, read_v=False)
    gold = golden.run(g, [img], all_values=True)
    assert np.array_equal(res.spikes[0], gold["n1"].astype(bool))
    assert np.array_equal(res.spikes[1], gold["n2"].astype(bool))
    assert gold["n2"].sum() > 0


@st.composite
def loihi_chains(draw):
    """Small random integer chains with arbitrary CUBA decays, biases and thresholds; a graded input
    makes the first layer's current large enough to wrap the 24-bit u register / saturate v."""
    seed = draw(st.integers(0, 2**20))
    graded = draw(st.booleans())
    first = draw(st.sampled_from(["conv", "dense"]))
    rng = np.random.default_rng(seed)
    layers, shape = [], (2, 5, 4)
    for i, kind in enumerate([first, "conv" if first == "conv" else "dense", "dense"]):
        if kind == "conv" and len(shape) == 3:
            O = int(rng.integers(2, 4))
            w = rng.integers(-128, 128, (O, shape[0], 3, 3))
            extra = dict(padding=(1, 1), stride=(int(rng.integers(1, 3)), 1))
        else:
            n_in = int(np.prod(shape))
            w = rng.integers(-128, 128, (int(rng.integers(2, 6)), n_in))
            extra = {}
        neuron = lnet.Cuba(
            vth=int(rng.integers(50, 3000)),
            du=int(rng.choice([4095, rng.integers(0, 4096)])),
            dv=int(rng.choice([0, rng.integers(0, 4096)])),
        )
        bias = rng.integers(-4095, 4096, w.shape[0]) if rng.random() < 0.6 else None
        layer = lnet.LoihiLayer(kind=kind, weight=w, neuron=neuron, bias=bias, name=f"l{i}", **extra)
        layers.append(layer)
        shape = layer.out_shape(shape)
    chain = lnet.LoihiChain((2, 5, 4), tuple(layers), input_bits=16 if graded else 0)
    T = 4
    x = rng.integers(-3000, 3000, (T, 1, 2, 5, 4)) if graded else (rng.random((T, 1, 2, 5, 4)) < 0.5).astype(np.int64)
    return chain, x


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=loihi_chains())
def test_loihi_model_equals_lava_spikes_and_voltages(lava, tmp_path, case):
    chain, x = case
    path = tmp_path / "rand.h5"
    netx_chain.write_netx(chain, path)
    res = lava.run_netx(path, x, input_message_bits=chain.input_bits)
    L = len(chain.layers)
    R = x.shape[0] + L
    model = lm.run_chain(chain, x, num_steps=R, reset_interval=R)
    for n in range(L):
        assert np.array_equal(res.raw_spikes[n][0].astype(bool), model["spikes"][n][:, 0]), f"layer {n + 1} spikes"
        assert np.array_equal(np.rint(res.raw_v[n]).astype(np.int64), model["v"][n][:, 0]), f"layer {n + 1} v"


def test_current_wrap_and_voltage_saturation_match_lava(lava, tmp_path):
    """Graded inputs drive |a_in| past 2^17 units (u wraps) and v into the +-(2^23 - 1) clip."""
    w1 = np.array([[127, 127, 127, 127], [-128, -128, -128, -128], [100, -50, 3, 0], [-100, -100, -100, -100]])
    l1 = lnet.LoihiLayer(
        kind="dense",
        weight=w1,
        neuron=lnet.Cuba(vth=lnet.MAX_VTH, du=4095, dv=0),
        bias=np.array([0, -4095, 17, -4095]),
        name="wrap",
    )
    l2 = lnet.LoihiLayer(kind="dense", weight=np.array([[127, -128, 5, 1]]), neuron=lnet.Cuba(vth=0), name="out")
    chain = lnet.LoihiChain((4,), (l1, l2), input_bits=16)
    x = np.array([[300, 300, 300, 300], [100, 0, 0, 0], [-300, -300, -300, -300], [0, 0, 0, 0]])[:, None]
    path = tmp_path / "wrap.h5"
    netx_chain.write_netx(chain, path)
    model = lm.run_chain(chain, x, num_steps=6, reset_interval=6)
    u1 = model["u"][0][:, 0]
    assert (np.abs(x[:, 0] @ w1.T) > lnet.MAX_CURRENT).any()  # the drive really overflows
    assert (u1[:, 0] < 0).any() and (u1[:, 1] > 0).any()  # wrapped to the other sign
    assert (model["v"][0][:, 0, 3] == -(2**23) + 1).any()  # clipped
    res = lava.run_netx(path, x, input_message_bits=16)
    for n in range(2):
        assert np.array_equal(np.rint(res.raw_v[n][:6]).astype(np.int64), model["v"][n][:, 0]), n
        assert np.array_equal(res.raw_spikes[n][0].astype(bool), model["spikes"][n][:, 0]), n


def test_spikingjelly_module_traced_exported_and_run_in_lava(lava, tmp_path):
    """torch/spikingjelly conv-BN-IF chain -> sdmc.frontends.trace -> netx -> Lava: equal to the Loihi model,
    and within the reported quantisation error of spikingjelly's own float32 spikes."""
    torch = pytest.importorskip("torch")
    from spikingjelly.activation_based import functional, layer, neuron

    from sdmc.frontends import trace

    class Net(torch.nn.Module):
        def __init__(self, T=4):
            super().__init__()
            self.T = T
            self.c1 = layer.Conv2d(1, 6, 3, padding=1, step_mode="m")
            self.bn1 = layer.BatchNorm2d(6, step_mode="m")
            self.n1 = neuron.IFNode(step_mode="m")
            self.c2 = layer.Conv2d(6, 4, 3, stride=2, padding=1, step_mode="m")
            self.n2 = neuron.IFNode(step_mode="m")
            self.fc = layer.Linear(4 * 4 * 4, 10, step_mode="m")
            self.n3 = neuron.IFNode(step_mode="m")

        def forward(self, x):
            x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
            s2 = self.n2(self.c2(self.n1(self.bn1(self.c1(x)))))
            return self.n3(self.fc(torch.flatten(s2, 2)))

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.c1.weight.mul_(3.0)
        net.c2.weight.mul_(2.5)
        net.fc.weight.mul_(2.0)
        net.bn1.running_mean.uniform_(-0.2, 0.2)
        net.bn1.running_var.uniform_(0.5, 1.5)
        net.bn1.weight.uniform_(0.8, 1.2)
    net.eval()
    g = trace(net, (1, 1, 8, 8), T=net.T)
    path = tmp_path / "sj.h5"
    q, rep = netx_chain.export_netx(g, path)
    img = torch.rand(3, 1, 8, 8) * 2 - 1
    spikes = {}
    hooks = [
        getattr(net, n).register_forward_hook(lambda m, i, o, n=n: spikes.__setitem__(n, o.numpy()))
        for n in ("n1", "n2", "n3")
    ]
    with torch.no_grad():
        net(img)
    functional.reset_net(net)
    for h in hooks:
        h.remove()
    xq = quantize.quantize_input(q, np.broadcast_to(img.numpy(), (g.T,) + tuple(img.shape)))
    res = lava.run_netx(path, xq, input_message_bits=16, read_v=False)
    model = lnet.aligned_spikes(lm.run_chain(q, xq, num_steps=g.T + 3, reset_interval=g.T + 3), g.T)
    for n, name in enumerate(("n1", "n2", "n3")):
        assert np.array_equal(res.spikes[n], model[n]), name
        ref = spikes[name].astype(bool)
        assert ref.shape == res.spikes[n].shape
        assert ref.mean() > 0.02
        assert np.mean(ref != res.spikes[n]) < 0.06, (name, rep.format())


def test_cli_lava_run_compares_lava_with_the_model(lava, tmp_path, capsys):
    from sdmc import cli

    g = dyadic_chain(np.random.default_rng(11), fc_bias=True)
    path = tmp_path / "c.h5"
    netx_chain.export_netx(g, path)
    assert cli.main(["lava", "run", str(path), "--samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "spikes identical to the numpy Loihi model: True" in out and "s/sample" in out
