"""A sequential spiking chain as one netx HDF5 file (what ``lava.lib.dl.netx.hdf5.Network`` loads), the
special case of the network compiler that netx expresses on its own.

Accepted graphs: ``Input -> [Repeat] -> (Conv2d | ScaledConv2d | [Reshape] Linear) -> [BatchNorm] -> IF -> ... -> Output``,
one user per value.  The input is either a per-step spike value or a real value (static then repeated, or
per-step) that Lava receives as graded 8-bit payloads.  IF neurons must use hard reset to 0.
:func:`extract_chain` reads it with the network compiler's pieces: the ``fold_bn`` pass folds BatchNorm (eval
statistics) into the synapse before it (:func:`sdmc.passes.rewrite.fold_bn_weights`)::

    W' = W * gamma / sqrt(var + eps)        b' = (b - mu) * gamma / sqrt(var + eps) + beta

then :func:`.extract.float_projection` / :func:`.extract.neuron_params` give each layer as a
:class:`~.extract.FloatPopulation`; :func:`.quantize.quantize_chain` quantises each with the population
quantiser.  :func:`float_reference` / :func:`evaluate` measure the quantisation's spike mismatch.

The file follows what ``lava.lib.dl.netx.hdf5.Network`` reads (lava-dl 0.6.0)::

    layer/0  type 'input', shape (C, H, W)                  (no neuron: only sets the input shape)
    layer/k  type 'conv',  shape (O, H', W'), weight [O, C/g, kh, kw] (torch layout; netx flips and
             transposes it on load), stride/padding/dilation (y, x), groups, bias [O], neuron/
             type 'dense', shape (O,), weight [O, I], bias [O], neuron/ (a 'flatten' layer precedes a
             dense that follows a conv: netx then feeds the (C, H, W)-flattened spikes)
    neuron/  type 'CUBA', iDecay 4096, vDecay 0 (IF), vThMant = theta_int - 1, refDelay 1, gradedSpike 0
"""

from __future__ import annotations

import json
import os

import numpy as np

from ... import passes
from ...errors import SdmcError, UnsupportedOpError
from ...ir import PER_STEP, SPIKE, Graph, check, pair
from ...sim.loihi import conv2d_f64, run_chain
from ...utils import atomic_path
from .extract import SYNAPSES, FloatChain, FloatPopulation, float_projection, neuron_params
from .network import ACT_SHIFT, Cuba, LoihiChain, LoihiLayer, aligned_spikes, check_chain
from .quantize import quantize_chain, quantize_input
from .report import QuantReport

_GEOMETRY = ("stride", "padding", "dilation")


def extract_chain(graph: Graph, *, tsm: str = "reject") -> FloatChain:
    """Read a sequential conv/dense + IF chain out of ``graph`` (BN folded); errors name the offending node.

    A ``scaled_conv2d`` (SDM's fused TSM conv, per-step weights ``p[t] W`` and biases ``b[t]``) has no static
    Loihi synapse: ``tsm='reject'`` raises, ``tsm='mean'`` uses ``mean_t p[t] * W`` and ``mean_t b[t]`` and
    records the relative spread ``max_t |p[t] - mean p| / |mean p|`` per node in ``chain.meta['tsm_approx']``
    (0 when every step has the same scale: then the export is exact).  Each layer is named after its synapse.
    """
    if tsm not in ("reject", "mean"):
        raise SdmcError(f"extract_chain: tsm must be 'reject' or 'mean', got {tsm!r}")
    tsm_approx: dict[str, float] = {}
    check(graph)
    ins = graph.input_nodes
    if len(ins) != 1:
        raise UnsupportedOpError(
            f"netx export: a sequential chain has exactly one input, graph has {[n.name for n in ins]}"
        )
    node = ins[0]
    in_t = node.type
    graded = in_t.kind != SPIKE
    if not graded and in_t.timing != PER_STEP:
        raise UnsupportedOpError(f"node {node.name!r} (input): a spike input must be per-step")
    graph = passes.run(graph, ["fold_bn"])  # the network compiler's BN fold (a BN it cannot fold is refused below)
    layers: list[FloatPopulation] = []
    pending = None  # (FloatProjection, bias) waiting for its neuron
    flatten = False
    out_seen = False
    while True:
        users = graph.users(node.name)
        if not users:
            break
        if len(users) != 1:
            raise UnsupportedOpError(
                f"node {node.name!r} ({node.op}): read by {users}; netx holds only sequential "
                "chains (fan-out needs the manifest-based UNet export)"
            )
        node = graph[users[0]]
        op = node.op
        if op == "repeat" and not layers:  # before or after a hoisted static first synapse
            continue
        if op == "reshape":
            if pending is not None or len(node.shape) != 1:
                raise UnsupportedOpError(
                    f"node {node.name!r} (reshape): only a flatten between a neuron and a "
                    "linear layer is expressible in netx"
                )
            flatten = True
            continue
        if op in SYNAPSES:
            src = layers[-1].name if layers else ins[0].name
            pr, b, spread = float_projection(graph, node, src, tsm)
            if spread is not None:
                tsm_approx[node.name] = spread
            if op == "scaled_conv2d" and (pending is not None or flatten):
                raise UnsupportedOpError(f"node {node.name!r} ({op}): needs a neuron (not a synapse/flatten) before it")
            if pending is not None:
                raise UnsupportedOpError(f"node {node.name!r} ({op}): two synapses in a row without a neuron")
            if op == "linear" and len(graph[node.inputs[0]].type.shape) != 1:
                raise UnsupportedOpError(f"node {node.name!r} (linear): input must be flat (insert a reshape)")
            if op == "conv2d" and flatten:
                raise UnsupportedOpError(f"node {node.name!r} (conv2d): conv after a flatten")
            pending = (pr, b)
            flatten = False
            continue
        if op == "batchnorm":  # fold_bn folded every BN that follows a synapse
            raise UnsupportedOpError(f"node {node.name!r} (batchnorm): no conv/linear before it to fold into")
        if op == "if":
            if pending is None:
                raise UnsupportedOpError(f"node {node.name!r} (if): needs a conv/linear synapse before it")
            neuron_params(node)  # Loihi's CUBA: hard reset to 0, v_init 0, threshold > 0
            pr, b = pending
            layers.append(FloatPopulation(pr.node, tuple(node.type.shape), float(node.threshold), projs=[pr], bias=b))
            pending = None
            continue
        if op == "output":
            out_seen = True
            continue
        raise UnsupportedOpError(
            f"node {node.name!r} ({op}): not expressible in a sequential netx chain "
            "(supported: input, repeat, conv2d, linear, batchnorm, if, reshape before linear, output)"
        )
    if pending is not None:
        raise UnsupportedOpError(
            f"node {pending[0].node!r}: the chain ends in a synapse without a spiking neuron "
            "(keep non-spiking read-outs on the host)"
        )
    if not layers or not out_seen:
        raise UnsupportedOpError(
            f"netx export: graph from input {ins[0].name!r} has no conv/linear + IF layer ending in an output"
        )
    meta = {"T": graph.T}
    if tsm_approx:
        meta["tsm_approx"] = tsm_approx
    return FloatChain(tuple(in_t.shape), tuple(layers), graded_input=graded, meta=meta)


def float_reference(chain: FloatChain, x: np.ndarray) -> list[np.ndarray]:
    """Float64 golden semantics of the chain on ``x`` ``[T, B, *input_shape]``: every layer's spikes ``[T, B, ...]``
    (``I = W s + b``, ``v += I``, spike on ``v >= theta``, reset to 0)."""
    x = np.asarray(x, np.float64)
    out, s = [], x
    for L in chain.layers:
        (pr,) = L.projs
        w = pr.float_weight()
        T, B = s.shape[:2]
        flat = s.reshape((T * B,) + s.shape[2:])
        if pr.kind == "conv":
            cur = conv2d_f64(flat, w, pr.stride, pr.padding, pr.dilation, pr.groups)
        else:
            cur = flat.reshape(T * B, -1) @ w.T
        if L.bias is not None:
            cur = cur + np.asarray(L.bias, np.float64).reshape((-1,) + (1,) * (cur.ndim - 2))
        cur = cur.reshape((T, B) + cur.shape[1:])
        v = np.zeros(cur.shape[1:])
        spk = np.zeros_like(cur)
        for t in range(T):
            v = v + cur[t]
            spk[t] = v >= L.theta
            v = np.where(spk[t] > 0, 0.0, v)
        out.append(spk)
        s = spk
    return out


def evaluate(fchain: FloatChain, qchain: LoihiChain, report: QuantReport, x: np.ndarray) -> QuantReport:
    """Fill the report's spike statistics on inputs ``x`` ``[T, B, *input_shape]`` (float; spikes as 0/1).

    The float side sees the de-quantised input ``x_int / input_scale`` when graded, so mismatches measure
    the weight/threshold quantisation (input rounding is reported separately by the caller if needed).
    """
    x = np.asarray(x, np.float64)
    T, L = x.shape[0], len(qchain.layers)
    xq = quantize_input(qchain, x)
    ref = float_reference(fchain, xq / float(qchain.meta.get("input_scale", 1.0)) if qchain.input_bits else x)
    res = run_chain(qchain, xq, num_steps=T + L, reset_interval=T + L, reset_offset=1)
    fixed = aligned_spikes(res, T)
    for q, r, f, v in zip(report.layers, ref, fixed, res["v"]):
        q.record_spikes(r, f)
        q.max_abs_v = int(np.abs(v).max() >> ACT_SHIFT)
    return report


def write_netx(chain: LoihiChain, path: str | os.PathLike, *, meta: dict | None = None) -> None:
    """Write ``chain`` as one netx HDF5 file (atomically)."""
    import h5py

    check_chain(chain)
    for i, L in enumerate(chain.layers):
        if L.neuron.bias_exp != 6:
            raise SdmcError(
                f"write_netx: layer {i + 1} ({L.name or L.kind}) has bias_exp {L.neuron.bias_exp}; "
                "netx always uses 6 (scale the bias mantissa instead)"
            )
    shapes = chain.shapes()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:

            def put_type(g, name: str) -> None:
                g.create_dataset("type", (1,), "S10", [name.encode("ascii")])

            g = f.create_group("layer/0")
            put_type(g, "input")
            g.create_dataset("shape", data=np.asarray(shapes[0], np.int64))
            k = 1
            for i, L in enumerate(chain.layers):
                if L.kind == "dense" and len(shapes[i]) > 1:
                    fl = f.create_group(f"layer/{k}")
                    put_type(fl, "flatten")
                    fl.create_dataset("shape", data=np.asarray([int(np.prod(shapes[i]))], np.int64))
                    k += 1
                g = f.create_group(f"layer/{k}")
                k += 1
                put_type(g, L.kind)
                g.create_dataset("shape", data=np.asarray(shapes[i + 1], np.int64))
                g.create_dataset("weight", data=np.asarray(L.weight).astype(np.int8))  # 8-bit (check_chain);
                # netx reads it with astype(int): int8 keeps a full UNet's segment files 8x smaller than int64
                if L.bias is not None:
                    g.create_dataset("bias", data=np.asarray(L.bias, np.int64))
                if L.kind == "conv":
                    g.create_dataset("inChannels", data=np.int64(shapes[i][0]))
                    g.create_dataset("outChannels", data=np.int64(shapes[i + 1][0]))
                    g.create_dataset("kernelSize", data=np.asarray(L.weight.shape[2:4], np.int64))
                    g.create_dataset("stride", data=np.asarray(L.stride, np.int64))
                    g.create_dataset("padding", data=np.asarray(L.padding, np.int64))
                    g.create_dataset("dilation", data=np.asarray(L.dilation, np.int64))
                    g.create_dataset("groups", data=np.int64(L.groups))
                n = g.create_group("neuron")
                n.create_dataset("type", (1,), "S10", [b"CUBA"])
                n.create_dataset("iDecay", data=np.int64(L.neuron.du + 1))
                n.create_dataset("vDecay", data=np.int64(L.neuron.dv))
                n.create_dataset("vThMant", data=np.int64(L.neuron.vth))
                n.create_dataset("refDelay", data=np.int64(1))
                n.create_dataset("gradedSpike", data=np.int64(0))
            f.attrs["sdmc"] = json.dumps({"input_bits": chain.input_bits, **chain.meta, **(meta or {})})


def read_netx(path: str | os.PathLike) -> LoihiChain:
    """Read a netx file written by :func:`write_netx` (conv/dense CUBA chains) back into a LoihiChain.  Weights
    keep their stored integer type (int8 in sdmc's files); ``meta['netx_layers']`` lists each layer's index in
    the file (``layer/<k>``, flatten layers counted), layer ``name`` is ``layer<k>``."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise SdmcError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        if "layer" not in f:
            raise SdmcError(f"{path}: no 'layer' group; not a netx file")
        info = json.loads(f.attrs.get("sdmc", "{}"))
        grp = f["layer"]
        layers, index, in_shape = [], [], None
        for k in range(len(grp)):
            g = grp[str(k)]
            t = g["type"][0].decode("ascii") if g["type"].shape else g["type"][()].decode("ascii")
            if t == "input":
                in_shape = tuple(int(s) for s in g["shape"][()])
            elif t == "flatten":
                continue
            elif t in ("conv", "dense"):
                n = g["neuron"]
                neuron = Cuba(vth=int(n["vThMant"][()]), du=int(n["iDecay"][()]) - 1, dv=int(n["vDecay"][()]))
                kw = {}
                if t == "conv":
                    kw = {a: pair(np.asarray(g[a][()]).tolist(), f"{path}: layer {k} {a}") for a in _GEOMETRY}
                    kw["groups"] = int(g["groups"][()])
                w = g["weight"][()]
                layers.append(
                    LoihiLayer(
                        kind=t,
                        weight=w if w.dtype.kind in "iu" else w.astype(np.int64),
                        neuron=neuron,
                        bias=g["bias"][()].astype(np.int64) if "bias" in g else None,
                        name=f"layer{k}",
                        **kw,
                    )
                )
                index.append(k)
            else:
                raise SdmcError(f"{path}: layer {k} has type {t!r}; only input/flatten/conv/dense are read")
        if in_shape is None:
            raise SdmcError(f"{path}: no input layer")
        meta = {k: v for k, v in info.items() if k != "input_bits"}
        meta["netx_layers"] = index
        return LoihiChain(in_shape, tuple(layers), input_bits=int(info.get("input_bits", 0)), meta=meta)


def export_netx(
    graph: Graph,
    path: str | os.PathLike,
    *,
    pow2: bool = False,
    on_overflow: str = "error",
    input_scale: float | None = None,
    tsm: str = "reject",
) -> tuple[LoihiChain, QuantReport]:
    """IR chain -> quantised Loihi chain -> one netx HDF5 file at ``path``; returns the chain and its report
    (see :func:`extract_chain` for ``tsm`` and :func:`~.quantize.quantize_chain` for the rest)."""
    fchain = extract_chain(graph, tsm=tsm)
    qchain, report = quantize_chain(fchain, pow2=pow2, on_overflow=on_overflow, input_scale=input_scale)
    report.tsm_approx = dict(fchain.meta.get("tsm_approx", {}))
    write_netx(
        qchain,
        path,
        meta={
            "T": graph.T,
            "layers": [L.name for L in fchain.layers],
            **({"tsm_approx": report.tsm_approx} if report.tsm_approx else {}),
        },
    )
    return qchain, report
