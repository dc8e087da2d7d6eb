"""The records an energy measurement keeps (:class:`NeuronStats`, :class:`Activity`) at their edges, and the
checker in front of the cost table.  (Counts by hand are in ``test_energy_by_hand.py``, the rest in
``test_energy.py``.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdmc import ir
from sdmc.energy import count_graph
from sdmc.energy.measure import Activity, NeuronStats, measure_network
from sdmc.errors import IRError


def test_neuron_rates_at_a_step_never_recorded_or_of_a_layer_without_neurons_are_zero():
    st = NeuronStats(T=3, size=4)
    st.add(5, 2, np.array([8.0, 4.0, 0.0]))
    assert st.rate_per_step(5).tolist() == [1.0, 0.5, 0.0]  # 8 spikes / (2 samples x 4 neurons)
    assert st.rate_per_step(7).tolist() == [0.0, 0.0, 0.0]
    empty = NeuronStats(T=2, size=0)
    empty.add(5, 2, np.array([0.0, 0.0]))
    assert empty.rate_per_step().tolist() == [0.0, 0.0] and empty.rate() == 0.0


def test_a_recorded_neuron_layer_knows_its_size():
    act = Activity(T=2)
    act.add_neuron("sn", torch.ones(2, 3, 4, 5), torch.tensor([9, 9, 4]))
    assert act.neurons["sn"].size == 20
    assert act.neurons["sn"].rate_per_step(9).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("keyed_by, want", [("step", [9, 4, 1]), ("call", [1, 4, 9])])
def test_steps_are_the_keys_of_synapses_and_neurons_together(keyed_by, want):
    """An activity with synapses only (an ANN layer, a measurement of convs) still lists its steps; neurons
    add theirs; diffusion steps run from noisy to clean, call indices in calling order."""
    act = Activity(T=1, keyed_by=keyed_by)
    info = dict(op="linear", out_features=2)
    act.add_synapse("fc", torch.ones(1, 2, 3), torch.tensor([9, 4]), info)
    assert act.steps == [k for k in want if k != 1]
    act.add_neuron("sn", torch.ones(1, 1, 3), torch.tensor([1]))
    assert act.steps == want


def test_cost_table_checks_the_graph_first():
    """A graph the checker refuses (here: no output) is refused by count_graph with the checker's one line,
    not a traceback from inside the counting."""
    g = ir.Graph(2)
    g.add(ir.Input(name="x", shape=(1, 4, 4)))
    g.add(ir.Conv2d(name="c", inputs=("x",), weight=g.add_param("w", np.ones((2, 1, 3, 3), np.float32))))
    with pytest.raises(IRError, match="no output node"):
        count_graph(g)


def test_cost_table_keeps_a_non_square_kernel_and_its_uniform_sops():
    """A 3x1 conv (padding 1, 0) on a 4x4 spike map: the cost keeps (kh, kw) = (3, 1), and at rate 1 every input
    event reaches O x (its fan-out) outputs: rows reach 2, 3, 3, 2 output rows, columns 1 each."""
    from sdmc.energy.count import uniform_sops

    g = ir.Graph(2)
    g.add(ir.Input(name="x", shape=(1, 4, 4), kind="spike", timing="per-step"))
    w = g.add_param("w", np.ones((2, 1, 3, 1), np.float32))
    g.add(ir.Conv2d(name="c", inputs=("x",), weight=w, padding=(1, 0)))
    g.add(ir.Output(name="out", inputs=("c",)))
    c = count_graph(ir.check(g))["c"]
    assert c.meta["kernel"] == (3, 1) and c.fanout == 2 and c.executions == 2
    assert uniform_sops(c, 1.0) == 2 * 1 * 2 * (2 + 3 + 3 + 2) * 4


def _spike_conv_graph() -> ir.Graph:
    g = ir.Graph(2)
    g.add(ir.Input(name="x", shape=(1, 4, 4), kind="spike", timing="per-step"))
    g.add(
        ir.Conv2d(name="c", inputs=("x",), weight=g.add_param("w", np.ones((2, 1, 3, 3), np.float32)), padding=(1, 1))
    )
    g.add(ir.IF(name="sn", inputs=("c",), threshold=0.5, v_reset=0.0))
    g.add(ir.Output(name="out", inputs=("sn",)))
    return ir.check(g)


def test_uniform_activity_at_rate_one_is_the_record_of_an_input_that_always_fires():
    """Activity.uniform(rate=1) must hold what measuring an all-ones input records: per sample one entry of
    [samples, non-zeros, entries, SOPs] with entries = input size x executions (T here), under step -1 (no
    diffusion step) by default; neurons at rate 1 everywhere."""
    costs = count_graph(_spike_conv_graph())
    uni = Activity.uniform(costs, 1.0, T=2)
    assert uni.steps == [-1]
    seen = Activity(T=2)
    info = dict(op="conv2d", out_channels=2, kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    seen.add_synapse("c", torch.ones(2, 1, 1, 4, 4), torch.tensor([-1]), info)
    np.testing.assert_array_equal(uni.synapses["c"].by_step[-1], seen.synapses["c"].by_step[-1])
    assert uni.synapses["c"].by_step[-1][2] == 2 * 16
    assert uni.neurons["sn"].rate_per_step().tolist() == [1.0, 1.0] and uni.mean_rate() == 1.0


def test_mean_rate_without_neurons_is_zero():
    assert Activity(T=2).mean_rate() == 0.0
    act = Activity(T=2)
    act.add_synapse("fc", torch.ones(2, 1, 3), torch.tensor([0]), dict(op="linear", out_features=2))
    assert act.mean_rate() == 0.0


def test_a_linear_on_the_static_image_reads_the_image_and_its_sops_use_out_features():
    """A dense layer 8 -> 3: on the static float input it is the network's image reader (a MAC layer); on
    per-step spikes it is not, and its measured SOPs are non-zeros x 3 outputs (not x 8 inputs)."""
    for timing, kind, reads in (("static", "real", True), ("per-step", "spike", False)):
        g = ir.Graph(2)
        g.add(ir.Input(name="x", shape=(8,), kind=kind, timing=timing))
        g.add(ir.Linear(name="fc", inputs=("x",), weight=g.add_param("w", np.ones((3, 8), np.float32))))
        g.add(ir.Output(name="out", inputs=("fc",)))
        g = ir.check(g)
        assert count_graph(g)["fc"].reads_image is reads, timing
    rec = measure_network(g, 5).synapses["fc"].by_step[0]  # the per-step spike graph
    samples, nnz, entries, sops = rec
    assert samples == 5 and entries == 5 * 2 * 8 and nnz > 0 and sops == nnz * 3


def test_a_tsm_scale_runs_every_step_and_a_bn_or_add_on_a_static_value_once():
    """On a static (hoisted) conv output a BN is computed once per call; a TSM scale multiplies each SNN step by
    its own factor, so it runs T times even there."""
    T = 3
    g = ir.Graph(T)
    g.add(ir.Input(name="x", shape=(1, 4, 4)))
    g.add(
        ir.Conv2d(name="c", inputs=("x",), weight=g.add_param("w", np.ones((2, 1, 3, 3), np.float32)), padding=(1, 1))
    )
    arrs = {k: g.add_param(f"bn.{k}", np.full(2, v, np.float32)) for k, v in dict(w=1, b=0, m=0, v=1).items()}
    g.add(ir.BatchNorm(name="bn", inputs=("c",), weight=arrs["w"], bias=arrs["b"], running_mean=arrs["m"],
                       running_var=arrs["v"]))  # fmt: skip
    g.add(ir.Add(name="add", inputs=("c", "bn")))  # a static residual: once per call as well
    g.add(ir.TSMScale(name="tsm", inputs=("add",), scale=g.add_param("s", np.ones((T, 1, 1, 1, 1), np.float32))))
    g.add(ir.Output(name="out", inputs=("tsm",)))
    costs = count_graph(ir.check(g))
    assert (costs["bn"].executions, costs["bn"].eager_executions) == (1, 1)
    assert (costs["add"].cls, costs["add"].executions, costs["add"].eager_executions) == ("add", 1, 1)
    assert (costs["tsm"].executions, costs["tsm"].eager_executions) == (T, T)


def test_a_monitor_may_count_runs_of_one_call():
    from sdmc.energy.measure import FiringRateMonitor
    from sdmc.errors import ConfigError

    assert FiringRateMonitor(torch.nn.Identity(), calls_per_run=1).activity.keyed_by == "call"
    assert FiringRateMonitor(torch.nn.Identity()).activity.T == 1  # a model that names no T: one step
    with pytest.raises(ConfigError, match="calls_per_run must be >= 1"):
        FiringRateMonitor(torch.nn.Identity(), calls_per_run=0)


def test_the_eager_mac_counter_leaves_no_hook_behind():
    from sdmc.energy.count import count_module_macs

    model = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, groups=2), torch.nn.Linear(2, 5))
    macs = count_module_macs(model, torch.zeros(1, 4, 4, 4))
    assert macs == {"0": 6 * 2 * 2 * (4 // 2) * 9, "1": 6 * 2 * 5 * 2}
    assert all(not m._forward_hooks for m in model.modules())
    model(torch.zeros(1, 4, 4, 4))  # a later forward counts nothing more
    assert macs == {"0": 6 * 2 * 2 * (4 // 2) * 9, "1": 6 * 2 * 5 * 2}


class _ConvertedPair(torch.nn.Module):
    """Two IF neurons of a converted QANN on [T*B, C] (step-major), T = 2."""

    timestep = 2

    def __init__(self) -> None:
        super().__init__()
        from sdmc.models.converted import IFNeuron

        self.sn = IFNeuron(0.5, bits=2, steps=2)
        self.sn2 = IFNeuron(0.5, bits=2, steps=2)

    def forward(self, x, t):
        return self.sn2(self.sn(x.repeat(2, 1)))


def test_the_monitor_counts_a_converted_models_if_neurons_and_only_the_layers_asked_for():
    """Inputs 1, 0, 0, 0 (θ = 0.5, v starts at θ/2): channel 0 fires at both steps, so each IF layer fires at
    rate 0.25; the output ``s * θ`` (0 or 0.5) is read as events where it is non-zero.  ``layers`` limits the
    record; after the block the model is unhooked."""
    from sdmc.energy.measure import FiringRateMonitor

    x = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    for layers, want in ((None, {"sn", "sn2"}), ({"sn"}, {"sn"})):
        model = _ConvertedPair()
        with FiringRateMonitor(model, layers=layers) as mon:
            model(x, torch.tensor([7]))
        model(x, torch.tensor([7]))  # outside the block: not recorded
        assert set(mon.activity.neurons) == want and mon.calls == 1, layers
        for name in want:
            assert mon.activity.neurons[name].rate_per_step(7).tolist() == [0.25, 0.25], name


def test_calibration_defaults():
    """50 DDIM steps subsampled to 8 calibration steps, first and last kept; a fixed noise seed 0."""
    from sdmc.diffusion import NoiseSchedule
    from sdmc.energy.measure import calibration_batches, calibration_steps

    ks = calibration_steps(1000)
    assert ks == calibration_steps(1000, "ddim", 50, 8) and len(ks) == 8
    assert ks[0] == calibration_steps(1000, keep=50)[0] and ks[-1] == calibration_steps(1000, keep=50)[-1]
    assert len(calibration_steps(1000, keep=50)) == 50
    img = torch.zeros(2, 1, 4, 4)
    a = [x for x, _ in calibration_batches(img, [10, 500], NoiseSchedule())]
    b = [x for x, _ in calibration_batches(img, [10, 500], NoiseSchedule(), seed=0)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_calibration_images_are_a_fixed_subset_of_the_training_split(tmp_path):
    """dataset_images: a seeded random subset (seed 0 by default) of the training split; a folder of a single
    image is a dataset too."""
    from PIL import Image

    from sdmc.data import load_dataset
    from sdmc.energy.measure import dataset_images

    x = dataset_images("digits", 4, 8, 1)
    assert torch.equal(x, dataset_images("digits", 4, 8, 1, seed=0))
    train = load_dataset("digits", img_size=8, train=True)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:4]
    assert torch.equal(x, torch.stack([train[int(i)][0] for i in idx]))
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "one.png")
    one = dataset_images(f"folder:{tmp_path}", 1, 8, 3)
    assert one.shape == (1, 3, 8, 8) and float(one.min()) > 0.5


def test_a_network_report_says_what_ran_it():
    """A graph that is no denoiser: one forward pass per sample (no solver), its source named (or 'IR graph')."""
    from sdmc.energy import analyze

    g = _spike_conv_graph()
    r = analyze(g, n_images=3, seed=5)
    assert r.calibration["solver"] == "none (one forward pass per sample)" and r.calibration["seed"] == 5
    assert r.calibration["threshold"] is None and r.model["source"] == "IR graph"
    assert r.model["input"] == "[T, B, 1, 4, 4]" and r.calibration["n_images"] == 3 and r.calibration["steps"] == [0]
    assumed = analyze(g, assume_rate=0.5).calibration
    assert (assumed["mode"], assumed["n_images"], assumed["steps"]) == ("assumed", 0, [])
    g.meta["source"] = "model.onnx"
    assert analyze(g, n_images=1).model["source"] == "model.onnx"
    g.meta["source_class"] = "my.Net"
    assert analyze(g, n_images=1).model["source"] == "my.Net"


def test_measure_graph_noises_with_seed_0_unless_told():
    from sdmc.diffusion import NoiseSchedule
    from sdmc.energy.measure import measure_graph

    g = ir.Graph(2)
    g.add(ir.Input(name="x", shape=(1, 4, 4)))
    g.add(
        ir.Conv2d(
            name="c", inputs=("x",), weight=g.add_param("w", np.full((2, 1, 3, 3), 0.4, np.float32)), padding=(1, 1)
        )
    )
    g.add(ir.Repeat(name="rep", inputs=("c",)))
    g.add(ir.IF(name="sn", inputs=("rep",), threshold=1.0, v_reset=0.0))
    g.add(ir.Output(name="out", inputs=("sn",)))
    g = ir.check(g)
    images, sched = torch.zeros(6, 1, 4, 4), NoiseSchedule()

    def rates(**kw):
        return measure_graph(g, images, [900], sched, **kw).neurons["sn"].rate_per_step().tolist()

    assert rates() == rates(seed=0) != rates(seed=1)


def test_measure_network_draws_its_inputs_with_seed_0_unless_told():
    g = _spike_conv_graph()

    def rec(**kw):
        return measure_network(g, 4, **kw).synapses["c"].by_step[0].tolist()

    assert rec() == rec(seed=0) != rec(seed=1)


def test_measure_network_runs_an_image_graph_on_digits_noised_to_step_0():
    """An image classifier (a static ``[C, H, W]`` input) is measured on the inputs of
    :func:`sdmc.sim.inputs.noised_inputs` at diffusion step 0 (the cleanest digits): its spike counts are those
    of the golden simulator on exactly those inputs, and differ from the counts on step-1 inputs (the check is
    fine enough to see the noise of one more step)."""
    from sdmc.sim import golden
    from sdmc.sim.inputs import noised_inputs

    g = ir.Graph(8)
    g.add(ir.Input(name="x", shape=(1, 8, 8)))
    g.add(ir.Repeat(name="rep", inputs=("x",)))
    g.add(ir.IF(name="sn", inputs=("rep",), threshold=0.25, v_reset=None))
    g.add(ir.Output(name="out", inputs=("sn",)))
    g = ir.check(g)

    def golden_spikes(step):
        out = golden.run(g, noised_inputs(g, 16, step, 5), all_values=True)["sn"]  # [T, B, 1, 8, 8]
        return np.abs(out).sum(axis=(1, 2, 3, 4))

    stats = measure_network(g, 16, seed=5).neurons["sn"]
    assert stats.samples[0] == 16
    np.testing.assert_array_equal(stats.spikes[0], golden_spikes(0))
    assert not np.array_equal(golden_spikes(0), golden_spikes(1))
