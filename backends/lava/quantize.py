"""Loihi quantisation of a sequential IF chain: one shared scale per layer for weights, bias and threshold.

A float layer computes ``I[t] = W * s[t] + b`` into an IF neuron with threshold ``theta`` (hard reset to 0,
fires on ``v >= theta``).  Multiplying ``W``, ``b`` and ``theta`` by the same ``S > 0`` leaves the spikes
unchanged, so each layer gets its own scale (Sinabs/SLAYER style)::

    W_int = round(S W)  in [-128, 127]       b_int = round(S_in S b)  in [-4095, 4095]
    theta_int = round(S_in S theta) >= 1     file/Lava: vThMant = theta_int - 1   (Lava fires on v > vth)

``S_in`` is 1 for spike inputs and the input scale (``x_int = round(S_in x)``) for a graded first layer.
``S = 127 / max|W|`` (or the largest power of two not above it, ``pow2=True``: dyadic weights stay exact),
lowered when ``theta`` or ``b`` would not fit.  The worst per-step current ``max(sum W_int+ , sum |W_int-|)``
times the largest input must stay within ``2^17`` weight units (beyond, Lava's 24-bit current register wraps);
``on_overflow='error'`` raises an :class:`SdmcError` naming the layer, ``'rescale'`` lowers ``S`` until it fits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import SdmcError
from ...sim import loihi as lm


@dataclass(frozen=True, eq=False)
class FloatLayer:
    """A float conv/dense layer (BN already folded) followed by an IF neuron (``v >= threshold``, hard reset 0)."""

    kind: str
    weight: np.ndarray
    bias: np.ndarray | None
    threshold: float
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    name: str = ""


@dataclass(frozen=True, eq=False)
class FloatChain:
    """``input [*input_shape] -> layers``; ``graded_input``: real-valued input (else binary spikes)."""

    input_shape: tuple[int, ...]
    layers: tuple[FloatLayer, ...]
    graded_input: bool = False
    meta: dict = field(default_factory=dict, compare=False)


def _conv_f(x: np.ndarray, L: FloatLayer) -> np.ndarray:
    return lm.conv2d_f64(x, L.weight, L.stride, L.padding, L.dilation, L.groups)


def float_reference(chain: FloatChain, x: np.ndarray) -> list[np.ndarray]:
    """Float64 golden semantics of the chain on ``x`` ``[T, B, *input_shape]``: every layer's spikes ``[T, B, ...]``."""
    x = np.asarray(x, np.float64)
    out, s = [], x
    for L in chain.layers:
        T, B = s.shape[:2]
        flat = s.reshape((T * B,) + s.shape[2:])
        cur = _conv_f(flat, L) if L.kind == "conv" else flat.reshape(T * B, -1) @ np.asarray(L.weight, np.float64).T
        if L.bias is not None:
            cur = cur + np.asarray(L.bias, np.float64).reshape((-1,) + (1,) * (cur.ndim - 2))
        cur = cur.reshape((T, B) + cur.shape[1:])
        v = np.zeros(cur.shape[1:])
        spk = np.zeros_like(cur)
        for t in range(T):
            v = v + cur[t]
            spk[t] = v >= L.threshold
            v = np.where(spk[t] > 0, 0.0, v)
        out.append(spk)
        s = spk
    return out


@dataclass
class LayerQuant:
    name: str
    scale: float  # S (weights), current units per float unit = S * S_in
    weight_err: float  # max |W_int / S - W| (float units)
    theta: float
    theta_int: int  # integer threshold (fires on v >= theta_int); vThMant = theta_int - 1
    bias_err: float  # max |b_int / (S S_in) - b|
    worst_current: int  # worst per-step |a_in| in weight units (limit lm.MAX_CURRENT)
    spike_mismatch: float | None = None  # fraction of spikes differing from float on the given inputs
    rate_float: float | None = None
    rate_fixed: float | None = None
    max_abs_v: int | None = None  # largest |v| seen (weight units; saturates at lm.MAX_VOLTAGE)
    projections: int = 1  # synapses summed into this layer / population
    bias_on_host: bool = False  # bias too large for the 13-bit mantissa: sent as host current


@dataclass
class QuantReport:
    """Per-layer scales and errors; spike statistics when inputs were given."""

    layers: list[LayerQuant]
    input_scale: float = 1.0
    tsm_approx: dict = field(default_factory=dict)  # node -> relative spread of the averaged TSM scales
    resources: list = field(default_factory=list)  # sdmc.sim.loihi.resources of the quantised chain

    def format(self) -> str:
        head = f"{'layer':<18}{'scale':>10}{'w err':>10}{'theta':>9}{'th_int':>8}{'|I|max':>9}{'mismatch':>10}{'rate f/q':>14}"
        rows = [head]
        for q in self.layers:
            mm = "-" if q.spike_mismatch is None else f"{q.spike_mismatch:.4f}"
            rt = "-" if q.rate_float is None else f"{q.rate_float:.3f}/{q.rate_fixed:.3f}"
            rows.append(
                f"{q.name[:17]:<18}{q.scale:>10.3f}{q.weight_err:>10.2e}{q.theta:>9.4f}{q.theta_int:>8d}"
                f"{q.worst_current:>9d}{mm:>10}{rt:>14}"
            )
        for r in self.resources:
            rows.append(
                f"  {r['layer'][:17]:<18}{r['kind']:<6}{r['neurons']:>9d} neurons {r['synapses']:>11d} synapses "
                f"{r['weights']:>8d} weights  fan-in <= {r['max_fan_in']}"
            )
        for k, v in self.tsm_approx.items():
            rows.append(f"TSM approximated by its mean at {k}: per-step scales deviate up to {100 * v:.1f}%")
        return "\n".join(rows)


def _choose_scale(L: FloatLayer, s_in: float, pow2: bool) -> float:
    wmax = float(np.abs(L.weight).max()) if np.size(L.weight) else 0.0
    limits = [lm.WEIGHT_MAX / wmax] if wmax > 0 else [1.0]
    limits.append((lm.MAX_VTH + 1) / (L.threshold * s_in))
    if L.bias is not None and np.abs(L.bias).max() > 0:
        limits.append(lm.MAX_BIAS / (float(np.abs(L.bias).max()) * s_in))
    S = min(limits)
    return float(2.0 ** np.floor(np.log2(S))) if pow2 else S


def _worst_current(w_int: np.ndarray, xmax: int) -> int:
    w = w_int.reshape(w_int.shape[0], -1).astype(np.int64)
    return int(max(np.clip(w, 0, None).sum(1).max(), (-np.clip(w, None, 0)).sum(1).max()) * xmax)


def quantize_chain(
    chain: FloatChain,
    *,
    pow2: bool = False,
    input_scale: float | None = None,
    input_bits: int = 8,
    on_overflow: str = "error",
) -> tuple[lm.LoihiChain, QuantReport]:
    """Quantise ``chain`` for Loihi; returns the integer chain and the per-layer :class:`QuantReport`.

    Graded inputs are fed as ``round(input_scale * x)`` (default ``2^(input_bits-1) - 1``, i.e. inputs
    in [-1, 1]) with ``input_message_bits = 16``.
    """
    if on_overflow not in ("error", "rescale"):
        raise SdmcError(f"quantize_chain: on_overflow must be 'error' or 'rescale', got {on_overflow!r}")
    if chain.graded_input:
        s_in = float(input_scale if input_scale is not None else (1 << (input_bits - 1)) - 1)
        xmax = (1 << (input_bits - 1)) - 1
    else:
        s_in, xmax = 1.0, 1
    layers, rep = [], []
    for i, L in enumerate(chain.layers):
        where = f"layer {i + 1} ({L.name or L.kind})"
        si = s_in if i == 0 else 1.0
        xm = xmax if i == 0 else 1
        if not L.threshold > 0:
            raise SdmcError(f"{where}: threshold {L.threshold} must be > 0 for a Loihi IF neuron")
        S = _choose_scale(L, si, pow2)
        while True:
            w_int = np.rint(np.asarray(L.weight, np.float64) * S).astype(np.int64)
            worst = _worst_current(w_int, xm)
            if worst <= lm.MAX_CURRENT:
                break
            if on_overflow == "error":
                raise SdmcError(
                    f"{where}: worst-case input current {worst} weight units per step exceeds Loihi's "
                    f"24-bit current register ({lm.MAX_CURRENT}) at weight scale {S:.4g}; "
                    "use on_overflow='rescale' (fewer effective weight bits) or split the layer"
                )
            S = S / 2.0 if pow2 else S * lm.MAX_CURRENT / worst * 0.999
        if not w_int.any():
            raise SdmcError(f"{where}: every weight quantises to 0 at scale {S:.4g}; the layer would be silent")
        th_int = int(np.rint(L.threshold * S * si))
        if th_int < 1:
            raise SdmcError(f"{where}: threshold {L.threshold} quantises to {th_int} (< 1) at scale {S * si:.4g}")
        b_int = None if L.bias is None else np.rint(np.asarray(L.bias, np.float64) * S * si).astype(np.int64)
        layers.append(
            lm.LoihiLayer(
                kind=L.kind,
                weight=w_int,
                bias=b_int,
                neuron=lm.Cuba(vth=th_int - 1),
                stride=L.stride,
                padding=L.padding,
                dilation=L.dilation,
                groups=L.groups,
                name=L.name,
            )
        )
        rep.append(
            LayerQuant(
                name=L.name or f"layer{i + 1}",
                scale=S,
                weight_err=float(np.abs(w_int / S - L.weight).max()),
                theta=float(L.threshold),
                theta_int=th_int,
                bias_err=0.0 if L.bias is None else float(np.abs(b_int / (S * si) - L.bias).max()),
                worst_current=worst,
            )
        )
    qc = lm.LoihiChain(
        tuple(chain.input_shape),
        tuple(layers),
        input_bits=16 if chain.graded_input else 0,
        meta={"input_scale": s_in, "input_quant_bits": input_bits if chain.graded_input else 0},
    )
    lm.check_chain(qc)
    return qc, QuantReport(rep, input_scale=s_in, resources=lm.resources(qc))


def quantize_input(chain: lm.LoihiChain, x: np.ndarray) -> np.ndarray:
    """Graded input: ``clip(round(input_scale * x))`` within ``input_bits``; spikes: ``x != 0`` as 0/1."""
    x = np.asarray(x)
    if chain.input_bits == 0:
        return (x != 0).astype(np.int64)
    m = (1 << (int(chain.meta.get("input_quant_bits", 8)) - 1)) - 1
    return np.clip(np.rint(x * float(chain.meta.get("input_scale", m))), -m, m).astype(np.int64)


def evaluate(fchain: FloatChain, qchain: lm.LoihiChain, report: QuantReport, x: np.ndarray) -> QuantReport:
    """Fill the report's spike statistics on inputs ``x`` ``[T, B, *input_shape]`` (float; spikes as 0/1).

    The float side sees the de-quantised input ``x_int / input_scale`` when graded, so mismatches measure
    the weight/threshold quantisation (input rounding is reported separately by the caller if needed).
    """
    x = np.asarray(x, np.float64)
    T, L = x.shape[0], len(qchain.layers)
    xq = quantize_input(qchain, x)
    ref = float_reference(fchain, xq / float(qchain.meta.get("input_scale", 1.0)) if qchain.input_bits else x)
    res = lm.run_chain(qchain, xq, num_steps=T + L, reset_interval=T + L, reset_offset=1)
    fixed = lm.aligned_spikes(res, T)
    for q, r, f, v in zip(report.layers, ref, fixed, res["v"]):
        q.spike_mismatch = float(np.mean(r.astype(bool) != f))
        q.rate_float, q.rate_fixed = float(r.mean()), float(f.mean())
        q.max_abs_v = int(np.abs(v).max() >> lm.ACT_SHIFT)
    return report


def mean_tsm(graph, node, tsm: str) -> tuple[float, np.ndarray | None, float]:
    """The mean-TSM approximation of a ``scaled_conv2d`` (``y[t] = p[t] conv(x[t], W) + b[t]``), the only
    static synapse Loihi has for it: ``mean_t p[t] W`` and ``mean_t b[t]``.

    Returns ``(mean p, bias (per step averaged, float64) or None, spread)`` with the relative spread
    ``max(max_t |p[t] - mean p| / |mean p|, max |b[t] - mean b| / max |b|)`` (0: the export is exact).
    ``tsm='reject'`` raises :class:`UnsupportedOpError` naming the node instead.
    """
    from ...errors import UnsupportedOpError

    if tsm == "reject":
        raise UnsupportedOpError(
            f"node {node.name!r} (scaled_conv2d): per-step (TSM) weights p[t] W have no static "
            "Loihi synapse; use tsm='mean' (--tsm mean) to approximate them by mean_t p[t] W"
        )
    P = graph.params
    p = np.ones(graph.T) if node.scale is None else np.asarray(P[node.scale], np.float64).reshape(-1)
    pm = float(p.mean())
    if pm == 0:
        raise UnsupportedOpError(f"node {node.name!r} (scaled_conv2d): mean TSM scale is 0")
    spread = float(np.abs(p - pm).max() / abs(pm))
    b = None if node.bias is None else np.asarray(P[node.bias], np.float64)
    if b is not None and b.ndim == 2:
        bm = b.mean(0)
        spread = max(spread, float(np.abs(b - bm).max()) / max(float(np.abs(b).max()), 1e-12))
        b = bm
    return pm, b, spread
