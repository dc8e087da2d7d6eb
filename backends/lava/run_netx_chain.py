"""Run a netx HDF5 chain in Lava's CPU simulation (``Loihi2SimCfg(select_tag='fixed_pt')``).

A batch of ``B`` samples of ``T`` steps runs back to back in one Lava network for ``B * R`` steps, ``R = T + L``
(``L`` layers): sample ``b``'s input occupies steps ``b*R + 1 .. b*R + T`` of the ring buffer and zeros
pad the rest, and netx's per-layer reset (``reset_interval = R``, ``reset_offset = 1``) zeroes layer ``n`` at
step ``b*R + n + 1``, just before that sample's first input reaches it, which also discards the bias
integrated while the pipeline fills.  Layer ``n``'s response to sample ``b``, input step ``k`` is read at
Lava step ``b*R + k + 1 + n``.

The network is compiled once and run ``R`` steps per sample (blocking runs, so channel buffers hold ``R``
messages); spikes are read per step with ``Extractor`` processes and voltages with ``VarWire`` (whole
arrays through a channel; ``Var.get()`` costs ~58 us per element).  Lava's per-channel scipy convolution is replaced by
:func:`sdmc.backends.lava.compat.conv_numpy` (identical integers, ~10x faster) unless ``fast_conv=False``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from ...errors import SdmcError
from . import compat
from .lava_processes import from_lava, to_lava


@dataclass
class LavaRun:
    """Per-layer spikes ``[T, B, *shape]`` (torch C,H,W order, delay removed), optional voltages in weight
    units (``v / 64``, read after the reset), the raw per-step spikes, and wall times in seconds."""

    spikes: list[np.ndarray]
    v: list[np.ndarray] | None
    raw_spikes: list[np.ndarray]
    raw_v: list[np.ndarray] | None = None
    times: dict = field(default_factory=dict)


def run_netx(
    path: str | os.PathLike, x: np.ndarray, *, input_message_bits: int = 0, read_v: bool = True, fast_conv: bool = True
) -> LavaRun:
    """Run the netx file at ``path`` on integer inputs ``x`` ``[T, B, *input_shape]`` (torch order).

    ``input_message_bits`` 0: ``x`` are unary spikes (non-zero = spike); > 0: graded integer payloads.
    """
    compat.import_lava()
    if fast_conv:
        compat.use_fast_conv()
    import h5py
    from lava.lib.dl import netx
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.extractor import Extractor, PyLoihiExtractorModel, PyLoihiVarWireModel, VarWire
    from lava.proc.io.source import RingBuffer

    if not os.path.isfile(path):
        raise SdmcError(f"run_netx: no such file {os.fspath(path)!r}")
    with h5py.File(path, "r") as f:
        n_layers = sum(1 for k in f["layer"] if f["layer"][k]["type"][0] not in (b"input", b"flatten"))
    x = np.asarray(x)
    if x.ndim < 3:
        raise SdmcError(f"run_netx: input must be [T, B, *shape], got shape {list(x.shape)}")
    T, B = x.shape[:2]
    R = T + n_layers
    steps = B * R
    times = {}
    t0 = time.perf_counter()
    net = netx.hdf5.Network(
        net_config=os.fspath(path), reset_interval=R, reset_offset=1, input_message_bits=input_message_bits
    )
    in_shape = tuple(net.inp.shape)

    def prep(a: np.ndarray) -> np.ndarray:  # a first dense layer reads the (C, H, W)-flattened input
        return a.reshape(-1) if len(in_shape) == 1 else to_lava(a)

    if tuple(prep(x[0, 0]).shape) != in_shape:
        raise SdmcError(
            f"run_netx: {os.fspath(path)!r} expects inputs of shape {list(from_lava(np.zeros(in_shape)).shape)} "
            f"per step, got {list(x.shape[2:])}"
        )
    data = np.zeros(in_shape + (steps,), np.int64)
    xi = x.astype(np.int64) if input_message_bits > 0 else (x != 0).astype(np.int64)
    for b in range(B):
        for k in range(T):
            data[..., b * R + k] = prep(xi[k, b])
    source = RingBuffer(data=data)
    source.s_out.connect(net.inp)
    extractors, wires = [], []
    for layer in net.layers:
        ex = Extractor(shape=tuple(layer.out.shape), buffer_size=R)
        layer.out.connect(ex.in_port)
        extractors.append(ex)
        if read_v:
            vw = VarWire(buffer_size=R)
            vw.connect_var(layer.neuron.v)
            wires.append(vw)
    cfg = Loihi2SimCfg(
        select_tag="fixed_pt", exception_proc_model_map={Extractor: PyLoihiExtractorModel, VarWire: PyLoihiVarWireModel}
    )
    times["build"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw_chunks: list[list[np.ndarray]] = [[] for _ in extractors]
    v_chunks: list[list[np.ndarray]] = [[] for _ in wires]
    times["run"] = times["read"] = 0.0
    try:
        for _ in range(B):  # one blocking run per sample keeps the channel buffers at R messages
            t0 = time.perf_counter()
            net.run(condition=RunSteps(num_steps=R), run_cfg=cfg)
            t1 = time.perf_counter()
            for ex, acc in zip(extractors, raw_chunks):
                acc.extend(from_lava(np.asarray(ex.receive())) for _ in range(R))
            for w, acc in zip(wires, v_chunks):
                acc.extend(from_lava(np.asarray(w.receive())) for _ in range(R))
            times["run"] += t1 - t0
            times["read"] += time.perf_counter() - t1
    finally:
        net.stop()
    raw = [np.stack(c) for c in raw_chunks]
    volts = [np.stack(c) for c in v_chunks]
    raw = [r.reshape((B, R) + r.shape[1:]) for r in raw]
    spikes = [np.moveaxis(r[:, n : n + T], 0, 1).astype(bool) for n, r in enumerate(raw, start=1)]
    v = None
    if read_v:
        v = [
            np.moveaxis(np.rint(a).astype(np.int64).reshape((B, R) + a.shape[1:])[:, n : n + T], 0, 1) // 64
            for n, a in enumerate(volts, start=1)
        ]
    return LavaRun(spikes=spikes, v=v, raw_spikes=raw, raw_v=volts if read_v else None, times=times)
