"""Energy rows of a toy network computed by hand, under every built-in profile and both conventions.

The toy net's activity does not depend on the calibration images (the conv on the image has zero weights),
so every count below is exact and written out by hand::

    x [1,4,4] -> c0 conv3x3 (w=0, b=[.5, 1]) -> repeat T=4 -> IF θ=1 (hard reset 0) -> c1 conv3x3 (2->2)
              -> bn1 (folded into c1) -> add (+ repeat) -> tsm scale -> bn2 -> membrane read-out

IF input is .5 (channel 0: h = .5, 1, .5, 1, fires at steps 2 and 4) and 1 (channel 1: fires every step),
so one call has 16*4 = 64 neuron updates per channel (128), 16*2 + 16*4 = 96 spikes, firing rate 0.75.
A 3x3/pad-1 conv on 4x4 reaches 4 (corners), 6 (edges), 9 (interior) outputs: sum over the map 100, so
c1's exact SOPs = (2 + 4 spikes per pixel, summed over the map) * 100 * 2 out channels = 1200.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdmc import ir
from sdmc.energy import Activity, analyze, build_report, builtin_profiles, count_graph, load_profile
from sdmc.errors import SdmcError

# Costs (pJ) as published: Horowitz ISSCC 2014 (45 nm) and Davies et al. 2018 Table 2 (Loihi 1; host MACs at
# 45 nm FP32).  Typed here by hand so that a changed profile file, or one that is loaded wrongly, fails.
PROFILES = {
    "45nm-fp32": dict(mac=4.6, ac=0.9, add=0.9, neuron_update=0.9, spike=0.0),
    "45nm-fp16": dict(mac=1.5, ac=0.4, add=0.4, neuron_update=0.4, spike=0.0),
    "45nm-int8": dict(mac=0.23, ac=0.03, add=0.03, neuron_update=0.03, spike=0.0),
    "loihi1": dict(mac=4.6, ac=23.6, add=0.9, neuron_update=52.0, spike=1.7),
}

T = 4
# (name, cls, macs, sops, adds, updates, spikes) per call, one image
COUNTS = {
    "c0": ("synapse", 2 * 16 * 9, 0, 0, 0, 0),  # real input (the image): dense MACs, once (static)
    "rep": ("free", 0, 0, 0, 0, 0),
    "sn": ("neuron", 0, 0, 0, 2 * 16 * T, 16 * 2 + 16 * 4),
    "c1": ("synapse", 0, (16 * 2 + 16 * 4) // 16 * 100 * 2, 0, 0, 0),  # spike input: exact SOPs
    "bn1": ("norm", 0, 0, 0, 0, 0),  # folded into c1
    "add": ("add", 0, 0, 2 * 16 * T, 0, 0),
    "tsm": ("scale", 2 * 16 * T, 0, 0, 0, 0),
    "bn2": ("norm", 2 * 16 * T, 0, 0, 0, 0),
    "ro": ("readout", 2 * 16 * T, 0, 0, 0, 0),
}
STEPS, NFE = 5, 6  # DDPM, 5 steps on the seed's grid (999, 799, ..., 199) plus step 0: 6 calls


def toy_graph() -> ir.Graph:
    g = ir.Graph(T)
    p = g.add_param
    g.add(ir.Input(name="x", shape=(1, 4, 4), dtype="float32"))
    g.add(
        ir.Conv2d(
            name="c0",
            inputs=("x",),
            weight=p("c0.weight", np.zeros((2, 1, 3, 3), np.float32)),
            bias=p("c0.bias", np.array([0.5, 1.0], np.float32)),
            padding=(1, 1),
        )
    )
    g.add(ir.Repeat(name="rep", inputs=("c0",)))
    g.add(ir.IF(name="sn", inputs=("rep",), threshold=1.0, v_reset=0.0))
    g.add(ir.Conv2d(name="c1", inputs=("sn",), weight=p("c1.weight", np.full((2, 2, 3, 3), 0.25)), padding=(1, 1)))

    def bn(name, src):
        arrs = {k: p(f"{name}.{k}", np.full(2, v)) for k, v in dict(weight=1, bias=0, mean=0, var=1).items()}
        return ir.BatchNorm(
            name=name,
            inputs=(src,),
            weight=arrs["weight"],
            bias=arrs["bias"],
            running_mean=arrs["mean"],
            running_var=arrs["var"],
        )

    g.add(bn("bn1", "c1"))
    g.add(ir.Add(name="add", inputs=("bn1", "rep")))
    g.add(ir.TSMScale(name="tsm", inputs=("add",), scale=p("tsm.p", np.ones((T, 1, 1, 1, 1)))))
    g.add(bn("bn2", "tsm"))
    g.add(ir.MembraneReadout(name="ro", inputs=("bn2",), decay=0.8))
    g.add(ir.Output(name="out", inputs=("ro",)))
    return ir.check(g)


def small_unet(img_ch: int = 1) -> torch.nn.Module:
    """A small spiking UNet (T = 2, 8x8, seeded weights) for the measurements of a module."""
    from sdmc.config import ModelConfig
    from sdmc.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="sddpm", snn_steps=2, img_size=8, img_ch=img_ch, ch=8, ch_mult=(1, 2), attn=(), num_res_blocks=1
    )
    return build_model(cfg)


def faithful_by_hand(c) -> dict[str, float]:
    """Faithful pJ per row: MACs at E_MAC, SOPs at E_AC, adds, neuron updates and spikes at their costs."""
    out = {}
    for name, (_, macs, sops, adds, updates, spikes) in COUNTS.items():
        out[name] = (
            c["mac"] * macs + c["ac"] * sops + c["add"] * adds + c["neuron_update"] * updates + c["spike"] * spikes
        )
    return out


@pytest.fixture(scope="module")
def reports():
    g = toy_graph()
    images = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return {
        name: analyze(g, images=images, calib_steps=2, steps=STEPS, ann=False, profile=name, solver="ddpm")
        for name in PROFILES
    }


def test_every_builtin_profile_is_covered():
    assert set(builtin_profiles()) == set(PROFILES)
    for name, costs in PROFILES.items():
        prof = load_profile(name)
        assert {k: getattr(prof, k) for k in costs} == costs, name


@pytest.mark.parametrize("profile", list(PROFILES))
def test_faithful_rows_by_hand(reports, profile):
    r, c = reports[profile], PROFILES[profile]
    rows = {x["name"]: x for x in r.layers}
    assert set(rows) == set(COUNTS)
    want = faithful_by_hand(c)
    for name, (cls, macs, sops, adds, updates, spikes) in COUNTS.items():
        row = rows[name]
        assert row["cls"] == cls, name
        got = (row["macs"], row["sops"], row["adds"], row["updates"], row["spikes"])
        assert got == pytest.approx((macs, sops, adds, updates, spikes), rel=1e-12, abs=0), name
        assert row["faithful_pJ"] == pytest.approx(want[name], rel=1e-12, abs=0), name
    assert rows["sn"]["rate"] == pytest.approx(0.75)
    assert rows["c1"]["input_rate"] == pytest.approx(0.75)
    # the neuron row alone, spelled out: every update and every spike is paid for
    assert rows["sn"]["faithful_pJ"] == pytest.approx(128 * c["neuron_update"] + 96 * c["spike"], rel=1e-12, abs=0)
    # totals: the activity is the same at every calibration step, so per call = the sum of the rows
    per_call_pJ = sum(want.values())
    t = r.totals["faithful"]
    assert len(r.by_step) == 2
    for s in r.by_step:
        assert s["faithful_mJ"] == pytest.approx(per_call_pJ / 1e9, rel=1e-12, abs=0)
        assert s["firing_rate"] == pytest.approx(0.75)
    assert t["per_call_mJ"] == pytest.approx(per_call_pJ / 1e9, rel=1e-12, abs=0)
    assert t["per_image_mJ"] == pytest.approx(NFE * per_call_pJ / 1e9, rel=1e-12, abs=0)
    assert t["per_step_mJ"] == pytest.approx(NFE / STEPS * per_call_pJ / 1e9, rel=1e-12, abs=0)
    assert t["macs"] == 288 + 3 * 128 and t["sops"] == 1200


@pytest.mark.parametrize("profile", list(PROFILES))
def test_paper_rows_by_hand(reports, profile):
    """SDM Eq. 20: the image conv as MACs once, every other synapse fr_in * T * dense MACs at E_AC; nothing
    else is counted."""
    r, c = reports[profile], PROFILES[profile]
    rows = {x["name"]: x for x in r.layers}
    c1_dense = 2 * 16 * 2 * 9  # O * H * W * C * k * k per step
    want = {"c0": c["mac"] * 288, "c1": c["ac"] * 0.75 * c1_dense * T}
    for name, row in rows.items():
        assert row["paper_pJ"] == pytest.approx(want.get(name, 0.0), rel=1e-12, abs=0), name
    t = r.totals["paper"]
    assert t["per_call_mJ"] == pytest.approx(sum(want.values()) / 1e9, rel=1e-12, abs=0)
    assert t["per_image_mJ"] == pytest.approx(NFE * sum(want.values()) / 1e9, rel=1e-12, abs=0)
    assert t["macs"] == 288 and t["sops"] == pytest.approx(0.75 * c1_dense * T)


def test_the_per_call_table_keeps_the_first_and_the_last_call(reports):
    """A long run's per-call table shows ``limit`` evenly spaced calls, the first and the last among them, and
    says how many were left out."""
    import dataclasses

    steps = [dict(call=i, t=999 - 50 * i, paper_mJ=1.0, faithful_mJ=2.0, firing_rate=0.1) for i in range(20)]
    r = dataclasses.replace(next(iter(reports.values())), by_step=steps)
    head, rows, note = r._step_rows(limit=5)
    assert head == ["call", "t"] + [f"{c} mJ" for c in r.conventions] + ["firing rate"]
    assert r.conventions == ["paper", "faithful"] and rows[0] == ["0", "999", "1", "2", "0.1000"]
    assert [row[0] for row in rows] == ["0", "5", "10", "14", "19"]
    assert rows[-1][1] == "49" and note == "5 of 20 calls shown; all in the JSON"
    assert len(r._step_rows()[1]) == 20 and r._step_rows()[2] is None


def test_ann_baseline_row_by_hand():
    """The ANN baseline: dense MACs at E_MAC per call, x NFE / steps per sampling step, x NFE per image."""
    g = toy_graph()
    costs = count_graph(g)
    act = Activity.uniform(costs, 0.5, T)
    r = build_report(costs, act, load_profile("loihi1"), {}, {}, nfe=6, sampling_steps=4, ann_macs=1000)
    assert r.ann == pytest.approx(
        dict(macs=1000, per_call_mJ=4600 / 1e9, per_step_mJ=4600 * 1.5 / 1e9, per_image_mJ=4600 * 6 / 1e9),
        rel=1e-12,
        abs=0,
    )


def test_unmeasured_real_input_layers_are_named_in_the_notes():
    """A real-input synapse without measured activity is charged at fr_in = 1 (paper) and dense MACs (faithful),
    flagged unmeasured, and named in the notes; a spike-input one without activity is an error."""
    g = toy_graph()
    costs = count_graph(g)
    act = Activity.uniform(costs, 0.5, T)
    prof = load_profile("45nm-fp32")
    r = build_report(costs, act, prof, {}, {}, nfe=1, sampling_steps=1, ann_macs=None)
    assert all(x["measured"] for x in r.layers) and not any("no activity measured" in n for n in r.notes)
    del act.synapses["c0"]
    r = build_report(costs, act, prof, {}, {}, nfe=1, sampling_steps=1, ann_macs=None)
    c0 = {x["name"]: x for x in r.layers}["c0"]
    assert not c0["measured"] and c0["input_rate"] == 1.0 and c0["macs"] == 288
    assert [n for n in r.notes if "no activity measured" in n] == [
        "no activity measured for real-input layers ['c0']: fr_in taken as 1"
    ]
    del act.synapses["c1"]
    with pytest.raises(SdmcError, match="no activity was measured for spike-driven layer 'c1'"):
        build_report(costs, act, prof, {}, {}, nfe=1, sampling_steps=1, ann_macs=None)


def test_analyze_defaults_to_ddim_in_50_steps():
    r = analyze(toy_graph(), assume_rate=0.5, ann=False)
    c = r.calibration
    assert (c["solver"], c["sampling_steps"], c["nfe"]) == ("ddim", 50, 50)
    t = r.totals["faithful"]
    assert t["per_image_mJ"] == pytest.approx(50 * t["per_call_mJ"], rel=1e-12, abs=0)


def test_a_network_without_measured_activity_is_costed_from_its_rows():
    """No recorded step at all (a conv on the real image and nothing spiking): the totals are the rows' sum
    (288 dense MACs at E_MAC per call), not an empty mean."""
    g = ir.Graph(T)
    g.add(ir.Input(name="x", shape=(1, 4, 4), dtype="float32"))
    g.add(
        ir.Conv2d(name="c", inputs=("x",), weight=g.add_param("w", np.ones((2, 1, 3, 3), np.float32)), padding=(1, 1))
    )
    g.add(ir.Output(name="out", inputs=("c",)))
    costs = count_graph(ir.check(g))
    prof = load_profile("loihi1")
    r = build_report(costs, Activity(T=T), prof, {}, {}, nfe=6, sampling_steps=4, ann_macs=None)
    assert r.by_step == [] and r.layers[0]["measured"] is False
    assert r.totals["faithful"]["per_call_mJ"] == pytest.approx(288 * prof.mac / 1e9, rel=1e-12, abs=0)
    assert r.totals["faithful"]["per_image_mJ"] == pytest.approx(6 * 288 * prof.mac / 1e9, rel=1e-12, abs=0)


def test_the_terminal_report_shows_the_layers_unless_asked_not_to(reports):
    from rich.console import Console

    r = next(iter(reports.values()))
    for kw, shown in (({}, True), (dict(layers=False), False)):
        con = Console(record=True, width=200)
        r.print(con, **kw)
        text = con.export_text()
        assert ("per layer" in text) == shown and "per call" in text and "energy" in text


def test_neuron_rates_per_calibration_step(reports):
    """Each neuron layer lists its rate at every step it was measured at (the toy net fires 0.75 at each)."""
    r = reports["loihi1"]
    sn = {n["name"]: n for n in r.neurons}["sn"]
    assert set(sn["by_t"]) == {str(s["t"]) for s in r.by_step} and len(sn["by_t"]) == 2
    assert all(v == pytest.approx(0.75) for v in sn["by_t"].values())
    # channel 0 fires at steps 2 and 4, channel 1 at every step: 16 or 32 of 32 neurons
    assert sn["size"] == 32 and sn["rate_per_step"] == pytest.approx([0.5, 1.0, 0.5, 1.0])


def test_free_rows_cost_nothing_and_the_notes_explain_both_conventions(reports):
    """Nodes that compute nothing (repeat, output plumbing) are listed with no MACs and no energy; the report's
    notes keep the caller's lines first, then say what a call, an image and each convention count."""
    r = reports["loihi1"]
    free = [x for x in r.layers if x["cls"] == "free"]
    assert free and all(x["dense_macs"] == 0 and x["faithful_pJ"] == 0 and x["paper_pJ"] == 0 for x in free)
    g = toy_graph()
    costs = count_graph(g)
    mine = build_report(costs, Activity.uniform(costs, 0.5, T), load_profile("loihi1"), {}, {}, nfe=6,
                        sampling_steps=4, ann_macs=None, notes=["my note"])  # fmt: skip
    assert mine.notes[0] == "my note"
    for start in ("per call = one network evaluation", "paper: SDM Eq. 20", "faithful: real inputs cost MACs"):
        assert sum(n.startswith(start) for n in mine.notes) == 1, start


def test_analyze_defaults_and_the_schedule_a_graph_carries():
    """With a dataset, rates come from 32 images at 8 calibration steps; an assumed rate measures nothing
    (0 images).  A graph's recorded diffusion config is the schedule
    used (here 100 steps: every calibration step below 100) unless one is passed."""
    g = toy_graph()
    data = analyze(g, data="noise", steps=20, ann=False, solver="ddim")
    assert data.calibration["n_images"] == 32 and len(data.calibration["steps"]) == 8
    assumed = analyze(g, assume_rate=0.5, ann=False)
    assert assumed.calibration["mode"] == "assumed" and assumed.calibration["n_images"] == 0
    g.meta["sdmc_config"] = {"diffusion": {"num_timesteps": 100}}
    own = analyze(g, data="noise", n_images=2, steps=20, ann=False, solver="ddim")
    assert max(own.calibration["steps"]) < 100 and max(data.calibration["steps"]) > 100
    from sdmc.config import DiffusionConfig

    given = analyze(g, data="noise", n_images=2, steps=20, ann=False, solver="ddim", diffusion=DiffusionConfig())
    assert given.calibration["steps"] == data.calibration["steps"]


def test_the_ann_baseline_is_reported_only_when_asked():
    model = small_unet(img_ch=3)
    assert analyze(model.eval(), assume_rate=0.5, ann=False).ann is None
    assert analyze(model.eval(), assume_rate=0.5, ann=True).ann["macs"] > 0


def test_measuring_a_module_uses_eval_mode_seed_0_and_8_trajectories_by_default():
    """A module left in training mode is measured as in eval mode (BN running statistics, not the batch's);
    the calibration noise is seed 0 unless told; without data, 8 trajectories are sampled."""
    from sdmc.diffusion import NoiseSchedule
    from sdmc.energy.measure import measure_model

    model = small_unet()
    for m in model.modules():  # running statistics unlike any batch's
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(0.3)
            m.running_var.fill_(2.0)
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    sched = NoiseSchedule()
    ref = measure_model(model.eval(), images, [500], sched, seed=0)
    got = measure_model(model.train(), images, [500], sched, batch_size=2)
    assert not model.training and all(n.samples[500] == 4 for n in got.neurons.values())  # every image
    assert {k: v.rate() for k, v in got.neurons.items()} == {k: v.rate() for k, v in ref.neurons.items()}
    r = analyze(model, steps=1, solver="ddim", ann=False)
    assert r.calibration["mode"] == "trajectory" and r.calibration["n_images"] == 8


def test_trajectories_are_drawn_with_seed_0_unless_told():
    from sdmc.diffusion import NoiseSchedule
    from sdmc.energy.measure import measure_trajectory

    model = small_unet().eval()
    runs = [
        measure_trajectory(model, NoiseSchedule(), steps=1, n=2, **kw)[1] for kw in ({}, dict(seed=0), dict(seed=1))
    ]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_a_trajectory_runs_on_the_device_given_without_asking_the_model():
    """``device=`` is where the trajectory runs; only without it is the model's own device looked up (its first
    parameter).  A denoiser with no parameters at all (here: x through IF neurons over T = 2 steps) shows the
    difference on a machine whose only device is the CPU: asking it would fail."""
    from spikingjelly.activation_based import neuron

    from sdmc.diffusion import NoiseSchedule
    from sdmc.energy.measure import measure_trajectory

    class Spiky(torch.nn.Module):
        timestep = 2

        def __init__(self):
            super().__init__()
            self.sn = neuron.IFNode(v_threshold=0.5, step_mode="m")

        def forward(self, x, t):
            self.sn.reset()
            return self.sn(x.unsqueeze(0).repeat(2, 1, 1, 1, 1)).mean(0)

    act, imgs = measure_trajectory(Spiky(), NoiseSchedule(), steps=2, n=2, shape=(1, 4, 4), device="cpu")
    assert imgs.shape == (2, 1, 4, 4) and act.neurons["sn"].samples[0] == 2
