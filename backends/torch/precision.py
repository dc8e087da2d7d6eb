"""Executor precision: ``fp32`` (exact, the reference), ``bf16`` and ``int8`` (inference), what the machine supports
and the 8-bit weight quantisation of the int8 path.

``fp32``  every tensor in the compile dtype (float32 by default): bit-faithful to the eager model.
``bf16``  weights and real-valued activations in bfloat16; spikes are exactly 0/1 in bf16; convolutions
          accumulate in fp32 inside oneDNN / cuDNN; neuron membranes are kept in fp32 and the graph outputs are
          returned in fp32.  Training (``mode="train"``) keeps fp32 master weights and runs under bf16 autocast.
``int8``  inference only: every convolution whose input is a spike value (exactly 0/1) runs as an int8 x int8
          -> int32 GEMM (oneDNN convolution with an s32 accumulator, dequantised once:
          ``y = s_o * acc + b``), with the weights quantised per output channel by :func:`quantize_weight`;
          everything else stays in the compile dtype.  The int32 accumulator is exact, so the int8 executor
          computes exactly what the golden simulator computes on the quantised graph (``ex.graph``).

:func:`choose` checks the choice against the machine (:func:`support`) and refuses an unsupported one with a
single :class:`~sdmc.errors.ConfigError` line; the chosen :class:`Precision` says what it runs (``.note``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sdmc import ir
from sdmc.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "int8")
WEIGHT_MAX = 127  # symmetric 8-bit weights, as the Loihi backend's (backends/lava: W_int = round(S W), |W_int| <= 127)
SCALE_BITS = 16  # significant bits kept of each channel scale: s_o * W_int is then exact in float32


@dataclass(frozen=True)
class Precision:
    """The executor's numeric recipe: ``name``, the parameter / activation ``dtype``, whether spike-input
    convolutions run as int8 GEMMs (``int8``), whether training runs under bf16 ``autocast`` and a one-line
    ``note`` saying what was chosen on this machine."""

    name: str
    dtype: torch.dtype
    int8: bool = False
    autocast: torch.dtype | None = None
    note: str = ""


def _device_type(device: str | torch.device | None) -> str:
    return torch.device(device or "cpu").type


def cpu_has_native_bf16() -> bool:
    """oneDNN runs bf16 natively here (AVX-512 BF16 or AMX), not emulated through fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_has_int8_conv() -> bool:
    """torch has the oneDNN int8 convolution with a dequantised (s32-accumulated) output."""
    return hasattr(torch.ops.onednn, "qconv2d_pointwise") and "onednn" in torch.backends.quantized.supported_engines


def support(device: str | torch.device | None = None, mode: str = "inference") -> dict[str, str | None]:
    """``{precision: None if supported, else the reason}`` for ``device`` and executor ``mode``."""
    dev = _device_type(device)
    out: dict[str, str | None] = {"fp32": None}
    if dev == "cuda":
        out["bf16"] = None if torch.cuda.is_bf16_supported() else "this GPU has no bf16 support"
        out["int8"] = "int8 is a CPU inference path (oneDNN int8 convolutions); use bf16 on GPU"
    elif dev == "cpu":
        out["bf16"] = None
        out["int8"] = None if cpu_has_int8_conv() else "this torch build has no oneDNN int8 convolution"
    else:
        out["bf16"] = out["int8"] = f"device type {dev!r} is not supported by the reduced-precision paths"
    if mode == "train" and out["int8"] is None:
        out["int8"] = "int8 is for inference (mode='inference'); train in fp32 or bf16"
    return out


def choose(
    name: str | None, mode: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> Precision:
    """The :class:`Precision` for ``name`` (default ``fp32``) on ``device`` in ``mode``; an unknown or unsupported
    choice is one :class:`ConfigError` naming it, the reason and what is supported here."""
    name = "fp32" if name is None else str(name).lower()
    if name not in PRECISIONS:
        raise ConfigError(f"precision {name!r}: unknown; choose one of {', '.join(PRECISIONS)}")
    sup = support(device, mode)
    if sup[name] is not None:
        ok = ", ".join(k for k, v in sup.items() if v is None)
        raise ConfigError(f"precision {name!r} is not supported here: {sup[name]} (supported: {ok})")
    base = dtype or torch.float32
    dev = _device_type(device)
    if name == "fp32":
        return Precision("fp32", base, note=f"fp32: every tensor in {str(base).replace('torch.', '')}")
    if name == "bf16":
        speed = (
            ""
            if dev != "cpu" or cpu_has_native_bf16()
            else " (this CPU has no AVX-512 BF16/AMX: bf16 runs emulated, slower than fp32)"
        )
        if mode == "train":
            return Precision(
                "bf16",
                base,
                autocast=torch.bfloat16,
                note="bf16: fp32 weights, convolutions under bf16 autocast" + speed,
            )
        return Precision(
            "bf16", torch.bfloat16, note="bf16: weights and activations bf16, fp32 accumulation and membranes" + speed
        )
    return Precision(
        "int8",
        base,
        int8=True,
        note="int8: spike-input convolutions as int8 x int8 -> int32 (oneDNN), per-output-channel weight scales; "
        f"other layers {str(base).replace('torch.', '')}",
    )


# ------------------------------------------------------------------------------------------ quantisation
def _round_scale(s: np.ndarray) -> np.ndarray:
    """Each scale rounded to :data:`SCALE_BITS` significant bits (so ``s * W_int``, 8 + 16 bits, is exact in
    float32 and every sum of such products is exact in float64)."""
    m, e = np.frexp(s)
    return np.ldexp(np.round(m * 2.0**SCALE_BITS), e - SCALE_BITS)


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 8-bit quantisation per output channel (axis 0)::

        s_o = max_i |W[o, i]| / 127  (to 16 significant bits)      W_int[o] = round(W[o] / s_o)  in [-127, 127]

    A channel of zeros gets ``s_o = 1``.  Returns ``(W_int int8, s float64 [O])``; ``W_int * s`` is the
    quantised weight the golden simulator runs.
    """
    w = np.asarray(w, np.float64)
    amax = np.abs(w.reshape(w.shape[0], -1)).max(1) if w.size else np.zeros(w.shape[0])
    s = _round_scale(np.where(amax > 0, amax / WEIGHT_MAX, 1.0))
    w_int = np.clip(np.rint(w / s.reshape((-1,) + (1,) * (w.ndim - 1))), -WEIGHT_MAX, WEIGHT_MAX)
    return w_int.astype(np.int8), s


def int8_convs(g: ir.Graph) -> list[str]:
    """The nodes the int8 path runs as int8 GEMMs: 2-d convolutions (``ir.CONV2D``) whose input is a spike value."""
    return [n.name for n in g.order() if n.op in ir.CONV2D and g.nodes[n.inputs[0]].type.kind == ir.SPIKE]


def quantize_graph(g: ir.Graph) -> tuple[ir.Graph, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A copy of checked ``g`` whose spike-input convolutions carry 8-bit weights (``W_int * s``, stored under
    ``<weight>.int8q`` in the weight's dtype, exact), and ``{node: (W_int, s)}`` for the executor.
    ``golden.run`` on the returned graph is what the int8 executor computes."""
    q = g.copy()
    ir.infer_types(q)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in int8_convs(q):
        n = q.nodes[name]
        w = q.params[n.weight]
        w_int, s = quantize_weight(w)
        key = n.weight + ".int8q"
        if key not in q.params:
            q.add_param(key, (w_int.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype))
        q.nodes[name] = n.replace(weight=key)
        out[name] = (w_int, s)
    q.meta["precision"] = {"name": "int8", "weight_bits": 8, "int8_convs": list(out)}
    return ir.check(q), out
