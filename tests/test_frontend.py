"""torch.fx frontend: SDDPM / SDM UNets trace to checked IR whose golden simulation reproduces the eager
spikingjelly model (float64: outputs to 1e-9, every neuron's spikes identical); unsupported ops are named."""

import numpy as np
import pytest
import torch
from conftest import randomize_bn
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

from sdmc import ir
from sdmc.config import ModelConfig, SdmcConfig
from sdmc.errors import SdmcError, UnsupportedOpError
from sdmc.frontends import from_checkpoint, trace
from sdmc.models import build_model, set_threshold
from sdmc.sim import golden


def make_unet(seed=0, **kw) -> nn.Module:
    """A small UNet in float64 eval mode with nothing trivial: BN stats, TSM scales, tail conv randomised."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**kw)).double().eval()
    randomize_bn(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("tsmp"):
                p.copy_(0.7 + 0.6 * torch.rand(p.shape, generator=g, dtype=p.dtype))
            elif name.endswith("bias") and "bn" not in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        tail = model.tail_conv.tsmconv if hasattr(model.tail_conv, "tsmconv") else model.tail_conv
        tail.weight.copy_(0.2 * torch.randn(tail.weight.shape, generator=g, dtype=tail.weight.dtype))
    return model


def eager_with_spikes(model, x, t):
    """Eager output and every neuron module's output spikes, keyed by module path."""
    spikes, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, neuron.BaseNode):
            hooks.append(m.register_forward_hook(lambda mod, i, o, name=name: spikes.__setitem__(name, o.numpy())))
    try:
        with torch.no_grad():
            y = model(x, t).numpy()
    finally:
        for h in hooks:
            h.remove()
    return y, spikes


def assert_sim_equals_eager(model, g, B=2, seed=0, img=None):
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    size = img or cfg.img_size
    x = torch.randn(B, cfg.img_ch, size, size, generator=gen, dtype=torch.float64)
    t = torch.randint(0, cfg.diffusion_steps, (B,), generator=gen)
    y, spikes = eager_with_spikes(model, x, t)
    neurons = [n.name for n in g.nodes.values() if n.op in ir.NEURON_OPS]
    vals = golden.run(g, {"x": x.numpy(), "t": t.numpy()}, keep=neurons)
    assert list(vals) == ["out"] + neurons
    np.testing.assert_allclose(vals["out"], y, rtol=0, atol=1e-9)
    assert sorted(neurons) == sorted(spikes)
    rates = []
    for name in neurons:
        assert np.array_equal(vals[name], spikes[name]), f"spikes of {name} differ"
        rates.append(spikes[name].mean())
    return np.array(rates), np.abs(y).max()


CASES = [
    dict(arch="sddpm", ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8),
    dict(arch="sdm", ch=8, ch_mult=(1, 2), num_res_blocks=2, snn_steps=4, img_ch=3, img_size=8),
    dict(arch="sdm", ch=16, ch_mult=(1, 2), num_res_blocks=1, snn_steps=3, img_ch=1, img_size=16),
    dict(
        arch="sddpm",
        ch=8,
        ch_mult=(1, 2),
        num_res_blocks=1,
        snn_steps=3,
        img_ch=1,
        img_size=8,
        neuron="lif",
        tau=2.0,
        soft_reset=True,
        threshold=0.4,
    ),
]


@pytest.mark.parametrize(
    "kw", CASES, ids=lambda kw: f"{kw['arch']}-ch{kw['ch']}-T{kw['snn_steps']}-{kw.get('neuron', 'if')}"
)
def test_unet_traces_and_golden_matches_eager(kw):
    model = make_unet(**kw)
    g = trace(model, (1, kw["img_ch"], kw["img_size"], kw["img_size"]))
    ir.check(g)
    assert g.T == kw["snn_steps"]
    sd = model.state_dict()
    assert set(g.params) == set(sd)  # every weight maps back to its state_dict name
    for k, v in sd.items():
        assert np.array_equal(g.params[k], v.numpy())
    ty = {n.name: n.type for n in g.nodes.values()}
    assert ty["x"].timing == ir.STATIC and ty["t"].dtype == "int64"
    assert ty["time_embedding.timembedding.3"].timing == ir.STATIC  # time embedding stays static
    assert ty["neuron"].kind == ir.SPIKE and ty["bn_identity"].kind == ir.REAL
    assert ty["out"] == ir.ValueType((kw["img_ch"], kw["img_size"], kw["img_size"]), "float64", ir.REAL, ir.STATIC)
    ops = {n.op for n in g.nodes.values()}
    assert {"conv2d", "conv3d", "batchnorm", "concat", "upsample", "add", "membrane_readout", "embedding"} <= ops
    assert ("tsm_scale" in ops) == (kw["arch"] == "sdm")
    assert ({"lif"} if kw.get("neuron") == "lif" else {"if"}) <= ops
    if kw.get("soft_reset"):
        assert all(n.v_reset is None for n in g.nodes.values() if n.op in ir.NEURON_OPS)
    rates, ymax = assert_sim_equals_eager(model, g, B=2)
    assert ((rates > 0.01) & (rates < 0.99)).mean() > 0.8, rates  # spikes are not trivial
    assert ymax > 0.1


def test_residual_stream_is_real_and_neurons_read_real_values():
    g = trace(make_unet(**CASES[1]), (1, 3, 8, 8))
    for n in g.nodes.values():
        if n.op in ir.NEURON_OPS:
            assert g[n.inputs[0]].type.kind == ir.REAL and g[n.inputs[0]].type.timing == ir.PER_STEP
    blk = g["downblocks.0.shortcut"] if "downblocks.0.shortcut" in g else None
    res = [n for n in g.nodes.values() if n.op == "add" and g[n.inputs[0]].op == "batchnorm"]
    assert res and all(n.type.kind == ir.REAL for n in res)
    assert blk is None  # identity shortcut when channels do not change: no node
    assert g["cat"].type.kind == ir.REAL  # skip connections concatenate the real-valued stream


def test_threshold_guidance_is_traced():
    model = make_unet(**CASES[0])
    assert set_threshold(model, 0.997) > 0
    g = trace(model, (1, 1, 8, 8))
    assert {n.threshold for n in g.nodes.values() if n.op == "if"} == {0.997}
    assert_sim_equals_eager(model, g, B=1, seed=3)


def test_traced_graph_round_trips_and_still_simulates(tmp_path):
    model = make_unet(**CASES[0])
    g = trace(model, (1, 1, 8, 8))
    h = ir.load(ir.save(g, tmp_path / "unet.sdmc"))
    assert h == g and h.meta["model_config"]["arch"] == "sddpm"
    assert ir.parse(ir.format_graph(g), g.params) == g
    assert_sim_equals_eager(model, ir.check(h), B=1)


def test_batch_size_of_the_example_does_not_matter():
    model = make_unet(**CASES[0])
    assert trace(model, (1, 1, 8, 8)) == trace(model, (5, 1, 8, 8))


def test_from_checkpoint_native_file(tmp_path):
    from sdmc.checkpoint import save_model

    kw = CASES[1]
    model = make_unet(**kw).float()
    path = save_model(tmp_path / "m.safetensors", model, SdmcConfig(model=ModelConfig(**kw)))
    g = from_checkpoint(path)
    assert g.T == 4 and g.meta["sdmc_config"]["model"]["arch"] == "sdm"
    assert g["x"].type.dtype == "float32"
    assert np.array_equal(g.params["conv.tsmp"], model.state_dict()["conv.tsmp"].numpy())
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        y = model(x, torch.tensor([7])).numpy()
    out = golden.run(g, {"x": x.numpy(), "t": np.array([7])})["out"]
    np.testing.assert_allclose(out, y, atol=1e-4)  # float32 eager vs float64 golden


def test_from_checkpoint_released_pt_with_ema(tmp_path):
    kw = CASES[0]
    net, ema = make_unet(seed=0, **kw).float(), make_unet(seed=5, **kw).float()
    torch.save({"net_model": net.state_dict(), "ema_model": ema.state_dict(), "step": 10}, tmp_path / "ckpt.pt")
    g = from_checkpoint(tmp_path / "ckpt.pt", snn_steps=2, img_size=8)
    assert g.T == 2 and g["x"].type.shape == (1, 8, 8)
    assert np.array_equal(g.params["conv.weight"], ema.state_dict()["conv.weight"].numpy())  # EMA by default
    g = from_checkpoint(tmp_path / "ckpt.pt", weights="net", snn_steps=2, img_size=8)
    assert np.array_equal(g.params["conv.weight"], net.state_dict()["conv.weight"].numpy())


# ------------------------------------------------------------------------------------ other modules
class SeqNet(nn.Module):
    """spikingjelly multi-step layers, a ParametricLIF and a LIF on [T, B, ...] input built inside."""

    def __init__(self, T=3):
        super().__init__()
        self.T = T
        self.conv = layer.Conv2d(2, 4, 3, padding=1, step_mode="m")
        self.bn = layer.BatchNorm2d(4, step_mode="m")
        self.plif = neuron.ParametricLIFNode(init_tau=3.0, surrogate_function=surrogate.ATan(), step_mode="m")
        self.seq = layer.SeqToANNContainer(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        self.lif = neuron.LIFNode(tau=2.0, v_reset=None, step_mode="m")
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        s = self.plif(self.bn(self.conv(x)))
        h = self.lif(self.seq(s) * 2.0)
        return self.fc(h.flatten(2))


def test_spikingjelly_layers_and_plif_trace_and_match():
    torch.manual_seed(0)
    net = SeqNet().double().eval()
    randomize_bn(net)
    g = trace(net, (1, 2, 4, 4), T=3)
    assert [n.op for n in g.nodes.values() if n.op in ir.NEURON_OPS] == ["plif", "lif"]
    assert g["fc"].type.timing == ir.PER_STEP and g["fc"].type.shape == (5,)
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        y = net(x).numpy()
    functional.reset_net(net)
    np.testing.assert_allclose(golden.run(g, [x.numpy()])["out"], y, atol=1e-9)


class WithLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.LayerNorm([2, 4, 4]))

    def forward(self, x):
        return self.block(x)


class WithRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Module()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 1, 1)

    def forward(self, x):
        return torch.tanh(self.c(x))


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.blk = Inner()

    def forward(self, x):
        return self.blk(x)


class SingleStep(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.sn = neuron.IFNode()

    def forward(self, x):
        return self.sn(self.conv(x))


class TimeMixing(nn.Module):
    def __init__(self):
        super().__init__()
        self.mix = nn.Conv3d(1, 1, kernel_size=(3, 3, 3), padding=1)

    def forward(self, x):
        xs = x.unsqueeze(0).expand(2, *x.shape)
        return self.mix(xs.permute(1, 2, 3, 4, 0)).permute(4, 0, 1, 2, 3)


@pytest.mark.parametrize(
    "net,pattern",
    [
        (WithLayerNorm(), r"block\.1: unsupported op module torch\.nn\.modules\.normalization\.LayerNorm \(supported:"),
        (WithRelu(), r"<top level>: unsupported op function torch\.relu \(supported functions: add, sub, mul"),
        (Outer(), r"blk: unsupported op function torch\.tanh \("),
        (SingleStep(), r"sn: unsupported op IFNode in single-step mode \(use step_mode='m'"),
        (TimeMixing(), r"mix: unsupported op Conv3d\(kernel=\(3, 3, 3\).*only kernels \(kh, kw, 1\)"),
    ],
)
def test_unsupported_ops_name_module_and_op(net, pattern):
    with pytest.raises(UnsupportedOpError, match=pattern):
        trace(net.double(), (1, 1, 4, 4), T=2)


def test_untraceable_control_flow_is_reported():
    class Branchy(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x
            return -x

    with pytest.raises(UnsupportedOpError, match="Branchy.forward: torch.fx cannot trace it"):
        trace(Branchy(), (1, 1, 2, 2), T=2)
    with pytest.raises(SdmcError, match="example_shape"):
        trace(make_unet(**CASES[0]))


@pytest.mark.slow
def test_full_cifar10_sdm_traces_checks_and_matches_on_batch_1():
    cfg = dict(arch="sdm", ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2, snn_steps=8, img_ch=3, img_size=32)
    model = make_unet(**cfg)
    g = trace(model, (1, 3, 32, 32))
    ir.check(g)
    assert set(g.params) == set(model.state_dict()) and len(g.params) == 522
    assert sum(1 for n in g.nodes.values() if n.op == "if") == 1 + 2 * 22 + 3 + 3
    assert_sim_equals_eager(model, g, B=1)
