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
MAX_STATE = 1 << (STATE_BITS - 1)           # 2^23: u wraps past it, v is clipped to +-(2^23 - 1)
ACT_SHIFT = VTH_SHIFT = 6
MAX_CURRENT = MAX_STATE >> ACT_SHIFT        # |a_in| per step must stay <= 2^17 weight units (u wraps)
MAX_VOLTAGE = (MAX_STATE - 1) >> ACT_SHIFT  # |v| saturates at 131071 weight units
MAX_VTH = (1 << 17) - 1                     # vth mantissa: unsigned 17 bit
MAX_BIAS = (1 << 12) - 1                    # bias mantissa: signed 13 bit on the chip
WEIGHT_MIN, WEIGHT_MAX = -128, 127          # 8-bit signed mantissas: exact through netx dense and conv


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


def cuba_step(u: np.ndarray, v: np.ndarray, a_in: np.ndarray, bias_mant: np.ndarray | int,
              p: Cuba) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def conv2d_f64(x: np.ndarray, w: np.ndarray, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
               groups: int = 1) -> np.ndarray:
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
            raise SdmcError(f"{where}: weights span [{w.min()}, {w.max()}], outside the 8-bit range "
                            f"[{WEIGHT_MIN}, {WEIGHT_MAX}]")
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


def run_chain(chain: LoihiChain, x: np.ndarray, *, num_steps: int | None = None,
              reset_interval: int | None = None, reset_offset: int = 1) -> dict[str, list[np.ndarray]]:
    """Simulate ``chain`` on inputs ``x`` ``[N, B, *input_shape]`` over Lava steps ``1..num_steps``.

    ``x[k]`` is sent at step ``k + 1``; steps past ``N`` send zeros (default ``num_steps = N + L``).
    Returns ``{'spikes': [s_1..s_L], 'v': [...], 'u': [...]}``, each ``[num_steps, B, *shape]`` indexed
    by ``step - 1``; ``v`` is read after the reset, as Lava probes it.
    """
    check_chain(chain)
    x = np.asarray(x)
    if x.ndim != 2 + len(chain.input_shape) or tuple(x.shape[2:]) != tuple(chain.input_shape):
        raise SdmcError(f"run_chain: input must be [N, B, {', '.join(map(str, chain.input_shape))}], got {list(x.shape)}")
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
    out = {k: [np.zeros((steps, B) + shapes[i + 1], np.int64 if k != "spikes" else bool) for i in range(L)]
           for k in ("spikes", "v", "u")}
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
        out.append({"layer": L.name or f"layer{i + 1}", "kind": L.kind, "neurons": n_out, "axons": n_in,
                    "weights": int(w.size), "synapses": synapses, "max_fan_in": fan_in})
    return out


def aligned_spikes(result: dict[str, list[np.ndarray]], T: int) -> list[np.ndarray]:
    """Undo the pipeline delay: layer ``n``'s response to samples ``0..T-1`` (steps ``n+1..n+T``)."""
    return [s[n:n + T] for n, s in enumerate(result["spikes"], start=1)]


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
