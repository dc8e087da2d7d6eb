"""The spiking graph IR: types and kinds, editing API, checker errors, serialisation and text round trips."""

import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import spiking_graphs

from sdmc import ir
from sdmc.errors import IRError, SdmcError

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def small_graph(T=3) -> ir.Graph:
    """x -> repeat -> conv -> bn -> IF -> conv -> tsm -> (+ static temb) -> LIF -> readout; plus a spike sum."""
    rng = np.random.default_rng(0)
    g = ir.Graph(T)
    g.add(ir.Input(name="x", shape=(2, 4, 4), dtype="float64"))
    g.add(ir.Input(name="t", shape=(), dtype="int64"))
    g.add_param("emb", rng.normal(size=(10, 3)))
    g.add(ir.Embedding(name="temb", inputs=("t",), weight="emb"))
    g.add(ir.Reshape(name="temb_r", inputs=("temb",), shape=(3, 1, 1)))
    g.add(ir.Repeat(name="rep", inputs=("x",)))
    g.add_param("c1.w", rng.normal(size=(3, 2, 3, 3)))
    g.add_param("c1.b", rng.normal(size=3))
    g.add(ir.Conv2d(name="c1", inputs=("rep",), weight="c1.w", bias="c1.b", padding=(1, 1)))
    for k in ("weight", "bias", "running_mean"):
        g.add_param(f"bn.{k}", rng.normal(size=3))
    g.add_param("bn.running_var", 1 + rng.random(3))
    g.add(
        ir.BatchNorm(
            name="bn",
            inputs=("c1",),
            weight="bn.weight",
            bias="bn.bias",
            running_mean="bn.running_mean",
            running_var="bn.running_var",
        )
    )
    g.add(ir.IF(name="n1", inputs=("bn",), threshold=0.8))
    g.add_param("c2.w", rng.normal(size=(3, 3, 3, 3)))
    g.add(ir.Conv2d(name="c2", inputs=("n1",), weight="c2.w", padding=(1, 1)))
    g.add_param("c2.p", np.ones((T, 1, 1, 1, 1)))
    g.add(ir.TSMScale(name="tsm", inputs=("c2",), scale="c2.p"))
    g.add(ir.Add(name="h", inputs=("tsm", "temb_r")))
    g.add(ir.LIF(name="n2", inputs=("h",), tau=2.0, v_reset=None))
    g.add(ir.Add(name="ssum", inputs=("n1", "n2")))
    g.add(ir.MembraneReadout(name="ro", inputs=("ssum",)))
    g.add(ir.Output(name="out", inputs=("ro",)))
    return ir.check(g)


def test_types_kinds_and_timing_are_inferred():
    g = small_graph()
    ty = {n.name: n.type for n in g}
    assert ty["x"] == ir.ValueType((2, 4, 4), "float64", ir.REAL, ir.STATIC)
    assert ty["temb"].shape == (3,) and ty["temb"].timing == ir.STATIC
    assert ty["rep"].timing == ir.PER_STEP and ty["rep"].kind == ir.REAL
    assert ty["c1"] == ir.ValueType((3, 4, 4), "float64", ir.REAL, ir.PER_STEP)
    assert ty["n1"].kind == ir.SPIKE and ty["n2"].kind == ir.SPIKE
    assert ty["c2"].kind == ir.REAL
    assert ty["h"].timing == ir.PER_STEP and ty["h"].shape == (3, 4, 4)  # static temb broadcast over T, H, W
    assert ty["ssum"].kind == ir.GRADED
    assert ty["ro"] == ir.ValueType((3, 4, 4), "float64", ir.REAL, ir.STATIC)
    assert ty["ro"].full_shape(3, 5) == (5, 3, 4, 4) and ty["c1"].full_shape(3, 5) == (3, 5, 3, 4, 4)
    assert g.param_names()[0] == "emb" and "c2.p" in g.param_names()


def test_kind_rules_for_spikes():
    g = ir.Graph(2)
    g.add(ir.Input(name="s", shape=(4,), kind=ir.SPIKE, timing=ir.PER_STEP))
    g.add(ir.Mul(name="and", inputs=("s", "s")))
    g.add(ir.Scale(name="sc", inputs=("s",), factor=0.5))
    g.add(ir.Concat(name="cat", inputs=("s", "and")))
    g.add_param("p", np.ones(2))
    g.add(ir.TSMScale(name="tsm", inputs=("s",), scale="p"))
    g.add(ir.Output(name="o", inputs=("cat",)))
    ir.check(g)
    assert g["and"].type.kind == ir.SPIKE and g["cat"].type.kind == ir.SPIKE and g["cat"].type.shape == (8,)
    assert g["sc"].type.kind == ir.GRADED and g["tsm"].type.kind == ir.GRADED


def test_order_is_topological_and_editing_keeps_users_consistent():
    g = ir.Graph(2)
    g.add(ir.Output(name="o", inputs=("b",)))  # inserted before its producers
    g.add(ir.Swish(name="b", inputs=("a",)))
    g.add(ir.Input(name="a", shape=(3,), timing=ir.PER_STEP))
    assert [n.name for n in g] == ["a", "b", "o"]
    ir.check(g)
    g.replace("b", ir.Sigmoid(name="b2", inputs=("a",)))
    assert g["o"].inputs == ("b2",) and list(g.nodes) == ["o", "b2", "a"]
    with pytest.raises(IRError, match="still read by"):
        g.remove("b2")
    g.replace_uses("b2", "a")
    g.remove("b2")
    assert [n.name for n in ir.check(g)] == ["a", "o"]
    assert g.fresh_name("a") == "a_1" and g.fresh_name("zz") == "zz"
    h = g.copy()
    assert h == g and h is not g
    h.add(ir.Swish(name="extra", inputs=("a",)))
    assert h != g


def test_node_api_fields_params_and_replace():
    g = small_graph()
    c1 = g["c1"]
    assert c1.param_refs() == {"weight": "c1.w", "bias": "c1.b"}
    assert g["c2"].param_refs() == {"weight": "c2.w"}
    assert set(c1.attrs()) == {"weight", "bias", "stride", "padding", "dilation", "groups"}
    c1b = c1.replace(padding=[0, 0])
    assert c1b.padding == (0, 0) and "type" not in c1b.meta and c1b != c1
    with pytest.raises(Exception):
        c1.padding = (2, 2)  # frozen


def test_users_map_and_cached_order_follow_every_kind_of_edit():
    """users() is a kept map and order() a cache: direct writes to g.nodes, replace, replace_uses, remove and
    del all keep them equal to a fresh scan of the nodes."""

    def scan(g):
        return {k: [u for u, v in g.nodes.items() if k in v.inputs] for k in g.nodes}

    g = small_graph()
    first = g.order()
    assert g.order() == first and g.order() is not g.order()  # cached, handed out as a copy
    for k, users in scan(g).items():
        assert g.users(k) == users
    g.nodes["n2"] = g["n2"].replace(inputs=("tsm",))  # a direct write, as the tests and passes do
    g.replace("c2", ir.Conv2d(name="c2b", inputs=("n1",), weight="c2.w"))
    g.replace_uses("temb_r", "tsm")
    g.add(ir.Swish(name="late", inputs=("c1",)))
    g.add(ir.Output(name="o2", inputs=("late",)))
    del g.nodes["o2"]
    g.nodes.pop("late")
    for k, users in scan(g).items():
        assert g.users(k) == users, k
    assert g.users("c2") == [] and g.users("c2b") == scan(g)["c2b"]
    assert [n.name for n in g.order()] == [n.name for n in ir.Graph(g.T, nodes=dict(g.nodes)).order()]
    names = [n.name for n in g.order()]
    assert all(names.index(i) < names.index(n.name) for n in g.order() for i in n.inputs)
    assert len(g.users("rep")) == 1 and type(dict(g.nodes)) is dict
    import copy

    h = copy.deepcopy(g)  # the users map survives copies (the table is rebuilt, not shared)
    h.add(ir.Swish(name="extra", inputs=("x",)))
    assert h.users("x") == ["rep", "extra"] and g.users("x") == ["rep"]


def test_op_families_are_declared_on_the_node_classes():
    assert list(ir.NEURON) == ["if", "lif", "plif"] and ir.NEURON_OPS is ir.NEURON
    assert set(ir.SYNAPTIC) == {"conv2d", "conv3d", "scaled_conv2d", "linear"}
    assert set(ir.CONV) == {"conv2d", "conv3d", "scaled_conv2d"} and set(ir.CONV2D) == {"conv2d", "scaled_conv2d"}
    assert set(ir.PER_STEP_PARAMS) == {"tsm_scale", "scaled_conv2d"}
    assert "conv2d" in ir.TIME_INVARIANT and "batchnorm" in ir.TIME_INVARIANT and "if" not in ir.TIME_INVARIANT
    g = small_graph()
    assert g["n1"] in ir.NEURON and g["c1"] not in ir.NEURON  # nodes too, not only op names
    assert ir.NEURON + ("upsample",) == ("if", "lif", "plif", "upsample")
    for fam in ir.FAMILIES.values():  # every member is a registered op whose class lists the family
        assert all(fam in ir.OPS[op].families for op in fam), fam


def test_geometry_is_normalised_to_pairs():
    c = ir.Conv2d(name="c", inputs=("x",), weight="w", stride=2, padding=[1, 0], dilation=np.int64(1))
    assert (c.stride, c.padding, c.dilation) == ((2, 2), (1, 0), (1, 1))
    assert c == ir.Conv2d(name="c", inputs=("x",), weight="w", stride=(2, 2), padding=(1, 0))
    assert ir.Conv3d(name="d", inputs=("x",), weight="w", padding=1).padding == (1, 1)
    with pytest.raises(IRError, match="node 'c' \\(conv2d\\): stride must be an int or a pair of ints"):
        ir.Conv2d(name="c", inputs=("x",), weight="w", stride=(1, 2, 3))
    d = ir.serialize.node_to_dict(c)
    assert ir.serialize.node_from_dict(d) == c and d["stride"] == [2, 2]


# ------------------------------------------------------------------------------------ checker errors
def test_dangling_edge_names_the_node():
    g = small_graph()
    g.nodes["c2"] = g["c2"].replace(inputs=("nowhere",))
    with pytest.raises(IRError, match=r"node 'c2' \(conv2d\): unknown input 'nowhere'"):
        ir.check(g)


def test_cycle_names_a_node_on_it():
    g = small_graph()
    g.nodes["c1"] = g["c1"].replace(inputs=("n1",))
    with pytest.raises(IRError, match=r"cycle .*c1.*") as e:
        ir.check(g)
    assert any(f"node '{k}'" in str(e.value) for k in ("c1", "bn", "n1"))


def test_conv_channel_mismatch_names_the_conv():
    g = small_graph()
    g.params["c2.w"] = np.zeros((3, 5, 3, 3))
    with pytest.raises(
        IRError,
        match=r"node 'c2' \(conv2d\): shape mismatch: weight 'c2.w' \[3, 5, 3, 3\] "
        r"expects 5 input channels, input 'n1' has 3",
    ):
        ir.check(g)


def test_add_shape_mismatch_and_bn_channels():
    g = small_graph()
    g.nodes["temb_r"] = g["temb_r"].replace(shape=(1, 3, 1))
    with pytest.raises(IRError, match=r"node 'h' \(add\): shape mismatch: 'tsm' \[3, 4, 4\] and 'temb_r' \[1, 3, 1\]"):
        ir.check(g)
    g = small_graph()
    g.params["bn.running_var"] = np.ones(4)
    with pytest.raises(IRError, match=r"node 'bn' \(batchnorm\): shape mismatch: running_var"):
        ir.check(g)


def test_spike_into_neuron_is_a_kind_mismatch():
    g = small_graph()
    g.nodes["n2"] = g["n2"].replace(inputs=("n1",))
    with pytest.raises(IRError, match=r"node 'n2' \(lif\): kind mismatch: input 'n1' is a spike value"):
        ir.check(g)


def test_static_into_neuron_is_a_timing_mismatch():
    g = small_graph()
    g.nodes["n1"] = g["n1"].replace(inputs=("x",))
    with pytest.raises(IRError, match=r"node 'n1' \(if\): timing mismatch: input 'x' is static"):
        ir.check(g)
    g = small_graph()
    g.nodes["ro"] = g["ro"].replace(inputs=("temb_r",))
    with pytest.raises(IRError, match=r"node 'ro' \(membrane_readout\): timing mismatch"):
        ir.check(g)
    g = small_graph()
    g.add(ir.Repeat(name="rep2", inputs=("rep",)))
    with pytest.raises(IRError, match=r"node 'rep2' \(repeat\): timing mismatch: input 'rep' is already per-step"):
        ir.check(g)


def test_missing_parameter_and_tsm_length():
    g = small_graph()
    del g.params["c1.b"]
    with pytest.raises(IRError, match=r"node 'c1' \(conv2d\): missing parameter 'c1.b'"):
        ir.check(g)
    g = small_graph(T=3)
    g.params["c2.p"] = np.ones((4, 1, 1, 1, 1))
    with pytest.raises(IRError, match=r"node 'tsm' \(tsm_scale\): shape mismatch: scale 'c2.p'.*T=3"):
        ir.check(g)


def test_duplicate_names_and_other_structure_errors():
    g = small_graph()
    with pytest.raises(IRError, match=r"node 'c1' \(swish\): duplicate node name"):
        g.add(ir.Swish(name="c1", inputs=("x",)))
    d = ir.to_dict(small_graph())
    d["nodes"].append(dict(d["nodes"][3]))
    with pytest.raises(IRError, match="duplicate node name"):
        ir.from_dict(d)
    g = small_graph()
    g.nodes["h"] = ir.Add(name="h", inputs=("tsm",))
    with pytest.raises(IRError, match=r"node 'h' \(add\): takes 2 input\(s\), got 1"):
        ir.check(g)
    g = small_graph()
    g.nodes["zz"] = ir.Swish(name="yy", inputs=("x",))
    with pytest.raises(IRError, match="stored under a different name 'zz'"):
        ir.check(g)
    g = small_graph()
    g.remove("out")
    with pytest.raises(IRError, match="no output node"):
        ir.check(g)
    g = small_graph()
    g.add(ir.Output(name="bad", inputs=("t",)))
    g.add(ir.Swish(name="after", inputs=("bad",)))
    with pytest.raises(IRError, match=r"node 'after' \(swish\): reads output node 'bad'"):
        ir.check(g)
    g = small_graph()
    g.nodes["temb"] = g["temb"].replace(inputs=("x",))
    with pytest.raises(IRError, match=r"node 'temb' \(embedding\): kind mismatch: index input 'x'"):
        ir.check(g)


def test_errors_are_sdmc_errors():
    assert issubclass(IRError, SdmcError)
    with pytest.raises(IRError, match="T .* must be >= 1"):
        ir.Graph(0)
    with pytest.raises(IRError, match="unknown kind"):
        ir.ValueType((1,), kind="analog")


# ------------------------------------------------------------------------------------ malformed random graphs
@FAST
@given(spiking_graphs(), st.data())
def test_checker_rejects_mutated_random_graphs(g, data):
    ops = [n for n in g.nodes.values() if n.inputs]
    victim = data.draw(st.sampled_from(ops))
    how = data.draw(st.sampled_from(["dangling", "spike", "shape"]))
    bad = g.copy()
    if how == "dangling":
        bad.nodes[victim.name] = victim.replace(inputs=("ghost",) + victim.inputs[1:])
        with pytest.raises(IRError, match=rf"node '{victim.name}' \({victim.op}\): unknown input 'ghost'"):
            ir.check(bad)
    elif how == "spike":
        neurons = [n for n in g.nodes.values() if n.op in ir.NEURON_OPS]
        spiking = [n for n in neurons if n.type.kind == "spike"]  # a signed IF's graded output may feed a neuron
        if not spiking:
            return
        src = spiking[0]
        nrn = data.draw(st.sampled_from(neurons))
        bad.nodes[nrn.name] = nrn.replace(inputs=(src.name,))
        upstream, todo = set(), [src.name]  # src and everything it depends on: feeding it back is a cycle
        while todo:
            name = todo.pop()
            if name not in upstream:
                upstream.add(name)
                todo.extend(g.nodes[name].inputs)
        if nrn.name in upstream:
            with pytest.raises(IRError, match="cycle"):
                ir.check(bad)
        else:
            with pytest.raises(IRError, match=rf"node '{nrn.name}' \({nrn.op}\): kind mismatch"):
                ir.check(bad)
    else:
        convs = [n for n in g.nodes.values() if n.op == "conv2d"]
        if not convs:
            return
        c = data.draw(st.sampled_from(convs))
        w = bad.params[c.weight]
        bad.params[c.weight] = np.zeros((w.shape[0], w.shape[1] + 1) + w.shape[2:])
        with pytest.raises(IRError, match=rf"node '{c.name}' \(conv2d\): shape mismatch"):
            ir.check(bad)


# ------------------------------------------------------------------------------------ serialisation
@FAST
@given(spiking_graphs())
def test_text_round_trip(g):
    text = ir.format_graph(g)
    h = ir.parse(text, g.params)
    assert h == g
    assert ir.format_graph(h) == text
    assert [n.meta["type"] for n in h.nodes.values()] == [n.type for n in g.nodes.values()]
    assert h.meta == g.meta
    assert ir.check(h) == g


@FAST
@given(g=spiking_graphs())
def test_file_round_trips(tmp_path_factory, g):
    d = tmp_path_factory.mktemp("ser")
    assert ir.load(ir.save(g, d / "g.sdmc")) == g
    assert ir.load(ir.save(g, d / "gdir")) == g
    h = ir.from_dict(json.loads(json.dumps(ir.to_dict(g))), dict(g.params))
    assert h == g and h.meta == g.meta


def test_saved_zip_layout_and_version(tmp_path):
    g = small_graph()
    p = ir.save(g, tmp_path / "m.sdmc")
    with zipfile.ZipFile(p) as z:
        assert sorted(z.namelist()) == ["graph.json", "weights.safetensors"]
        d = json.loads(z.read("graph.json"))
    assert d["ir_version"] == ir.IR_VERSION and d["T"] == 3
    assert d["nodes"][0] == {
        "name": "x",
        "op": "input",
        "inputs": [],
        "shape": [2, 4, 4],
        "dtype": "float64",
        "kind": "real",
        "timing": "static",
    }
    d["ir_version"] = ir.IR_VERSION + 1
    with pytest.raises(IRError, match="newer than this sdmc"):
        ir.from_dict(d)
    d["ir_version"] = 1
    d["nodes"][0]["op"] = "maxpool"
    with pytest.raises(IRError, match="node 'x': unknown op 'maxpool'"):
        ir.from_dict(d)
    d["nodes"][0]["op"] = "input"
    d["nodes"][0]["color"] = "red"
    with pytest.raises(IRError, match=r"node 'x' \(input\): unknown attribute\(s\) \['color'\]"):
        ir.from_dict(d)


def test_bad_files_give_clear_errors(tmp_path):
    (tmp_path / "junk.sdmc").write_bytes(b"not a zip")
    with pytest.raises(IRError, match="not an .sdmc zip"):
        ir.load(tmp_path / "junk.sdmc")
    with pytest.raises(IRError, match="no such file"):
        ir.load(tmp_path / "missing.sdmc")
    (tmp_path / "d").mkdir()
    with pytest.raises(IRError, match="missing graph.json"):
        ir.load(tmp_path / "d")
    with pytest.raises(IRError, match="first line must be"):
        ir.parse("%x = input()")
    with pytest.raises(IRError, match="line 2: node 'y': unknown op 'relu'"):
        ir.parse("sdmc-ir 1 T=2\n%y = relu(%x)")


def test_writes_are_atomic(tmp_path, monkeypatch):
    g = small_graph()
    p = ir.save(g, tmp_path / "m.sdmc")
    before = p.read_bytes()
    h = small_graph(T=2)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", boom)
    with pytest.raises(OSError):
        ir.save(h, p)
    assert p.read_bytes() == before
    monkeypatch.undo()
    ir.save(g, tmp_path / "gdir")
    monkeypatch.setattr("pathlib.Path.write_bytes", boom)
    with pytest.raises(OSError):
        ir.save(h, tmp_path / "gdir")
    monkeypatch.undo()
    assert ir.load(tmp_path / "gdir") == g
    assert sorted(os.listdir(tmp_path)) == ["gdir", "m.sdmc"]  # no temporary leftovers


def test_api_docstring_walkthrough(tmp_path):
    """The recipe in sdmc.ir's docstring works as written."""
    rng = np.random.default_rng(0)
    g = ir.Graph(T=4)
    g.add(ir.Input(name="x", shape=(3, 8, 8), dtype="float32"))
    g.add(ir.Repeat(name="xs", inputs=("x",)))
    g.add_param("conv.weight", rng.normal(size=(4, 3, 3, 3)).astype(np.float32))
    g.add(ir.Conv2d(name="conv", inputs=("xs",), weight="conv.weight", padding=(1, 1)))
    g.add(ir.IF(name="sn", inputs=("conv",), threshold=1.0, v_reset=0.0))
    g.add(ir.MembraneReadout(name="ro", inputs=("sn",), decay=0.8))
    g.add(ir.Output(name="out", inputs=("ro",)))
    ir.check(g)
    assert [n.op for n in g] == ["input", "repeat", "conv2d", "if", "membrane_readout", "output"]
    assert g.users("conv") == ["sn"] and g["ro"].type.shape == (4, 8, 8)
    g.add_param("conv.folded", 2 * g.params["conv.weight"])
    g.replace("conv", g["conv"].replace(weight="conv.folded"))
    g.replace("sn", ir.LIF(name="sn2", inputs=("conv",)))
    assert g["ro"].inputs == ("sn2",)
    g.add(ir.Swish(name="sw", inputs=("xs",)))
    g.replace_uses("sw", "xs")
    g.remove("sw")
    nxg = g.to_networkx()
    assert set(nxg.successors("conv")) == {"sn2"}
    assert ir.check(g)["sn2"].type.kind == ir.SPIKE
    g.add_param("zero_d", np.array(3, dtype=np.int64))  # 0-d parameters survive the safetensors round trip
    h = ir.load(ir.save(g, tmp_path / "g.sdmc"))
    assert h == g and h.params["zero_d"].shape == ()
