"""Hypothesis strategies for small random spiking IR graphs (shared by IR, simulator, pass and backend tests).

``spiking_graphs()`` draws a checked :class:`sdmc.ir.Graph`: a static image input, optionally a static
branch (conv on the image), ``repeat`` over T, then a random DAG of conv / TSM scale / BN / IF / LIF /
add / concat / upsample / (reshape + linear) over the values made so far, and a membrane read-out.
Weights and BN statistics are random but scaled so that neurons fire sometimes and not always.
Unless a test asks for ``spiking=False``, every graph has spiking structure: a neuron whose spikes reach the
read-out (one is appended, followed by a conv on its spikes, when the random DAG has none) and convs draw
their input from spike values half of the time when there are any.
``random_inputs(graph, B, seed)`` makes matching input arrays.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from sdmc import ir

OPS = ("conv", "conv", "tsm", "bn", "if", "lif", "add", "concat", "upsample", "static_add", "gn", "qif")


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
        return self.add(
            ir.Conv2d(
                name=n,
                inputs=(src,),
                weight=self.p(f"{n}.weight", w),
                bias=bias,
                stride=(stride, stride),
                padding=(k // 2, k // 2),
            )
        )

    def bn(self, src: str) -> str:
        C = self.g.nodes[src].type.shape[0]
        n, r = self.name("bn"), self.rng
        return self.add(
            ir.BatchNorm(
                name=n,
                inputs=(src,),
                weight=self.p(f"{n}.weight", 1 + 0.3 * r.normal(size=C)),
                bias=self.p(f"{n}.bias", 0.3 * r.normal(size=C)),
                running_mean=self.p(f"{n}.running_mean", 0.2 * r.normal(size=C)),
                running_var=self.p(f"{n}.running_var", 0.5 + r.random(C)),
                eps=1e-5,
            )
        )


@st.composite
def spiking_graphs(draw, max_ops: int = 8, dtype: str = "float64", spiking: bool = True) -> ir.Graph:
    T = draw(st.integers(1, 4))
    C = draw(st.integers(1, 3))
    H = draw(st.sampled_from([2, 4]))
    seed = draw(st.integers(0, 2**32 - 1))
    b = _Builder(
        ir.Graph(T, meta={"generator": "tests.strategies.spiking_graphs", "seed": seed}),
        np.random.default_rng(seed),
        dtype,
    )
    x = b.add(ir.Input(name="x", shape=(C, H, H), dtype=dtype))
    statics = [b.conv(x, draw(st.integers(1, 3)), 3)] if draw(st.booleans()) else []
    pool = [b.add(ir.Repeat(name="rep", inputs=(x,)))]
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(OPS))
        src = draw(st.sampled_from(pool))
        t = b.g.nodes[src].type
        if op == "conv":
            spikes = [p for p in pool if b.g.nodes[p].type.kind == ir.SPIKE]
            if spiking and spikes and draw(st.booleans()):  # spike-driven synapses, the SNN's common case
                src = draw(st.sampled_from(spikes))
                t = b.g.nodes[src].type
            k = draw(st.sampled_from([1, 3]))
            stride = 2 if t.shape[1] >= 4 and draw(st.booleans()) else 1
            new = b.conv(src, draw(st.integers(1, 4)), k, stride)
        elif op == "tsm":
            n = b.name("tsm")
            new = b.add(
                ir.TSMScale(name=n, inputs=(src,), scale=b.p(f"{n}.tsmp", b.rng.uniform(0.5, 1.5, (T, 1, 1, 1, 1))))
            )
        elif op == "bn":
            new = b.bn(src)
        elif op in ("if", "lif"):
            cands = [p for p in pool if b.g.nodes[p].type.kind != ir.SPIKE]
            if not cands:
                continue
            src = draw(st.sampled_from(cands))
            common = dict(
                name=b.name(op),
                inputs=(src,),
                threshold=draw(st.sampled_from([0.5, 1.0, 0.997, 1.3])),
                v_reset=draw(st.sampled_from([0.0, None])),
            )
            new = b.add(
                ir.IF(**common)
                if op == "if"
                else ir.LIF(tau=draw(st.sampled_from([1.5, 2.0, 3.0])), decay_input=draw(st.booleans()), **common)
            )
        elif op == "gn":  # GroupNorm, per step or with running statistics (converted QANNs)
            n = b.name("gn")
            C_ = t.shape[0]
            new = b.add(
                ir.GroupNorm(
                    name=n,
                    inputs=(src,),
                    weight=b.p(f"{n}.weight", b.rng.uniform(0.5, 1.5, C_)),
                    bias=b.p(f"{n}.bias", b.rng.normal(0, 0.5, C_)),
                    num_groups=draw(st.sampled_from([g for g in (1, 2, 3) if C_ % g == 0])),
                    running=t.per_step and draw(st.booleans()),
                )
            )
        elif op == "qif":  # converted-QANN neuron: soft reset, v[-1] = theta/2, optional signed spikes, * theta
            cands = [p for p in pool if b.g.nodes[p].type.kind != ir.SPIKE and b.g.nodes[p].type.per_step]
            if not cands:
                continue
            th = draw(st.sampled_from([0.5, 1.0, 2.5]))
            sp = b.add(
                ir.IF(
                    name=b.name("qif"),
                    inputs=(draw(st.sampled_from(cands)),),
                    threshold=th,
                    v_reset=None,
                    v_init=th / 2,
                    signed=draw(st.booleans()),
                )
            )
            new = b.add(ir.Scale(name=b.name("qscale"), inputs=(sp,), factor=th))
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
    if spiking and not any(b.g.nodes[a].op in ir.NEURON_OPS for a in b.g.ancestors([last]) | {last}):
        # no neuron on the way to the read-out: spike on the last value and feed the spikes to a conv
        sn = b.add(ir.IF(name=b.name("if"), inputs=(last,), threshold=draw(st.sampled_from([0.5, 1.0])), v_reset=0.0))
        last = b.conv(sn, draw(st.integers(1, 3)), draw(st.sampled_from([1, 3])))
        pool += [sn, last]
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


# ------------------------------------------------------------------------------------------ LoihiNets
@st.composite
def loihi_nets(draw, max_pops: int = 5):
    """A valid random :class:`sdmc.backends.lava.network.LoihiNet`: 1-2 sources (unary or 6-bit graded, ``(C, H, H)``),
    2..``max_pops`` populations in a random DAG, each fed by 1-2 projections (conv 1x1/3x3 with stride 2 or
    x2 upsampling where the shapes call for it, dense, identity) whose delays align the paths.  Weights are
    int8 scaled against the thresholds so that neurons fire sometimes; some populations leak (``du``,
    ``dv``), some carry per-channel or per-neuron bias."""
    from sdmc.backends.lava import network as lnet

    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    sources = []
    for i in range(draw(st.integers(1, 2))):
        sources.append(
            lnet.Source(
                f"in{i}",
                (draw(st.integers(1, 3)),) + (draw(st.sampled_from([2, 4])),) * 2,
                bits=draw(st.sampled_from([0, 0, 6])),
            )
        )
    nodes = {s.name: (s.shape, 0, s.bits) for s in sources}  # name -> (shape, depth, bits)
    pops, projs = [], []

    def weight(shape, fan_in, graded):  # current std ~ threshold (~60) for half the inputs active
        a = int(min(127, max(3, 150 / np.sqrt(fan_in) / (16 if graded else 1))))
        return rng.integers(-(3 * a) // 4, a + 1, shape).astype(np.int8)

    def make(src, dst_shape):
        """A projection kind from ``src`` that yields ``dst_shape`` (None if there is none)."""
        sshape, _, bits = nodes[src]
        opts = []
        if sshape == dst_shape:
            opts.append(("identity", {}))
        if len(sshape) == 3 and len(dst_shape) == 3:
            H, Hd = sshape[1], dst_shape[1]
            k = int(rng.choice([1, 3]))
            if H == Hd:
                opts.append(("conv", dict(k=k, stride=1, up=1)))
            elif H == 2 * Hd:
                opts.append(("conv", dict(k=k, stride=2, up=1)))
            elif 2 * H == Hd:
                opts.append(("conv", dict(k=3, stride=1, up=2)))
        if int(np.prod(sshape)) <= 64:
            opts.append(("dense", {}))
        if not opts:
            return None
        kind, o = opts[int(draw(st.integers(0, len(opts) - 1)))]
        n_in = int(np.prod(sshape))
        if kind == "identity":
            return dict(kind=kind)
        if kind == "dense":
            return dict(kind=kind, weight=weight((int(np.prod(dst_shape)), n_in), n_in, bits > 0))
        C = sshape[0]
        k = o["k"]
        return dict(
            kind="conv",
            weight=weight((dst_shape[0], C, k, k), C * k * k, bits > 0),
            stride=(o["stride"],) * 2,
            padding=(k // 2,) * 2,
            upsample=o["up"],
        )

    for j in range(draw(st.integers(2, max_pops))):
        name = f"p{j}"
        names = list(nodes)
        first = names[int(draw(st.integers(0, len(names) - 1)))]
        fshape = nodes[first][0]
        shape_opts = [fshape, (int(draw(st.integers(2, 6))),)]
        if len(fshape) == 3:  # conv-shaped destinations twice as likely as a dense one
            C = int(draw(st.integers(1, 4)))
            shape_opts += [(C,) + fshape[1:]] * 3
            if fshape[1] >= 4:
                shape_opts += [(C, fshape[1] // 2, fshape[2] // 2)] * 2
            if fshape[1] <= 2:
                shape_opts += [(C, fshape[1] * 2, fshape[2] * 2)] * 2
        shape = shape_opts[int(draw(st.integers(0, len(shape_opts) - 1)))]
        srcs = [first]
        if len(names) > 1 and draw(st.booleans()):
            second = names[int(draw(st.integers(0, len(names) - 1)))]
            if second != first:
                srcs.append(second)
        specs = [(s, make(s, shape)) for s in srcs]
        specs = [(s, p) for s, p in specs if p is not None]
        if not specs:
            continue
        depth = max(nodes[s][1] for s, _ in specs) + 1 + int(draw(st.integers(0, 1)))
        for s, p in specs:
            projs.append(lnet.Projection(s, name, delay=depth - nodes[s][1] - 1, name=f"{s}->{name}", **p))
        unary_identity = any(p["kind"] == "identity" and nodes[s][2] == 0 for s, p in specs)
        theta = int(draw(st.integers(1, 3) if unary_identity else st.integers(24, 96)))
        leak = draw(st.booleans())
        neuron = lnet.Cuba(
            vth=theta - 1,
            du=int(rng.integers(1024, 4096)) if leak else 4095,
            dv=int(rng.integers(0, 1024)) if leak else 0,
        )
        b = draw(st.sampled_from(["none", "chan", "full"]))
        bias = None if b == "none" else rng.integers(-8, 9, shape[:1] if b == "chan" else shape).astype(np.int16)
        pops.append(lnet.Population(name, shape, neuron, bias=bias, depth=depth))
        nodes[name] = (shape, depth, 0)
    if not pops:  # every drawn population was unreachable: one identity-fed population keeps it valid
        s = sources[0]
        pops.append(lnet.Population("p0", s.shape, lnet.Cuba(vth=0), depth=1))
        projs.append(lnet.Projection(s.name, "p0", "identity"))
    net = lnet.LoihiNet(tuple(sources), tuple(pops), tuple(projs), (pops[-1].name,), meta={"seed": seed})
    return lnet.check_net(net)


def loihi_net_inputs(net, N: int = 4, B: int = 2, seed: int = 0, p: float = 0.5) -> dict[str, np.ndarray]:
    """Inputs for every source of ``net``: Bernoulli(``p``) spikes or uniform graded payloads."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in net.sources:
        shape = (N, B) + tuple(s.shape)
        out[s.name] = (rng.random(shape) < p).astype(np.int64) if s.bits == 0 else rng.integers(0, 1 << s.bits, shape)
    return out


# ------------------------------------------------------------------------------------------ sequence graphs
POOL_CHOICES = (  # (mode, kernel, stride, padding, count_include_pad)
    ("max", 2, 2, 0, True),
    ("max", 3, 1, 1, True),
    ("avg", 2, 2, 0, True),
    ("avg", 3, 2, 1, True),
    ("avg", 3, 1, 1, False),
    ("sum", 2, 2, 0, True),
    ("sum", 2, 1, 0, True),
)


@st.composite
def sequence_graphs(draw, max_layers: int = 4, dtype: str = "float64") -> ir.Graph:
    """A classifier over a per-step input ``[T, B, C, H, W]``: a chain of conv / BN / neuron / pooling layers
    (max, avg with and without padding counted, sum), neurons of every supported flavour (IF / LIF / PLIF,
    hard or soft reset, ``decay_input`` both ways, ``detach_reset``, ATan or Sigmoid surrogate), then a flatten
    and a dense layer over the sequence, read out per step or summed over T."""
    T = draw(st.integers(1, 4))
    C = draw(st.integers(1, 3))
    H = draw(st.sampled_from([4, 6, 8]))
    seed = draw(st.integers(0, 2**32 - 1))
    b = _Builder(
        ir.Graph(T, meta={"generator": "tests.strategies.sequence_graphs", "seed": seed}),
        np.random.default_rng(seed),
        dtype,
    )
    v = b.add(ir.Input(name="x", shape=(C, H, H), dtype=dtype, timing=ir.PER_STEP))
    for _ in range(draw(st.integers(1, max_layers))):
        layer = draw(st.sampled_from(("conv", "bn", "neuron", "pool", "pool")))
        t = b.g.nodes[v].type
        if layer == "conv":
            v = b.conv(v, draw(st.integers(1, 4)), draw(st.sampled_from([1, 3])))
        elif layer == "bn":
            v = b.bn(v)
        elif layer == "neuron" and t.kind != ir.SPIKE:
            v = b.add(_any_neuron(draw, b, v))
        elif layer == "pool":
            mode, k, s, p, cip = draw(st.sampled_from(POOL_CHOICES))
            if t.shape[1] + 2 * p < k:
                continue
            v = b.add(
                ir.Pool2d(
                    name=b.name(f"{mode}pool"),
                    inputs=(v,),
                    mode=mode,
                    kernel=k,
                    stride=s,
                    padding=p,
                    count_include_pad=cip,
                )
            )
    shape = b.g.nodes[v].type.shape
    flat = b.add(ir.Reshape(name="flat", inputs=(v,), shape=(int(np.prod(shape)),)))
    w = b.rng.normal(0, 1.5 / np.sqrt(np.prod(shape)), (5, int(np.prod(shape))))
    fc = b.add(ir.Linear(name="fc", inputs=(flat,), weight=b.p("fc.weight", w), bias=b.p("fc.bias", np.zeros(5))))
    out = fc
    if draw(st.booleans()):
        out = b.add(_any_neuron(draw, b, fc))
    if draw(st.booleans()):
        out = b.add(ir.MembraneReadout(name="readout", inputs=(out,), decay=draw(st.sampled_from([1.0, 0.8]))))
    b.add(ir.Output(name="out", inputs=(out,)))
    return ir.check(b.g)


def _any_neuron(draw, b: _Builder, src: str) -> ir.Node:
    op = draw(st.sampled_from(("if", "lif", "plif")))
    common = dict(
        name=b.name(op),
        inputs=(src,),
        threshold=draw(st.sampled_from([0.5, 1.0])),
        v_reset=draw(st.sampled_from([0.0, None, -0.2])),
        surrogate=draw(st.sampled_from(["atan", "sigmoid"])),
        alpha=draw(st.sampled_from([2.0, 4.0])),
        detach_reset=draw(st.booleans()),
    )
    if op == "if":
        return ir.IF(**common)
    if op == "lif":
        return ir.LIF(tau=draw(st.sampled_from([1.5, 2.0, 3.0])), decay_input=draw(st.booleans()), **common)
    w = b.p(f"{common['name']}.w", np.asarray(b.rng.normal(0, 1)))
    return ir.PLIF(w=w, decay_input=draw(st.booleans()), **common)
