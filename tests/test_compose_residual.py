"""compose_residual on hand-built residual streams: what it merges, what it keeps apart, what it reports.

Each graph is small enough to count by hand: spikes ``s0``/``s1`` feed convs, the convs meet in adds, a 1x1 conv
reads the sum, a neuron reads that.  The pass must leave the golden simulator's outputs unchanged and give every
neuron a sum of projections straight from spike sources, one per (source, geometry, scale).
"""

from __future__ import annotations

import numpy as np
import pytest

from sdmc import ir, passes
from sdmc.sim import golden

T = 2


class Net:
    """x (2x4x4) -> repeat -> 3x3 conv -> IF s0 -> 3x3 conv -> IF s1: two spike sources to build streams on."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        g = self.g = ir.Graph(T)
        g.add(ir.Input(name="x", shape=(2, 4, 4), dtype="float64"))
        g.add(ir.Repeat(name="rep", inputs=("x",)))
        self.conv("c0", "rep", 4, 2, 3)
        g.add(ir.IF(name="s0", inputs=("c0",)))
        self.conv("c1", "s0", 4, 4, 3)
        g.add(ir.IF(name="s1", inputs=("c1",)))

    def param(self, name: str, a) -> str:
        return self.g.add_param(name, np.asarray(a, dtype=np.float64))

    def conv(self, name, src, o, c, k, *, stride=1, padding=None, dilation=1, groups=1, bias=True, scale=None):
        p = k // 2 if padding is None else padding
        w = self.param(f"{name}.w", self.rng.normal(0, 1.5 / np.sqrt(c * k * k), (o, c // groups, k, k)))
        b = self.param(f"{name}.b", self.rng.normal(0, 0.3, o)) if bias else None
        geo = dict(stride=(stride, stride), padding=(p, p), dilation=(dilation, dilation), groups=groups)
        if scale is None:
            return self.g.add(ir.Conv2d(name=name, inputs=(src,), weight=w, bias=b, **geo))
        s = self.param(f"{name}.scale", scale)
        return self.g.add(ir.ScaledConv2d(name=name, inputs=(src,), weight=w, scale=s, bias=b, **geo))

    def add(self, name, a, b) -> str:
        return self.g.add(ir.Add(name=name, inputs=(a, b)))

    def neuron_out(self, src: str, name: str = "n") -> None:
        self.g.add(ir.IF(name=name, inputs=(src,)))
        self.g.add(ir.Output(name=f"out_{name}", inputs=(name,)))

    def inputs(self, seed: int = 1) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        return [3 * rng.normal(size=(3,) + n.shape) for n in self.g.input_nodes]


def compose(net: Net) -> tuple[ir.Graph, dict]:
    """Run the pass (after its prerequisites), check the outputs are unchanged, return the graph and its log."""
    g = ir.check(net.g)
    h = passes.run(g, ["fuse_tsm", "split_concat", "compose_residual"])
    ir.check(h)
    xs = net.inputs()
    want, got = golden.run(g, xs), golden.run(h, xs)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-9, err_msg=k)
    assert sum(float(np.abs(v).sum()) for v in want.values()) > 0  # some neuron fired: the check saw something
    return h, h.meta["passes"][-1]


def projections(h: ir.Graph, neuron: str = "n") -> list[ir.Node]:
    """The leaves of the add tree feeding ``neuron``."""

    def leaves(v):
        node = h[v]
        return sum((leaves(i) for i in node.inputs), []) if node.op == "add" else [node]

    return leaves(h[neuron].inputs[0])


def w(h: ir.Graph, node: ir.Node, key: str = "weight") -> np.ndarray:
    return h.params[getattr(node, key)]


def test_terms_from_one_source_merge_into_one_projection_by_hand():
    """1x1(a(s0) + b(s0)) = one 3x3 conv from s0 with weight S(Wa + Wb) and bias S(ba + bb) + c."""
    net = Net()
    net.conv("a", "s0", 4, 4, 3)
    net.conv("b", "s0", 4, 4, 3)
    net.add("h", "a", "b")
    net.conv("p", "h", 3, 4, 1)
    net.neuron_out("p")
    h, log = compose(net)
    g = net.g
    (proj,) = projections(h)
    assert proj.op == "conv2d" and proj.inputs == ("s0",)
    S = g.params["p.w"][:, :, 0, 0]
    np.testing.assert_allclose(w(h, proj), np.einsum("oc,cikl->oikl", S, g.params["a.w"] + g.params["b.w"]))
    np.testing.assert_allclose(w(h, proj, "bias"), S @ (g.params["a.b"] + g.params["b.b"]) + g.params["p.b"])
    assert log["rewritten"] == ["n"] and log["max_projections_per_neuron"] == 1
    assert list(log["not_composed"]) == ["c0"]  # the encoding conv on the repeated image: nothing to compose
    # dense synapses per sample and step, O*Ho*Wo*(C/groups)*kh*kw over the live convs (c1 feeds nothing here):
    # c0 = 4*16*2*9 = 1152, a = b = 4*16*4*9 = 2304, p = 3*16*4 = 192; after: c0 and the merged 3*16*4*9 = 1728
    assert log["synapses_before"] == {"spike_driven": 2 * 2304, "all": 1152 + 2 * 2304 + 192}
    assert log["synapses_after"] == {"spike_driven": 1728, "all": 1152 + 1728}


@pytest.mark.parametrize(
    "geo_a,geo_b",
    [
        (dict(stride=1, padding=0), dict(stride=2, padding=1)),  # both 2x2 out of 4x4
        (dict(padding=1, dilation=1), dict(padding=2, dilation=2)),  # both 4x4 out of 4x4
    ],
    ids=["stride", "padding-dilation"],
)
def test_one_source_with_another_geometry_stays_a_separate_projection(geo_a, geo_b):
    net = Net()
    net.conv("a", "s0", 4, 4, 3, **geo_a)
    net.conv("b", "s0", 4, 4, 3, **geo_b)
    net.add("h", "a", "b")
    net.conv("p", "h", 3, 4, 1)
    net.neuron_out("p")
    h, log = compose(net)
    got = sorted((tuple(p.stride), tuple(p.padding), tuple(p.dilation)) for p in projections(h))
    want = sorted(((g.get("stride", 1),) * 2, (g["padding"],) * 2, (g.get("dilation", 1),) * 2) for g in (geo_a, geo_b))
    assert got == want and log["max_projections_per_neuron"] == 2


@pytest.mark.parametrize("same_scale", [True, False])
def test_scaled_projections_merge_only_with_the_same_per_step_scale(same_scale):
    net = Net()
    net.conv("a", "s0", 4, 4, 3, scale=[0.5, 1.5])
    net.conv("b", "s0", 4, 4, 3, scale=[0.5, 1.5] if same_scale else [1.25, 0.75])
    net.conv("u", "s0", 4, 4, 3)  # unscaled: never merges with a scaled one
    net.add("h0", "a", "b")
    net.add("h", "h0", "u")
    net.conv("p", "h", 3, 4, 1)
    net.neuron_out("p")
    h, log = compose(net)
    ops = sorted(p.op for p in projections(h))
    assert ops == (["conv2d", "scaled_conv2d"] if same_scale else ["conv2d", "scaled_conv2d", "scaled_conv2d"])
    assert all(p.inputs == ("s0",) for p in projections(h))


def test_biases_of_new_projections_are_gathered_on_the_first():
    """Two sources, each projection with a bias: the neuron gets one bias, on the first projection, = the sum."""
    net = Net()
    net.conv("a", "s0", 4, 4, 3)
    net.conv("b", "s1", 4, 4, 3)
    net.add("h", "a", "b")
    net.conv("p", "h", 3, 4, 1)
    net.neuron_out("p")
    h, log = compose(net)
    g = net.g
    proj = projections(h)
    assert [p.inputs for p in proj] == [("s0",), ("s1",)] and log["max_projections_per_neuron"] == 2
    assert proj[0].bias is not None and proj[1].bias is None
    S = g.params["p.w"][:, :, 0, 0]
    np.testing.assert_allclose(w(h, proj[0], "bias"), S @ (g.params["a.b"] + g.params["b.b"]) + g.params["p.b"])


def test_a_broadcast_operand_is_carried_through_the_1x1():
    """1x1(a(s0) + e) with e a per-channel [C, 1, 1] value (the time-embedding bias): e becomes its own term,
    1x1(e), beside the projection from s0; dropping it would change the neuron's input."""
    net = Net()
    net.g.add(ir.Input(name="e", shape=(4, 1, 1), dtype="float64"))
    net.conv("a", "s0", 4, 4, 3)
    net.add("h", "a", "e")
    net.conv("p", "h", 3, 4, 1)
    net.neuron_out("p")
    h, log = compose(net)
    assert sorted(p.inputs[0] for p in projections(h)) == ["e", "s0"]
    assert log["rewritten"] == ["n"]


def test_grouped_or_strided_1x1_is_a_consumer_not_part_of_the_stream():
    """A 1x1 conv with groups > 1 (or stride 2) cannot be composed: it reads the composed sum, and is reported."""
    net = Net()
    net.conv("a", "s0", 4, 4, 3)
    net.conv("b", "s1", 4, 4, 3)
    net.add("h", "a", "b")
    net.conv("p", "h", 4, 4, 1)  # composable: part of the stream
    net.conv("gp", "p", 4, 4, 1, groups=2)
    net.conv("sp", "p", 4, 4, 1, stride=2, padding=0)
    net.neuron_out("gp", "n")
    net.neuron_out("sp", "m")
    h, log = compose(net)
    assert sorted(log["rewritten"]) == ["gp", "sp"]
    assert [x.name for x in projections(h, "n")] == ["gp"] and h["gp"].groups == 2
    assert h[h["gp"].inputs[0]].op == "add"  # gp reads the composed sum of projections from s0 and s1
    assert (
        set(log["not_composed"]) == {"c0", "gp", "sp"}
        and "1x1 conv (stride [1, 1], groups 2)" in log["not_composed"]["gp"]
    )
    assert log["max_projections_per_neuron"] == 1


def test_dead_branches_are_not_reported():
    """A value only a dead node reads is not listed under not_composed (it will be removed, not deployed)."""
    net = Net()
    net.conv("a", "s0", 4, 4, 3)
    net.conv("b", "s1", 4, 4, 3)
    net.add("h", "a", "b")
    net.conv("p", "h", 4, 4, 1)
    net.g.add(ir.Swish(name="sw_live", inputs=("p",)))
    net.g.add(ir.Swish(name="sw_dead", inputs=("p",)))
    net.conv("q", "sw_live", 4, 4, 3)
    net.conv("q_dead", "sw_dead", 4, 4, 3)
    net.neuron_out("q")
    h, log = compose(net)
    assert set(log["not_composed"]) == {"c0", "sw_live", "q"} and "swish" in log["not_composed"]["sw_live"]


def test_only_consumers_of_composed_values_are_rewired_and_every_new_projection_is_read():
    """A two-level stream (the SDDPM block: a sum, a 1x1 shortcut, another sum).  The adds and 1x1 convs *are* the
    stream: they are not rewired.  Rewired: the neuron reading the last 1x1 (n) and the 3x3 conv reading the
    composed sum (q).  Not rewired: a neuron reading a plain sum of spike-driven convs (k: nothing to compose)
    and one reading a sum with a value that cannot be composed (j).  No projection is built that nothing reads."""
    net = Net()
    net.conv("a", "s0", 4, 4, 3)
    net.conv("b", "s1", 4, 4, 3)
    net.add("h", "a", "b")
    net.conv("p", "h", 4, 4, 1)
    net.conv("c", "s1", 4, 4, 3)
    net.add("h2", "p", "c")
    net.conv("p2", "h2", 4, 4, 1)
    net.neuron_out("p2", "n")
    net.conv("q", "h2", 4, 4, 3)  # a 3x3 conv on the real stream: reads the composed sum, is not composed itself
    net.neuron_out("q", "m")
    net.conv("d", "s0", 4, 4, 3)
    net.conv("e", "s1", 4, 4, 3)
    net.add("plain", "d", "e")
    net.neuron_out("plain", "k")
    net.add("mixed", "q", "d")
    net.neuron_out("mixed", "j")
    h, log = compose(net)
    assert sorted(log["rewritten"]) == ["n", "q"]
    assert sorted(p.inputs[0] for p in projections(h, "n")) == ["s0", "s1"]
    assert h["k"].inputs == ("plain",) and h["j"].inputs == ("mixed",)
    assert h[h["q"].inputs[0]].op == "add" and "3x3 conv" in log["not_composed"]["q"]
    live = h.ancestors(n.name for n in h.output_nodes)
    assert all(k in live for k in h.nodes if k not in net.g.nodes)  # every node the pass added is read
    assert log["max_projections_per_neuron"] == 2


def test_a_1x1_over_a_value_that_cannot_be_composed_is_left_alone_and_no_neuron_means_zero():
    g = ir.Graph(T)
    g.add(ir.Input(name="x", shape=(2, 4, 4), dtype="float64"))
    g.add(ir.Repeat(name="rep", inputs=("x",)))
    g.add_param("c.w", np.ones((2, 2, 1, 1)))
    g.add(ir.Conv2d(name="c", inputs=("rep",), weight="c.w"))
    g.add(ir.Output(name="out", inputs=("c",)))
    log = passes.run(ir.check(g), ["fuse_tsm", "split_concat", "compose_residual"]).meta["passes"][-1]
    assert log["max_projections_per_neuron"] == 0 and log["rewritten"] == []
