"""Loihi quantisation: one scale per population, shared by every projection into it, its bias and threshold.

A float population integrates ``v += g (sum_p W_p s_p + b)`` (input gain ``g = 1/tau`` for a LIF that decays
its input, else 1) and fires on ``v >= theta`` (reset to 0).  Multiplying weights, bias and threshold by
the same ``S > 0`` leaves the spikes unchanged, so each population gets its own scale (Sinabs/SLAYER
style).  With ``S_in`` the input scale of what the synapses read (1 for spikes; a graded netx chain input is
sent as ``x_int = round(S_in x)``)::

    W_int = round(S g W)  in [-128, 127]        b_int = round(S g S_in b)      (13-bit mantissa)
    theta_int = round(S S_in theta) >= 1        vth = theta_int - 1 (Lava fires on v > vth)
    I_host = clip(round(S g x), +-(2^(bits-1) - 1))    (graded host currents, :mod:`.host_plan`)

``S = 127 / max |g W|`` (a population fed only by the host: ``(2^(bits-1) - 1) / (HOST_RANGE theta)``),
lowered so that ``theta_int`` fits the 17-bit threshold and, with ``bias_fit='scale'`` (a netx chain, which
has no host), the bias fits its 13-bit mantissa; ``bias_fit='host'`` (the network compiler) instead sends a
bias that does not fit as host current.  ``pow2``: the largest power of two not above it (dyadic weights
stay exact).  The worst per-step current ``max_channel sum_p max(sum W_int+, sum |W_int-|) x_max`` plus the
host current's bound must stay within ``MAX_CURRENT`` (2^17, Lava's 24-bit current register wraps beyond):
``on_overflow='error'`` raises naming the population, ``'rescale'`` lowers ``S`` until it fits.
Threshold-guidance resolution: ``theta_int / (S S_in)`` is the realised threshold, a step of ``1 / (S S_in)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import SdmcError
from .extract import FloatChain, FloatPopulation
from .host_plan import HOST_BITS
from .network import MAX_BIAS, MAX_CURRENT, MAX_VTH, WEIGHT_MAX, Cuba, LoihiChain, LoihiLayer, check_chain
from .report import LayerQuant, QuantReport

HOST_RANGE = 16  # a population fed only by the host: its current spans +-16 thresholds before clipping


@dataclass(eq=False)
class PopulationQuant:
    """The integer form of one population: weight scale ``scale`` (``S``), ``weights`` (int64, one per
    projection), ``bias`` (int64, None when absent or moved to the host), ``bias_on_host``, ``theta_int``
    and its :class:`LayerQuant` report row."""

    scale: float
    weights: list
    bias: np.ndarray | None
    bias_on_host: bool
    theta_int: int
    report: LayerQuant


def worst_current(w_int: np.ndarray) -> np.ndarray:
    """Per output channel: ``max(sum W+, sum |W-|)`` (the largest current one step of binary spikes can give)."""
    w = w_int.reshape(w_int.shape[0], -1).astype(np.int64)
    return np.maximum(np.clip(w, 0, None).sum(1), (-np.clip(w, None, 0)).sum(1))


def quantize_population(
    fp: FloatPopulation,
    *,
    pow2: bool = False,
    on_overflow: str = "error",
    host_bits: int = HOST_BITS,
    input_scale: float = 1.0,
    input_max: int = 1,
    bias_fit: str = "host",
    where: str | None = None,
) -> PopulationQuant:
    """Quantise ``fp`` (see the module docstring).  ``input_scale`` / ``input_max``: ``S_in`` and the largest
    integer payload of what its projections read (1 / 1 for spikes).  ``where`` names it in errors."""
    where = where or f"population {fp.name!r}"
    if not fp.theta > 0:
        raise SdmcError(f"{where}: threshold {fp.theta} must be > 0 for a Loihi neuron")
    wf = [p.float_weight() for p in fp.projs]
    wmax = max((float(np.abs(w).max()) * fp.gain for w in wf if w.size), default=0.0)
    S = WEIGHT_MAX / wmax if wmax > 0 else ((1 << (host_bits - 1)) - 1) / (HOST_RANGE * fp.theta)
    limits = [S, (MAX_VTH + 1) / (fp.theta * input_scale)]
    if bias_fit == "scale" and fp.bias is not None and np.abs(fp.bias).max() > 0:
        limits.append(MAX_BIAS / (float(np.abs(fp.bias).max()) * (fp.gain * input_scale)))
    S = min(limits)
    if pow2:
        S = float(2.0 ** np.floor(np.log2(S)))
    host_max = (1 << (host_bits - 1)) - 1 if fp.host else 0
    while True:
        ws = [np.rint(w * S * fp.gain).astype(np.int64) for w in wf]
        b_int = None if fp.bias is None else np.rint(fp.bias * S * (fp.gain * input_scale)).astype(np.int64)
        bias_on_host = bias_fit == "host" and b_int is not None and int(np.abs(b_int).max()) > MAX_BIAS
        hm = host_max if not bias_on_host else (1 << (host_bits - 1)) - 1
        worst = int((sum(worst_current(w) for w in ws) * input_max).max()) + hm if ws else hm
        if worst <= MAX_CURRENT:
            break
        if on_overflow == "error":
            raise SdmcError(
                f"{where}: worst-case input current {worst} weight units per step (synapses + host "
                f"current bound {hm}) exceeds Loihi's 24-bit current register ({MAX_CURRENT}) at "
                f"scale {S:.4g}; use on_overflow='rescale' or fewer host-current bits"
            )
        syn = worst - hm
        if syn <= 0 or hm >= MAX_CURRENT:
            raise SdmcError(f"{where}: host current bound {hm} alone fills the current register; lower host_bits")
        S = S / 2.0 if pow2 else S * (MAX_CURRENT - hm) / syn * 0.999
    th_int = int(np.rint(fp.theta * S * input_scale))
    if th_int < 1:
        raise SdmcError(f"{where}: threshold {fp.theta} quantises to {th_int} (< 1) at scale {S * input_scale:.4g}")
    for p, w in zip(fp.projs, ws):
        if w.size and not w.any():
            raise SdmcError(f"{where}: every weight of projection {p.node!r} quantises to 0 at scale {S:.4g}")
    ws_ = S * fp.gain
    werr = max((float(np.abs(w / ws_ - f).max()) for f, w in zip(wf, ws) if w.size), default=0.0)
    berr = 0.0 if b_int is None or bias_on_host else float(np.abs(b_int / (ws_ * input_scale) - fp.bias).max())
    q = LayerQuant(
        name=fp.name,
        scale=ws_,
        weight_err=werr,
        theta=fp.theta,
        theta_int=th_int,
        bias_err=berr,
        worst_current=worst,
        bias_on_host=bias_on_host,
        projections=len(fp.projs) + (1 if fp.host or bias_on_host else 0),
    )
    return PopulationQuant(S, ws, None if bias_on_host else b_int, bias_on_host, th_int, q)


def quantize_chain(
    chain: FloatChain,
    *,
    pow2: bool = False,
    input_scale: float | None = None,
    input_bits: int = 8,
    on_overflow: str = "error",
) -> tuple[LoihiChain, QuantReport]:
    """Quantise ``chain`` for Loihi, each layer as a population (:func:`quantize_population`, biases fitted by
    scale); returns the integer chain and the per-layer :class:`QuantReport`.

    Graded inputs are fed as ``round(input_scale * x)`` (default ``2^(input_bits-1) - 1``, i.e. inputs
    in [-1, 1]) with ``input_message_bits = 16``; ``S_in`` is that input scale for the first layer.
    """
    from .chip_resources import chain_resources

    if on_overflow not in ("error", "rescale"):
        raise SdmcError(f"quantize_chain: on_overflow must be 'error' or 'rescale', got {on_overflow!r}")
    if chain.graded_input:
        s_in = float(input_scale if input_scale is not None else (1 << (input_bits - 1)) - 1)
        xmax = (1 << (input_bits - 1)) - 1
    else:
        s_in, xmax = 1.0, 1
    layers, rep = [], []
    for i, fp in enumerate(chain.layers):
        where = f"layer {i + 1} ({fp.name or (fp.projs[0].kind if fp.projs else '?')})"
        if len(fp.projs) != 1 or fp.host or fp.dv or fp.gain != 1.0:
            raise SdmcError(f"{where}: a netx chain layer is one conv / dense synapse into IF neurons")
        first = i == 0
        q = quantize_population(
            fp,
            pow2=pow2,
            on_overflow=on_overflow,
            input_scale=s_in if first else 1.0,
            input_max=xmax if first else 1,
            bias_fit="scale",
            where=where,
        )
        q.report.name = fp.name or f"layer{i + 1}"
        (pr,) = fp.projs
        layers.append(
            LoihiLayer(
                kind=pr.kind,
                weight=q.weights[0],
                bias=q.bias,
                neuron=Cuba(vth=q.theta_int - 1),
                stride=pr.stride,
                padding=pr.padding,
                dilation=pr.dilation,
                groups=pr.groups,
                name=fp.name,
            )
        )
        rep.append(q.report)
    qc = LoihiChain(
        tuple(chain.input_shape),
        tuple(layers),
        input_bits=16 if chain.graded_input else 0,
        meta={"input_scale": s_in, "input_quant_bits": input_bits if chain.graded_input else 0},
    )
    check_chain(qc)
    return qc, QuantReport(rep, input_scale=s_in, resources=chain_resources(qc))


def quantize_input(chain: LoihiChain, x: np.ndarray) -> np.ndarray:
    """Graded input: ``clip(round(input_scale * x))`` within ``input_bits``; spikes: ``x != 0`` as 0/1."""
    x = np.asarray(x)
    if chain.input_bits == 0:
        return (x != 0).astype(np.int64)
    m = (1 << (int(chain.meta.get("input_quant_bits", 8)) - 1)) - 1
    return np.clip(np.rint(x * float(chain.meta.get("input_scale", m))), -m, m).astype(np.int64)
