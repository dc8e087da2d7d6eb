"""Loihi fixed-point model of a sequential spiking chain, bit-exact to Lava's CPU simulation.

It reproduces what ``lava.lib.dl.netx.hdf5.Network`` runs under ``Loihi2SimCfg(select_tag='fixed_pt')``:
``PyConvModelFixed`` / ``PyDenseModelBitAcc`` synapses feeding ``PyLifModelBitAcc`` (or the ``LIFReset``
variant) CUBA neurons.  All arithmetic is integer numpy; one unit = one weight LSB times one unary spike.

Neuron step (``du``, ``dv`` 12-bit decays; ``<< 6`` aligns inputs, bias and threshold with the 24-bit state)::

    u = sgn(u*(4096 - du - 1)) * (|u*(4096 - du - 1)| >> 12) + (a_in << 6)    # wraps once past +-2^23
    v = sgn(v*(4096 - dv))     * (|v*(4096 - dv)|     >> 12) + u + (int16(bias_mant) << bias_exp)
    v = clip(v, -(2^23 - 1), 2^23 - 1);   s = v > (vth << 6);   v[s] = 0

IF (spikingjelly ``IFNode``) is ``du = 4095, dv = 0`` (netx ``iDecay = 4096, vDecay = 0``); its ``v >= theta``
is ``vth = theta - 1`` because every state is a multiple of 64.

Timing (Lava steps ``t = 1..N``): the input source sends ``x[t-1]`` at step ``t``; every synapse sends at
step ``t`` what it received at ``t-1`` (one step of delay per layer), so layer ``n`` (1-based) responds to
input sample ``k`` at step ``k + 1 + n``.  With ``reset_interval = R`` layer ``n`` zeroes ``u, v`` before
integrating at every step with ``t % R == (reset_offset + n) % R`` (netx's per-layer offsets).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sdmc.errors import SdmcError

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
        C, H, W = in_shape
        O, _, kh, kw = self.weight.shape
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        return (int(O), (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1)


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


# ------------------------------------------------------------------------------ pure integer kernels
def _decay(x: np.ndarray, d: int) -> np.ndarray:
    """``sgn(x*(4096-d)) * (|x*(4096-d)| >> 12)`` in int64, truncating toward zero as Lava does."""
    p = x.astype(np.int64) * (DECAY_UNITY - d)
    return (np.sign(p) * (np.abs(p) >> DECAY_SHIFT)).astype(np.int64)


def cuba_step(
    u: np.ndarray, v: np.ndarray, a_in: np.ndarray, bias_mant: np.ndarray | int, p: Cuba
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ``PyLifModelBitAcc`` step; returns new ``(u, v, spikes)`` (int64, int64, bool).  Pure."""
    cur = _decay(u, p.du + 1).astype(np.int32).astype(np.int64) + (np.asarray(a_in, np.int64) << ACT_SHIFT)
    wrapped = np.where(cur > MAX_STATE, cur - 2 * MAX_STATE, cur)
    u_new = np.where(wrapped <= -MAX_STATE, cur + 2 * MAX_STATE, wrapped)
    bias = np.asarray(bias_mant).astype(np.int16).astype(np.int64)  # Lava stores bias_mant as int16
    bias = bias << p.bias_exp if p.bias_exp >= 0 else bias >> -p.bias_exp
    v_new = _decay(v, p.dv).astype(np.int32).astype(np.int64) + u_new + bias
    v_new = np.clip(v_new, -MAX_STATE + 1, MAX_STATE - 1)
    s = v_new > (np.int64(p.vth) << VTH_SHIFT)
    v_new = np.where(s, 0, v_new)
    return u_new, v_new, s


def signed_clamp(x: np.ndarray, bits: int = STATE_BITS) -> np.ndarray:
    """Lava's conv output 'clamp': wrap into the signed ``bits`` range."""
    base = 1 << bits
    return (x + base // 2) % base - base // 2


def conv2d_f64(
    x: np.ndarray, w: np.ndarray, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups: int = 1
) -> np.ndarray:
    """Float64 cross-correlation ``[B, C, H, W] * [O, C/groups, kh, kw] -> [B, O, H', W']`` (BLAS tensordot)."""
    B, C, H, W = x.shape
    w = np.asarray(w, np.float64)
    O, Cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw), G = stride, padding, dilation, groups
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]
    Ho, Wo = win.shape[2:4]
    win = win.reshape(B, G, Cg, Ho, Wo, kh, kw)
    wg = w.reshape(G, O // G, Cg, kh, kw)
    y = np.stack([np.tensordot(win[:, g], wg[g], axes=([1, 4, 5], [1, 2, 3])) for g in range(G)], axis=1)
    return y.transpose(0, 1, 4, 2, 3).reshape(B, O, Ho, Wo)  # [B, G, Ho, Wo, O/G] -> NCHW


def conv_synapse(s: np.ndarray, layer: LoihiLayer) -> np.ndarray:
    """``PyConvModelFixed``: integer conv of ``s`` ``[B, C, H, W]`` (torch cross-correlation), 24-bit wrap.

    Computed in float64, which is exact here: every partial sum is an integer far below 2^53.
    """
    y = conv2d_f64(s, layer.weight, layer.stride, layer.padding, layer.dilation, layer.groups)
    return signed_clamp(np.rint(y).astype(np.int64))


def dense_synapse(s: np.ndarray, layer: LoihiLayer) -> np.ndarray:
    """``PyDenseModelBitAcc`` as netx configures it: exact ``W @ s`` for 8-bit signed mantissas."""
    y = s.reshape(s.shape[0], -1).astype(np.float64) @ np.asarray(layer.weight, np.float64).T  # exact (< 2^53)
    return np.rint(y).astype(np.int64)


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


def run_chain(
    chain: LoihiChain,
    x: np.ndarray,
    *,
    num_steps: int | None = None,
    reset_interval: int | None = None,
    reset_offset: int = 1,
) -> dict[str, list[np.ndarray]]:
    """Simulate ``chain`` on inputs ``x`` ``[N, B, *input_shape]`` over Lava steps ``1..num_steps``.

    ``x[k]`` is sent at step ``k + 1``; steps past ``N`` send zeros (default ``num_steps = N + L``).
    Returns ``{'spikes': [s_1..s_L], 'v': [...], 'u': [...]}``, each ``[num_steps, B, *shape]`` indexed
    by ``step - 1``; ``v`` is read after the reset, as Lava probes it.
    """
    check_chain(chain)
    x = np.asarray(x)
    if x.ndim != 2 + len(chain.input_shape) or tuple(x.shape[2:]) != tuple(chain.input_shape):
        raise SdmcError(
            f"run_chain: input must be [N, B, {', '.join(map(str, chain.input_shape))}], got {list(x.shape)}"
        )
    L, N, B = len(chain.layers), x.shape[0], x.shape[1]
    steps = N + L if num_steps is None else int(num_steps)
    shapes = chain.shapes()
    xin = x.astype(np.int64) if chain.input_bits > 0 else (x != 0).astype(np.int64)
    buf = [np.zeros((B,) + shapes[i + 1], np.int64) for i in range(L)]
    u = [np.zeros_like(b) for b in buf]
    v = [np.zeros_like(b) for b in buf]
    bias = []
    for i, layer in enumerate(chain.layers):
        if layer.bias is None:
            bias.append(np.int64(0))
        else:
            b = np.asarray(layer.bias, np.int64)
            bias.append(b.reshape((-1,) + (1,) * (len(shapes[i + 1]) - 1)) if b.ndim == 1 else b)
    out = {
        k: [np.zeros((steps, B) + shapes[i + 1], np.int64 if k != "spikes" else bool) for i in range(L)]
        for k in ("spikes", "v", "u")
    }
    for t in range(1, steps + 1):
        s_prev = xin[t - 1] if t - 1 < N else np.zeros_like(xin[0])
        for i, layer in enumerate(chain.layers):
            a_in = buf[i]
            syn = conv_synapse if layer.kind == "conv" else dense_synapse
            buf[i] = syn(s_prev, layer).reshape((B,) + shapes[i + 1])
            if reset_interval is not None and t % reset_interval == (reset_offset + 1 + i) % reset_interval:
                u[i][...] = 0
                v[i][...] = 0
            u[i], v[i], s = cuba_step(u[i], v[i], a_in, bias[i], layer.neuron)
            out["spikes"][i][t - 1], out["v"][i][t - 1], out["u"][i][t - 1] = s, v[i], u[i]
            s_prev = s.astype(np.int64)
    return out


def resources(chain: LoihiChain) -> list[dict]:
    """Per layer: ``neurons``, ``weights`` (stored 8-bit mantissas), ``synapses`` (connections: every
    non-padding input/output pair a weight joins), ``max_fan_in`` and the input ``axons`` it reads."""
    shapes = chain.shapes()
    out = []
    for i, L in enumerate(chain.layers):
        n_out, n_in = int(np.prod(shapes[i + 1])), int(np.prod(shapes[i]))
        w = np.asarray(L.weight)
        if L.kind == "conv":
            # connections = sum over output pixels of the in-bounds kernel taps (padding taps cost nothing)
            ones = np.ones((1, shapes[i][0]) + tuple(shapes[i][1:]))
            taps = conv2d_f64(ones, np.ones_like(w, dtype=np.float64), L.stride, L.padding, L.dilation, L.groups)
            synapses, fan_in = int(np.rint(taps.sum())), int(np.rint(taps.max()))
        else:
            synapses, fan_in = int(w.size), int(w.shape[1])
        out.append(
            {
                "layer": L.name or f"layer{i + 1}",
                "kind": L.kind,
                "neurons": n_out,
                "axons": n_in,
                "weights": int(w.size),
                "synapses": synapses,
                "max_fan_in": fan_in,
            }
        )
    return out


def aligned_spikes(result: dict[str, list[np.ndarray]], T: int) -> list[np.ndarray]:
    """Undo the pipeline delay: layer ``n``'s response to samples ``0..T-1`` (steps ``n+1..n+T``)."""
    return [s[n : n + T] for n, s in enumerate(result["spikes"], start=1)]


# ================================================================================ networks (DAGs)
# A LoihiNet generalises LoihiChain to what a UNet needs: several synapses summed into one population,
# split-concat convs, upsample + conv, delay lines that align paths of unequal depth, and integer host
# currents.  The IR -> LoihiNet compiler is sdmc.backends.lava.unet; the Lava runner is
# sdmc.backends.lava.net; run_net below is the bit-exact numpy model of both.
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


# ------------------------------------------------------------------------------ LoihiNet: check and simulate
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


def _pair(x, where: str, what: str, lo: int) -> tuple[int, int]:
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
    _, H, W = src_shape
    H, W = H * proj.upsample, W * proj.upsample
    O, _, kh, kw = proj.weight.shape
    (sh, sw), (ph, pw), (dh, dw) = proj.stride, proj.padding, proj.dilation
    return (int(O), (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1)


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
            _pair(p.stride, where, "stride", 1), _pair(p.padding, where, "padding", 0)
            _pair(p.dilation, where, "dilation", 1)
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


def _upsample(s: np.ndarray, k: int) -> np.ndarray:
    """Nearest-neighbour ``x k`` on the last two axes."""
    return s if k == 1 else s.repeat(k, axis=-2).repeat(k, axis=-1)


_CONV_CHUNK = 1 << 24  # float64 elements of one im2col window block (128 MB)


def projection_current(proj: Projection, s: np.ndarray, dst_shape: tuple[int, ...]) -> np.ndarray:
    """Integer synaptic output of ``proj`` for source outputs ``s`` ``[M, *src_shape]`` -> ``[M, *dst_shape]``.

    conv: ``conv(upsample(s))`` in float64 (exact: integer partial sums far below 2^53), wrapped to 24 bit
    like Lava's ``Conv`` when ``upsample == 1`` (the upsampling path is a ``Sparse`` synapse, which does not
    wrap; the two differ only for ``|a_in| >= 2^23``, far past the 2^17 at which ``u`` wraps anyway);
    dense: ``s_flat @ W.T``; identity: ``s``.  Rows of ``s`` that are all zero are skipped.
    """
    M = s.shape[0]
    out = np.zeros((M,) + tuple(dst_shape), np.int64)
    nz = np.flatnonzero(s.reshape(M, -1).any(axis=1)) if M else np.zeros(0, int)
    if nz.size == 0:
        return out
    x = s[nz]
    if proj.kind == "identity":
        out[nz] = x
    elif proj.kind == "dense":
        y = x.reshape(len(nz), -1).astype(np.float64) @ np.asarray(proj.weight, np.float64).T
        out[nz] = np.rint(y).astype(np.int64).reshape((len(nz),) + tuple(dst_shape))
    else:
        C, H, W = x.shape[1:]
        kh, kw = proj.weight.shape[2:]
        per_row = C * kh * kw * int(np.prod(dst_shape[1:]))
        step = max(1, _CONV_CHUNK // max(per_row, 1))
        bound = int(np.abs(x).max()) * int(
            np.abs(proj.weight.astype(np.int64)).reshape(len(proj.weight), -1).sum(axis=1).max()
        )
        for i in range(0, len(nz), step):
            xi = _upsample(x[i : i + step], proj.upsample)
            y = exact_conv(xi, proj.weight, proj.stride, proj.padding, proj.dilation, proj.groups, bound)
            out[nz[i : i + step]] = signed_clamp(y) if proj.upsample == 1 else y
    return out


def exact_conv(x: np.ndarray, w: np.ndarray, stride, padding, dilation, groups: int, bound: int) -> np.ndarray:
    """Integer cross-correlation ``[B, C, H, W] * [O, C/g, kh, kw]`` -> int64.  ``bound`` >= every
    ``sum |w| |x|`` of one output: below 2^24 every partial sum is an integer float32 holds exactly, in any
    summation order, so torch's float32 conv (direct algorithm, ~2.5x faster than float64 BLAS here) is
    exact; otherwise :func:`conv2d_f64`."""
    if bound < (1 << 24):
        import torch

        with torch.no_grad():
            y = torch.nn.functional.conv2d(
                torch.from_numpy(np.ascontiguousarray(x, np.float32)),
                torch.from_numpy(np.ascontiguousarray(w, np.float32)),
                None,
                tuple(stride),
                tuple(padding),
                tuple(dilation),
                int(groups),
            )
        return y.numpy().astype(np.int64)
    return np.rint(conv2d_f64(x, w, stride, padding, dilation, groups)).astype(np.int64)


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


def run_net(
    net: LoihiNet,
    inputs: dict[str, np.ndarray],
    *,
    num_steps: int | None = None,
    host_bias: dict[str, np.ndarray] | None = None,
    record_v: bool = True,
) -> dict[str, dict]:
    """Simulate ``net`` bit-exactly over Lava steps ``1..num_steps`` (default ``N + max_depth``).

    ``inputs[source]`` ``[N, B, *shape]``: sample step ``k`` is sent at Lava step ``k + 1`` (zeros after
    ``N``); unary sources binarise (non-zero = spike), graded ones send the integers.  Population ``P``
    receives at step ``t`` the sum over its projections of ``syn(out_src[t - 1 - delay])``
    (:func:`projection_current`), is reset (``u = v = 0``) before integrating at step ``depth + 1`` and then
    runs :func:`cuba_step` with ``bias_mant = bias + host_bias[P][b]`` (stored as int16, as Lava does).

    Being feed-forward, the net is evaluated population by population with every step and sample in one
    batched synapse call, then the neuron recurrence over steps.  Returns ``{'spikes': {pop: bool
    [steps, B, *shape]}, 'v': {pop: int64 ...} (after the spike reset, as Lava probes it; empty unless
    record_v), 'max_current': {pop: max |a_in| from the reset on}}``; the arrays are indexed by ``step - 1``.
    Bit-exact to Lava while ``|a_in| < 2^25``; ``u`` wraps (as on Loihi) once ``|a_in| > 2^17``
    (:data:`MAX_CURRENT`), which ``max_current`` exposes.
    """
    check_net(net)
    N, B, vals = check_net_inputs(net, inputs, "run_net")
    steps = N + net.max_depth if num_steps is None else int(num_steps)
    if steps < 1:
        raise SdmcError(f"run_net: num_steps must be >= 1, got {num_steps}")
    bias = net_bias(net, host_bias, B)
    hist: dict[str, np.ndarray] = {}
    for s in net.sources:
        h = np.zeros((steps, B) + tuple(s.shape), vals[s.name].dtype)
        h[: min(N, steps)] = vals[s.name][:steps]
        hist[s.name] = h
    res = {"spikes": {}, "v": {}, "max_current": {}}
    for pop in net.populations:
        shape = tuple(pop.shape)
        a_in = np.zeros((steps, B) + shape, np.int64)
        for proj in net.incoming(pop.name):
            lag = 1 + proj.delay
            if steps <= lag:
                continue
            s = hist[proj.src][: steps - lag]
            cur = projection_current(proj, s.reshape((-1,) + s.shape[2:]), shape)
            a_in[lag:] += cur.reshape((steps - lag, B) + shape)
        spikes = np.zeros((steps, B) + shape, bool)
        volts = np.zeros((steps, B) + shape, np.int64) if record_v else None
        u = np.zeros((B,) + shape, np.int64)
        v = np.zeros_like(u)
        # with zero bias, u = v = 0 and no spikes until the first non-zero input (or the reset): skip those steps
        first = 1
        if not bias[pop.name].any():
            active = np.flatnonzero(a_in.reshape(steps, -1).any(axis=1))
            first = min(pop.depth + 1, int(active[0]) + 1 if active.size else steps + 1)
        for t in range(first, steps + 1):
            if t == pop.depth + 1:
                u[...] = 0
                v[...] = 0
            u, v, spikes[t - 1] = cuba_step(u, v, a_in[t - 1], bias[pop.name], pop.neuron)
            if record_v:
                volts[t - 1] = v
        hist[pop.name] = spikes
        res["spikes"][pop.name] = spikes
        if record_v:
            res["v"][pop.name] = volts
        live = a_in[pop.depth :]  # from the reset on: earlier input is discarded
        res["max_current"][pop.name] = int(np.abs(live).max()) if live.size else 0
    return res


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
