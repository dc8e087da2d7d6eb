"""One small checked graph per IR op (``EXAMPLES[op]()``), for tests that must cover the whole op table.

``tests/test_onnx.py`` and ``tests/test_nir.py`` assert ``set(EXAMPLES) == set(ir.OPS)``, so an op added to
the IR fails them until it gets an example here (and, through it, an ONNX lowering and a NIR export or a
named refusal).  Every graph takes a static image ``x`` ``[2, 4, 4]`` (some also the int64 step ``t``), runs
T = 3 steps and ends in a membrane read-out; weights are drawn so that neurons fire sometimes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sdmc import ir

T, C, H = 3, 2, 4


class _G:
    def __init__(self, seed: int = 0, t_input: bool = False) -> None:
        self.g = ir.Graph(T)
        self.rng = np.random.default_rng(seed)
        self.g.add(ir.Input(name="x", shape=(C, H, H), dtype="float64"))
        if t_input:
            self.g.add(ir.Input(name="t", shape=(), dtype="int64"))
        self.g.add(ir.Repeat(name="xs", inputs=("x",)))

    def p(self, name: str, a) -> str:
        return self.g.add_param(name, np.asarray(a, np.float64))

    def conv(self, name: str, src: str, out: int | None = None, k: int = 3, **kw) -> str:
        cin = self.g_shape(src)[0] // kw.get("groups", 1)
        out = out or C
        w = self.rng.normal(0, 1.5 / np.sqrt(cin * k * k), (out, cin, k, k))
        kw.setdefault("padding", (k // 2, k // 2))
        return self.add(
            ir.Conv2d(
                name=name,
                inputs=(src,),
                weight=self.p(f"{name}.w", w),
                bias=self.p(f"{name}.b", self.rng.normal(0, 0.2, out)),
                **kw,
            )
        )

    def g_shape(self, v: str) -> tuple[int, ...]:
        ir.infer_types(self.g)
        return self.g.nodes[v].type.shape

    def add(self, node: ir.Node) -> str:
        return self.g.add(node)

    def spikes(self, name: str, src: str, **kw) -> str:
        return self.add(ir.IF(name=name, inputs=(src,), threshold=kw.pop("threshold", 0.5), **kw))

    def finish(self, src: str) -> ir.Graph:
        self.add(ir.MembraneReadout(name="readout", inputs=(src,), decay=0.8))
        self.add(ir.Output(name="out", inputs=("readout",)))
        return ir.check(self.g)


def _chain(node: Callable[[_G, str], str], seed: int = 0, t_input: bool = False) -> Callable[[], ir.Graph]:
    """x -> conv -> IF -> node(...) [-> conv -> IF, for [C, H, W] values] -> read-out."""

    def build() -> ir.Graph:
        b = _G(seed, t_input)
        s = b.spikes("sn0", b.conv("conv0", "xs"))
        y = node(b, s)
        if len(b.g_shape(y)) != 3:
            return b.finish(y)
        return b.finish(b.spikes("sn1", b.conv("conv1", y)))

    return build


def _tsm(b: _G, s: str) -> str:
    return b.add(
        ir.TSMScale(name="tsm", inputs=(b.conv("c", s),), scale=b.p("tsm.p", b.rng.uniform(0.5, 1.5, (T, 1, 1, 1, 1))))
    )


def _scaled(b: _G, s: str) -> str:
    w = b.rng.normal(0, 0.5, (C, C, 3, 3))
    return b.add(
        ir.ScaledConv2d(
            name="sconv",
            inputs=(s,),
            weight=b.p("sconv.w", w),
            scale=b.p("sconv.s", b.rng.uniform(0.5, 1.5, T)),
            bias=b.p("sconv.b", b.rng.normal(0, 0.2, (T, C))),
            padding=(1, 1),
        )
    )


def _bn(b: _G, s: str) -> str:
    r = b.rng
    summed = b.add(ir.Add(name="sum", inputs=(b.conv("ca", s), b.conv("cb", s))))  # not foldable into one conv
    return b.add(
        ir.BatchNorm(
            name="bn",
            inputs=(summed,),
            weight=b.p("bn.g", 1 + 0.3 * r.normal(size=C)),
            bias=b.p("bn.b", 0.3 * r.normal(size=C)),
            running_mean=b.p("bn.m", 0.2 * r.normal(size=C)),
            running_var=b.p("bn.v", 0.5 + r.random(C)),
        )
    )


def _gn(b: _G, s: str) -> str:
    return b.add(
        ir.GroupNorm(
            name="gn",
            inputs=(b.conv("c", s),),
            weight=b.p("gn.g", b.rng.uniform(0.5, 1.5, C)),
            bias=b.p("gn.b", b.rng.normal(0, 0.3, C)),
            num_groups=1,
        )
    )


def _lif(b: _G, s: str) -> str:
    return b.add(ir.LIF(name="lif", inputs=(b.conv("c", s),), threshold=0.5, tau=2.0, decay_input=False))


def _plif(b: _G, s: str) -> str:
    return b.add(ir.PLIF(name="plif", inputs=(b.conv("c", s),), threshold=0.4, w=b.p("plif.w", np.array(0.3))))


def _if(b: _G, s: str) -> str:  # soft reset with an initial potential, as converted QANNs
    return b.add(ir.IF(name="qif", inputs=(b.conv("c", s),), threshold=0.6, v_reset=None, v_init=0.3))


def _concat(b: _G, s: str) -> str:
    other = b.spikes("sn_b", b.conv("cb", "xs", 1))
    return b.add(ir.Concat(name="cat", inputs=(s, other), axis=0))


def _reshape(b: _G, s: str) -> str:
    flat = b.add(ir.Reshape(name="flat", inputs=(s,), shape=(C * H * H,)))
    w = b.rng.normal(0, 2.0 / np.sqrt(C * H * H), (5, C * H * H))
    return b.add(ir.Linear(name="fc", inputs=(flat,), weight=b.p("fc.w", w), bias=b.p("fc.b", np.zeros(5))))


def _embedding(b: _G, s: str) -> str:
    e = b.add(ir.Embedding(name="emb", inputs=("t",), weight=b.p("emb.w", b.rng.normal(0, 0.3, (10, C)))))
    r = b.add(ir.Reshape(name="emb.r", inputs=(e,), shape=(C, 1, 1)))
    return b.add(ir.Add(name="temb", inputs=(b.conv("c", s), r)))


def _conv3d(b: _G, s: str) -> str:
    w = b.rng.normal(0, 0.5, (C, C, 3, 3, 1))
    return b.add(
        ir.Conv3d(name="c3", inputs=(s,), weight=b.p("c3.w", w), bias=b.p("c3.b", np.zeros(C)), padding=(1, 1))
    )


def _linear(b: _G, s: str) -> str:
    return _reshape(b, s)


def pool(mode: str = "sum", **kw) -> Callable[[], ir.Graph]:
    """A chain through one ``pool2d`` of ``mode`` (default: 3x3 window, stride 2, padding 1: [2, 4, 4] -> [2, 2, 2],
    padded windows at the border); ``kw`` overrides the attributes."""
    kw = {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1), **kw}
    return _chain(lambda b, s: b.add(ir.Pool2d(name="pool", inputs=(s,), mode=mode, **kw)))


EXAMPLES: dict[str, Callable[[], ir.Graph]] = {
    "input": _chain(lambda b, s: s),
    "output": _chain(lambda b, s: s),
    "repeat": _chain(lambda b, s: s),
    "membrane_readout": _chain(lambda b, s: s),
    "conv2d": _chain(lambda b, s: b.conv("strided", s, 3, stride=(2, 2))),
    "conv3d": _chain(_conv3d),
    "scaled_conv2d": _chain(_scaled),
    "linear": _chain(_linear),
    "tsm_scale": _chain(_tsm),
    "batchnorm": _chain(_bn),
    "groupnorm": _chain(_gn),
    "if": _chain(_if),
    "lif": _chain(_lif),
    "plif": _chain(_plif),
    "add": _chain(lambda b, s: b.add(ir.Add(name="res", inputs=(b.conv("ca", s), b.conv("cb", "xs"))))),
    "mul": _chain(lambda b, s: b.add(ir.Mul(name="and", inputs=(s, b.spikes("sn_b", b.conv("cb", "xs")))))),
    "swish": _chain(lambda b, s: b.add(ir.Swish(name="swish", inputs=(b.conv("c", s),)))),
    "sigmoid": _chain(lambda b, s: b.add(ir.Sigmoid(name="sig", inputs=(b.conv("c", s),)))),
    "scale": _chain(lambda b, s: b.add(ir.Scale(name="half", inputs=(s,), factor=0.5))),
    "concat": _chain(_concat),
    "upsample": _chain(lambda b, s: b.add(ir.Upsample(name="up", inputs=(b.conv("down", s, stride=(2, 2)),), scale=2))),
    "reshape": _chain(_reshape),
    "embedding": _chain(_embedding, t_input=True),
    "pool2d": pool("sum"),
}


def inputs(graph: ir.Graph, B: int = 2, seed: int = 1) -> dict[str, np.ndarray]:
    """The image ``x`` ``[B, 2, 4, 4]`` (standard normal) and ``t`` (diffusion steps in [0, 10)) when present."""
    rng = np.random.default_rng(seed)
    out = {"x": rng.normal(size=(B, C, H, H))}
    if "t" in graph.nodes:
        out["t"] = rng.integers(0, 10, B)
    return out
