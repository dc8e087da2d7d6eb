"""Energy analysis: exact SOP counts, MAC counts against torch's FlopCounterMode, firing-rate measurement,
profiles, reports and the ``sdmc energy`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from spikingjelly.activation_based import functional, neuron
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sdmc import ir
from sdmc.config import ModelConfig, SdmcConfig
from sdmc.energy import (
    FiringRateMonitor,
    analyze,
    ann_counterpart,
    builtin_profiles,
    calibration_steps,
    conv_sops,
    count_graph,
    count_module_macs,
    eager_dense_macs,
    fanout_map,
    linear_sops,
    load_profile,
    model_macs,
)
from sdmc.energy.count import uniform_sops
from sdmc.energy.measure import measure_network
from sdmc.errors import ConfigError, SdmcError
from sdmc.models import build_model

SMALL = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, img_ch=1, img_size=16)


def flop_macs(model, x, t) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x, t)
    return fc.get_total_flops() // 2


# ------------------------------------------------------------------------------------- exact SOPs
def test_fanout_map_by_hand():
    # 3x3, stride 1, padding 1 on 4x4: corners reach 4 outputs, edges 6, interior 9
    f = fanout_map(4, 4, 3, 1, 1)
    assert f.tolist() == [[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]]
    # 3x3, stride 2, padding 1 on 4x4 (2x2 outputs): rows/cols reached 1,2,1,1 times
    f = fanout_map(4, 4, 3, 2, 1)
    r = torch.tensor([1.0, 2, 1, 1], dtype=torch.float64)
    assert torch.equal(f, r[:, None] * r[None, :])
    # 3x3, stride 2, no padding on 5x5 (2x2 outputs): 1,1,2,1,1
    r = torch.tensor([1.0, 1, 2, 1, 1], dtype=torch.float64)
    assert torch.equal(fanout_map(5, 5, 3, 2, 0), r[:, None] * r[None, :])
    # 1x1 stride 2 on 3x3: only even positions are read
    assert fanout_map(3, 3, 1, 2, 0).tolist() == [[1, 0, 1], [0, 0, 0], [1, 0, 1]]
    # a kernel that just fits has one output position, which reads every input once
    assert fanout_map(3, 3, 3).tolist() == [[1, 1, 1]] * 3
    # a kernel taller or wider than the (padded) input has no output position: refused, naming the sizes
    for H, W, k in ((2, 5, (3, 1)), (5, 2, (1, 3))):
        with pytest.raises(SdmcError, match=f"does not fit a {H}x{W} input"):
            fanout_map(H, W, k)
    # geometry no conv has: one line naming it (a zero stride would divide by zero, a negative one invert wrongly)
    for kw in (dict(kernel=0), dict(kernel=3, stride=0), dict(kernel=3, stride=(1, -1)), dict(kernel=3, dilation=0),
               dict(kernel=3, padding=(0, -1))):  # fmt: skip
        with pytest.raises(SdmcError, match="must be >= 1 and padding"):
            fanout_map(5, 5, **kw)
    assert fanout_map(5, 5, 1, 1, 0, 1).tolist() == [[1.0] * 5] * 5  # the smallest legal values are legal


def test_conv_macs_by_hand():
    # O * Ho * Wo * C/groups * kh * kw: 4 * 3 * 2 * 6 * 3 * 1 dense, a third of the channels per group with 3
    from sdmc.energy.count import conv_macs

    assert conv_macs((6, 5, 2), (4, 3, 2), (3, 1)) == 4 * 3 * 2 * 6 * 3 * 1
    assert conv_macs((6, 5, 2), (4, 3, 2), (3, 1), groups=3) == 4 * 3 * 2 * 2 * 3 * 1


def test_conv_sops_known_spike_map():
    x = torch.zeros(2, 1, 3, 4, 4)  # [T, B, C, H, W]
    x[0, 0, 0, 0, 0] = 1  # corner: 4 positions
    x[0, 0, 1, 1, 1] = 1  # interior: 9
    x[1, 0, 2, 0, 2] = 1  # top edge: 6
    assert conv_sops(x, out_channels=5, kernel=3, stride=1, padding=1).tolist() == [(4 + 9 + 6) * 5]
    # groups: each input channel reaches out_channels / groups channels (4 channels: two corner and
    # two interior spikes, each reaching 4 / 2 output channels)
    assert conv_sops(x[:, :, :2].repeat(1, 1, 2, 1, 1), 4, 3, 1, 1, groups=2).item() == (4 + 9) * 2 * 2
    # stride 2, padding 1: the corner spike reaches 1 output position, (1,1) reaches 4
    assert conv_sops(x[:, :, :2], out_channels=1, kernel=3, stride=2, padding=1).item() == 1 + 4
    # linear: nnz * O
    assert linear_sops(torch.tensor([[[0.0, 1, 1], [1, 0, 0]]]), 7).tolist() == [14, 7]
    # linear over k = 2 steps [k, B, I]: each sample's events are summed over the steps (sample 0: 1 + 2,
    # sample 1: 0 + 1), not each step's over the samples
    x = torch.tensor([[[1.0, 0, 0], [0, 0, 0]], [[1.0, 1, 0], [0, 0, 1]]])
    assert linear_sops(x, 5).tolist() == [15, 5]


def test_conv_sops_defaults_are_stride_1_no_padding_no_dilation_one_group():
    # 3x3 on 4x4 without padding (2x2 outputs): rows / columns are reached 1, 2, 2, 1 times
    r = torch.tensor([1.0, 2, 2, 1], dtype=torch.float64)
    assert torch.equal(fanout_map(4, 4, 3), r[:, None] * r[None, :])
    x = torch.zeros(1, 1, 2, 4, 4)
    x[0, 0, 0, 0, 0] = 1  # corner: 1 output position
    x[0, 0, 1, 1, 2] = 1  # interior: 4
    assert conv_sops(x, 3, 3).tolist() == [(1 + 4) * 3]
    assert conv_sops(torch.ones(1, 1, 2, 4, 4), 3, 3).item() == 2 * 36 * 3


def brute_force_sops(x: np.ndarray, O: int, k: int, s: int, p: int, d: int, g: int) -> int:
    """Explicit loops: every (spike, output channel, output position, tap) connection."""
    Tn, B, C, H, W = x.shape
    Ho = (H + 2 * p - d * (k - 1) - 1) // s + 1
    Wo = (W + 2 * p - d * (k - 1) - 1) // s + 1
    total = 0
    for t in range(Tn):
        for c in range(C):
            for o in range(O):
                if o // (O // g) != c // (C // g):
                    continue
                for i in range(Ho):
                    for j in range(Wo):
                        for u in range(k):
                            for v in range(k):
                                y, z = i * s - p + u * d, j * s - p + v * d
                                if 0 <= y < H and 0 <= z < W and x[t, 0, c, y, z]:
                                    total += 1
    return total


@settings(max_examples=40, deadline=None)
@given(
    H=st.integers(1, 7),
    W=st.integers(1, 7),
    k=st.integers(1, 3),
    s=st.integers(1, 3),
    p=st.integers(0, 2),
    d=st.integers(1, 2),
    g=st.sampled_from([1, 2]),
    O=st.sampled_from([2, 4]),
    Tn=st.integers(1, 2),
    seed=st.integers(0, 2**16),
    density=st.floats(0.05, 1.0),
)
def test_conv_sops_matches_brute_force(H, W, k, s, p, d, g, O, Tn, seed, density):
    if H + 2 * p < d * (k - 1) + 1 or W + 2 * p < d * (k - 1) + 1 or p >= d * (k - 1) + 1:
        return  # kernel does not fit, or padding wider than torch allows
    C = 2 * g
    rng = np.random.default_rng(seed)
    x = (rng.random((Tn, 1, C, H, W)) < density).astype(np.float32)
    got = conv_sops(torch.from_numpy(x), O, k, s, p, d, g).item()
    assert got == brute_force_sops(x, O, k, s, p, d, g)
    # independent: a conv with all-one weights sums exactly the spike-to-output connections
    ones = torch.ones(O, C // g, k, k)
    y = F.conv2d(torch.from_numpy(x).flatten(0, 1), ones, stride=s, padding=p, dilation=d, groups=g)
    assert got == pytest.approx(y.sum().item())


# ------------------------------------------------------------------------------------- MAC counts
@pytest.mark.parametrize("arch", ["ann", "sddpm", "sdm"])
def test_module_macs_equal_flop_counter_small(arch):
    cfg = (
        ann_counterpart(ModelConfig(arch="sdm", **SMALL))
        if arch == "ann"
        else ModelConfig(arch=arch, snn_steps=3, **SMALL)
    )
    cfg.attn = (1,) if arch == "ann" else ()
    m = build_model(cfg).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 500])
    want = flop_macs(m, x, t)
    assert sum(count_module_macs(m, x, t).values()) == want
    assert model_macs(cfg, batch=2) == want  # the meta-device count agrees


def test_ir_dense_macs_equal_flop_counter_small():
    from sdmc.frontends import trace

    cfg = ModelConfig(arch="sdm", snn_steps=2, **SMALL)
    m = build_model(cfg).eval()
    costs = count_graph(trace(m, (1, 1, 16, 16)))
    assert eager_dense_macs(costs) == flop_macs(m, torch.randn(1, 1, 16, 16), torch.tensor([7]))
    # with the head hoisted it runs once instead of T times
    head = costs["conv.tsmconv"]
    assert head.reads_image and head.executions == 1 and head.eager_executions == 2


@pytest.mark.parametrize("arch", ["ann", "sdm"])  # full size, but seconds: runs by default (6 CPU-s for 'ann')
def test_macs_equal_flop_counter_cifar10(arch):
    cfg = ModelConfig(arch=arch, snn_steps=4)  # ch 128, [1, 2, 2, 4], 2 blocks, 32x32
    m = build_model(cfg).eval()
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([10])
    want = flop_macs(m, x, t)
    if arch == "ann":
        assert model_macs(cfg) == want
    else:
        from sdmc.frontends import trace

        assert eager_dense_macs(count_graph(trace(m, (1, 3, 32, 32)))) == want


def test_ann_counterpart_is_the_pytorch_ddpm_unet_of_the_same_width():
    """GroupNorm(32) as in pytorch-ddpm where the widths allow it, else the largest group count dividing them."""
    cifar = ModelConfig(arch="sdm", snn_steps=4)  # ch 128 x (1, 2, 2, 4)
    a = ann_counterpart(cifar)
    assert (a.arch, a.norm_groups, a.ch, a.ch_mult, a.attn, a.dropout) == ("ann", 32, 128, cifar.ch_mult, (), 0.0)
    assert ann_counterpart(ModelConfig(arch="sdm", **SMALL)).norm_groups == 16  # widths 16, 32
    assert ann_counterpart(ModelConfig(arch="sdm", **dict(SMALL, ch=12))).norm_groups == 4  # widths 12, 24
    # no level at width ch: the head's ch = 12 channels are still normalised (8 groups would not divide them)
    a = ann_counterpart(ModelConfig(arch="sdm", **dict(SMALL, ch=12, ch_mult=(2, 4))))
    assert a.norm_groups == 4 and model_macs(a) > 0  # builds


def test_ann_baseline_cifar10_is_the_papers_29_23_mJ():
    macs = model_macs(ann_counterpart(ModelConfig(arch="sdm", snn_steps=4)))
    assert macs == 6_349_783_040  # = FlopCounterMode / 2 (test_macs_equal_flop_counter_cifar10)
    assert macs * load_profile("45nm-fp32").mac / 1e9 == pytest.approx(29.23, abs=0.05)


# ------------------------------------------------------------------------------------ cost classes
def test_count_graph_classifies_by_value_kind():
    from sdmc.frontends import trace

    cfg = ModelConfig(arch="sddpm", snn_steps=2, **SMALL)
    costs = count_graph(trace(build_model(cfg).eval(), (1, 1, 16, 16)))
    assert costs["downblocks.0.conv1"].input_kind == "spike" and costs["downblocks.0.conv1"].executions == 2
    assert costs["downblocks.2.shortcut"].input_kind == "real"  # the residual stream
    assert costs["tail_conv"].input_kind == "real" and costs["T_output_layer"].input_kind == "real"
    assert costs["upblocks.2.conv"].input_kind == "spike"  # through the nearest upsample
    t1 = costs["time_embedding.timembedding.1"]
    assert t1.cls == "synapse" and t1.executions == 1 and t1.per_exec == 16 * 64
    assert costs["downblocks.0.bn1"].folded and not costs["tail_bn"].folded
    assert costs["downblocks.1.neuron"].cls == "neuron" and costs["downblocks.1.neuron"].executions == 2
    assert costs["upblocks.2.conv"].per_exec == 32 * 16 * 16 * 32 * 9


def _bn(g, name: str, src: str):
    arrs = {k: g.add_param(f"{name}.{k}", np.full(2, v, np.float32)) for k, v in dict(w=1, b=0, m=0, v=1).items()}
    return ir.BatchNorm(
        name=name, inputs=(src,), weight=arrs["w"], bias=arrs["b"], running_mean=arrs["m"], running_var=arrs["v"]
    )


def test_count_graph_scaled_spikes_and_tsm_folding():
    """A conv on scaled spikes (a converted QANN's ``s * θ``) is spike-driven, one on a scaled real value is not;
    a BN after a TSM-scaled conv folds into the conv, a BN after a TSM on an addition does not."""
    T = 2
    g = ir.Graph(T)
    w = g.add_param("w", np.full((2, 2, 3, 3), 0.25, np.float32))
    g.add(ir.Input(name="x", shape=(2, 4, 4)))
    g.add(ir.Conv2d(name="c0", inputs=("x",), weight=w, padding=(1, 1)))
    g.add(ir.Repeat(name="rep", inputs=("c0",)))
    g.add(ir.IF(name="sn", inputs=("rep",), threshold=1.0, v_reset=0.0))
    g.add(ir.Scale(name="s_spk", inputs=("sn",), factor=0.5))
    g.add(ir.Conv2d(name="c_spk", inputs=("s_spk",), weight=w, padding=(1, 1)))
    g.add(ir.Scale(name="s_real", inputs=("rep",), factor=0.5))
    g.add(ir.Conv2d(name="c_real", inputs=("s_real",), weight=w, padding=(1, 1)))
    tsm = g.add_param("tsm", np.ones((T, 1, 1, 1, 1), np.float32))
    g.add(ir.TSMScale(name="tsm_c", inputs=("c_spk",), scale=tsm))
    g.add(_bn(g, "bn_c", "tsm_c"))
    g.add(ir.Add(name="add", inputs=("bn_c", "c_real")))
    g.add(ir.TSMScale(name="tsm_a", inputs=("add",), scale=tsm))
    g.add(_bn(g, "bn_a", "tsm_a"))
    g.add(ir.Output(name="out", inputs=("bn_a",)))
    costs = count_graph(ir.check(g))
    assert costs["c_spk"].input_kind == "spike" and costs["c_real"].input_kind == "real"
    assert costs["tsm_c"].folded and costs["bn_c"].folded
    assert not costs["tsm_a"].folded and not costs["bn_a"].folded


def test_count_graph_fanout_and_which_conv_reads_the_image():
    """Fan-out of a conv = its output channels per group (each input event reaches O/g kernels per window
    position); only a conv on the static input image is the paper's MAC-counted 'reads the image' layer."""
    g = ir.Graph(2)
    g.add(ir.Input(name="x", shape=(2, 4, 4)))
    g.add(ir.Input(name="xs", shape=(2, 4, 4), kind="spike", timing="per-step"))
    g.add(ir.Conv2d(name="c0", inputs=("x",), weight=g.add_param("w0", np.ones((4, 2, 3, 1), np.float32))))
    g.add(ir.Conv2d(name="c1", inputs=("c0",), weight=g.add_param("w1", np.ones((4, 2, 1, 1), np.float32)), groups=2))
    g.add(ir.Conv2d(name="c2", inputs=("xs",), weight=g.add_param("w2", np.ones((4, 2, 3, 3), np.float32))))
    g.add(ir.Output(name="o1", inputs=("c1",)))
    g.add(ir.Output(name="o2", inputs=("c2",)))
    costs = count_graph(ir.check(g))
    assert [costs[k].fanout for k in ("c0", "c1", "c2")] == [4, 2, 4]
    assert all(type(costs[k].fanout) is int for k in ("c0", "c1", "c2"))
    assert costs["c0"].per_exec == 4 * 2 * 4 * 2 * 3 * 1  # O * Ho * Wo * C * kh * kw (3x1 kernel on 4x4)
    assert [costs[k].reads_image for k in ("c0", "c1", "c2")] == [True, False, False]


def test_a_denoiser_is_told_by_its_step_input_or_an_output_the_size_of_its_image():
    """No step input: an output [C', H, W] at the image's size makes it a denoiser (t folded in); a feature
    map at another size ([2, 2, 2] from a stride-2 conv on [1, 4, 4]) does not."""
    from sdmc.energy.report import _is_denoiser

    for k, stride, padding, want in ((3, (1, 1), (1, 1), True), (2, (2, 2), (0, 0), False)):
        g = ir.Graph(2)
        g.add(ir.Input(name="x", shape=(1, 4, 4)))
        w = g.add_param("w", np.ones((2, 1, k, k)))
        g.add(ir.Conv2d(name="c", inputs=("x",), weight=w, stride=stride, padding=padding))
        g.add(ir.Output(name="out", inputs=("c",)))
        g = ir.check(g)
        assert g["c"].type.shape == ((2, 4, 4) if want else (2, 2, 2))
        assert _is_denoiser(g, g["x"]) is want


def classifier_graph(per_step: bool = False) -> ir.Graph:
    """``x [1, 4, 4] -> conv 3x3 (2 ch) -> IF -> sum-pool 3x3 / 2 (pad 1) -> [2, 2, 2] -> linear 8 -> 3 -> read-out``:
    a network, not a denoiser (no step input, a ``[classes]`` output); ``per_step``: a per-step spike input
    instead of the static image (then no repeat), and an image-shaped ``[2, 4, 4]`` output."""
    g = ir.Graph(2)
    if per_step:
        g.add(ir.Input(name="x", shape=(1, 4, 4), kind="spike", timing="per-step"))
    else:
        g.add(ir.Input(name="x", shape=(1, 4, 4)))
    w = g.add_param("c.weight", np.full((2, 1, 3, 3), 0.3, np.float32))
    g.add(ir.Conv2d(name="c", inputs=("x",), weight=w, padding=(1, 1)))
    if not per_step:
        g.add(ir.Repeat(name="rep", inputs=("c",)))
    g.add(ir.IF(name="sn", inputs=("c" if per_step else "rep",), threshold=0.5, v_reset=0.0))
    if per_step:
        last = "sn"
    else:
        g.add(ir.Pool2d(name="pool", inputs=("sn",), mode="sum", kernel=3, stride=2, padding=1))
        g.add(ir.Reshape(name="flat", inputs=("pool",), shape=(8,)))
        g.add(ir.Linear(name="fc", inputs=("flat",), weight=g.add_param("fc.w", np.ones((3, 8), np.float32))))
        last = "fc"
    g.add(ir.MembraneReadout(name="ro", inputs=(last,), decay=1.0))
    g.add(ir.Output(name="out", inputs=("ro",)))
    return ir.check(g)


def test_pool_and_linear_costs_by_hand():
    """A pool is one add (or compare) per window tap per step: [2, 2, 2] outputs x 3x3 taps x T = 2; a linear's
    what-if SOPs are rate x steps x inputs x outputs."""
    g = classifier_graph()
    costs = count_graph(g)
    pool, fc = costs["pool"], costs["fc"]
    assert (pool.cls, pool.per_exec, pool.executions) == ("pool", 8 * 9, 2)
    assert (fc.cls, fc.fanout, fc.meta["in_shape"]) == ("synapse", 3, (8,))
    assert uniform_sops(fc, 0.5) == 0.5 * 2 * 8 * 3
    r = analyze(g, assume_rate=0.5, profile="loihi1")
    row = {x["name"]: x for x in r.layers}["pool"]
    assert row["adds"] == 2 * 8 * 9 and row["faithful_pJ"] == pytest.approx(0.9 * 2 * 8 * 9, rel=1e-12, abs=0)


def test_energy_of_a_network_that_is_no_denoiser():
    """A classifier is measured with one forward pass per random input (key 0) or at an assumed rate; dataset
    images are refused.  A per-step input is never a denoiser's image, even with an image-shaped output."""
    g = classifier_graph()
    r = analyze(g, n_images=3, batch_size=2)
    c = r.calibration
    assert (c["mode"], c["n_images"], c["steps"], c["nfe"]) == ("inputs", 3, [0], 1)
    assert r.model["input"] == "[B, 1, 4, 4]" and r.ann is None
    assert analyze(g, data="noise", n_images=1).calibration["mode"] == "inputs"
    a = analyze(g, assume_rate=0.25).calibration
    assert (a["mode"], a["n_images"], a["steps"]) == ("assumed", 0, [])
    for bad in (dict(data="digits"), dict(images=torch.zeros(2, 1, 4, 4))):
        with pytest.raises(ConfigError, match="not a denoiser's image"):
            analyze(g, **bad)
    r = analyze(classifier_graph(per_step=True), n_images=2)
    assert r.calibration["mode"] == "inputs" and r.model["input"] == "[T, B, 1, 4, 4]"


def test_measure_network_batches_give_the_counts_of_one_batch():
    """5 inputs in batches of 2 (the last one short) count exactly what one batch of 5 counts, every sample once."""
    g = classifier_graph()
    a, b = measure_network(g, 5, batch_size=2, seed=3), measure_network(g, 5, batch_size=5, seed=3)
    assert a.neurons["sn"].samples == {0: 5} and a.synapses["fc"].by_step[0][0] == 5
    assert np.array_equal(a.neurons["sn"].spikes[0], b.neurons["sn"].spikes[0])
    for name in ("c", "fc"):
        assert np.array_equal(a.synapses[name].by_step[0], b.synapses[name].by_step[0]), name
    assert a.neurons["sn"].spikes[0].sum() > 0  # something fired: the comparison is not of zeros


# ----------------------------------------------------------------------------------- measurement
class _Toy(nn.Module):
    """``IF(repeat_T(x))``, then a 3x3 conv on the spikes; ``forward(x, t)``."""

    def __init__(self, T: int) -> None:
        super().__init__()
        self.timestep = T
        self.neuron = neuron.IFNode(step_mode="m")
        self.conv = nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, x, t=None):
        s = self.neuron(x.unsqueeze(0).repeat(self.timestep, 1, 1, 1, 1))
        y = self.conv(s.flatten(0, 1))
        functional.reset_net(self)
        return y


def test_monitor_rates_per_snn_step_and_diffusion_step():
    m = _Toy(T=4)
    x = torch.zeros(2, 1, 2, 2)
    x[0] = 0.5  # IF with constant 0.5: spikes at steps 1 and 3
    x[1, 0, 0, 0] = 1.0  # one neuron fires every step
    with FiringRateMonitor(m) as mon:
        m(x, torch.tensor([900, 10]))
    act = mon.activity
    n = act.neurons["neuron"]
    assert n.rate_per_step(900).tolist() == [0, 1, 0, 1]
    assert n.rate_per_step(10).tolist() == [0.25] * 4
    assert n.rate() == pytest.approx((0.5 + 0.25) / 2)
    assert act.steps == [900, 10]
    s = act.synapses["conv"]
    # sample 0: 4 pixels x 2 steps, each pixel of a 2x2 map reaches all 4 outputs (3x3, pad 1) x 3 channels
    assert s.sops(900) == 4 * 2 * 4 * 3
    assert s.sops(10) == 4 * 4 * 3
    assert s.rate(900) == pytest.approx(0.5) and s.rate(10) == pytest.approx(0.25)
    # hooks are gone after the context
    assert not m.neuron._forward_hooks and not m.conv._forward_pre_hooks
    # the cheap on-line form (neurons only), e.g. around a sampling loop
    with FiringRateMonitor(m, synapses=False) as mon:
        m(x, torch.tensor([5, 5]))
        m(x, torch.tensor([4, 4]))
    assert not mon.activity.synapses and mon.summary() == {"neuron": pytest.approx(0.375)}
    assert mon.activity.steps == [5, 4]


def test_monitor_keys_from_the_step_argument():
    """The key of a call is its ``t`` (a tensor per sample, one scalar, a Python int, by keyword), or -1 without one."""
    m = _Toy(T=2)
    x = torch.ones(2, 1, 2, 2)
    with FiringRateMonitor(m) as mon:
        m(x, torch.tensor([7, 8]))
        m(x, torch.tensor(5))
        m(x, 4)
        m(x, t=torch.tensor([3, 3]))
        m(x)
        m(x=x, t=torch.tensor([2, 2]))
    assert mon.activity.steps == [8, 7, 5, 4, 3, 2, -1]
    assert mon.activity.neurons["neuron"].samples == {7: 1, 8: 1, 5: 2, 4: 2, 3: 2, -1: 2, 2: 2}


class _SingleStep(nn.Module):
    """A one-step network: ``IF(conv(x))`` with a single-step neuron, output ``[B, C, H, W]`` (no T axis)."""

    def __init__(self, C: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, C, 1, bias=False)
        self.conv.weight.data.fill_(1.0)
        self.neuron = neuron.IFNode(step_mode="s")

    def forward(self, x, t):
        s = self.neuron(self.conv(x))
        functional.reset_net(self)
        return s


class _Scalar(nn.Module):
    """One multi-step neuron per sample: ``IF`` over ``[T, B]`` (the sum of the sample's pixels, every step)."""

    def __init__(self, T: int) -> None:
        super().__init__()
        self.timestep = T
        self.neuron = neuron.IFNode(step_mode="m")

    def forward(self, x, t):
        s = self.neuron(x.flatten(1).sum(1).unsqueeze(0).repeat(self.timestep, 1))
        functional.reset_net(self)
        return s


def test_monitor_single_step_neurons_keep_channels_apart_from_samples():
    """A single-step neuron's ``[B, C, H, W]`` output is one step of B samples: the rates of each sample stay its
    own (sample 0 fires everywhere, sample 1 nowhere), over C*H*W neurons and T = 1.  A multi-step neuron's
    ``[T, B]`` output (one neuron per sample) is T steps of B samples."""
    for C in (3, 2):  # C == B = 2: the output's shape [2, 2, H, W] alone cannot say which axis is the batch
        m = _SingleStep(C)
        x = torch.zeros(2, 1, 2, 2)
        x[0] = 2.0
        with FiringRateMonitor(m) as mon:
            m(x, torch.tensor([10, 20]))
        n = mon.activity.neurons["neuron"]
        assert (n.T, n.size) == (1, C * 2 * 2), C
        assert n.rate_per_step(10).tolist() == [1.0] and n.rate_per_step(20).tolist() == [0.0], C
    m = _Scalar(T=4)
    x[0], x[1] = 0.125, 0.25  # pixel sums 0.5 (fires at steps 2 and 4) and 1 (every step)
    with FiringRateMonitor(m) as mon:
        m(x, torch.tensor([10, 20]))
    n = mon.activity.neurons["neuron"]
    assert n.size == 1 and n.rate_per_step(10).tolist() == [0, 1, 0, 1] and n.rate_per_step(20).tolist() == [1] * 4


def test_activity_edge_cases():
    """No recorded entries: rate and SOPs 0.  A uniform rate of 0 is allowed (nothing fires), outside [0, 1] not."""
    from sdmc.energy.measure import Activity, SynapseStats

    assert (SynapseStats().rate(), SynapseStats().rate(3), SynapseStats().sops()) == (0.0, 0.0, 0.0)
    costs = count_graph(classifier_graph())
    act = Activity.uniform(costs, 0.0, 2)
    assert act.mean_rate() == 0.0 and all(st.sops() == 0.0 for st in act.synapses.values())
    assert Activity.uniform(costs, 1.0, 2).mean_rate() == 1.0
    # events that reach no output (a 1x1 stride-2 conv reads only even positions) cost no SOPs, yet are input
    # activity: the rate is nnz / numel all the same
    x = torch.zeros(1, 1, 1, 3, 3)
    x[0, 0, 0, 1, 1] = 1
    info = dict(op="conv2d", out_channels=2, kernel=(1, 1), stride=(2, 2), padding=(0, 0), dilation=(1, 1), groups=1)
    act.add_synapse("odd", x, torch.tensor([0]), info)
    assert act.synapses["odd"].sops() == 0.0 and act.synapses["odd"].rate() == pytest.approx(1 / 9)
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="rate must be in"):
            Activity.uniform(costs, bad, 2)


def test_synapse_stats_per_sample_sops_and_per_entry_rate_by_hand():
    """[samples, nnz, numel, sops] summed: SOPs are per sample (40 over 2 samples), the rate per entry (6 of 18);
    all steps together add up."""
    from sdmc.energy.measure import SynapseStats

    st = SynapseStats()
    st.by_step[0] += np.array([2.0, 6.0, 18.0, 40.0])
    st.by_step[5] += np.array([2.0, 3.0, 18.0, 10.0])
    assert (st.sops(0), st.rate(0), st.sops(5), st.rate(5)) == (20.0, 1 / 3, 5.0, 1 / 6)
    assert (st.sops(), st.rate()) == (12.5, 0.25)


def test_noise_calibration_images_are_uniform_in_minus_one_one():
    from sdmc.energy.measure import dataset_images

    x = dataset_images("noise", 64, 4, 1, seed=2)
    assert x.shape == (64, 1, 4, 4) and torch.equal(x, dataset_images("noise", 64, 4, 1, seed=2))
    assert -1.0 <= float(x.min()) < -0.95 and 0.95 < float(x.max()) <= 1.0


def test_measure_trajectory_defaults_and_refusals(tiny_cfg, capfd):
    """By default DDIM in 50 steps on 16 images, every call recorded, silently (no progress bar); no images or
    an empty batch is refused."""
    from sdmc.diffusion.schedule import NoiseSchedule
    from sdmc.energy.measure import measure_trajectory

    m = build_model(tiny_cfg).eval()
    capfd.readouterr()
    act, imgs = measure_trajectory(m, NoiseSchedule())
    assert capfd.readouterr().err == ""
    assert imgs.shape == (16, 1, 8, 8) and act.steps == list(range(50)) and act.call_t[0] == 999
    assert all(act.neurons["downblocks.0.neuron1"].samples[k] == 16 for k in range(50))
    for bad in (dict(n=0), dict(batch_size=0)):
        with pytest.raises(ConfigError, match="n and batch_size must be >= 1"):
            measure_trajectory(m, NoiseSchedule(), steps=2, **bad)


def test_calibration_steps_subsample_the_solver_grid():
    ks = calibration_steps(1000, "ddim", 50, keep=8)
    assert len(ks) == 8 and ks[0] == 999 and ks[-1] == 19 and ks == sorted(ks, reverse=True)
    assert calibration_steps(1000, "ddim", 5, keep=8) == [999, 799, 599, 399, 199]
    with pytest.raises(ConfigError):
        calibration_steps(1000, "ddim", 50, keep=0)


# --------------------------------------------------------------------------------------- profiles
def test_builtin_profiles():
    assert {"45nm-fp32", "45nm-fp16", "45nm-int8", "loihi1"} <= set(builtin_profiles())
    p = load_profile("45nm-fp32")
    assert (p.mac, p.ac) == (4.6, 0.9) and "Horowitz" in p.citation
    assert load_profile("loihi1").ac == 23.6 and "Davies" in load_profile("loihi1").citation
    for name in builtin_profiles():
        q = load_profile(name)
        assert q.mac > 0 and q.ac > 0 and q.citation
        if name.startswith("45nm"):
            assert q.mac > q.ac  # a multiply-accumulate costs more than an add


def test_user_profile_and_errors(tmp_path):
    f = tmp_path / "chip.json"
    f.write_text(json.dumps({"name": "chip", "unit": "fJ", "costs": {"mac": 2000, "ac": 100}}))
    p = load_profile(f)
    assert (p.mac, p.ac, p.add, p.neuron_update, p.spike) == (2.0, 0.1, 0.1, 0.1, 0.0)
    bad = [
        ({"name": "x", "costs": {"mac": 1}}, "costs.ac"),
        ({"name": "x", "costs": {"mac": 1, "ac": -1}}, "costs.ac"),
        ({"name": "x", "costs": {"mac": 1, "ac": 1, "sram": 2}}, "sram"),
        ({"costs": {"mac": 1, "ac": 1}}, "name"),
        ({"name": "x", "unit": "J", "costs": {"mac": 1, "ac": 1}}, "unit"),
    ]
    for d, key in bad:
        f.write_text(json.dumps(d))
        with pytest.raises(ConfigError, match=key):
            load_profile(f)
    f.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_profile(f)
    with pytest.raises(ConfigError, match="not a built-in profile"):
        load_profile("no-such-profile")


# ----------------------------------------------------------------------------------------- report
@pytest.fixture(scope="module")
def small_report():
    torch.manual_seed(0)
    m = build_model(ModelConfig(arch="sdm", snn_steps=2, **SMALL)).eval()
    m.apply(lambda mod: setattr(mod, "v_threshold", 0.3) if isinstance(mod, neuron.IFNode) else None)
    return analyze(m, n_images=4, calib_steps=2, steps=10)


def test_report_totals_follow_the_conventions(small_report):
    r = small_report
    rows = {x["name"]: x for x in r.layers}
    prof = load_profile("45nm-fp32")
    # paper (Eq. 20): Conv1 as MACs once, everything else fr * n_exec * MACs at E_AC
    head = rows["conv.tsmconv"]
    assert head["paper_pJ"] == pytest.approx(prof.mac * 16 * 16 * 16 * 9)
    c1 = rows["downblocks.0.conv1.tsmconv"]
    assert c1["input_kind"] == "spike" and 0 < c1["input_rate"] < 1
    assert c1["paper_pJ"] == pytest.approx(prof.ac * c1["input_rate"] * c1["dense_macs"])
    # exact SOPs never exceed rate x dense MACs (dense counts padding taps); faithful uses exact SOPs
    assert 0 < c1["sops"] <= c1["input_rate"] * c1["dense_macs"] + 1e-6
    assert c1["faithful_pJ"] == pytest.approx(prof.ac * c1["sops"])
    sc = rows["downblocks.2.shortcut.tsmconv"]
    assert sc["faithful_pJ"] == pytest.approx(prof.mac * sc["dense_macs"])  # real input: MACs
    # trajectory mode (the default): DDIM-10 calls the model 10 times; per image = the exact sum over them
    assert r.calibration["mode"] == "trajectory" and [s["call"] for s in r.by_step] == list(range(10))
    assert [s["t"] for s in r.by_step] == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    for conv in ("paper", "faithful"):
        t = r.totals[conv]
        assert t["per_image_mJ"] == pytest.approx(sum(s[f"{conv}_mJ"] for s in r.by_step))
        assert t["per_image_mJ"] == pytest.approx(10 * t["per_call_mJ"])
    # the calls differ (noisy input early, nearly clean late): the sum is not one call's energy x NFE
    assert len({round(s["faithful_mJ"], 9) for s in r.by_step}) > 1
    assert r.ann["per_call_mJ"] == pytest.approx(
        model_macs(ann_counterpart(ModelConfig(arch="sdm", **SMALL))) * 4.6 / 1e9
    )
    assert all(0 < n["rate"] < 1 for n in r.neurons)


def test_data_mode_is_nfe_times_the_mean_over_calibration_steps():
    torch.manual_seed(0)
    m = build_model(ModelConfig(arch="sdm", snn_steps=2, **SMALL)).eval()
    m.apply(lambda mod: setattr(mod, "v_threshold", 0.3) if isinstance(mod, neuron.IFNode) else None)
    r = analyze(m, data="digits", n_images=4, calib_steps=2, steps=10)
    assert r.calibration["mode"] == "data" and [s["t"] for s in r.by_step] == [999, 99]
    for conv in ("paper", "faithful"):
        t = r.totals[conv]
        assert t["per_call_mJ"] == pytest.approx(np.mean([s[f"{conv}_mJ"] for s in r.by_step]))
        assert t["per_image_mJ"] == pytest.approx(10 * t["per_call_mJ"])


def test_report_formats(small_report, tmp_path):
    r = small_report
    d = json.loads(r.to_json())
    assert set(d["totals"]) == {"paper", "faithful"} and d["profile"]["name"] == "45nm-fp32"
    md = r.to_markdown()
    assert "## Totals" in md and "ANN UNet" in md and "downblocks.0.conv1.tsmconv" in md
    lines = r.to_csv().strip().splitlines()
    assert lines[0].startswith("name,op,cls") and len(lines) == len(r.layers) + 1
    r.plot(tmp_path / "e.png")
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError):
        r.write(tmp_path / "x", "yaml")


def test_trajectory_rates_equal_a_direct_hook_count(tiny_cfg):
    """Trajectory mode: every call's recorded firing rates and synaptic events equal what plain forward
    hooks on the same run count; the calls are the solver's, in order."""
    from sdmc.diffusion.schedule import NoiseSchedule
    from sdmc.diffusion.solvers import make_solver
    from sdmc.energy.measure import measure_trajectory

    torch.manual_seed(0)
    m = build_model(tiny_cfg).eval()
    m.apply(lambda mod: setattr(mod, "v_threshold", 0.4) if isinstance(mod, neuron.IFNode) else None)
    spikes: dict[str, list[torch.Tensor]] = {}
    conv_in: list[torch.Tensor] = []
    hooks = [
        mod.register_forward_hook(lambda mod, a, out, name=name: spikes.setdefault(name, []).append(out.detach()))
        for name, mod in m.named_modules()
        if isinstance(mod, neuron.BaseNode)
    ]
    hooks.append(m.downblocks[0].conv1.register_forward_pre_hook(lambda mod, a: conv_in.append(a[0].detach())))
    sched = NoiseSchedule()
    try:
        act, imgs = measure_trajectory(m, sched, solver="dpm-solver++", steps=4, n=3, batch_size=2, seed=5)
    finally:
        for h in hooks:
            h.remove()
    sol = make_solver("dpm-solver++", sched)
    sol.set_timesteps(4)
    assert act.keyed_by == "call" and act.steps == [0, 1, 2, 3] and imgs.shape == (3, 1, 8, 8)
    assert [act.call_t[k] for k in act.steps] == sol.timesteps.tolist()
    for name, outs in spikes.items():
        assert len(outs) == 2 * 4  # 2 batches (2 + 1 images) x 4 calls
        for k in range(4):
            a, b = outs[k], outs[4 + k]  # call k of batch 1 and of batch 2
            direct = float((a.double().sum() + b.double().sum()) / (a.numel() + b.numel()))
            assert act.neurons[name].rate(k) == pytest.approx(direct, abs=1e-12), (name, k)
    T = tiny_cfg.snn_steps
    for k in range(4):  # spike input of a 3x3 conv: nnz and exact SOPs per sample per call
        xs = [conv_in[k], conv_in[4 + k]]
        nnz = sum(float((x != 0).sum()) for x in xs)
        numel = sum(x.numel() for x in xs)
        assert act.synapses["downblocks.0.conv1"].rate(k) == pytest.approx(nnz / numel)
        sops = sum(
            float(conv_sops(x.reshape(T, -1, *x.shape[1:]), 8, (3, 3), (1, 1), (1, 1), (1, 1), 1).sum()) for x in xs
        )
        assert act.synapses["downblocks.0.conv1"].sops(k) == pytest.approx(sops / 3)


def test_trajectory_golden_and_eager_agree(tiny_cfg):
    """An IR graph measured along its trajectory by the golden simulator gives the eager model's counts."""
    from sdmc.frontends import trace

    torch.manual_seed(1)
    m = build_model(tiny_cfg).eval()
    m.apply(lambda mod: setattr(mod, "v_threshold", 0.3) if isinstance(mod, neuron.IFNode) else None)
    a = analyze(m, n_images=2, steps=3, ann=False)
    b = analyze(trace(m, (1, 1, 8, 8)), n_images=2, steps=3, ann=False)
    assert a.calibration["mode"] == b.calibration["mode"] == "trajectory"
    for x, y in zip(a.by_step, b.by_step):
        assert x["call"] == y["call"] and x["t"] == y["t"]
        assert x["faithful_mJ"] == pytest.approx(y["faithful_mJ"], rel=0.02)


def test_golden_and_eager_measurements_agree():
    """An IR graph measured by the golden simulator gives the eager model's counts (same calibration)."""
    from sdmc.frontends import trace

    torch.manual_seed(1)
    cfg = ModelConfig(arch="sddpm", snn_steps=2, ch=8, ch_mult=(1, 2), num_res_blocks=1, img_ch=1, img_size=8)
    m = build_model(cfg).eval()
    m.apply(lambda mod: setattr(mod, "v_threshold", 0.3) if isinstance(mod, neuron.IFNode) else None)
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    a = analyze(m, images=images, calib_steps=1, steps=5, ann=False)
    b = analyze(trace(m, (1, 1, 8, 8)), images=images, calib_steps=1, steps=5, ann=False)
    assert a.calibration["mode"] == "data"
    ra = {x["name"]: x for x in a.layers}
    for x in b.layers:
        assert x["sops"] == pytest.approx(ra[x["name"]]["sops"], rel=0.02, abs=1)
    assert a.totals["faithful"]["per_call_mJ"] == pytest.approx(b.totals["faithful"]["per_call_mJ"], rel=0.02)


def test_cli_energy_on_a_compiled_sdmc_file(tmp_path, capsys):
    """A .sdmc graph is measured with the golden simulator (noise calibration: no dataset needed)."""
    from sdmc import ir
    from sdmc.cli import main
    from sdmc.frontends import trace

    cfg = ModelConfig(arch="sdm", snn_steps=2, ch=8, ch_mult=(1, 2), num_res_blocks=1, img_ch=1, img_size=8)
    g = trace(build_model(cfg).eval(), (1, 1, 8, 8))
    ir.save(g, tmp_path / "m.sdmc")
    assert (
        main(
            [
                "energy",
                str(tmp_path / "m.sdmc"),
                "--images",
                "2",
                "--calib-steps",
                "1",
                "--steps",
                "5",
                "--data",
                "noise",
                "--json",
            ]
        )
        == 0
    )
    d = json.loads(capsys.readouterr().out)
    assert d["model"]["ch"] == 8 and d["ann"] is not None and d["calibration"]["n_images"] == 2
    assert any(x["name"] == "downblocks.0.conv1.tsmconv" and x["input_kind"] == "spike" for x in d["layers"])


def test_analyze_rejects_ann_and_bad_images():
    with pytest.raises(ConfigError, match="not a spiking model"):
        analyze(build_model(ann_counterpart(ModelConfig(arch="sdm", **SMALL))))
    m = build_model(ModelConfig(arch="sdm", snn_steps=2, **SMALL))
    with pytest.raises(ConfigError, match="calibration images"):
        analyze(m, images=torch.zeros(2, 3, 16, 16), n_images=1, steps=2)


def test_assumed_uniform_rate_is_eq20_by_hand():
    cfg = ModelConfig(arch="sdm", snn_steps=3, **SMALL)
    r = analyze(build_model(cfg).eval(), assume_rate=0.25, steps=10)
    syn = [x for x in r.layers if x["cls"] == "synapse"]
    head = [x for x in syn if x["name"] == "conv.tsmconv"][0]
    rest = sum(x["dense_macs"] for x in syn if x is not head)
    want = (4.6 * 16 * 16 * 16 * 9 + 0.9 * 0.25 * rest) / 1e9
    assert r.totals["paper"]["per_call_mJ"] == pytest.approx(want)
    # exact SOPs at rate 1 = all real connections = dense MACs minus the taps that hit padding
    c1 = [x for x in syn if x["name"] == "downblocks.0.conv1.tsmconv"][0]
    assert c1["sops"] == pytest.approx(0.25 * 3 * 16 * 16 * (14 * 14 * 9 + 4 * 14 * 6 + 4 * 4))
    assert r.totals["faithful"]["per_image_mJ"] == pytest.approx(10 * r.totals["faithful"]["per_call_mJ"])


@pytest.mark.parametrize("T,fr,paper_mJ", [(4, 0.47, 10.97), (8, 0.49, 22.96)])
def test_paper_convention_reproduces_table4_at_the_implied_rates(T, fr, paper_mJ):
    """SDM Table 4 (CIFAR-10, per call): 10.97 mJ (4T) and 22.96 mJ (8T) at the firing rates Eq. 20 implies."""
    r = analyze(build_model(ModelConfig(arch="sdm", snn_steps=T)).eval(), assume_rate=fr)
    assert r.totals["paper"]["per_call_mJ"] == pytest.approx(paper_mJ, rel=0.01)
    assert r.ann["per_call_mJ"] == pytest.approx(29.23, abs=0.05)


# -------------------------------------------------------------------------------------------- CLI
def test_cli_energy(tmp_path, capsys):
    from sdmc.checkpoint import save_model
    from sdmc.cli import main

    cfg = ModelConfig(arch="sddpm", snn_steps=2, **SMALL)
    path = tmp_path / "m.safetensors"
    save_model(path, build_model(cfg).eval(), SdmcConfig(model=cfg))
    common = [str(path), "--images", "2", "--calib-steps", "1", "--steps", "4"]
    assert main(["energy", *common, "--json", "--profile", "loihi1"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["profile"]["name"] == "loihi1" and d["calibration"]["nfe"] == 4
    assert main(["energy", *common, "--csv", "-o", str(tmp_path / "l.csv"), "--plot", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "l.csv").read_text().startswith("name,op") and (tmp_path / "p.png").exists()
    capsys.readouterr()
    assert main(["energy", *common, "--report", "--convention", "paper", "--no-layers", "--data", "noise"]) == 0
    out = capsys.readouterr().out
    assert "SNN (paper)" in out and "SNN (faithful)" not in out and "ANN UNet" in out
    assert main(["energy", str(path), "--assume-rate", "0.5", "--markdown"]) == 0
    assert "assumed uniform firing rate 0.5" in capsys.readouterr().out
    assert main(["energy", *common, "--profile", str(tmp_path / "missing.json")]) == 2
    assert "not a built-in profile" in capsys.readouterr().err


def test_cli_energy_on_a_3_channel_model_without_a_dataset(tmp_path, capsys):
    """A CIFAR-shaped (3-channel) checkpoint: the default measures along its own trajectories (no dataset on
    disk), and asking for the (1-channel) digits calibration set falls back to that with a note."""
    from sdmc.checkpoint import save_model
    from sdmc.cli import main

    cfg = ModelConfig(arch="sdm", snn_steps=2, ch=8, ch_mult=(1, 2), num_res_blocks=1, img_ch=3, img_size=8)
    path = tmp_path / "cifar_like.safetensors"
    save_model(path, build_model(cfg).eval(), SdmcConfig(model=cfg))
    common = [str(path), "--images", "2", "--steps", "4", "--json"]
    assert main(["energy", *common]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["calibration"]["mode"] == "trajectory" and d["calibration"]["nfe"] == 4 and len(d["by_step"]) == 4
    assert d["model"]["img_ch"] == 3 and d["totals"]["faithful"]["per_image_mJ"] > 0
    assert main(["energy", *common, "--data", "digits"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["calibration"]["mode"] == "trajectory"
    assert any("dataset 'digits' has 1-channel images, the model takes 3" in n for n in d["notes"])
