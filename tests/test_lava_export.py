"""The Loihi export (sdmc.backends.lava.manifest, netx_segments, chip_resources): every population in one netx
segment, the export directory's round trip and checker, the host-only graph, segment files in stock netx,
Loihi 2 resources."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from loihi_graphs import assert_same_net, chain_graph, dense_and_upsample_graph, unet_cfg, unet_inputs, unet_model

from sdmc import ir, passes
from sdmc.backends import lava
from sdmc.backends.lava import host_plan, hybrid, manifest, netx_chain, netx_segments
from sdmc.backends.lava import network as lnet
from sdmc.config import ModelConfig
from sdmc.errors import SdmcError
from sdmc.frontends import trace
from sdmc.models import build_model
from sdmc.sim import golden


@pytest.fixture(scope="module")
def sddpm():
    cfg = unet_cfg()
    g = passes.run(trace(unet_model(cfg), (1, 1, 8, 8)), "neuromorphic")
    return cfg, g


def test_every_population_lies_in_exactly_one_segment(sddpm):
    cfg, g = sddpm
    net, plan, rep = lava.compile_net(g, on_overflow="rescale")
    segs, mains = lava.segments(net), netx_segments.main_projections(net)
    flat = [p for s in segs for p in s]
    assert sorted(flat) == sorted(p.name for p in net.populations) and len(flat) == len(set(flat))
    assert max(len(s) for s in segs) >= 10  # the encoder is one long chain, not one file per population
    for s in segs:
        for a, b in zip(s, s[1:]):  # inside a file: b's main synapse reads a, undelayed
            assert mains[b].src == a and mains[b].delay == 0 and mains[b].kind in ("conv", "dense")
    for name, pr in mains.items():
        assert pr is None or (pr.dst == name and pr.upsample == 1)
        if pr is None:  # only upsampled synapses (and no host current) feed it
            assert all(q.upsample > 1 for q in net.incoming(name))
    assert mains["neuron"].kind == "identity"  # the head population: its host current
    assert any(pr is None for pr in mains.values())  # the decoder's upsample-only halves of a split concat


def test_export_round_trip_and_checker(sddpm, tmp_path):
    cfg, g = sddpm
    inp = unet_inputs(cfg, 2, 5)
    net, plan, rep = lava.compile_net(g, calib=inp, on_overflow="rescale")
    out = lava.export_dir(net, plan, rep, tmp_path / "exp", resources=lava.resources(net))
    segs = lava.segments(net)
    assert sorted(os.listdir(out)) == sorted(
        ["graph.sdmc", "manifest.json", "projections.h5"] + [f"segment_{i:02d}.h5" for i in range(len(segs))]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]  # no temporary left behind
    net2, plan2, man = lava.load_export(out)
    assert man["format"] == manifest.EXPORT_FORMAT and man["version"] == manifest.EXPORT_VERSION == 2
    assert man["T"] == cfg.snn_steps
    assert_same_net(net, net2)
    assert [s["populations"] for s in man["segments"]] == segs
    for sg in man["segments"]:  # the head's main projection: its source, shape and delay describe the input
        i = sg["main"][0]
        if i is not None:
            pr = man["projections"][i]
            assert (pr["src"], pr["dst"], pr["delay"]) == (sg["input"], sg["populations"][0], sg["input_delay"])
    roles = {(p["name"], p["dst"]): p for p in man["projections"]}
    for pr in net.projections:
        r = roles[(pr.name, pr.dst)]
        if pr.upsample > 1:
            assert r["role"] == "wiring" and r["weight"]["file"] == "projections.h5"
        if r["role"] == "segment" and pr.kind != "identity":
            assert r["weight"]["file"] == r["segment"]["file"] != "projections.h5"
    assert sorted(man["wiring"]) == [i for i, p in enumerate(man["projections"]) if p["role"] == "wiring"]
    a, b = lava.run_hybrid(net, plan, inp), lava.run_hybrid(net2, plan2, inp)
    for k in a["spikes"]:
        assert np.array_equal(a["spikes"][k], b["spikes"][k])
    assert np.array_equal(a["outputs"]["out"], b["outputs"]["out"])
    assert man["quantisation"]["output_error"] == pytest.approx(rep.output_error)
    assert any("upsample" in n for n in man["notes"]) and any("delayed" in n for n in man["notes"])
    assert any("netx segment file(s) hold every population once" in n for n in man["notes"])
    # refuses unknown and old versions, missing or inconsistent files, naming them
    text = (out / "manifest.json").read_text()
    m = json.loads(text)
    for v, msg in ((99, "version 99 is not supported"), (1, "version 1 is not supported.*export the model again")):
        m["version"] = v
        (out / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(SdmcError, match=msg):
            lava.load_export(out)
    m["version"] = manifest.EXPORT_VERSION
    m["segments"][1]["populations"] = m["segments"][0]["populations"][:1] * len(m["segments"][1]["populations"])
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SdmcError, match="segment_01.h5.*does not match|lies in two segments"):
        lava.check_export(out)
    (out / "manifest.json").write_text(text)
    import h5py

    with h5py.File(out / "segment_00.h5", "r+") as f:  # a segment whose neuron disagrees with the manifest
        vth = int(f["layer/1/neuron/vThMant"][()])
        f["layer/1/neuron/vThMant"][()] = 12345
    with pytest.raises(SdmcError, match="segment_00.h5: layer of population 'neuron'.*vth 12345"):
        lava.check_export(out)
    with h5py.File(out / "segment_00.h5", "r+") as f:
        f["layer/1/neuron/vThMant"][()] = vth
    lava.check_export(out)
    (out / "segment_00.h5").rename(tmp_path / "keep.h5")
    with pytest.raises(SdmcError, match="missing file 'segment_00.h5'|missing segment file 'segment_00.h5'"):
        lava.check_export(out)
    (tmp_path / "keep.h5").rename(out / "segment_00.h5")
    (out / "projections.h5").unlink()
    with pytest.raises(SdmcError, match="missing file 'projections.h5'"):
        lava.check_export(out)
    with pytest.raises(SdmcError, match="no manifest.json"):
        lava.load_export(tmp_path)


def test_export_keeps_only_the_host_part_of_the_graph(sddpm, tmp_path):
    cfg, g = sddpm
    inp = unet_inputs(cfg, 2, 6)
    net, plan, rep = lava.compile_net(g, on_overflow="rescale")
    out = lava.export_dir(net, plan, rep, tmp_path / "exp")
    hg = ir.check(ir.load(out / "graph.sdmc"))
    assert hg.meta[host_plan.HOST_GRAPH_META]["population_inputs"] == list(net.outputs)
    # graph inputs first (the batch is read from the first), then the output populations as spike inputs
    assert [n.name for n in hg.input_nodes] == [n.name for n in plan.graph.input_nodes] + list(net.outputs)
    assert all(hg.nodes[k].type.kind == "spike" and hg.nodes[k].type.per_step for k in net.outputs)
    on_chip = {p.name for p in net.populations} - set(net.outputs)
    assert not on_chip & set(hg.nodes)
    syn = {pr.name for pr in net.projections}  # no synapse of the chip is on the host
    assert not syn & set(hg.nodes)
    assert set(hg.params) < set(plan.graph.params)
    full = ir.save(plan.graph, tmp_path / "full.sdmc")
    assert (out / "graph.sdmc").stat().st_size < 0.5 * full.stat().st_size
    assert {"conv", "temb"} & {n.name.split(".")[0] for n in hg.nodes.values()}  # head + time embedding stay
    net2, plan2, _ = lava.load_export(out)
    assert plan2.host_only and not plan.host_only
    a, b = lava.run_hybrid(net, plan, inp), lava.run_hybrid(net2, plan2, inp)
    assert np.array_equal(a["outputs"]["out"], b["outputs"]["out"])
    assert all(np.array_equal(a["spikes"][k], b["spikes"][k]) for k in b["spikes"])
    with pytest.raises(SdmcError, match="only the host part"):
        hybrid.evaluate(net2, plan2, rep, inp)
    # a loaded export exports again (host_graph is idempotent) and still runs the same
    net3, plan3, _ = lava.load_export(lava.export_dir(net2, plan2, None, tmp_path / "again"))
    assert [n.name for n in plan3.graph.nodes.values()] == [n.name for n in plan2.graph.nodes.values()]
    assert np.array_equal(lava.run_hybrid(net3, plan3, inp)["outputs"]["out"], a["outputs"]["out"])


def test_dense_and_upsample_only_populations_export_and_load(tmp_path):
    g = dense_and_upsample_graph()
    net, plan, rep = lava.compile_net(g, pow2=True)
    mains = netx_segments.main_projections(net)
    assert mains["n2"].kind == "dense" and mains["n3"] is None
    assert lava.segments(net) == [["n1", "n2"], ["n3"]]
    out = lava.export_dir(net, plan, rep, tmp_path / "e")
    net2, plan2, man = lava.load_export(out)
    assert_same_net(net, net2)
    s0, s1 = man["segments"]
    assert (s0["input"], s0["input_kind"], s0["layers"]) == ("x", "spikes", [1, 3])  # layer 2: netx flatten
    assert (s1["input"], s1["input_kind"], s1["input_shape"], s1["main"]) == (None, "current", [2, 8, 8], [None])
    up = [p for p in man["projections"] if p["upsample"] == 2]
    assert len(up) == 1 and up[0]["role"] == "wiring" and up[0]["weight"]["file"] == "projections.h5"
    x = (np.random.default_rng(0).random((3, 2, 2, 4, 4)) < 0.5).astype(np.float64)
    a, b = lava.run_hybrid(net, plan, {"x": x}), lava.run_hybrid(net2, plan2, {"x": x})
    ref = golden.run(g, {"x": x})
    for o in ("o2", "o3"):  # dyadic weights, pow2 scales: exact; and the loaded export gives the same
        assert np.array_equal(a["outputs"][o], ref[o]) and np.array_equal(b["outputs"][o], ref[o]) and ref[o].any()


def test_segment_files_load_in_stock_netx(sddpm, tmp_path):
    """Every segment file of the tiny UNet (and of a net with a dense population behind a flatten and one fed
    only by an upsampled synapse) builds as a stock ``lava.lib.dl.netx.hdf5.Network`` with the manifest's
    input and output shapes."""
    from sdmc.backends.lava import compat

    compat.install_import_fixes()
    netx = pytest.importorskip("lava.lib.dl.netx")
    cfg, g = sddpm
    for i, graph in enumerate((g, dense_and_upsample_graph())):
        net, plan, rep = lava.compile_net(graph, on_overflow="rescale")
        out = lava.export_dir(net, plan, rep, tmp_path / f"exp{i}")
        man = lava.check_export(out)
        shapes = {p["name"]: p["shape"] for p in man["populations"]}
        for sg in man["segments"]:
            n = netx.hdf5.Network(net_config=str(out / sg["file"]), input_message_bits=sg["input_message_bits"])
            assert len(n.layers) == len(sg["populations"])  # a netx flatten builds no block
            assert tuple(n.out.shape) == tuple(shapes[sg["populations"][-1]][::-1])  # Lava (W, H, C) order
            assert tuple(n.inp.shape) == tuple(sg["input_shape"][::-1])


def test_one_conv_feeding_two_populations_round_trips_with_each_scale(tmp_path):
    g = ir.Graph(3)  # c feeds a (with the large d: small scale) and b (alone: large scale)
    g.add(ir.Input(name="x", shape=(2, 4, 4), kind="spike", timing="per-step"))
    rng = np.random.default_rng(0)
    g.add_param("c.w", rng.uniform(-1, 1, (3, 2, 3, 3)))
    g.add_param("d.w", rng.uniform(-8, 8, (3, 2, 3, 3)))
    g.add(ir.Conv2d(name="c", inputs=("x",), weight="c.w", padding=(1, 1)))
    g.add(ir.Conv2d(name="d", inputs=("x",), weight="d.w", padding=(1, 1)))
    g.add(ir.Add(name="cd", inputs=("c", "d")))
    g.add(ir.IF(name="a", inputs=("cd",)))
    g.add(ir.IF(name="b", inputs=("c",)))
    g.add(ir.Add(name="ab", inputs=("a", "b")))
    g.add(ir.Output(name="out", inputs=("ab",)))
    net, plan, rep = lava.compile_net(ir.check(g))
    ws = {(p.name, p.dst): p.weight for p in net.projections}
    assert not np.array_equal(ws[("c", "a")], ws[("c", "b")])
    net2, _, _ = lava.load_export(lava.export_dir(net, plan, rep, tmp_path / "e"))
    for p in net2.projections:
        assert np.array_equal(p.weight, ws[(p.name, p.dst)]), (p.name, p.dst)


def test_failed_export_leaves_previous_directory_untouched(sddpm, tmp_path, monkeypatch):
    cfg, g = sddpm
    net, plan, rep = lava.compile_net(g, on_overflow="rescale")
    out = lava.export_dir(net, plan, rep, tmp_path / "exp")
    before = (out / "manifest.json").read_text()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(manifest.ir, "save", boom)
    with pytest.raises(RuntimeError):
        lava.export_dir(net, plan, rep, tmp_path / "exp")
    assert (out / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]


def test_sequential_chain_exports_one_netx_segment(tmp_path):
    g = chain_graph()
    net, plan, rep = lava.compile_net(g, pow2=True)
    assert [s.name for s in net.sources] == ["x"] and net.sources[0].bits == 0
    assert lava.segments(net) == [["n1", "n2"]]
    out = lava.export_dir(net, plan, rep, tmp_path / "exp")
    man = json.loads((out / "manifest.json").read_text())
    assert man["segments"][0]["file"] == "segment_00.h5" and man["segments"][0]["input"] == "x"
    assert all(p["weight"]["file"] == "segment_00.h5" for p in man["projections"])
    chain = netx_chain.read_netx(out / "segment_00.h5")  # plain netx layout, readable on its own
    assert [L.weight.shape for L in chain.layers] == [(4, 2, 3, 3), (3, 4, 3, 3)]
    x = (np.random.default_rng(0).random((g.T, 2, 2, 6, 6)) < 0.4).astype(np.float64)
    hy = lava.run_hybrid(net, plan, {"x": x})
    ref = golden.run(g, [x], keep=["n1", "n2"])
    assert np.array_equal(hy["spikes"]["n2"], ref["n2"].astype(bool))  # dyadic: exact
    net2, _, _ = lava.load_export(out)
    assert all(np.array_equal(a.weight, b.weight) for a, b in zip(net.projections, net2.projections))


def test_resources_hand_checked_on_a_tiny_net():
    w1 = np.ones((2, 1, 3, 3), np.int64)
    w2 = np.ones((2, 2, 3, 3), np.int64)
    net = lnet.LoihiNet(
        (lnet.Source("in", (1, 4, 4), bits=8),),
        (
            lnet.Population("a", (2, 4, 4), lnet.Cuba(vth=10), depth=1),
            lnet.Population("b", (2, 8, 8), lnet.Cuba(vth=10), depth=2),
        ),
        (
            lnet.Projection("in", "a", "conv", w1, padding=(1, 1), name="pa"),
            lnet.Projection("a", "b", "conv", w2, padding=(1, 1), upsample=2, name="pb"),
        ),
        ("b",),
    )
    r = lava.resources(net)
    pa, pb = r["projections"]
    # 3x3 pad 1 on 4x4: per axis 2+3+3+2 = 10 taps in bounds -> 2 out ch x 1 in ch x 10 x 10
    assert (pa["synapses"], pa["max_fan_in"], pa["weights"]) == (200, 9, 18)
    # x2 upsample then 3x3 pad 1: distinct source rows per output row 1,2,2,2,2,2,2,1 (sum 14)
    assert (pb["synapses"], pb["max_fan_in"], pb["max_fan_out"]) == (2 * 2 * 14 * 14, 2 * 2 * 2, 2 * 4 * 4)
    t = r["totals"]
    assert (t["neurons"], t["synapses"], t["cores"], t["chips"], t["upsample_projections"]) == (160, 984, 2, 1, 1)
    assert "cores 2, chips 1" in lava.format_resources(r)


@pytest.mark.slow  # ~20 s (trace + passes of the 128-channel UNet); the hand-checked tiny net covers the counting
def test_resources_of_the_full_cifar10_sdm_model_without_dense_matrices():
    cfg = ModelConfig(arch="sdm", ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2, snn_steps=8)
    g = trace(build_model(cfg), (1, 3, 32, 32))
    net, plan, rep = lava.compile_net(g, tsm="mean", on_overflow="rescale")
    r = lava.resources(net, plan.graph)
    t = r["totals"]
    assert t["neurons"] == sum(int(np.prod(p.shape)) for p in net.populations) > 1_000_000
    assert t["chips"] >= 2 and t["synapses"] > 1e9
    assert r["composition"]["spike_driven_synapses_after"] > r["composition"]["spike_driven_synapses_before"]


def test_segment_file_runs_in_stock_netx_like_the_net(tmp_path):
    from sdmc.backends.lava import compat

    compat.install_import_fixes()
    pytest.importorskip("lava.lib.dl.netx")
    g = chain_graph()
    net, plan, rep = lava.compile_net(g, pow2=True)
    out = lava.export_dir(net, plan, rep, tmp_path / "exp")
    x = (np.random.default_rng(1).random((g.T, 2, 2, 6, 6)) < 0.4).astype(np.float64)
    res = lava.run_netx(out / "segment_00.h5", x, read_v=False)  # stock lava.lib.dl.netx.hdf5.Network
    hy = lava.run_hybrid(net, plan, {"x": x})
    assert np.array_equal(res.spikes[0], hy["spikes"]["n1"]) and np.array_equal(res.spikes[1], hy["spikes"]["n2"])
    assert hy["spikes"]["n2"].any()


def test_load_export_reads_each_segment_once_and_keeps_int8_weights(sddpm, tmp_path, monkeypatch):
    """The segment files are read once (while checking them) and their weights used as read; every weight stays
    int8 (a full SDM's ~160 M weights would take 1.3 GB as int64)."""
    cfg, g = sddpm
    net, plan, rep = lava.compile_net(g, on_overflow="rescale")
    out = lava.export_dir(net, plan, rep, tmp_path / "exp")
    reads: list = []

    def counting(path):
        chain = netx_chain.read_netx(path)
        reads.append((os.path.basename(path), chain))
        return chain

    monkeypatch.setattr(manifest, "read_netx", counting)
    net2, _, man = lava.load_export(out)
    assert sorted(f for f, _ in reads) == sorted(sg["file"] for sg in man["segments"])  # once each
    assert all(p.weight.dtype == np.int8 for p in net2.projections if p.weight is not None)
    read = [L.weight for _, c in reads for L in c.layers]
    for p, m in zip(net2.projections, man["projections"]):
        if m["role"] == "segment" and m["kind"] != "identity":
            assert any(p.weight is w for w in read), p.name  # the array read_netx returned, not a second read
    assert_same_net(net, net2)
