"""IR passes: pure weight functions against torch / explicit formulas, every pass preserving the golden
simulator's outputs on generated graphs and on traced SDDPM / SDM UNets, and what each pass is for."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import randomize_bn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import random_inputs, spiking_graphs

from sdmc import ir, passes
from sdmc.config import ModelConfig
from sdmc.errors import SdmcError
from sdmc.frontends import trace
from sdmc.models import SpikingUNet
from sdmc.passes.rewrite import _Conv, compose_1x1
from sdmc.sim import golden

TRANSFORMS = ["fold_bn", "fuse_tsm", "hoist_static", "dead_code", "split_concat", "compose_residual"]


# ------------------------------------------------------------------------------------------ helpers
def min_margin(graph: ir.Graph, vals: dict[str, np.ndarray]) -> float:
    """Smallest |h - threshold| over every neuron, step and element (h: charged membrane), inf if none."""
    m = np.inf
    for n in graph.nodes.values():
        if n.op not in ("if", "lif"):
            continue
        x, th, vr = vals[n.inputs[0]], float(n.threshold), n.v_reset
        r = 0.0 if vr is None else float(vr)
        v = np.full(x.shape[1:], r)
        for t in range(x.shape[0]):
            if n.op == "if":
                h = v + x[t]
            elif n.decay_input:
                h = v + (x[t] - (v - r)) / n.tau
            else:
                h = v - (v - r) / n.tau + x[t]
            m = min(m, float(np.abs(h - th).min()))
            s = (h >= th).astype(np.float64)
            v = h - s * th if vr is None else s * r + (1 - s) * h
    return m


_REF: dict = {}


def assert_same_outputs(g0: ir.Graph, g1: ir.Graph, inputs, tol: float = 1e-9) -> bool:
    """Outputs equal within ``tol`` unless some membrane of ``g0`` is within 1e-9 of threshold (a tie:
    then spikes may honestly differ; returns False and asserts nothing).  The reference run is cached."""
    if _REF.get("g") is not g0 or _REF.get("inputs") is not inputs:  # holds both, so ids are not reused
        vals = golden.run(g0, inputs, all_values=True)
        _REF.update(g=g0, inputs=inputs, vals=vals, margin=min_margin(g0, vals))
    vals = _REF["vals"]
    if _REF["margin"] <= 1e-9:
        return False
    out = golden.run(g1, inputs, all_values=True)
    assert [n.name for n in g1.output_nodes] == [n.name for n in g0.output_nodes]
    for n in g1.output_nodes:
        np.testing.assert_allclose(out[n.name], vals[n.name], rtol=tol, atol=tol, err_msg=f"output {n.name}")
    for n in g1.nodes.values():  # spikes identical wherever a neuron survived the pass under its name
        if n.op in ir.NEURON_OPS and n.name in g0.nodes and g0[n.name].op == n.op:
            assert np.array_equal(out[n.name], vals[n.name]), f"spikes of {n.name}"
    return True


def snapshot(g: ir.Graph) -> tuple:
    return ir.to_dict(g), {k: v.copy() for k, v in g.params.items()}


def assert_unchanged(g: ir.Graph, snap: tuple) -> None:
    d, params = snap
    assert ir.to_dict(g) == d
    assert g.params.keys() == params.keys()
    assert all(np.array_equal(g.params[k], v) for k, v in params.items())


# ------------------------------------------------------------------------------------------ pure functions
def test_fold_bn_weights_matches_torch():
    torch.manual_seed(0)
    w, b = torch.randn(6, 4, 3, 3, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    rm, rv = torch.randn(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64) + 0.3
    gamma, beta = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    tw, tb = torch.nn.utils.fusion.fuse_conv_bn_weights(w, b, rm, rv, 1e-5, gamma, beta)
    ow, ob = passes.fold_bn_weights(w.numpy(), b.numpy(), rm.numpy(), rv.numpy(), gamma.numpy(), beta.numpy(), 1e-5)
    np.testing.assert_allclose(ow, tw.detach().numpy(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(ob, tb.detach().numpy(), rtol=1e-13, atol=1e-14)
    # no conv bias and no affine BN: torch treats them as 0 / 1 / 0
    tw, tb = torch.nn.utils.fusion.fuse_conv_bn_weights(w, None, rm, rv, 1e-3, None, None)
    ow, ob = passes.fold_bn_weights(w.numpy(), None, rm.numpy(), rv.numpy(), None, None, 1e-3)
    np.testing.assert_allclose(ow, tw.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(ob, tb.detach().numpy(), rtol=1e-13, atol=1e-14)


def test_fuse_tsm_weights_formula():
    rng = np.random.default_rng(1)
    T, O = 3, 5
    w, b, p = rng.normal(size=(O, 2, 3, 3)), rng.normal(size=O), rng.uniform(0.5, 1.5, (T, 1, 1, 1, 1))
    mean, var, gamma, beta = rng.normal(size=O), rng.random(O) + 0.5, rng.normal(size=O), rng.normal(size=O)
    w2, p2, bt = passes.fuse_tsm_weights(w, b, p, dict(mean=mean, var=var, gamma=gamma, beta=beta, eps=1e-5))
    sig = np.sqrt(var + 1e-5)
    for t in range(T):
        pt = p.reshape(-1)[t]
        np.testing.assert_allclose(p2[t] * w2, pt * w * (gamma / sig)[:, None, None, None], rtol=1e-13)
        np.testing.assert_allclose(bt[t], (pt * b - mean) * gamma / sig + beta, rtol=1e-12, atol=1e-14)
    w3, _, bt3 = passes.fuse_tsm_weights(w, None, p)
    assert bt3 is None and np.array_equal(w3, w)
    # no conv bias but a BN: the BN's shift is the same at every step, still one row per step ([T, O])
    _, _, bt4 = passes.fuse_tsm_weights(w, None, p, dict(mean=mean, var=var, gamma=gamma, beta=beta, eps=1e-5))
    assert bt4.shape == (T, O)
    np.testing.assert_allclose(bt4, np.broadcast_to(beta - mean * gamma / sig, (T, O)), rtol=1e-12)


def test_compose_1x1_equals_sequential_convs():
    rng = np.random.default_rng(2)
    T = 2
    inner = _Conv(rng.normal(size=(4, 3, 3, 3)), rng.normal(size=T), rng.normal(size=(T, 4)), (2, 2), (1, 1), (1, 1), 1)
    outer = _Conv(rng.normal(size=(5, 4, 1, 1)), rng.normal(size=T), rng.normal(size=5), (1, 1), (0, 0), (1, 1), 1)
    x = rng.normal(size=(2, 3, 6, 6))
    c = compose_1x1(outer, inner)
    for t in range(T):
        y1 = inner.scale[t] * golden.conv2d(x, inner.weight, None, (2, 2), (1, 1)) + inner.bias[t][None, :, None, None]
        y2 = outer.scale[t] * golden.conv2d(y1, outer.weight, None) + outer.bias[None, :, None, None]
        yc = c.scale[t] * golden.conv2d(x, c.weight, None, (2, 2), (1, 1)) + c.bias[t][None, :, None, None]
        np.testing.assert_allclose(yc, y2, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------ UNet-like graphs
class _B:
    """Tiny graph builder with random float64 parameters."""

    def __init__(self, T: int, seed: int) -> None:
        self.g, self.rng, self.i = ir.Graph(T), np.random.default_rng(seed), 0

    def add(self, node: ir.Node) -> str:
        self.g.add(node)
        node.meta["type"] = node.infer([self.g.nodes[i].type for i in node.inputs], self.g)
        return node.name

    def name(self, base: str) -> str:
        self.i += 1
        return f"{base}{self.i}"

    def p(self, name: str, a) -> str:
        return self.g.add_param(name, np.asarray(a, dtype=np.float64))

    def ch(self, v: str) -> int:
        return self.g.nodes[v].type.shape[0]

    def conv(self, src: str, o: int, k: int = 3, stride: int = 1, tsm: bool = False) -> str:
        c, n, r = self.ch(src), self.name("conv"), self.rng
        v = self.add(
            ir.Conv2d(
                name=n,
                inputs=(src,),
                weight=self.p(f"{n}.w", r.normal(0, 2.5 / np.sqrt(c * k * k), (o, c, k, k))),
                bias=self.p(f"{n}.b", r.normal(0, 0.3, o)) if r.random() < 0.8 else None,
                stride=(stride, stride),
                padding=(k // 2, k // 2),
            )
        )
        if tsm:
            v = self.add(
                ir.TSMScale(
                    name=self.name("tsm"),
                    inputs=(v,),
                    scale=self.p(f"{n}.p", r.uniform(0.5, 1.5, (self.g.T, 1, 1, 1, 1))),
                )
            )
        return v

    def bn(self, src: str) -> str:
        c, n, r = self.ch(src), self.name("bn"), self.rng
        return self.add(
            ir.BatchNorm(
                name=n,
                inputs=(src,),
                weight=self.p(f"{n}.g", 1 + 0.3 * r.normal(size=c)),
                bias=self.p(f"{n}.b", 0.3 * r.normal(size=c)),
                running_mean=self.p(f"{n}.m", 0.3 * r.normal(size=c)),
                running_var=self.p(f"{n}.v", 0.5 + r.random(c)),
            )
        )


@st.composite
def unet_like_graphs(draw) -> ir.Graph:
    """Random SDDPM/SDM-like graphs: repeated image -> conv(+TSM)(+BN) -> neuron; then residual blocks with
    identity or 1x1 shortcuts on the real stream and a static per-channel bias, stride-2 downsampling,
    upsampling, channel-concat skips; a BN -> swish -> conv tail and the membrane read-out."""
    T = draw(st.integers(1, 3))
    b = _B(T, draw(st.integers(0, 2**31)))
    tsm, use_bn = draw(st.booleans()), draw(st.booleans())
    neuron = dict(
        op=draw(st.sampled_from(["if", "lif"])),
        threshold=draw(st.sampled_from([0.5, 1.0, 0.997])),
        v_reset=draw(st.sampled_from([0.0, None])),
    )

    def spike(src):
        cls = ir.IF if neuron["op"] == "if" else ir.LIF
        return b.add(
            cls(name=b.name(neuron["op"]), inputs=(src,), threshold=neuron["threshold"], v_reset=neuron["v_reset"])
        )

    def cbn(src, o, k=3, stride=1):
        v = b.conv(src, o, k, stride, tsm)
        return b.bn(v) if use_bn else v

    x = b.add(ir.Input(name="x", shape=(draw(st.integers(1, 2)), 4, 4), dtype="float64"))
    emb = b.add(ir.Input(name="emb", shape=(3,), dtype="float64"))
    h = cbn(b.add(ir.Repeat(name="rep", inputs=(x,))), draw(st.integers(2, 4)))
    h = cbn(spike(h), b.ch(h))
    skips = [h]
    for blk in draw(st.lists(st.sampled_from(["res", "res", "down", "up", "cat"]), min_size=1, max_size=5)):
        H = b.g.nodes[h].type.shape[1]
        if blk == "res" or (blk == "cat" and len(skips) < 2) or (blk == "down" and H < 4) or (blk == "up" and H > 4):
            o = draw(st.integers(2, 4))
            r = cbn(spike(h), o)
            if draw(st.booleans()):  # static per-channel bias (the time embedding)
                n = b.name("temb")
                lin = b.add(
                    ir.Linear(
                        name=n,
                        inputs=(emb,),
                        weight=b.p(f"{n}.w", b.rng.normal(size=(o, 3))),
                        bias=b.p(f"{n}.b", b.rng.normal(size=o)),
                    )
                )
                r = b.add(
                    ir.Add(
                        name=b.name("addt"),
                        inputs=(r, b.add(ir.Reshape(name=b.name("rs"), inputs=(lin,), shape=(o, 1, 1)))),
                    )
                )
            r = cbn(spike(r), o)
            sc = h if o == b.ch(h) and draw(st.booleans()) else b.conv(h, o, 1, 1, tsm)
            h = b.add(ir.Add(name=b.name("res"), inputs=(r, sc)))
        elif blk == "down":
            h = cbn(spike(h), b.ch(h), 3, 2)
        elif blk == "up":
            h = cbn(b.add(ir.Upsample(name=b.name("up"), inputs=(spike(h),), scale=2)), b.ch(h))
        else:
            same = [s for s in skips if b.g.nodes[s].type.shape[1:] == b.g.nodes[h].type.shape[1:] and s != h]
            if same:
                h = b.add(ir.Concat(name=b.name("cat"), inputs=(h, draw(st.sampled_from(same))), axis=0))
        skips.append(h)
    y = b.conv(b.add(ir.Swish(name="tail_swish", inputs=(b.bn(h),))), 1, 3, 1, tsm)
    b.add(ir.Output(name="out", inputs=(b.add(ir.MembraneReadout(name="readout", inputs=(y,))),)))
    return ir.check(b.g)


# ------------------------------------------------------------------------------------------ properties
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    g=spiking_graphs(max_ops=8),
    name=st.sampled_from(TRANSFORMS + ["partition", "infer", "cost"]),
    seed=st.integers(0, 1000),
)
def test_every_pass_preserves_outputs_and_input(g, name, seed):
    snap = snapshot(g)
    out = passes.run(g, [*passes.PASSES[name].requires, name])  # with its prerequisites (resolve enforces them)
    assert_unchanged(g, snap)  # never mutates its input
    ir.check(out)
    assert out.meta["passes"][-1]["pass"] == name
    assert_same_outputs(g, out, random_inputs(g, B=2, seed=seed))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=spiking_graphs(max_ops=10), seed=st.integers(0, 1000))
def test_neuromorphic_pipeline_preserves_outputs_checked_after_each_pass(g, seed):
    inputs = random_inputs(g, B=2, seed=seed)
    h = g
    for name in passes.resolve("neuromorphic"):
        h = passes.run(h, [name])
        ir.check(h)
        if not assert_same_outputs(g, h, inputs):
            return
    assert [e["pass"] for e in h.meta["passes"]] == list(passes.PIPELINES["neuromorphic"])
    assert set(h.meta["partition"]) == set(h.nodes)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=unet_like_graphs(), seed=st.integers(0, 1000))
def test_neuromorphic_pipeline_on_unet_like_graphs(g, seed):
    """Every pass of the pipeline (checked after each) keeps the outputs of UNet-shaped graphs, whose
    residual streams, shortcuts, concats and BN/TSM layers are what the passes rewrite."""
    inputs = random_inputs(g, B=2, seed=seed)
    h = g
    for name in passes.resolve("neuromorphic"):
        snap = snapshot(h)
        nxt = passes.run(h, [name])
        assert_unchanged(h, snap)
        ir.check(nxt)
        if not assert_same_outputs(g, nxt, inputs):
            return
        h = nxt
    assert not any(n.op == "tsm_scale" for n in h.nodes.values())  # every TSM follows a conv here: all fused
    for r in (n for n in h.nodes.values() if n.op == "repeat"):  # static work left the time loop
        assert all(h[u].op in ir.NEURON_OPS for u in h.users(r.name)), r.name
    for n in h.nodes.values():
        if n.op in ir.NEURON_OPS + ("conv2d", "scaled_conv2d"):
            assert h[n.inputs[0]].op != "concat", n.name


@settings(max_examples=15, deadline=None)
@given(g=spiking_graphs(max_ops=8), seed=st.integers(0, 1000))
def test_structural_passes_preserve_training_mode_outputs(g, seed):
    """hoist_static, dead_code and split_concat keep BN training statistics (no fold) unchanged."""
    inputs = random_inputs(g, B=3, seed=seed)
    vals = golden.run(g, inputs, training=True, all_values=True)
    if min_margin(g, vals) <= 1e-9:
        return
    h = passes.run(g, ["hoist_static", "dead_code", "split_concat"])
    for k, y in golden.run(h, inputs, training=True).items():
        np.testing.assert_allclose(y, vals[k], rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------ hand-made graphs
def test_hoist_static_by_hand():
    """A conv on a repeated static image runs once before the time loop (its output repeated); a TSM scale
    takes the static image directly (still per-step out). Both are logged."""
    g = ir.Graph(2)
    g.add(ir.Input(name="x", shape=(2, 4, 4), dtype="float64"))
    g.add(ir.Repeat(name="rep", inputs=("x",)))
    g.add(ir.Conv2d(name="c", inputs=("rep",), weight=g.add_param("c.w", np.ones((2, 2, 1, 1)))))
    g.add(ir.TSMScale(name="tsm", inputs=("rep",), scale=g.add_param("p", np.full((2, 1, 1, 1, 1), 0.5))))
    g.add(ir.Add(name="a", inputs=("c", "tsm")))
    g.add(ir.IF(name="s", inputs=("a",)))
    g.add(ir.MembraneReadout(name="ro", inputs=("s",)))
    g.add(ir.Output(name="out", inputs=("ro",)))
    g.add(ir.Output(name="echo", inputs=("x",)))  # inputs and outputs are not counted as static nodes
    h = passes.run(ir.check(g), ["hoist_static"])
    log = h.meta["passes"][-1]
    assert log["hoisted"] == ["c", "tsm"] and log["static_nodes"] == 2  # the conv, and the readout's result
    assert h["c"].inputs == ("x",) and h["tsm"].inputs == ("x",) and h[h["a"].inputs[0]].op == "repeat"
    assert not h["c"].type.per_step and h["tsm"].type.per_step


def _graph(T=2, seed=0):
    """x -> repeat -> conv3 -> tsm -> bn -> IF -> cat(IF, conv1x1 stream) -> IF -> conv -> readout."""
    rng = np.random.default_rng(seed)
    g = ir.Graph(T)
    P = lambda k, a: g.add_param(k, np.asarray(a, dtype=np.float64))  # noqa: E731

    def conv(name, src, o, c, k, bias=True):
        g.add(
            ir.Conv2d(
                name=name,
                inputs=(src,),
                weight=P(f"{name}.w", rng.normal(0, 1.5 / np.sqrt(c * k * k), (o, c, k, k))),
                bias=P(f"{name}.b", rng.normal(0, 0.2, o)) if bias else None,
                padding=(k // 2, k // 2),
            )
        )

    def bn(name, src, c):
        g.add(
            ir.BatchNorm(
                name=name,
                inputs=(src,),
                weight=P(f"{name}.g", 1 + 0.3 * rng.normal(size=c)),
                bias=P(f"{name}.b", 0.3 * rng.normal(size=c)),
                running_mean=P(f"{name}.m", rng.normal(size=c) * 0.2),
                running_var=P(f"{name}.v", 0.5 + rng.random(c)),
            )
        )

    g.add(ir.Input(name="x", shape=(2, 4, 4), dtype="float64"))
    g.add(ir.Repeat(name="rep", inputs=("x",)))
    conv("c0", "rep", 4, 2, 3)
    g.add(ir.TSMScale(name="tsm0", inputs=("c0",), scale=P("tsm0.p", rng.uniform(0.5, 1.5, (T, 1, 1, 1, 1)))))
    bn("bn0", "tsm0", 4)
    g.add(ir.IF(name="s0", inputs=("bn0",)))
    conv("c1", "s0", 4, 4, 3)
    bn("bn1", "c1", 4)  # h1: real stream
    g.add(ir.IF(name="s1", inputs=("bn1",)))
    conv("c2", "s1", 4, 4, 3)
    conv("sc", "bn1", 4, 4, 1)  # 1x1 shortcut on the real stream
    g.add(ir.Add(name="h2", inputs=("c2", "sc")))
    g.add(ir.Concat(name="cat", inputs=("h2", "bn1"), axis=0))
    g.add(ir.IF(name="s2", inputs=("cat",)))
    conv("c3", "s2", 3, 8, 3)
    conv("sc3", "cat", 3, 8, 1)
    g.add(ir.Add(name="h3", inputs=("c3", "sc3")))
    g.add(ir.IF(name="s3", inputs=("h3",)))
    conv("c4", "s3", 2, 3, 1)
    g.add(ir.MembraneReadout(name="ro", inputs=("c4",)))
    g.add(ir.Output(name="out", inputs=("ro",)))
    g.add(ir.Swish(name="unused", inputs=("h3",)))
    return ir.check(g)


def test_pipelines_on_hand_made_graph_and_what_they_do():
    g = _graph()
    x = np.random.default_rng(5).normal(size=(3, 2, 4, 4))
    inf = passes.run(g, "inference")
    assert assert_same_outputs(g, inf, [x])
    ops = [n.op for n in inf.nodes.values()]
    assert "batchnorm" not in ops and "tsm_scale" not in ops and "unused" not in inf.nodes
    head = inf["tsm0"]  # conv + TSM + BN -> one scaled conv on the static image (hoisted: no repeat before it)
    assert head.op == "scaled_conv2d" and head.inputs == ("x",)
    assert passes.cost(inf)["c1"].meta["cost"]["runs"] == 2 and passes.cost(inf)["tsm0"].meta["cost"]["runs"] == 1
    neu = passes.run(g, "neuromorphic")
    assert assert_same_outputs(g, neu, [x])
    # no neuron and no conv reads a concat; every neuron input is a sum of convs driven by spikes
    for n in neu.nodes.values():
        if n.op in ("if", "conv2d", "scaled_conv2d"):
            assert neu[n.inputs[0]].op != "concat", n.name

    def leaves(v):
        node = neu[v]
        return sum((leaves(i) for i in node.inputs), []) if node.op == "add" else [node]

    for n in neu.nodes.values():
        if n.op == "if" and n.name != "s0":
            for leaf in leaves(n.inputs[0]):
                assert leaf.op in ("conv2d", "scaled_conv2d"), (n.name, leaf.name)
                assert neu[leaf.inputs[0]].type.kind == ir.SPIKE, (n.name, leaf.name)
    log = {e["pass"]: e for e in neu.meta["passes"]}
    cr = log["compose_residual"]
    assert cr["rewritten"] and cr["synapses_after"]["spike_driven"] > cr["synapses_before"]["spike_driven"]
    assert log["partition"]["neuromorphic"] > 0
    side = neu.meta["partition"]
    assert side["s1"][0] == "neuromorphic" and side["x"][0] == "host" and side["ro"][0] == "host"


def test_fold_bn_keeps_what_cannot_fold():
    g = _graph()
    g.add_param("fan.m", np.array([0.1, -0.2]))
    g.add_param("fan.v", np.array([0.7, 1.3]))
    g.add(ir.BatchNorm(name="bn_fan", inputs=("c4",), running_mean="fan.m", running_var="fan.v"))
    g.add(ir.Output(name="out2", inputs=("bn_fan",)))
    g.add(ir.Output(name="out3", inputs=("c4",)))
    ir.check(g)
    h = passes.fold_bn(g)
    kept = h.meta["passes"][-1]["kept"]
    assert "bn0" in kept and "tsm" in kept["bn0"]  # no affine op right before it
    assert "bn_fan" in kept and "fan-out" in kept["bn_fan"]  # c4 is read twice
    assert "bn1" not in h.nodes and h["c1"].bias != g["c1"].bias
    x = np.random.default_rng(0).normal(size=(2, 2, 4, 4))
    assert assert_same_outputs(g, h, [x])


def test_compose_residual_records_what_it_cannot_compose():
    g = _graph()
    g.add(ir.Swish(name="sw", inputs=("h2",)))
    g.nodes["s2"] = g["s2"].replace(inputs=("cat",))
    g.add(ir.Conv2d(name="c33", inputs=("sw",), weight="c2.w", bias=None, padding=(1, 1)))
    g.add(ir.IF(name="s9", inputs=("c33",)))
    g.add(ir.Output(name="out9", inputs=("s9",)))
    h = passes.run(ir.check(g), ["fuse_tsm", "split_concat", "compose_residual"])
    why = h.meta["passes"][-1]["not_composed"]
    assert "swish" in why.get("sw", "")
    x = np.random.default_rng(1).normal(size=(2, 2, 4, 4))
    assert assert_same_outputs(g, h, [x])


def test_prerequisites_are_enforced_by_resolve_and_run():
    g = _graph()
    with pytest.raises(SdmcError, match="pass 'compose_residual' needs 'fuse_tsm' to run before it"):
        passes.resolve(["split_concat", "compose_residual"])
    with pytest.raises(SdmcError, match="needs 'fuse_tsm', 'split_concat'"):
        passes.run(g, ["compose_residual"])
    with pytest.raises(SdmcError, match="needs 'split_concat'"):
        passes.resolve(["fuse_tsm", "compose_residual", "split_concat"])  # a prerequisite after the pass
    # prerequisites already in the graph's pass log count as done
    h = passes.run(g, ["fuse_tsm", "split_concat"])
    assert passes.run(h, ["compose_residual"]).meta["passes"][-1]["pass"] == "compose_residual"
    assert passes.resolve("train") == ["hoist_affine"] and passes.PASSES["compose_residual"].requires


def test_each_analysis_writes_one_meta_key_of_its_own():
    writes = [p.writes for p in passes.PASSES.values() if p.analysis]
    assert None not in writes and len(set(writes)) == len(writes)
    assert {k for k, p in passes.PASSES.items() if p.analysis} == {"infer", "cost", "partition"}
    g = passes.run(_graph(), "neuromorphic")
    side, why = g["s1"].meta["partition"]
    assert [side, why] == g.meta["partition"]["s1"] and "partition_reason" not in g["s1"].meta
    with pytest.raises(SdmcError, match="node.meta\\['cost'\\] is already written by pass 'cost'"):
        passes.register_pass("cost2", "a second cost analysis", writes="cost")(lambda g: None)
    assert "cost2" not in passes.PASSES


def test_run_errors_and_registry():
    g = _graph()
    with pytest.raises(SdmcError, match="unknown pass or pipeline 'nope'"):
        passes.run(g, ["fold_bn", "nope"])
    with pytest.raises(SdmcError, match="expected an sdmc.ir.Graph"):
        passes.fold_bn("not a graph")
    assert passes.resolve("inference, partition") == list(passes.PIPELINES["inference"]) + ["partition"]
    for name, p in passes.PASSES.items():
        assert p.description and p.fn.__name__ == name
    with pytest.raises(dataclasses.FrozenInstanceError):  # the registry's entries are read-only
        passes.PASSES["fold_bn"].requires = ("dead_code",)


def test_a_pass_refuses_an_invalid_graph_with_the_checkers_error_not_as_its_own_fault():
    """The input is checked before the pass runs: a broken graph is reported as the input's fault (the
    checker's message, naming the node), never as "pass ... produced an invalid graph"."""
    g = _graph()
    g.add(ir.Swish(name="bad", inputs=("nowhere",)))
    for name in ("fold_bn", "partition"):
        with pytest.raises(SdmcError, match="unknown input 'nowhere'") as e:
            passes.run(g, [name])
        assert "produced" not in str(e.value)


def test_the_pass_log_counts_nodes_and_params_before_and_after():
    g = ir.check(_graph())
    h = passes.run(g, ["fold_bn"])
    assert len(g.nodes) != len(g.params) and len(h.params) != len(g.params)  # so a swapped count would show
    entry = h.meta["passes"][-1]
    assert entry["nodes"] == [len(g.nodes), len(h.nodes)] and entry["params"] == [len(g.params), len(h.params)]


# ------------------------------------------------------------------------------------------ traced UNets
def _unet(arch: str, seed: int = 0, soft: bool = False):
    cfg = ModelConfig(
        arch=arch,
        ch=8,
        ch_mult=(1, 2),
        num_res_blocks=1,
        snn_steps=3,
        img_ch=1,
        img_size=8,
        diffusion_steps=10,
        soft_reset=soft,
    )
    torch.manual_seed(seed)
    m = SpikingUNet(cfg).eval()
    randomize_bn(m, seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("tsmp"):
                p.copy_(0.5 + torch.rand_like(p))
            elif n.endswith("bias") and "bn" not in n:  # conv / linear biases start at 0: make them count
                p.copy_(0.2 * torch.randn_like(p))
    return m.double()


@pytest.mark.parametrize("arch,soft", [("sddpm", False), ("sdm", False), ("sdm", True)])
def test_pipelines_preserve_traced_unet_outputs(arch, soft):
    m = _unet(arch, soft=soft)
    g = trace(m, (1, 1, 8, 8))
    rng = np.random.default_rng(3)
    inputs = [rng.normal(size=(2, 1, 8, 8)), np.array([2, 7])]
    with torch.no_grad():
        eager = m(torch.tensor(inputs[0]), torch.tensor(inputs[1])).numpy()
    np.testing.assert_allclose(golden.run(g, inputs)["out"], eager, rtol=1e-9, atol=1e-9)
    h = g
    for name in passes.resolve("neuromorphic"):
        h = passes.run(h, [name])
        ir.check(h)
        assert assert_same_outputs(g, h, inputs), f"tie in the reference run after {name}"
        if name == "dead_code" and "split_concat" not in [e["pass"] for e in h.meta["passes"]]:
            inf = h  # the inference pipeline's result
    assert all(n.type.timing == ir.STATIC for n in inf.nodes.values() if n.name.startswith("time_embedding"))
    ops = {n.op for n in inf.nodes.values()}
    assert "tsm_scale" not in ops and "repeat" not in ops or arch == "sddpm"
    assert [n.name for n in inf.nodes.values() if n.op == "batchnorm"] == ["tail_bn"]
    assert inf["conv"].type.timing == ir.STATIC or inf["conv"].inputs == ("x",)  # the head runs once
    log = h.meta["passes"][[e["pass"] for e in h.meta["passes"]].index("compose_residual")]
    assert log["rewritten"] and log["synapses_after"]["all"] > log["synapses_before"]["all"]
    assert set(log["not_composed"]) <= {"swish", "tail_bn", "tail_conv", "T_output_layer", "tail_swish", "last_bn"}


def test_cost_counts_by_hand():
    """node_cost for a conv on a repeated real input (per step), a linear on spikes (per step), a linear on the
    static input (once per call) and a neuron (no synapses), and the cost pass's totals, by hand (T = 2)."""
    g = ir.Graph(2)
    P = lambda k, shape: g.add_param(k, np.ones(shape))  # noqa: E731
    g.add(ir.Input(name="x", shape=(2, 4, 4), dtype="float64"))
    g.add(ir.Repeat(name="rep", inputs=("x",)))
    g.add(ir.Conv2d(name="c", inputs=("rep",), weight=P("c.w", (3, 2, 3, 3)), padding=(1, 1)))
    g.add(ir.IF(name="s", inputs=("c",)))
    g.add(ir.Linear(name="fc", inputs=("s",), weight=P("fc.w", (5, 4))))
    g.add(ir.MembraneReadout(name="ro", inputs=("fc",)))
    g.add(ir.Linear(name="lin0", inputs=("x",), weight=P("lin0.w", (6, 4))))
    g.add(ir.Output(name="out", inputs=("ro",)))
    g.add(ir.Output(name="out0", inputs=("lin0",)))
    h = passes.cost(ir.check(g))
    conv = 3 * 4 * 4 * (2 * 3 * 3)  # outputs x (C x k x k) inputs each
    fc = 3 * 4 * 5 * 4  # [3, 4, 5] outputs x 4 inputs each
    lin0 = 2 * 4 * 6 * 4
    assert h["c"].meta["cost"] == {"synapses": conv, "runs": 2, "ops": 2 * conv}
    assert h["fc"].meta["cost"] == {"synapses": fc, "runs": 2, "ops": 2 * fc}
    assert h["lin0"].meta["cost"] == {"synapses": lin0, "runs": 1, "ops": lin0}
    assert h["s"].meta["cost"] == {"synapses": 0, "runs": 0, "ops": 0}
    totals = {k: v for k, v in h.meta["passes"][-1].items() if k.endswith("_ops")}
    assert totals == {
        "per_step_ops": 2 * conv + 2 * fc,
        "real_input_ops": 2 * conv + lin0,
        "spike_driven_ops": 2 * fc,
        "static_ops": lin0,
    }


def test_an_analysis_that_edits_the_graph_is_an_error():
    """Analyses only write node.meta: one that adds a node or replaces a parameter fails, a transform may."""
    g = _graph()
    key = next(iter(g.params))

    def add_node(h):
        h.add(ir.Swish(name="extra", inputs=("x",)))

    def replace_param(h):
        h.params[key] = h.params[key] * 2

    def write_meta(h):
        h["x"].meta["note"] = 1

    name = "test_bad_analysis"
    try:
        for body, analysis, ok in [
            (add_node, True, False),
            (replace_param, True, False),
            (write_meta, True, True),
            (add_node, False, True),
        ]:
            passes.register_pass(name, "a test pass", writes="test" if analysis else None)(body)
            assert passes.PASSES[name].analysis == analysis
            if ok:
                passes.PASSES[name](g)
            else:
                with pytest.raises(SdmcError, match=f"analysis pass '{name}' changed the graph"):
                    passes.PASSES[name](g)
            del passes.PASSES[name]
    finally:
        passes.PASSES.pop(name, None)


def _partition_graph():
    """A graph exercising every partition rule (T = 2, 1x1 convs on [2, 4, 4]): see test_partition_by_hand."""
    g = ir.Graph(2)
    rng = np.random.default_rng(0)
    P = lambda k, shape: g.add_param(k, rng.normal(size=shape))  # noqa: E731

    def conv(name, src, o, c):
        g.add(ir.Conv2d(name=name, inputs=(src,), weight=P(f"{name}.w", (o, c, 1, 1))))

    g.add(ir.Input(name="x", shape=(2, 4, 4), dtype="float64"))
    conv("cx", "x", 2, 2)  # static conv on the input
    g.add(ir.Repeat(name="rep", inputs=("x",)))
    conv("c0", "rep", 2, 2)  # per-step conv on real data
    g.add(ir.TSMScale(name="tsm", inputs=("c0",), scale=P("tsm.p", (2, 1, 1, 1, 1))))
    g.add(ir.IF(name="s0", inputs=("tsm",)))
    g.add(ir.Concat(name="cat", inputs=("s0", "s0"), axis=0))  # routing of spikes
    conv("c1", "cat", 2, 4)
    conv("c2", "s0", 2, 2)
    g.add(ir.Add(name="sum", inputs=("c1", "c2")))  # spike currents summed into a neuron
    g.add(ir.Add(name="bias", inputs=("sum", "cx")))  # + a static operand
    g.add(ir.IF(name="s1", inputs=("bias",), v_reset=None))
    conv("c3", "s1", 2, 2)
    conv("c4", "s0", 2, 2)
    g.add(ir.Add(name="rd", inputs=("c3", "c4")))  # spike currents read by a host op
    g.add(ir.Swish(name="act", inputs=("rd",)))
    g.add(ir.Add(name="mix", inputs=("c3", "c0")))  # spike current + analog per-step value
    g.add(ir.Add(name="mix2", inputs=("mix", "c4")))  # ... and a sum of it (host too: found on a second sweep)
    g.add(ir.IF(name="s2", inputs=("mix2",)))
    g.add(ir.Add(name="r1", inputs=("c2", "c4")))  # a chain of spike-current sums ...
    g.add(ir.Add(name="r2", inputs=("r1", "c1")))
    g.add(ir.Swish(name="act2", inputs=("r2",)))  # ... read by a host op: both read-out
    g.add(ir.Add(name="fin0", inputs=("act", "act2")))
    g.add(ir.Add(name="fin", inputs=("fin0", "s2")))
    g.add(ir.MembraneReadout(name="ro", inputs=("fin",)))
    g.add(ir.Output(name="out", inputs=("ro",)))
    return ir.check(g)


def test_partition_by_hand():
    """Every rule of the host / neuromorphic partition on one graph, each node's side and reason by hand:
    boundary, static, repeat, TSM scale, analog op, neuron, spike-driven synapse and routing, sums of spike
    currents into a neuron (with a static bias operand), sums read by host ops (a chain of them: read-out),
    and a sum mixing a spike current with an analog value (host)."""
    g = _partition_graph()
    h = passes.partition(g)
    host, neuro = "host", "neuromorphic"
    want = {
        "x": (host, "graph boundary"), "out": (host, "graph boundary"),
        "cx": (host, "static"), "ro": (host, "static"),
        "rep": (host, "repeats a static value"), "tsm": (host, "per-step scale"),
        "c0": (host, "conv2d on real-valued"), "act": (host, "swish on real-valued"),
        "act2": (host, "swish on real-valued"), "mix": (host, "add on real-valued"), "mix2": (host, "add on real"),
        "fin0": (host, "add on real-valued"), "fin": (host, "add on real-valued"),
        "s0": (neuro, "spiking neuron"), "s1": (neuro, "spiking neuron"), "s2": (neuro, "spiking neuron"),
        "cat": (neuro, "concat driven by spikes"),
        **{c: (neuro, "conv2d driven by spikes") for c in ("c1", "c2", "c3", "c4")},
        "sum": (neuro, "sums synaptic currents into neurons"), "bias": (neuro, "sums synaptic currents into neurons"),
        **{r: (host, "read-out boundary") for r in ("rd", "r1", "r2")},
    }  # fmt: skip
    assert set(want) == set(h.nodes)
    for k, (side, why) in want.items():
        got = h[k].meta["partition"]
        assert got[0] == side and why in got[1], (k, got)
    assert h.meta["passes"][-1]["host"] == sum(s == host for s, _ in want.values())


def test_summary_by_hand():
    """summarize (sdmc inspect): the spike layers with their reset, node timing, the work per call split
    three ways (each pair sums to the total; host / neuromorphic by the partition) and the partition counts."""
    g = _partition_graph()
    s = passes.summarize(g)
    assert [(x["name"], x["neurons"], x["reset"]) for x in s["spike_layers"]["layers"]] == [
        ("s0", 32, "hard(0.0)"), ("s1", 32, "soft"), ("s2", 32, "hard(0.0)"),
    ]  # fmt: skip
    assert s["spike_layers"]["count"] == 3 and s["spike_layers"]["neurons"] == 96
    assert s["timing"] == {"static_nodes": 2, "per_step_nodes": len(g.nodes) - 4}  # cx, ro static; x, out not nodes
    per_conv = 2 * 4 * 4 * 2  # [2, 4, 4] outputs x 2 inputs (1x1 over 2 channels)
    c1 = 2 * 4 * 4 * 4  # 4 input channels (the concat)
    static, per_step = per_conv, 2 * (4 * per_conv + c1)  # cx once; c0, c2, c3, c4 and c1 per step
    assert s["work_per_call"] == {
        "static_ops": static, "per_step_ops": per_step,
        "real_input_ops": static + 2 * per_conv, "spike_driven_ops": 2 * (3 * per_conv + c1),
        "host_ops": static + 2 * per_conv, "neuromorphic_ops": 2 * (3 * per_conv + c1),
    }  # fmt: skip
    assert {k: v for k, v in passes.cost(g).meta["passes"][-1].items() if k.endswith("_ops")} == {
        k: v for k, v in s["work_per_call"].items() if k not in ("host_ops", "neuromorphic_ops")
    }
    part = s["partition"]
    assert (part["host"], part["neuromorphic"]) == (16, 10) and part["host"] + part["neuromorphic"] == s["nodes"]
    assert part["host_reasons"]["graph boundary"] == 2 and part["nodes"]["sum"][0] == "neuromorphic"


def test_new_param_names_are_fresh_and_typed_like_their_source():
    from sdmc.passes.rewrite import _new_param

    g = ir.Graph(2, params={"w": np.zeros(2, np.float32), "w_1": np.zeros(1)})
    assert _new_param(g, "v", np.ones(3)) == "v" and g.params["v"].dtype == np.float64
    assert _new_param(g, "w", np.ones(3), like="w") == "w_2" and g.params["w_2"].dtype == np.float32
    assert _new_param(g, "v", np.ones(3)) == "v_1"
    assert np.array_equal(g.params["w"], np.zeros(2)) and g.params["w_1"].shape == (1,)
    assert _new_param(g, "u", np.ones(2, np.float32), like="gone") == "u" and g.params["u"].dtype == np.float32


def test_hoist_affine_reads_the_static_value_and_keeps_training_outputs():
    """hoist_affine: a conv and a TSM scale reading repeat(x) read x (the conv's static output repeated for
    its readers, the TSM scale per-step by itself); the unused repeat goes; training-mode outputs (batch
    statistics of the BN that stays per-step) are unchanged."""
    rng = np.random.default_rng(4)
    T = 3
    g = ir.Graph(T)
    P = lambda k, a: g.add_param(k, np.asarray(a, dtype=np.float64))  # noqa: E731
    g.add(ir.Input(name="x", shape=(2, 4, 4), dtype="float64"))
    g.add(ir.Repeat(name="rep", inputs=("x",)))
    g.add(ir.Conv2d(name="c", inputs=("rep",), weight=P("c.w", rng.normal(size=(2, 2, 3, 3))), padding=(1, 1)))
    g.add(ir.BatchNorm(name="bn", inputs=("c",), weight=P("g", np.ones(2)), bias=P("b", np.zeros(2)),
                       running_mean=P("m", np.zeros(2)), running_var=P("v", np.ones(2))))  # fmt: skip
    g.add(ir.TSMScale(name="tsm", inputs=("rep",), scale=P("p", rng.uniform(0.5, 1.5, (T, 1, 1, 1, 1)))))
    g.add(ir.Add(name="a", inputs=("bn", "tsm")))
    g.add(ir.IF(name="s", inputs=("a",)))
    g.add(ir.MembraneReadout(name="ro", inputs=("s",)))
    g.add(ir.Output(name="out", inputs=("ro",)))
    g = ir.check(g)
    h = passes.hoist_affine(g)
    assert h["c"].inputs == ("x",) and h["tsm"].inputs == ("x",) and "rep" not in h.nodes
    assert h.meta["passes"][-1]["hoisted"] == ["c", "tsm"]
    assert h["bn"].inputs != ("c",) and h[h["bn"].inputs[0]].op == "repeat"  # the conv's output, repeated
    assert h["tsm"].type.per_step and not h["c"].type.per_step
    x = rng.normal(size=(4, 2, 4, 4))
    for training in (True, False):
        np.testing.assert_allclose(
            golden.run(h, [x], training=training)["out"], golden.run(g, [x], training=training)["out"], atol=1e-12
        )


def test_split_concat_by_hand():
    """split_concat on IF(concat(static, per-step)) -> concat(IF(repeat(static)), IF(per-step)) (a neuron piece
    must run per step: the static part is repeated), and conv(concat(a, b)) -> conv_a(a) + conv_b(b) with the
    weight split by input channels and the bias once; the log names what moved; outputs unchanged."""
    rng = np.random.default_rng(8)
    g = ir.Graph(2)
    P = lambda k, shape: g.add_param(k, rng.normal(size=shape))  # noqa: E731
    g.add(ir.Input(name="x", shape=(2, 4, 4), dtype="float64"))
    g.add(ir.Conv2d(name="cx", inputs=("x",), weight=P("cx.w", (2, 2, 1, 1))))  # static
    g.add(ir.Repeat(name="rep", inputs=("x",)))
    g.add(ir.Conv2d(name="c0", inputs=("rep",), weight=P("c0.w", (3, 2, 1, 1))))  # per step
    g.add(ir.Concat(name="cat", inputs=("cx", "c0")))
    g.add(ir.IF(name="s", inputs=("cat",)))
    g.add(ir.Conv2d(name="c2", inputs=("s",), weight=P("c2.w", (3, 5, 1, 1))))
    g.add(ir.Concat(name="cat3", inputs=("c2", "cx", "c0")))  # a conv reading a three-way concat
    g.add(ir.Conv2d(name="c1", inputs=("cat3",), weight=P("c1.w", (2, 8, 3, 3)), bias=P("c1.b", (2,)), padding=(1, 1)))
    g.add(ir.MembraneReadout(name="ro", inputs=("c1",)))
    g.add(ir.Output(name="out", inputs=("ro",)))
    g = ir.check(g)
    h = passes.split_concat(g)
    log = h.meta["passes"][-1]
    assert log["pushed_through"] == ["s"] and log["split"] == ["c2", "c1"]
    neurons = [n for n in h.nodes.values() if n.op == "if"]
    assert len(neurons) == 2 and all(n.type.per_step for n in neurons)
    static_piece = next(n for n in neurons if h[n.inputs[0]].op == "repeat")
    assert h[static_piece.inputs[0]].inputs == ("cx",)
    convs = [n for n in h.nodes.values() if n.op == "conv2d" and n.name.startswith("c1")]
    assert [h.params[n.weight].shape[1] for n in convs] == [3, 2, 3]
    assert sum(n.bias is not None for n in convs) == 1
    x = rng.normal(size=(3, 2, 4, 4))
    np.testing.assert_allclose(golden.run(h, [x])["out"], golden.run(g, [x])["out"], atol=1e-12)


def test_fold_bn_and_fuse_tsm_report_what_they_rewrote_and_leave_no_orphan():
    g = _graph()
    h = passes.fold_bn(g)
    assert h.meta["passes"][-1]["folded"] == [["bn1", "c1"]]  # bn0 follows the TSM scale: fuse_tsm's
    f = passes.fuse_tsm(g)
    assert f.meta["passes"][-1]["fused"] == [["c0", "tsm0", "bn0"]]
    assert "c0" not in f.nodes and "bn0" not in f.nodes and f["tsm0"].op == "scaled_conv2d"


def test_fold_bn_folds_a_feature_linear_and_keeps_a_linear_of_higher_rank():
    rng = np.random.default_rng(3)
    for shape, C in [((8,), 4), ((3, 8), 3)]:  # BN's channel is axis 0: the features only for a rank-1 output
        params = dict(w=rng.normal(size=(4, 8)), b=rng.normal(size=4), g=1 + 0.3 * rng.normal(size=C))
        params.update(be=rng.normal(size=C), m=rng.normal(size=C), v=0.5 + rng.random(C))
        g = ir.Graph(2, params=params)
        g.add(ir.Input(name="x", shape=shape, dtype="float64", timing=ir.PER_STEP))
        g.add(ir.Linear(name="lin", inputs=("x",), weight="w", bias="b"))
        g.add(ir.BatchNorm(name="bn", inputs=("lin",), weight="g", bias="be", running_mean="m", running_var="v"))
        g.add(ir.Output(name="out", inputs=("bn",)))
        g = ir.check(g)
        h = passes.fold_bn(g)
        rep = h.meta["passes"][-1]
        if len(shape) == 1:
            assert rep["folded"] == [["bn", "lin"]] and "bn" not in h.nodes
        else:
            assert rep["folded"] == [] and "rank 2" in rep["kept"]["bn"] and "bn" in h.nodes
        x = rng.normal(size=(2, 2) + shape)
        assert assert_same_outputs(g, h, [x])


def test_split_concat_leaves_a_concat_along_height_alone():
    """Only a channel concat splits a conv into per-operand convs; a concat along H (axis 1) feeding a conv
    and a neuron must stay as it is."""
    rng = np.random.default_rng(4)
    g = ir.Graph(2, params={"w": rng.normal(size=(3, 2, 3, 3))})
    for k in ("a", "b"):
        g.add(ir.Input(name=k, shape=(2, 4, 4), dtype="float64", timing=ir.PER_STEP))
    g.add(ir.Concat(name="cat", inputs=("a", "b"), axis=1))
    g.add(ir.IF(name="s", inputs=("cat",)))
    g.add(ir.Conv2d(name="c", inputs=("cat",), weight="w", padding=(1, 1)))
    g.add(ir.Output(name="o1", inputs=("s",)))
    g.add(ir.Output(name="o2", inputs=("c",)))
    g = ir.check(g)
    h = passes.run(g, ["split_concat"])
    assert h.meta["passes"][-1]["split"] == [] and h["c"].inputs == ("cat",)
    assert assert_same_outputs(g, h, [rng.normal(size=(2, 2, 2, 4, 4)) for _ in range(2)])


def test_split_concat_has_nothing_to_split_in_a_one_operand_concat():
    rng = np.random.default_rng(5)
    g = ir.Graph(2, params={"w": rng.normal(size=(3, 2, 3, 3))})
    g.add(ir.Input(name="a", shape=(2, 4, 4), dtype="float64", timing=ir.PER_STEP))
    g.add(ir.Concat(name="cat", inputs=("a",)))
    g.add(ir.IF(name="s", inputs=("cat",)))
    g.add(ir.Conv2d(name="c", inputs=("s",), weight="w", padding=(1, 1)))
    g.add(ir.Output(name="o", inputs=("c",)))
    g = ir.check(g)
    h = passes.run(g, ["split_concat"])
    assert h.meta["passes"][-1]["split"] == [] and h.meta["passes"][-1]["pushed_through"] == []
    assert set(h.nodes) == set(g.nodes)
