"""Hypothesis strategies for small random spiking IR graphs (shared by IR, simulator, pass and backend tests).

``spiking_graphs()`` draws a checked :class:`sdmc.ir.Graph`: a static image input, optionally a static
branch (conv on the image), ``repeat`` over T, then a random DAG of conv / TSM scale / BN / IF / LIF /
add / concat / upsample / (reshape + linear) over the values made so far, and a membrane read-out.
Weights and BN statistics are random but scaled so that neurons fire sometimes and not always.
``random_inputs(graph, B, seed)`` makes matching input arrays.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from sdmc import ir

OPS = ("conv", "conv", "tsm", "bn", "if", "lif", "add", "concat", "upsample", "static_add")


class _Builder:
    def __init__(self, g: ir.Graph, rng: np.random.Generator, dtype: str) -> None:
        self.g, self.rng, self.dtype, self.i = g, rng, dtype, 0

    def name(self, base: str) -> str:
        self.i += 1
        return f"{base}{self.i}"

    def add(self, node: ir.Node) -> str:
        g = self.g
        g.add(node)
        node.meta["type"] = node.infer([g.nodes[i].type for i in node.inputs], g)
        return node.name

    def p(self, name: str, arr: np.ndarray) -> str:
        return self.g.add_param(name, np.asarray(arr, dtype=self.dtype))

    def conv(self, src: str, out_ch: int, k: int, stride: int = 1) -> str:
        C = self.g.nodes[src].type.shape[0]
        n = self.name("conv")
        w = self.rng.normal(0, 1.6 / np.sqrt(C * k * k), (out_ch, C, k, k))
        bias = self.p(f"{n}.bias", self.rng.normal(0, 0.2, out_ch)) if self.rng.random() < 0.7 else None
        return self.add(ir.Conv2d(name=n, inputs=(src,), weight=self.p(f"{n}.weight", w), bias=bias,
                                  stride=(stride, stride), padding=(k // 2, k // 2)))

    def bn(self, src: str) -> str:
        C = self.g.nodes[src].type.shape[0]
        n, r = self.name("bn"), self.rng
        return self.add(ir.BatchNorm(
            name=n, inputs=(src,), weight=self.p(f"{n}.weight", 1 + 0.3 * r.normal(size=C)),
            bias=self.p(f"{n}.bias", 0.3 * r.normal(size=C)),
            running_mean=self.p(f"{n}.running_mean", 0.2 * r.normal(size=C)),
            running_var=self.p(f"{n}.running_var", 0.5 + r.random(C)), eps=1e-5))


@st.composite
def spiking_graphs(draw, max_ops: int = 8, dtype: str = "float64") -> ir.Graph:
    T = draw(st.integers(1, 4))
    C = draw(st.integers(1, 3))
    H = draw(st.sampled_from([2, 4]))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    b = _Builder(ir.Graph(T, meta={"generator": "tests.strategies.spiking_graphs", "seed": seed}),
                 np.random.default_rng(seed), dtype)
    x = b.add(ir.Input(name="x", shape=(C, H, H), dtype=dtype))
    statics = [b.conv(x, draw(st.integers(1, 3)), 3)] if draw(st.booleans()) else []
    pool = [b.add(ir.Repeat(name="rep", inputs=(x,)))]
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(OPS))
        src = draw(st.sampled_from(pool))
        t = b.g.nodes[src].type
        if op == "conv":
            k = draw(st.sampled_from([1, 3]))
            stride = 2 if t.shape[1] >= 4 and draw(st.booleans()) else 1
            new = b.conv(src, draw(st.integers(1, 4)), k, stride)
        elif op == "tsm":
            n = b.name("tsm")
            new = b.add(ir.TSMScale(name=n, inputs=(src,),
                                    scale=b.p(f"{n}.tsmp", b.rng.uniform(0.5, 1.5, (T, 1, 1, 1, 1)))))
        elif op == "bn":
            new = b.bn(src)
        elif op in ("if", "lif"):
            cands = [p for p in pool if b.g.nodes[p].type.kind != ir.SPIKE]
            if not cands:
                continue
            src = draw(st.sampled_from(cands))
            common = dict(name=b.name(op), inputs=(src,), threshold=draw(st.sampled_from([0.5, 1.0, 0.997, 1.3])),
                          v_reset=draw(st.sampled_from([0.0, None])))
            new = b.add(ir.IF(**common) if op == "if" else
                        ir.LIF(tau=draw(st.sampled_from([1.5, 2.0, 3.0])), decay_input=draw(st.booleans()), **common))
        elif op == "add":
            same = [p for p in pool if b.g.nodes[p].type.shape == t.shape]
            new = b.add(ir.Add(name=b.name("add"), inputs=(src, draw(st.sampled_from(same)))))
        elif op == "static_add":
            same = [s for s in statics if b.g.nodes[s].type.shape == t.shape]
            if not same:
                continue
            new = b.add(ir.Add(name=b.name("sadd"), inputs=(src, same[0])))
        elif op == "concat":
            same = [p for p in pool if b.g.nodes[p].type.shape[1:] == t.shape[1:]]
            new = b.add(ir.Concat(name=b.name("cat"), inputs=(src, draw(st.sampled_from(same))), axis=0))
        elif op == "upsample":
            if t.shape[1] > 4:
                continue
            new = b.add(ir.Upsample(name=b.name("up"), inputs=(src,), scale=2))
        pool.append(new)
    last = pool[-1]
    b.add(ir.Output(name="out", inputs=(b.add(ir.MembraneReadout(name="readout", inputs=(last,), decay=0.8)),)))
    if draw(st.booleans()):  # a per-step dense head on a flattened value
        src = draw(st.sampled_from(pool))
        shape = b.g.nodes[src].type.shape
        flat = b.add(ir.Reshape(name="flat", inputs=(src,), shape=(int(np.prod(shape)),)))
        n = b.name("fc")
        w = b.rng.normal(0, 1 / np.sqrt(np.prod(shape)), (3, int(np.prod(shape))))
        fc = b.add(ir.Linear(name=n, inputs=(flat,), weight=b.p(f"{n}.weight", w), bias=b.p(f"{n}.bias", np.zeros(3))))
        b.add(ir.Output(name="out_fc", inputs=(fc,)))
    return ir.check(b.g)


def random_inputs(graph: ir.Graph, B: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float inputs (int inputs: indices in [0, 10)) for every input node."""
    rng = np.random.default_rng(seed)
    out = {}
    for n in graph.input_nodes:
        shape = n.type.full_shape(graph.T, B)
        out[n.name] = rng.integers(0, 10, shape) if n.dtype.startswith("int") else rng.normal(size=shape)
    return out
