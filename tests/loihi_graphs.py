"""Graphs and models the Loihi backend tests share: the tiny SDDPM / SDM UNets, small hand-built nets, a
LoihiNet comparison, and :func:`random_loihi_graph` (with the hypothesis strategy :func:`loihi_graphs`): random
graphs built only from what the Loihi compiler expresses, with dyadic parameters so that quantisation is exact.
"""

from __future__ import annotations

import numpy as np
import torch
from conftest import randomize_bn
from hypothesis import strategies as st

from sdmc import ir
from sdmc.backends.lava import network as lnet
from sdmc.config import ModelConfig
from sdmc.models import build_model


# ------------------------------------------------------------------------------------------ tiny UNets
def unet_cfg(arch="sddpm", **kw) -> ModelConfig:
    base = dict(arch=arch, ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=3, img_ch=1, img_size=8, threshold=0.5)
    base.update(kw)
    return ModelConfig(**base)


def unet_model(cfg: ModelConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = build_model(cfg)
    randomize_bn(m, seed)
    with torch.no_grad():  # SDDPM starts its tail conv near 0; give the output a real dependence on the spikes
        tail = m.tail_conv.tsmconv if cfg.tsm else m.tail_conv
        torch.nn.init.normal_(tail.weight, std=0.3)
        for mod in m.modules():
            if hasattr(mod, "tsmp"):  # TSM per-step scales: not all 1
                mod.tsmp.copy_(1 + 0.2 * torch.randn_like(mod.tsmp))
    return m


def unet_inputs(cfg: ModelConfig, B: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((B, cfg.img_ch, cfg.img_size, cfg.img_size)), "t": rng.integers(0, 1000, B)}


# ------------------------------------------------------------------------------------------ small nets
def chain_graph(T=4):
    """x (spikes) -> conv 3x3 + bias -> IF -> conv 3x3 stride 2 -> IF(0.75), dyadic weights."""
    rng = np.random.default_rng(2)
    g = ir.Graph(T)
    g.add(ir.Input(name="x", shape=(2, 6, 6), kind="spike", timing="per-step"))
    g.add_param("c1.w", rng.integers(-6, 10, (4, 2, 3, 3)) / 16.0)
    g.add_param("c1.b", rng.integers(-3, 4, 4) / 16.0)
    g.add(ir.Conv2d(name="c1", inputs=("x",), weight="c1.w", bias="c1.b", padding=(1, 1)))
    g.add(ir.IF(name="n1", inputs=("c1",)))
    g.add_param("c2.w", rng.integers(-6, 10, (3, 4, 3, 3)) / 16.0)
    g.add(ir.Conv2d(name="c2", inputs=("n1",), weight="c2.w", stride=(2, 2), padding=(1, 1)))
    g.add(ir.IF(name="n2", inputs=("c2",), threshold=0.75))
    g.add(ir.Output(name="out", inputs=("n2",)))
    return ir.check(g)


def dyadic_chain(rng, C=2, H=6, W=5, bias=True, fc_bias=False, T=5) -> ir.Graph:
    """x (spikes) -> conv 3x3 (+ bias) -> IF -> conv 3x2 stride (2, 1) -> IF(0.75) -> flatten -> linear (+ bias)
    -> IF, dyadic weights (multiples of 1/16, 1/8), drawn from ``rng`` in that order."""
    g = ir.Graph(T)
    g.add(ir.Input(name="x", shape=(C, H, W), kind="spike", timing="per-step"))
    g.add_param("c1.w", rng.integers(-6, 10, (4, C, 3, 3)) / 16.0)
    if bias:
        g.add_param("c1.b", rng.integers(-3, 4, 4) / 16.0)
    g.add(ir.Conv2d(name="c1", inputs=("x",), weight="c1.w", bias="c1.b" if bias else None, padding=(1, 1)))
    g.add(ir.IF(name="n1", inputs=("c1",)))
    g.add_param("c2.w", rng.integers(-6, 10, (3, 4, 3, 2)) / 16.0)
    g.add(ir.Conv2d(name="c2", inputs=("n1",), weight="c2.w", stride=(2, 1), padding=(1, 0)))
    g.add(ir.IF(name="n2", inputs=("c2",), threshold=0.75))
    n_flat = 3 * ((H - 1) // 2 + 1) * (W - 1)
    g.add(ir.Reshape(name="flat", inputs=("n2",), shape=(n_flat,)))
    g.add_param("fc.w", rng.integers(-8, 9, (5, n_flat)) / 8.0)
    if fc_bias:
        g.add_param("fc.b", rng.integers(-2, 3, 5) / 8.0)
    g.add(ir.Linear(name="fc", inputs=("flat",), weight="fc.w", bias="fc.b" if fc_bias else None))
    g.add(ir.IF(name="n3", inputs=("fc",)))
    g.add(ir.Output(name="out", inputs=("n3",)))
    return ir.check(g)


def dense_and_upsample_graph():
    """x -> conv -> n1 -> flatten -> linear -> n2 (dense population); n1 -> up x2 -> conv -> n3 (fed only by
    an upsampled synapse)."""
    rng = np.random.default_rng(4)
    g = ir.Graph(3)
    g.add(ir.Input(name="x", shape=(2, 4, 4), kind="spike", timing="per-step"))
    g.add_param("c1.w", rng.integers(-4, 9, (3, 2, 3, 3)) / 8.0)
    g.add(ir.Conv2d(name="c1", inputs=("x",), weight="c1.w", padding=(1, 1)))
    g.add(ir.IF(name="n1", inputs=("c1",)))
    g.add(ir.Reshape(name="flat", inputs=("n1",), shape=(48,)))
    g.add_param("l.w", rng.integers(-4, 9, (5, 48)) / 8.0)
    g.add_param("l.b", rng.integers(-2, 3, 5) / 8.0)
    g.add(ir.Linear(name="l", inputs=("flat",), weight="l.w", bias="l.b"))
    g.add(ir.IF(name="n2", inputs=("l",)))
    g.add(ir.Upsample(name="up", inputs=("n1",), scale=2))
    g.add_param("c3.w", rng.integers(-4, 9, (2, 3, 3, 3)) / 8.0)
    g.add(ir.Conv2d(name="c3", inputs=("up",), weight="c3.w", padding=(1, 1)))
    g.add(ir.IF(name="n3", inputs=("c3",)))
    g.add(ir.Output(name="o2", inputs=("n2",)))
    g.add(ir.Output(name="o3", inputs=("n3",)))
    return ir.check(g)


def assert_same_net(a: lnet.LoihiNet, b: lnet.LoihiNet) -> None:
    """Sources, populations and projections of ``a`` and ``b`` agree field by field (weights by value)."""
    assert [(s.name, s.shape, s.bits) for s in a.sources] == [(s.name, tuple(s.shape), s.bits) for s in b.sources]
    assert a.outputs == b.outputs
    for p, q in zip(a.populations, b.populations, strict=True):
        assert (p.name, tuple(p.shape), p.neuron, p.depth) == (q.name, tuple(q.shape), q.neuron, q.depth)
        assert (p.bias is None) == (q.bias is None) and (p.bias is None or np.array_equal(p.bias, q.bias)), p.name

    def key(p: lnet.Projection) -> tuple:
        geometry = (tuple(p.stride), tuple(p.padding), tuple(p.dilation), p.groups, p.upsample, p.delay)
        return (p.name, p.src, p.dst, p.kind) + geometry

    for p, q in zip(a.projections, b.projections, strict=True):
        assert key(p) == key(q), p.name
        assert (p.weight is None) == (q.weight is None) and (p.weight is None or np.array_equal(p.weight, q.weight))


# ------------------------------------------------------------------------------------------ random Loihi graphs
class _Gen:
    """Builds :func:`random_loihi_graph`: every value is an exact dyadic number, so the Loihi compiler's
    power-of-two quantisation (``pow2=True``) loses nothing (see the function's docstring)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.i = 0

    def name(self, base: str) -> str:
        self.i += 1
        return f"{base}{self.i}"

    def dyadic(self, shape, lo: int = -8, hi: int = 8) -> np.ndarray:
        """Multiples of 1/8 in [lo/8, hi/8], never all zero."""
        a = self.rng.integers(lo, hi + 1, shape) / 8.0
        if not a.any():
            a.flat[0] = 0.5
        return a


def random_loihi_graph(seed: int) -> tuple[ir.Graph, dict[str, np.ndarray]]:
    """A random graph of 1-5 neuromorphic populations the Loihi compiler accepts, and inputs for 2 samples.

    Structure: a per-step spike input, or a static image (multiples of 1/2) whose head conv is a host current;
    then populations fed by sums of conv (1x1 / 3x3, stride 1 / 2, after a x2 nearest upsample), dense
    (flatten + linear), split-concat convs, 1x1 convs of an earlier real-valued current (composed by the
    ``compose_residual`` pass), folded BatchNorm, TSM scales constant over steps (exact under ``tsm='mean'``),
    static host currents and biases; IF neurons, or (a whole graph) LIF with ``tau = 2``.  Outputs: every
    population without readers and a membrane read-out of the last one.

    Exactness: weights and biases are multiples of 1/8 (|w| <= 1), BN scales ``gamma / sqrt(var + eps)`` are
    exact (``var = 1 - eps``), thresholds 0.5 / 0.75 / 1, so every quantised value is an integer number of
    weight units; LIF graphs use T <= 3 so that Loihi's truncating decay of v stays exact.
    """
    r = _Gen(seed)
    rng = r.rng
    lif = bool(rng.random() < 0.35)
    T = int(rng.integers(2, 4)) if lif else int(rng.integers(1, 5))
    g = ir.Graph(T, meta={"generator": "tests.loihi_graphs.random_loihi_graph", "seed": seed})
    C0, H0 = int(rng.integers(1, 4)), int(rng.choice([2, 4]))
    image = bool(rng.random() < 0.5)
    src0 = "img" if image else "x"
    if image:
        g.add(ir.Input(name="img", shape=(C0, H0, H0)))
    else:
        g.add(ir.Input(name="x", shape=(C0, H0, H0), kind="spike", timing="per-step"))
    spikes: list[str] = [] if image else ["x"]  # what synapses may read
    shape = {src0: (C0, H0, H0)}
    reals: list[tuple[str, tuple]] = []  # earlier currents made of spike-driven synapses only (reusable)

    def p(base: str, arr) -> str:
        return g.add_param(r.name(base), np.asarray(arr, np.float64))

    def conv(src: str, O: int, k: int, stride: int = 1, bias: bool = True, w_max: int = 8) -> str:
        C = shape[src][0]
        n = r.name("conv")
        g.add(
            ir.Conv2d(
                name=n,
                inputs=(src,),
                weight=p("w", r.dyadic((O, C, k, k), -w_max, w_max)),
                bias=p("b", r.dyadic(O, -3, 3)) if bias and rng.random() < 0.6 else None,
                stride=(stride, stride),
                padding=(k // 2, k // 2),
            )
        )
        return n

    def synapse(src: str, target: tuple) -> str | None:
        """A conv / upsample-conv / dense term from spikes ``src`` with output shape ``target`` (None if none)."""
        s = shape[src]
        if len(target) == 1:
            if len(s) == 1:
                flat = src
            elif int(np.prod(s)) <= 48:
                flat = g.add(ir.Reshape(name=r.name("flat"), inputs=(src,), shape=(int(np.prod(s)),)))
            else:
                return None
            n = r.name("fc")
            b = p("b", r.dyadic(target[0], -3, 3)) if rng.random() < 0.5 else None
            n_in = int(np.prod(s))
            g.add(ir.Linear(name=n, inputs=(flat,), weight=p("w", r.dyadic((target[0], n_in))), bias=b))
            return n
        if len(s) != 3:
            return None
        H, Ht = s[1], target[1]
        if H == Ht:
            return conv(src, target[0], int(rng.choice([1, 3])))
        if H == 2 * Ht:
            return conv(src, target[0], int(rng.choice([1, 3])), stride=2)
        if 2 * H == Ht:
            up = g.add(ir.Upsample(name=r.name("up"), inputs=(src,), scale=2))
            shape[up] = (s[0], Ht, Ht)
            return conv(up, target[0], 3)
        return None

    def decorate(v: str, C: int) -> str:
        """Optionally a folded BatchNorm or a constant TSM scale after the conv ``v``."""
        u = rng.random()
        if u < 0.2:
            n, eps = r.name("bn"), 2.0**-10
            g.add(
                ir.BatchNorm(
                    name=n,
                    inputs=(v,),
                    weight=p("gamma", rng.choice([0.5, 1.0, 1.5], C)),
                    bias=p("beta", r.dyadic(C, -2, 2)),
                    running_mean=p("mean", r.dyadic(C, -2, 2)),
                    running_var=p("var", np.full(C, 1.0 - eps)),  # var + eps == 1: exact fold
                    eps=eps,
                )
            )
            return n
        if u < 0.3:
            n = r.name("tsm")
            g.add(ir.TSMScale(name=n, inputs=(v,), scale=p("p", np.full((T, 1, 1, 1, 1), rng.choice([0.5, 1.0])))))
            return n
        return v

    n_pops = int(rng.integers(1, 6))
    for j in range(n_pops):
        terms: list[str] = []
        plain = False
        if not spikes:  # the image head: a host current only
            target = (int(rng.integers(1, 4)), H0, H0)
            head = conv("img", target[0], 3, w_max=4)
            terms.append(g.add(ir.Repeat(name=r.name("rep"), inputs=(head,))))
        else:
            src = spikes[int(rng.integers(len(spikes)))]
            s = shape[src]
            opts = [(int(rng.integers(1, 5)),) + s[1:]] * 3 if len(s) == 3 else []
            if len(s) == 3 and s[1] >= 4:
                opts.append((int(rng.integers(1, 5)), s[1] // 2, s[2] // 2))
            if len(s) == 3 and s[1] <= 2:
                opts.append((int(rng.integers(1, 4)), s[1] * 2, s[2] * 2))
            if int(np.prod(s)) <= 48:
                opts.append((int(rng.integers(2, 7)),))
            if not lif:  # the shape of an earlier current, so that it can be reused (and composed)
                fits = [sh for _, sh in reals if len(sh) == 1 and int(np.prod(s)) <= 48]
                fits += [sh for _, sh in reals if len(sh) == 3 == len(s) and sh[1] in (s[1], 2 * s[1], s[1] // 2)]
                opts += fits * 3
            target = opts[int(rng.integers(len(opts)))]
            others = [o for o in spikes if o != src and len(shape[o]) == 3 and shape[o][1:] == s[1:]]
            if len(target) == 3 and others and rng.random() < 0.25:  # a conv on a channel concat (split_concat)
                cat = g.add(ir.Concat(name=r.name("cat"), inputs=(src, others[0]), axis=0))
                shape[cat] = (s[0] + shape[others[0]][0],) + s[1:]
                src = cat
            first = synapse(src, target)
            terms.append(decorate(first, target[0]) if len(target) == 3 else first)
            second = spikes[int(rng.integers(len(spikes)))]
            if rng.random() < 0.5:
                t2 = synapse(second, target)
                if t2 is not None:
                    terms.append(t2)
            plain = True  # spike-driven synapses only, none composed
            same = [v for v, sh in reals if sh == target]
            if same and not lif and rng.random() < 0.6:  # an earlier current reused, or its 1x1 conv (composed)
                if len(target) == 3 and rng.random() < 0.6:
                    n = r.name("mix")  # weights in {-1/2, 0, 1/2}: composed weights stay multiples of 1/32
                    w = rng.choice([-0.5, 0.0, 0.5], (target[0], target[0], 1, 1))
                    g.add(ir.Conv2d(name=n, inputs=(same[0],), weight=p("w", w if w.any() else w + 0.5)))
                    terms.append(n)
                    plain = False
                else:
                    terms.append(same[0])
            if image and len(target) == 3 and target[1] == H0 and rng.random() < 0.4:  # a static host current
                terms.append(conv("img", target[0], 3, w_max=2))  # static: broadcast over steps, as a bias
                plain = False
        cur = terms[0]
        for t in terms[1:]:
            cur = g.add(ir.Add(name=r.name("add"), inputs=(cur, t)))
        shape.update({t: target for t in terms})
        shape[cur] = target
        if plain:
            reals.append((cur, target))
        theta = float(rng.choice([0.5, 0.75, 1.0]))
        name = f"n{j}"
        if lif:
            g.add(ir.LIF(name=name, inputs=(cur,), tau=2.0, decay_input=bool(rng.random() < 0.5), threshold=theta))
        else:
            g.add(ir.IF(name=name, inputs=(cur,), threshold=theta))
        shape[name] = target
        spikes.append(name)
    ir.infer_types(g)
    pops = [s for s in spikes if s != "x"]
    for k in pops[:-1]:
        if not g.users(k):
            g.add(ir.Output(name=f"out_{k}", inputs=(k,)))
    g.add(ir.MembraneReadout(name="readout", inputs=(pops[-1],), decay=0.5))
    g.add(ir.Output(name="out", inputs=("readout",)))
    g = ir.check(g)
    B = 2
    if image:
        inputs = {"img": rng.integers(-2, 3, (B, C0, H0, H0)) / 2.0}
    else:
        inputs = {"x": (rng.random((T, B, C0, H0, H0)) < 0.5).astype(np.float64)}
    return g, inputs


def loihi_graphs() -> st.SearchStrategy:
    """Hypothesis strategy: ``(graph, inputs)`` from :func:`random_loihi_graph` with a drawn seed."""
    return st.integers(0, 2**32 - 1).map(random_loihi_graph)
