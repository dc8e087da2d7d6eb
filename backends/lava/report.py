"""Quantisation and accuracy reports: per population / layer scale, weight and bias error, integer threshold,
worst-case current, and, measured on inputs, spike mismatch and firing rates against the float model.

:class:`QuantReport` is what quantising a netx chain reports; :class:`CompileReport` adds what the network
compiler decided (host parts, TSM approximation, hybrid output error).  :func:`spike_mismatch` and
:func:`rel_error` are the two accuracy measures every check uses (``evaluate``, ``sdmc sim``, the demo).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .network import MAX_CURRENT, MAX_VOLTAGE


def mismatch(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of entries where the spike arrays ``a`` and ``b`` (non-zero = spike) disagree."""
    return float(np.mean(np.asarray(a).astype(bool) != np.asarray(b).astype(bool)))


def spike_mismatch(
    spikes: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], pops: Iterable[str]
) -> dict[str, float]:
    """Per population ``p``: the fraction of (step, sample, neuron) entries where ``spikes[p]`` (fixed point)
    and ``ref[p]`` (float golden) disagree, ``mean(s != r)``."""
    return {p: mismatch(spikes[p], ref[p]) for p in pops}


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / ||b||`` (0 when both are 0)."""
    d, n = float(np.linalg.norm(np.asarray(a) - b)), float(np.linalg.norm(b))
    return d / n if n > 0 else d


@dataclass
class LayerQuant:
    name: str
    scale: float  # weight units per float weight (S g); the current per float unit is S * S_in
    weight_err: float  # max |W_int / scale - W| (float units)
    theta: float
    theta_int: int  # integer threshold (fires on v >= theta_int); vThMant = theta_int - 1
    bias_err: float  # max |b_int / (scale S_in) - b|
    worst_current: int  # worst per-step |a_in| in weight units (limit MAX_CURRENT)
    spike_mismatch: float | None = None  # fraction of spikes differing from float on the given inputs
    rate_float: float | None = None
    rate_fixed: float | None = None
    max_abs_v: int | None = None  # largest |v| seen (weight units; saturates at MAX_VOLTAGE)
    projections: int = 1  # synapses summed into this layer / population
    bias_on_host: bool = False  # bias too large for the 13-bit mantissa: sent as host current

    def record_spikes(self, ref: np.ndarray, fixed: np.ndarray) -> None:
        """Fill ``spike_mismatch`` and the firing rates from the float (``ref``) and fixed-point spikes."""
        self.spike_mismatch = mismatch(ref, fixed)
        self.rate_float, self.rate_fixed = float(np.mean(ref)), float(np.mean(fixed))


@dataclass
class QuantReport:
    """Per-layer scales and errors; spike statistics when inputs were given."""

    layers: list[LayerQuant]
    input_scale: float = 1.0
    tsm_approx: dict = field(default_factory=dict)  # node -> relative spread of the averaged TSM scales
    resources: list = field(default_factory=list)  # chip_resources.chain_resources of the quantised chain

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


@dataclass
class CompileReport(QuantReport):
    """The quantisation report plus what the compiler decided: ``host`` (descriptions of the host parts),
    ``tsm_error`` (float output error of the mean-TSM approximation alone, with calibration inputs;
    ``tsm_node_error`` the same per node, each approximated alone, for up to ``TSM_PER_NODE_MAX`` nodes),
    ``output_error`` (relative output error of the hybrid fixed-point run vs float golden), ``host_clip``
    (clipped fraction per host source), ``passes`` (the pass log of the compiled graph)."""

    host: list = field(default_factory=list)
    tsm_error: float | None = None
    tsm_node_error: dict = field(default_factory=dict)
    max_current: dict = field(default_factory=dict)
    output_error: float | None = None
    host_clip: dict = field(default_factory=dict)
    passes: list = field(default_factory=list)

    def to_json(self) -> dict:
        layers = [
            {k: (v if not isinstance(v, np.generic) else v.item()) for k, v in vars(q).items()} for q in self.layers
        ]
        return {
            "populations": layers,
            "tsm_spread": dict(self.tsm_approx),
            "tsm_error": self.tsm_error,
            "max_current": dict(self.max_current),
            "tsm_node_error": dict(self.tsm_node_error),
            "output_error": self.output_error,
            "host_clip": dict(self.host_clip),
            "host": list(self.host),
        }

    def format(self) -> str:
        head = (
            f"{'population':<28}{'scale':>9}{'w err':>9}{'theta':>8}{'th_int':>7}{'|I|max':>8}{'proj':>5}"
            f"{'mismatch':>10}{'rate f/q':>13}"
        )
        rows = [head]
        for q in self.layers:
            mm = "-" if q.spike_mismatch is None else f"{q.spike_mismatch:.4f}"
            rt = "-" if q.rate_float is None else f"{q.rate_float:.3f}/{q.rate_fixed:.3f}"
            flag = " (bias on host)" if q.bias_on_host else ""
            rows.append(
                f"{q.name[-27:]:<28}{q.scale:>9.3f}{q.weight_err:>9.2e}{q.theta:>8.4f}{q.theta_int:>7d}"
                f"{q.worst_current:>8d}{q.projections:>5d}{mm:>10}{rt:>13}{flag}"
            )
        res = min((q.scale for q in self.layers), default=0.0)
        if res:
            err = max(abs(q.theta_int / q.scale - q.theta) for q in self.layers)
            rows.append(
                f"threshold resolution: coarsest 1/S = {1 / res:.4g}; realised thresholds theta_int/S "
                f"differ from theta by at most {err:.3g} (threshold-guidance steps finer than 1/S are lost)"
            )
        for k, v in self.tsm_approx.items():
            e = self.tsm_node_error.get(k)
            rows.append(
                f"TSM approximated by its mean at {k}: per-step scales deviate up to {100 * v:.1f}%"
                + (f"; output error of this node alone {e:.3g}" if e is not None else "")
            )
        if self.tsm_error is not None:
            rows.append(f"TSM mean approximation alone: float output relative error {self.tsm_error:.4g}")
        if self.host_clip:
            worst = max(self.host_clip.items(), key=lambda kv: kv[1])
            rows.append(f"host currents clipped: at most {100 * worst[1]:.3f}% of values ({worst[0]})")
        vs = [(q.max_abs_v, q.name) for q in self.layers if q.max_abs_v is not None]
        if vs:
            v, who = max(vs)
            sat = sum(1 for x, _ in vs if x >= MAX_VOLTAGE)
            rows.append(
                f"state range on the inputs: max |v| {v} of {MAX_VOLTAGE} weight units ({who}); "
                f"{sat} population(s) saturated"
            )
        if self.max_current:
            who, c = max(self.max_current.items(), key=lambda kv: kv[1])
            rows.append(f"per-step current on the inputs: max |a_in| {c} of {MAX_CURRENT} ({who})")
        if self.output_error is not None:
            rows.append(f"hybrid fixed-point output vs float golden: relative error {self.output_error:.4g}")
        for h in self.host:
            rows.append(f"host: {h}")
        return "\n".join(rows)
