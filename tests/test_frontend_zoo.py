"""The frontend on models written elsewhere (tests/zoo): each traces, its golden simulation equals the eager
model in float64 with every neuron's spikes identical, and the papers'-style UNet compiles to the same IR as
sdmc's own UNet."""

import numpy as np
import pytest
import torch
from conftest import randomize_bn
from spikingjelly.activation_based import functional, neuron
from zoo.classifiers import CSNN, LIFClassifier, SeqToANNNet, jitter_plif
from zoo.papers_unet import SpkUNetTSM

from sdmc import ir
from sdmc.backends.torch import compile_torch
from sdmc.config import ModelConfig
from sdmc.errors import UnsupportedOpError
from sdmc.frontends import trace
from sdmc.models import build_model
from sdmc.sim import golden

NEURONS = (neuron.BaseNode, neuron.SimpleBaseNode)


def eager_with_spikes(model, *inputs):
    """Eager output and every neuron module's spikes ``[T, B, ...]`` by module path (single-step neurons
    driven over T fire once per step: their outputs are stacked)."""
    spikes, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, NEURONS):
            hooks.append(
                m.register_forward_hook(lambda mod, i, o, name=name: spikes.setdefault(name, []).append(o.numpy()))
            )
    functional.reset_net(model)
    try:
        with torch.no_grad():
            y = model(*inputs).numpy()
    finally:
        for h in hooks:
            h.remove()
        functional.reset_net(model)
    return y, {k: v[0] if len(v) == 1 else np.stack(v) for k, v in spikes.items()}


def assert_golden_equals_eager(model, g, inputs, atol=1e-9):
    y, spikes = eager_with_spikes(model, *inputs)
    neurons = [n.name for n in g.nodes.values() if n.op in ir.NEURON_OPS]
    assert sorted(neurons) == sorted(spikes)
    vals = golden.run(g, [x.numpy() for x in inputs], keep=neurons)
    np.testing.assert_allclose(vals["out"], y, rtol=0, atol=atol)
    rates = []
    for name in neurons:
        assert np.array_equal(vals[name], spikes[name]), f"spikes of {name} differ"
        rates.append(spikes[name].mean())
    assert ((np.array(rates) > 0.01) & (np.array(rates) < 0.99)).mean() >= 0.5, rates  # spikes are not trivial
    return vals


# ------------------------------------------------------------------------------------------ classifiers
def make(cls, seed=0, **kw):
    torch.manual_seed(seed)
    net = cls(**kw)
    randomize_bn(net, seed)
    return jitter_plif(net, seed).double().eval()


def test_spikingjelly_csnn_with_max_pooling_over_sequences():
    T = 4
    net = make(CSNN)
    g = trace(net, (T, 1, 1, 8, 8), T=T)  # nothing more: the sequence input is inferred from step_mode
    assert g["x_seq"].type == ir.ValueType((1, 8, 8), "float64", ir.REAL, ir.PER_STEP)
    ops = [n.op for n in g.nodes.values()]
    assert ops.count("pool2d") == 2 and {g[n].mode for n in g.nodes if g[n].op == "pool2d"} == {"max"}
    assert [g[k].op for k in ("conv_fc.2", "conv_fc.6", "conv_fc.11")] == ["if", "if", "lif"]
    assert g["conv_fc.6"].v_reset is None and g["conv_fc.2"].v_reset == 0.0
    assert g["conv_fc.3"].type.kind == ir.SPIKE  # max of spikes is a spike
    assert g["out"].type == ir.ValueType((10,), "float64", ir.SPIKE, ir.PER_STEP)
    x = torch.rand(T, 3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    assert_golden_equals_eager(net, g, [x])


def test_seq_to_ann_containers_average_and_sum_pooling_plif():
    T = 3
    net = make(SeqToANNNet)
    g = trace(net, (T, 2, 2, 8, 8), T=T)
    pools = {g[n].name: g[n].mode for n in g.nodes if g[n].op == "pool2d"}
    assert pools == {"pool1.0": "avg", "pool2.0": "sum"}
    assert g["pool2.0"].type.kind == ir.GRADED and g["pool1.0"].type.kind == ir.GRADED
    sn1, sn2 = g["sn1"], g["sn2"]
    assert (sn1.op, sn1.surrogate, sn1.alpha, sn1.decay_input, sn1.v_reset) == ("plif", "sigmoid", 4.0, True, 0.0)
    assert (sn2.decay_input, sn2.v_reset, sn2.detach_reset, sn2.surrogate) == (False, None, True, "sigmoid")
    assert g["out"].type.timing == ir.STATIC  # mean over T
    x = torch.rand(T, 2, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3
    assert_golden_equals_eager(net, g, [x])


def test_lif_plif_classifier_over_feature_sequences():
    T = 5
    net = make(LIFClassifier)
    g = trace(net, (T, 1, 12), T=T)
    assert g["fc1"].type.timing == ir.PER_STEP and g["fc1"].type.shape == (16,)  # Linear over the sequence
    assert (g["lif1"].tau, g["lif1"].decay_input, g["lif1"].v_reset) == (1.5, False, None)
    assert (g["lif1"].surrogate, g["lif1"].alpha, g["lif1"].detach_reset) == ("sigmoid", 3.0, True)
    assert g["plif"].op == "plif" and g["plif"].threshold == 0.5
    assert g["block.1"].op == "if" and g["lif_out"].op == "lif"  # single-step neurons driven over T
    x = torch.rand(T, 4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2
    assert_golden_equals_eager(net, g, [x])


@pytest.mark.parametrize("cls,shape", [(CSNN, (1, 8, 8)), (SeqToANNNet, (2, 8, 8)), (LIFClassifier, (12,))])
@pytest.mark.parametrize("mode", ["train", "inference"])
def test_torch_executor_equals_golden_on_zoo_classifiers(cls, shape, mode):
    T = 3
    net = make(cls)
    g = trace(net, (T, 1) + shape, T=T)
    x = torch.rand((T, 3) + shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) * 3
    vals = golden.run(g, [x.numpy()], all_values=True)
    ex = compile_torch(g, mode=mode, dtype=torch.float64).eval()
    with torch.no_grad():
        y = ex(x)
    np.testing.assert_allclose(y.numpy(), vals["out"], rtol=0, atol=1e-9)
    y_eager, spikes = eager_with_spikes(net, x)
    np.testing.assert_allclose(y.numpy(), y_eager, rtol=0, atol=1e-9)


@pytest.mark.parametrize("cls,shape", [(SeqToANNNet, (2, 8, 8)), (LIFClassifier, (12,))])
def test_executor_gradients_equal_spikingjelly_sigmoid_surrogate_and_detach_reset(cls, shape):
    """Training through the executor: the Sigmoid surrogate, detach_reset and PLIF's learnable decay give
    spikingjelly's gradients (both in eval mode: BN running statistics, no dropout)."""
    T = 3
    net = make(cls)
    g = trace(net, (T, 1) + shape, T=T)
    ex = compile_torch(g, mode="train", dtype=torch.float64, channels_last=False).eval()
    x = torch.rand((T, 4) + shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7)) * 3
    functional.reset_net(net)
    y = net(x)
    w = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    (y * w).sum().backward()
    functional.reset_net(net)
    (ex(x) * w).sum().backward()
    ours = dict(ex.named_parameters())
    checked = 0
    for name, p in net.named_parameters():
        if p.grad is None:
            continue
        torch.testing.assert_close(ours[name].grad, p.grad, rtol=1e-7, atol=1e-10, msg=name)
        checked += p.grad.abs().sum() > 0
    assert checked >= 3 and any(k.endswith(".w") for k in ours)


def test_sequence_timing_can_be_declared_and_is_checked():
    net = make(LIFClassifier)
    g = trace(net, (4, 1, 12), T=4, timing="per-step")
    assert g["x_seq"].type.timing == ir.PER_STEP
    with pytest.raises(UnsupportedOpError, match="fc1|lif1"):
        trace(net, (1, 12), T=4, timing="static")  # a static input cannot drive multi-step neurons


# ------------------------------------------------------------------------------------------ papers' UNet
UNET = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=3, img_ch=1, img_size=8)


def paper_and_sdmc_unets(seed=0):
    """The papers'-style UNet carrying a (randomised) sdmc SDM UNet's state_dict, loaded strictly."""
    torch.manual_seed(seed)
    ours = build_model(ModelConfig(arch="sdm", **UNET)).double().eval()
    randomize_bn(ours, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith("tsmp"):
                p.copy_(0.7 + 0.6 * torch.rand(p.shape, generator=g, dtype=p.dtype))
            elif name.endswith("bias") and "bn" not in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        ours.tail_conv.tsmconv.weight.mul_(2e4)  # SDM inherits trained weights, not the near-zero SDDPM init
    paper = SpkUNetTSM(
        T=1000, ch=8, ch_mult=[1, 2], attn=[], num_res_blocks=1, dropout=0.1, timestep=3, img_ch=1
    ).double()
    paper.load_state_dict(ours.state_dict(), strict=True)
    return paper.eval(), ours


def test_papers_style_unet_compiles_to_the_same_ir_as_sdmcs():
    paper, ours = paper_and_sdmc_unets()
    gp, go = trace(paper, (1, 1, 8, 8)), trace(ours, (1, 1, 8, 8))
    assert gp.T == go.T == 3
    assert dict(gp.nodes) == dict(go.nodes)  # the same nodes, names and attributes (insertion order aside)
    assert gp.params.keys() == go.params.keys() == ours.state_dict().keys()
    assert all(np.array_equal(gp.params[k], go.params[k]) for k in gp.params)
    ops = {n.op for n in gp.nodes.values()}
    assert {"tsm_scale", "membrane_readout", "swish", "repeat", "conv3d"} <= ops and "sigmoid" not in ops
    assert gp["membrane_output_layer"].decay == 0.8 and gp["conv"].op == "tsm_scale"
    assert not any(k.startswith("_tensor_constant") for k in dir(paper))  # the trace left the model as it was


def test_papers_style_unet_golden_equals_eager():
    paper, _ = paper_and_sdmc_unets(seed=2)
    g = trace(paper, (1, 1, 8, 8))
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([3, 870])
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the model computes its read-out weights in the default dtype
    try:
        vals = assert_golden_equals_eager(paper, g, [x, t])
    finally:
        torch.set_default_dtype(default)
    assert np.abs(vals["out"]).max() > 0.1
    ex = compile_torch(g, mode="inference", dtype=torch.float64)
    with torch.no_grad():
        np.testing.assert_allclose(ex(x, t).numpy(), vals["out"], rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------------ energy
@pytest.mark.parametrize("cls,shape", [(CSNN, (1, 8, 8)), (SeqToANNNet, (2, 8, 8)), (LIFClassifier, (12,))])
def test_energy_report_of_zoo_classifiers(cls, shape):
    from sdmc.energy import Activity, build_report, count_graph, load_profile
    from sdmc.energy.measure import _record_golden

    T, B = 3, 2
    net = make(cls)
    g = trace(net, (T, 1) + shape, T=T)
    costs = count_graph(g)
    x = torch.rand((T, B) + shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 2
    act = Activity(T=T)
    _record_golden(act, g, costs, golden.run(g, [x.numpy()], all_values=True), torch.zeros(B, dtype=torch.long))
    rep = build_report(
        costs,
        act,
        load_profile("45nm-fp32"),
        {"snn_steps": T},
        dict(data="zoo", n_images=B, steps=[0], solver="-", seed=0),
        1,
        1,
        None,
    )
    rows = {r["name"]: r for r in rep.layers}
    for c in costs.values():
        if c.op == "pool2d":  # one add / compare per window tap, every step
            n = g[c.name]
            assert c.cls == "pool" and rows[c.name]["adds"] == np.prod(n.type.shape) * np.prod(n.kernel) * T
        if c.cls == "neuron":
            assert rows[c.name]["rate"] == pytest.approx(eager_with_spikes(net, x)[1][c.name].mean())
    seen = {}  # eager inputs of the dense layers (the IR node is named after the module)
    hooks = [
        net.get_submodule(r["name"]).register_forward_pre_hook(
            lambda m, a, name=r["name"]: seen.setdefault(name, []).append(a[0].numpy())
        )
        for r in rep.layers
        if r["op"] == "linear" and r["input_kind"] != "real"
    ]
    eager_with_spikes(net, x)
    for h in hooks:
        h.remove()
    assert seen
    for name, ins in seen.items():  # a dense layer on events: one op per non-zero input and output, per sample
        r = rows[name]
        assert r["sops"] + r["macs"] == pytest.approx(np.count_nonzero(np.stack(ins)) / B * g[name].type.shape[-1])
    assert rep.totals["faithful"]["per_call_mJ"] > 0 and rep.to_markdown()


def test_loihi_backends_refuse_pooling_by_node_name():
    from sdmc import passes
    from sdmc.backends import lava

    net = make(CSNN)
    net.conv_fc[6].v_reset = 0.0  # Loihi's CUBA neurons reset to 0: make every neuron expressible but the pools
    g = trace(net, (3, 1, 1, 8, 8), T=3)
    with pytest.raises(UnsupportedOpError, match=r"node 'conv_fc.3' \(pool2d\): not expressible"):
        lava.extract_chain(g)
    with pytest.raises(UnsupportedOpError, match=r"node 'conv_fc.4' \(conv2d\): reads 'conv_fc.3' \(pool2d\)"):
        lava.compile_net(passes.run(g, "neuromorphic"))
