"""The Loihi network IR: what sdmc puts on the chip, as integer data, and the contract every runner keeps.

Number formats (Loihi 2 / Lava ``fixed_pt``): 8-bit signed weight mantissas, 13-bit bias mantissas, 17-bit
threshold mantissas, 12-bit decays, a 24-bit neuron state.  One unit = one weight LSB times one unary spike;
the state holds it ``<< 6`` (:data:`ACT_SHIFT`).

Two shapes of network:

- :class:`LoihiChain`: ``input -> layer_1 -> ... -> layer_L`` (:class:`LoihiLayer`: one conv / dense synapse
  feeding :class:`Cuba` neurons), exactly what one netx HDF5 file holds (:mod:`.netx_chain`).
- :class:`LoihiNet`: a DAG of host-driven :class:`Source` ports, :class:`Population` s of CUBA neurons and
  :class:`Projection` s (conv with optional nearest upsampling, dense, identity), several summed into one
  population, with delay lines; what the network compiler (:mod:`.compiler`) produces.  A chain is the net
  :func:`net_from_chain` gives.

Timing rules (Lava steps ``t = 1..N``; both runners, :func:`sdmc.sim.loihi.run_net` and
:func:`.lava_processes.run_lava_net`, keep them):

- a source sends sample step ``k`` at Lava step ``k + 1`` (depth 0);
- every synapse adds one step: a projection delivers at step ``t`` what its source emitted at
  ``t - 1 - delay``, so ``dst.depth == depth(src) + 1 + delay`` for every projection (:func:`check_net`);
- a population of depth ``d`` integrates its response to sample step ``k`` at Lava step ``k + 1 + d`` and is
  reset (``u = v = 0``) before integrating at step ``d + 1``; :func:`aligned_net_spikes` removes the delay
  (chains: layer ``n`` has depth ``n``, :func:`aligned_spikes`).

:func:`check_chain` / :func:`check_net` validate the data against the number formats and shapes;
:func:`check_net_inputs` and :func:`net_bias` the per-run inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sdmc.errors import SdmcError
from sdmc.ir.linear import conv_out

DECAY_SHIFT = 12
DECAY_UNITY = 1 << DECAY_SHIFT
STATE_BITS = 24
MAX_STATE = 1 << (STATE_BITS - 1)  # 2^23: u wraps past it, v is clipped to +-(2^23 - 1)
ACT_SHIFT = VTH_SHIFT = 6
MAX_CURRENT = MAX_STATE >> ACT_SHIFT  # |a_in| per step must stay <= 2^17 weight units (u wraps)
MAX_VOLTAGE = (MAX_STATE - 1) >> ACT_SHIFT  # |v| saturates at 131071 weight units
MAX_VTH = (1 << 17) - 1  # vth mantissa: unsigned 17 bit
MAX_BIAS = (1 << 12) - 1  # bias mantissa: signed 13 bit on the chip
WEIGHT_MIN, WEIGHT_MAX = -128, 127  # 8-bit signed mantissas: exact through netx dense and conv


def conv_out_shape(in_shape, w_shape, stride, padding, dilation, upsample: int = 1) -> tuple[int, ...]:
    """``(O, H', W')`` of a conv with weight ``[O, C/g, kh, kw]`` on ``(C, H, W)`` nearest-upsampled ``upsample``
    times (:func:`sdmc.ir.linear.conv_out` per axis)."""
    _, H, W = in_shape
    O, _, kh, kw = w_shape
    return (
        int(O),
        conv_out(H * upsample, kh, stride[0], padding[0], dilation[0]),
        conv_out(W * upsample, kw, stride[1], padding[1], dilation[1]),
    )


@dataclass(frozen=True)
class Cuba:
    """Lava CUBA-LIF parameters (process-level names): ``vth`` mantissa, decays ``du``/``dv`` (0..4095),
    ``bias_exp``.  IF = ``Cuba(vth=theta-1)`` (``du = 4095``, ``dv = 0``)."""

    vth: int
    du: int = DECAY_UNITY - 1
    dv: int = 0
    bias_exp: int = 6

    def __post_init__(self) -> None:
        if not (0 <= self.du < DECAY_UNITY and 0 <= self.dv < DECAY_UNITY):
            raise SdmcError(f"Cuba: du={self.du}, dv={self.dv} must lie in 0..4095 (12-bit decays)")
        if not 0 <= self.vth <= MAX_VTH:
            raise SdmcError(f"Cuba: vth mantissa {self.vth} outside 0..{MAX_VTH} (17 bit)")


@dataclass(frozen=True, eq=False)
class LoihiLayer:
    """One synapse + neuron block with integer parameters in torch layout.

    ``kind`` ``conv``: ``weight`` ``[O, C/groups, kh, kw]`` acting on ``[C, H, W]``; ``dense``: ``weight``
    ``[O, I]`` on the flattened (C, H, W) input.  ``bias`` (``[O]`` per channel or the full output shape)
    is the neuron's ``bias_mant``.  ``name`` is the source node, used in messages.
    """

    kind: str
    weight: np.ndarray
    neuron: Cuba
    bias: np.ndarray | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    name: str = ""

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.kind == "dense":
            return (int(self.weight.shape[0]),)
        return conv_out_shape(in_shape, self.weight.shape, self.stride, self.padding, self.dilation)


@dataclass(frozen=True, eq=False)
class LoihiChain:
    """A sequential chain ``input -> layer_1 -> ... -> layer_L``; ``input_bits`` 0 = unary spikes,
    > 0 = graded integer payloads into the first synapse (netx ``input_message_bits``)."""

    input_shape: tuple[int, ...]
    layers: tuple[LoihiLayer, ...]
    input_bits: int = 0
    meta: dict = field(default_factory=dict, compare=False)

    def shapes(self) -> list[tuple[int, ...]]:
        """Input shape followed by every layer's output shape."""
        out = [tuple(self.input_shape)]
        for layer in self.layers:
            out.append(layer.out_shape(out[-1]))
        return out


def check_chain(chain: LoihiChain) -> None:
    """Weights must be 8-bit signed integers, bias 13-bit; an :class:`SdmcError` names the layer."""
    shapes = chain.shapes()
    for i, layer in enumerate(chain.layers):
        where = f"Loihi layer {i + 1} ({layer.name or layer.kind})"
        w = np.asarray(layer.weight)
        if w.dtype.kind not in "iu":
            raise SdmcError(f"{where}: weights must be integers, got {w.dtype}")
        if w.size and (w.min() < WEIGHT_MIN or w.max() > WEIGHT_MAX):
            raise SdmcError(
                f"{where}: weights span [{w.min()}, {w.max()}], outside the 8-bit range [{WEIGHT_MIN}, {WEIGHT_MAX}]"
            )
        if layer.bias is not None:
            b = np.asarray(layer.bias)
            if b.dtype.kind not in "iu" or (b.size and np.abs(b).max() > MAX_BIAS):
                raise SdmcError(f"{where}: bias must be integers within +-{MAX_BIAS} (13-bit mantissa)")
        if layer.kind == "conv":
            if len(shapes[i]) != 3 or w.ndim != 4 or w.shape[1] * layer.groups != shapes[i][0]:
                raise SdmcError(f"{where}: conv weight {list(w.shape)} does not fit input {list(shapes[i])}")
        elif layer.kind == "dense":
            if w.ndim != 2 or w.shape[1] != int(np.prod(shapes[i])):
                raise SdmcError(f"{where}: dense weight {list(w.shape)} does not fit input {list(shapes[i])}")
        else:
            raise SdmcError(f"{where}: unknown kind {layer.kind!r} (expected 'conv' or 'dense')")


# ================================================================================ networks (DAGs)
# A LoihiNet generalises LoihiChain to what a UNet needs: several synapses summed into one population,
# split-concat convs, upsample + conv, delay lines that align paths of unequal depth, and integer host
# currents.
PROJECTION_KINDS = ("conv", "dense", "identity")


@dataclass(frozen=True, eq=False)
class Source:
    """A host-driven input port: ``bits`` 0 = unary spikes, > 0 = graded integer payloads of that many bits
    (a RingBuffer with ``num_message_bits``).  Depth 0: sample step ``k`` is sent at Lava step ``k + 1``."""

    name: str
    shape: tuple[int, ...]
    bits: int = 0


@dataclass(frozen=True, eq=False)
class Population:
    """CUBA neurons of ``shape`` (``(C, H, W)`` or ``(N,)``) with integer ``bias`` (``[C]`` per channel or the
    full shape; the ``bias_mant``) and ``depth``: the population integrates its response to sample step
    ``k`` at Lava step ``k + 1 + depth`` and is reset (u = v = 0) before integrating at step ``depth + 1``."""

    name: str
    shape: tuple[int, ...]
    neuron: Cuba
    bias: np.ndarray | None = None
    depth: int = 1


@dataclass(frozen=True, eq=False)
class Projection:
    """Synapse ``src`` (a Source or Population name) -> ``dst`` population's ``a_in`` (inputs of all
    projections into one population are summed).

    ``kind`` ``conv``: ``weight`` ``[O, C/groups, kh, kw]`` (torch cross-correlation) applied to the source
    after nearest-neighbour ``upsample`` (1 = none; 2 = SDDPM's x2); ``dense``: ``[O, I]`` on the flattened
    (C, H, W) source; ``identity``: one-to-one, weight 1 (``weight`` None; source and dst shapes equal),
    used for graded host currents.  ``delay``: extra steps the source's output waits before the synapse,
    which itself adds one step, so ``dst.depth == depth(src) + 1 + delay`` (Source depth = 0).
    """

    src: str
    dst: str
    kind: str
    weight: np.ndarray | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    upsample: int = 1
    delay: int = 0
    name: str = ""


@dataclass(frozen=True, eq=False)
class LoihiNet:
    """Sources, populations (topological order), projections, and the populations whose spikes the host
    reads (``outputs``).  ``meta``: free JSON-able information (scales, names of the IR nodes)."""

    sources: tuple[Source, ...]
    populations: tuple[Population, ...]
    projections: tuple[Projection, ...]
    outputs: tuple[str, ...]
    meta: dict = field(default_factory=dict, compare=False)

    def node(self, name: str) -> Source | Population:
        for n in self.sources + self.populations:
            if n.name == name:
                return n
        raise SdmcError(f"LoihiNet: no source or population named {name!r}")

    def depth(self, name: str) -> int:
        n = self.node(name)
        return 0 if isinstance(n, Source) else n.depth

    @property
    def max_depth(self) -> int:
        return max((p.depth for p in self.populations), default=0)

    def incoming(self, dst: str) -> list[Projection]:
        return [p for p in self.projections if p.dst == dst]


# ------------------------------------------------------------------------------ LoihiNet: check
def _is_int_array(a) -> bool:
    return isinstance(a, np.ndarray) and a.dtype.kind in "iu"


def _check_weight(w, where: str, ndim: int) -> np.ndarray:
    if not _is_int_array(w):
        raise SdmcError(
            f"{where}: weight must be an integer numpy array, got "
            f"{type(w).__name__ if not isinstance(w, np.ndarray) else w.dtype}"
        )
    if w.ndim != ndim:
        raise SdmcError(f"{where}: weight must have {ndim} dimensions, got shape {list(w.shape)}")
    if w.size and (w.min() < WEIGHT_MIN or w.max() > WEIGHT_MAX):
        raise SdmcError(
            f"{where}: weights span [{w.min()}, {w.max()}], outside the 8-bit range [{WEIGHT_MIN}, {WEIGHT_MAX}]"
        )
    return w


def _check_pair(x, where: str, what: str, lo: int) -> tuple[int, int]:
    if (
        not isinstance(x, (tuple, list))
        or len(x) != 2
        or not all(isinstance(i, (int, np.integer)) and i >= lo for i in x)
    ):
        raise SdmcError(f"{where}: {what} must be a pair of integers >= {lo}, got {x!r}")
    return int(x[0]), int(x[1])


def projection_out_shape(proj: Projection, src_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape the synapse delivers: conv ``(O, H', W')`` of the ``upsample``-times larger source, dense
    ``(O,)``, identity the source shape."""
    if proj.kind == "identity":
        return tuple(src_shape)
    if proj.kind == "dense":
        return (int(proj.weight.shape[0]),)
    return conv_out_shape(src_shape, proj.weight.shape, proj.stride, proj.padding, proj.dilation, proj.upsample)


def check_net(net: LoihiNet) -> LoihiNet:
    """Validate ``net`` against the LoihiNet contract; returns it, or raises one :class:`SdmcError` naming
    the node or projection.

    Checks: unique names; shapes ``(C, H, W)`` / ``(N,)`` for populations; source ``bits`` 0..24; bias an
    integer ``[C]`` or full-shape array within +-4095 (13 bit); ``depth >= 1``; projections name existing
    nodes, end at a population and start at a source or an *earlier* population (topological order);
    8-bit integer weights whose shapes fit (conv output after ``upsample`` == dst shape, dense
    ``[prod(dst), prod(src)]``, identity equal shapes); ``dst.depth == depth(src) + 1 + delay``; outputs
    are populations.
    """
    if not isinstance(net, LoihiNet):
        raise SdmcError(f"check_net: expected a LoihiNet, got {type(net).__name__}")
    order: dict[str, int] = {}
    for i, n in enumerate(tuple(net.sources) + tuple(net.populations)):
        kind = "source" if isinstance(n, Source) else "population"
        if not isinstance(n, (Source, Population)):
            raise SdmcError(f"LoihiNet: entry {i} is a {type(n).__name__}, not a Source or Population")
        where = f"LoihiNet {kind} {n.name!r}"
        if not isinstance(n.name, str) or not n.name:
            raise SdmcError(f"LoihiNet: {kind} number {i} has no name")
        if n.name in order:
            raise SdmcError(f"{where}: the name is used twice (source and population names must be unique)")
        shape = tuple(n.shape)
        if len(shape) not in (1, 3) or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
            raise SdmcError(f"{where}: shape must be (C, H, W) or (N,) of positive integers, got {n.shape!r}")
        if isinstance(n, Source):
            if not isinstance(n.bits, (int, np.integer)) or not 0 <= n.bits <= 24:
                raise SdmcError(f"{where}: bits must be 0 (unary spikes) or a graded width 1..24, got {n.bits!r}")
            order[n.name] = -1
            continue
        if not isinstance(n.neuron, Cuba):
            raise SdmcError(f"{where}: neuron must be a Cuba, got {type(n.neuron).__name__}")
        if not isinstance(n.depth, (int, np.integer)) or n.depth < 1:
            raise SdmcError(f"{where}: depth must be an integer >= 1, got {n.depth!r}")
        if n.bias is not None:
            b = n.bias
            if not _is_int_array(b):
                raise SdmcError(f"{where}: bias must be an integer numpy array")
            if b.shape != shape and b.shape != shape[:1]:
                raise SdmcError(
                    f"{where}: bias shape {list(b.shape)} is neither [C] = {list(shape[:1])} "
                    f"nor the population shape {list(shape)}"
                )
            if b.size and np.abs(b.astype(np.int64)).max() > MAX_BIAS:
                raise SdmcError(
                    f"{where}: bias reaches {np.abs(b.astype(np.int64)).max()}, outside the "
                    f"13-bit mantissa range +-{MAX_BIAS}"
                )
        order[n.name] = len([v for v in order.values() if v >= 0])
    for i, p in enumerate(net.projections):
        if not isinstance(p, Projection):
            raise SdmcError(f"LoihiNet: projection number {i} is a {type(p).__name__}, not a Projection")
        where = f"LoihiNet projection {p.name or i} ({p.src} -> {p.dst})"
        if p.src not in order:
            raise SdmcError(f"{where}: no source or population named {p.src!r}")
        if p.dst not in order:
            raise SdmcError(f"{where}: no population named {p.dst!r}")
        if order[p.dst] < 0:
            raise SdmcError(f"{where}: the destination {p.dst!r} is a source; projections end at populations")
        if order[p.src] >= order[p.dst]:
            raise SdmcError(
                f"{where}: population {p.src!r} does not come before {p.dst!r}; populations must "
                "be listed in topological order"
            )
        src, dst = net.node(p.src), net.node(p.dst)
        if p.kind not in PROJECTION_KINDS:
            raise SdmcError(f"{where}: unknown kind {p.kind!r} (expected one of {', '.join(PROJECTION_KINDS)})")
        if not isinstance(p.delay, (int, np.integer)) or p.delay < 0:
            raise SdmcError(f"{where}: delay must be an integer >= 0, got {p.delay!r}")
        if not isinstance(p.upsample, (int, np.integer)) or p.upsample < 1:
            raise SdmcError(f"{where}: upsample must be an integer >= 1, got {p.upsample!r}")
        if p.kind != "conv" and p.upsample != 1:
            raise SdmcError(f"{where}: upsample={p.upsample} is only supported on conv projections")
        if p.kind == "conv":
            w = _check_weight(p.weight, where, 4)
            if len(src.shape) != 3:
                raise SdmcError(f"{where}: a conv needs a (C, H, W) source, {p.src!r} has shape {list(src.shape)}")
            _check_pair(p.stride, where, "stride", 1), _check_pair(p.padding, where, "padding", 0)
            _check_pair(p.dilation, where, "dilation", 1)
            g = p.groups
            if not isinstance(g, (int, np.integer)) or g < 1 or w.shape[0] % g or w.shape[1] * g != src.shape[0]:
                raise SdmcError(
                    f"{where}: conv weight {list(w.shape)} with groups={g} does not fit the "
                    f"{src.shape[0]} channels of {p.src!r}"
                )
        elif p.kind == "dense":
            w = _check_weight(p.weight, where, 2)
            if w.shape[1] != int(np.prod(src.shape)):
                raise SdmcError(
                    f"{where}: dense weight {list(w.shape)} needs {w.shape[1]} inputs, {p.src!r} "
                    f"has shape {list(src.shape)} ({int(np.prod(src.shape))})"
                )
            if w.shape[0] != int(np.prod(dst.shape)):
                raise SdmcError(
                    f"{where}: dense weight {list(w.shape)} has {w.shape[0]} outputs, {p.dst!r} "
                    f"has shape {list(dst.shape)}"
                )
        elif p.weight is not None:
            raise SdmcError(f"{where}: an identity projection has weight 1 and takes no weight array")
        out = projection_out_shape(p, tuple(src.shape)) if p.kind != "dense" else tuple(dst.shape)
        if tuple(out) != tuple(dst.shape):
            raise SdmcError(
                f"{where}: delivers shape {list(out)}"
                f"{f' (after x{p.upsample} upsampling)' if p.upsample > 1 else ''}, but {p.dst!r} "
                f"has shape {list(dst.shape)}"
            )
        want = net.depth(p.src) + 1 + p.delay
        if dst.depth != want:
            raise SdmcError(
                f"{where}: depth({p.dst}) = {dst.depth}, but depth({p.src}) + 1 + delay = "
                f"{net.depth(p.src)} + 1 + {p.delay} = {want}"
            )
    for name in net.outputs:
        if order.get(name, -1) < 0:
            raise SdmcError(f"LoihiNet output {name!r}: no population of that name")
    return net


# ------------------------------------------------------------------------------ run inputs and timing
def _source_values(src: Source, x, where: str) -> np.ndarray:
    x = np.asarray(x)
    if src.bits == 0:
        return (x != 0).astype(np.int8)
    if x.dtype.kind not in "iub":
        if x.dtype.kind != "f" or not np.array_equal(x, np.rint(x)):
            raise SdmcError(f"{where}: graded payloads must be integers, got {x.dtype}")
    x = x.astype(np.int64)
    lim = (1 << src.bits) - 1
    if x.size and np.abs(x).max() > lim:
        raise SdmcError(f"{where}: payload {np.abs(x).max()} does not fit {src.bits} bits (|x| <= {lim})")
    return x


def _bias_array(b, shape: tuple[int, ...], B: int | None = None) -> np.ndarray:
    """A ``[C]`` / full-shape bias (``B`` given: ``[B, C]`` / ``[B, *shape]``) broadcast to ``[(B,) *shape]``."""
    b = np.asarray(b, np.int64)
    lead = () if B is None else (B,)
    if b.shape == lead + tuple(shape):
        return b
    return np.broadcast_to(b.reshape(lead + (shape[0],) + (1,) * (len(shape) - 1)), lead + tuple(shape))


def net_bias(net: LoihiNet, host_bias: dict | None, B: int) -> dict[str, np.ndarray]:
    """Per population the ``bias_mant`` ``[B, *shape]`` (int64, before Lava's int16 storage): static
    ``bias`` plus the per-sample ``host_bias`` (``[B, C]`` per channel or ``[B, *shape]``)."""
    host_bias = dict(host_bias or {})
    pops = {p.name: p for p in net.populations}
    for name in host_bias:
        if name not in pops:
            raise SdmcError(f"host_bias: no population named {name!r}")
    out = {}
    for p in net.populations:
        shape = tuple(p.shape)
        b = np.zeros((B,) + shape, np.int64)
        if p.bias is not None:
            b += _bias_array(p.bias, shape)
        if p.name in host_bias:
            hb = np.asarray(host_bias[p.name])
            if hb.dtype.kind not in "iu":
                raise SdmcError(f"host_bias[{p.name!r}]: must be integers, got {hb.dtype}")
            if hb.shape not in ((B,) + shape, (B, shape[0])):
                raise SdmcError(
                    f"host_bias[{p.name!r}]: shape {list(hb.shape)}, expected [B, C] = "
                    f"{[B, shape[0]]} or [B, *shape] = {[B, *shape]}"
                )
            b += _bias_array(hb, shape, B)
        out[p.name] = b
    return out


def check_net_inputs(net: LoihiNet, inputs: dict, fn: str = "run_net") -> tuple[int, int, dict[str, np.ndarray]]:
    """``(N, B, values)``: every source has an ``[N, B, *shape]`` input (same ``N, B``); unary ones binarised
    (int8), graded ones int64 within ``+-(2^bits - 1)``.  Errors name ``fn`` and the source."""
    if not isinstance(inputs, dict):
        raise SdmcError(f"{fn}: inputs must be a dict source name -> array [N, B, *shape]")
    names = {s.name for s in net.sources}
    extra = set(inputs) - names
    if extra:
        raise SdmcError(f"{fn}: inputs for unknown sources {sorted(extra)} (sources: {sorted(names)})")
    N = B = None
    vals = {}
    for s in net.sources:
        if s.name not in inputs:
            raise SdmcError(f"{fn}: no input for source {s.name!r}")
        x = np.asarray(inputs[s.name])
        where = f"{fn}: input {s.name!r}"
        if x.ndim != 2 + len(s.shape) or tuple(x.shape[2:]) != tuple(s.shape):
            raise SdmcError(f"{where} must be [N, B, {', '.join(map(str, s.shape))}], got {list(x.shape)}")
        if N is None:
            N, B = x.shape[:2]
            if N < 1 or B < 1:
                raise SdmcError(f"{where}: needs at least one step and one sample, got [N, B] = {[N, B]}")
        elif tuple(x.shape[:2]) != (N, B):
            raise SdmcError(f"{where} has [N, B] = {list(x.shape[:2])}, other sources have {[N, B]}")
        vals[s.name] = _source_values(s, x, where)
    if N is None:
        raise SdmcError(f"{fn}: the net has no sources")
    return int(N), int(B), vals


def aligned_spikes(result: dict[str, list[np.ndarray]], T: int) -> list[np.ndarray]:
    """Undo the pipeline delay: layer ``n``'s response to samples ``0..T-1`` (steps ``n+1..n+T``)."""
    return [s[n : n + T] for n, s in enumerate(result["spikes"], start=1)]


def aligned_net_spikes(result: dict, net: LoihiNet, N: int) -> dict[str, np.ndarray]:
    """Delays removed: population ``P``'s response to sample steps ``0..N-1`` (Lava steps ``depth+1 ..
    depth+N``) as ``[N, B, *shape]``, for every population in ``result``."""
    out = {}
    for name, s in result["spikes"].items():
        d = net.depth(name)
        if s.shape[0] < d + N:
            raise SdmcError(
                f"aligned_net_spikes: {name!r} (depth {d}) needs {d + N} steps for N = {N}, the result has {s.shape[0]}"
            )
        out[name] = s[d : d + N]
    return out


def net_from_chain(chain: LoihiChain) -> LoihiNet:
    """``chain`` as a LoihiNet: source ``'input'``, populations ``layer1..layerL`` (depth ``n``), one
    projection each from the previous node; output the last layer.  ``run_net`` on it equals
    ``run_chain(..., reset_interval=N + L, reset_offset=1)``."""
    check_chain(chain)
    src = Source("input", tuple(chain.input_shape), bits=chain.input_bits)
    pops, projs, prev = [], [], "input"
    for n, L in enumerate(chain.layers, start=1):
        name = f"layer{n}"
        shape = L.out_shape(tuple(chain.input_shape) if n == 1 else pops[-1].shape)
        pops.append(Population(name, tuple(shape), L.neuron, None if L.bias is None else np.asarray(L.bias), depth=n))
        projs.append(
            Projection(
                prev,
                name,
                L.kind,
                np.asarray(L.weight),
                stride=tuple(L.stride),
                padding=tuple(L.padding),
                dilation=tuple(L.dilation),
                groups=L.groups,
                name=L.name or name,
            )
        )
        prev = name
    return LoihiNet((src,), tuple(pops), tuple(projs), (prev,), meta={"from_chain": True})
