"""Build, check and write the ONNX model of an IR graph (the lowering of each op is in :mod:`.lower`).

Graph inputs are the IR inputs with a symbolic batch ``batch``: a static input ``[batch, *shape]`` (the noisy
image ``x``, the diffusion step ``t`` as int64 ``[batch]``), a per-step input ``[T, batch, *shape]`` (full form)
or ``[batch, *shape]`` (step form).  Outputs are the IR outputs, static ``[batch, *shape]`` or per-step
``[T, batch, *shape]`` (full form; ``[batch, *shape]`` for the current step in the step form).

The step form adds the int64 scalar input ``step`` (0..T-1) and one input ``state.<node>.<var>`` / output
``state.<node>.<var>.next`` per state tensor (membrane potentials, signed-spike counts, read-out accumulators,
running-GroupNorm totals), each ``[batch, *shape]`` and filled with its ``init`` before step 0.  The model's
``metadata_props`` describe all of it (``sdmc.states``), so :class:`~sdmc.backends.onnx.OnnxModel` drives the
loop.  After step ``T-1`` the static outputs equal the full form's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from sdmc import ir, passes
from sdmc.errors import SdmcError, first_line
from sdmc.utils import check_file_replaceable, replace_file

from .lower import ONNX_DTYPES, OPSET, Lowering, lower_node

FORMS = ("full", "step")
FORMAT = "sdmc-onnx/1"
FLOAT_DTYPES = ("float32", "float64")


def _compute_dtype(dtype: str) -> str:
    if dtype not in FLOAT_DTYPES:
        raise SdmcError(f"ONNX export: dtype {dtype!r} is not supported; choose one of {FLOAT_DTYPES}")
    return dtype


def _value_info(name: str, dtype: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, ONNX_DTYPES[dtype], shape)


def prepare(graph: ir.Graph, pipeline: str | list[str] | None = "inference") -> ir.Graph:
    """The graph the exporter lowers: ``graph`` checked and run through ``pipeline`` (default ``inference``:
    BN folded, TSM fused, static work hoisted out of the time loop, dead code removed; None = as is)."""
    ir.check(graph)
    if pipeline is None or pipeline == "none":
        return graph
    return passes.run(graph, pipeline)


def to_onnx(
    graph: ir.Graph,
    form: str = "full",
    pipeline: str | list[str] | None = "inference",
    dtype: str = "float32",
    expose: tuple[str, ...] = (),
) -> onnx.ModelProto:
    """Lower ``graph`` to a checked ONNX model (opset :data:`OPSET`, standard ops only).

    ``form``: ``full`` (all T steps in one call, T folded into the batch) or ``step`` (one SNN step, state as
    explicit inputs/outputs).  ``pipeline``: passes run first (see :func:`prepare`).  ``dtype``: the float
    compute dtype, ``float32`` (default) or ``float64`` (onnxruntime's CPU provider has no float64 Conv).  ``expose``: names of further IR values to
    output (e.g. neurons' spikes, for tests), laid out like outputs.
    """
    if form not in FORMS:
        raise SdmcError(f"ONNX export: unknown form {form!r}; choose one of {FORMS}")
    g = prepare(graph, pipeline)
    unknown = [k for k in expose if k not in g.nodes]
    if unknown:
        raise SdmcError(f"ONNX export: expose names unknown node(s) {unknown} (after the {pipeline!r} passes)")
    c = Lowering(g, form, _compute_dtype(dtype))
    T = g.T
    inputs, outputs, io_meta = [], [], {"inputs": [], "outputs": []}
    for n in g.input_nodes:
        t = n.type
        dt = c.dtype if t.dtype in ir.graph.FLOAT_DTYPES else t.dtype
        if dt not in ONNX_DTYPES:
            raise SdmcError(f"ONNX export: input {n.name!r} has dtype {t.dtype}, which has no ONNX mapping here")
        lead = [T, "batch"] if t.per_step and c.full else ["batch"]
        inputs.append(_value_info(n.name, dt, lead + list(t.shape)))
        c.values[n.name] = c.fold(n.name, t.shape, n.name) if t.per_step and c.full else n.name
        io_meta["inputs"].append({"name": n.name, "shape": list(t.shape), "dtype": dt, "timing": t.timing})
    if not c.full:
        inputs.append(_value_info("step", "int64", []))
        c.step()
    for n in g.order():
        if n.op in ("input", "output"):
            continue
        c.values[n.name] = lower_node(c, n)

    def emit(name: str, src: str) -> None:
        t = g.nodes[src].type
        dt = c.dtype if t.dtype in ir.graph.FLOAT_DTYPES else t.dtype
        v = c.values[src]
        if t.per_step and c.full:
            v = c.by_step(v, t.shape, name)
        c.nodes.append(helper.make_node("Identity", [v], [name], name=name))
        lead = [T, "batch"] if t.per_step and c.full else ["batch"]
        outputs.append(_value_info(name, dt, lead + list(t.shape)))
        io_meta["outputs"].append({"name": name, "shape": list(t.shape), "dtype": dt, "timing": t.timing})

    for n in g.output_nodes:
        emit(n.name, n.inputs[0])
    for k in expose:
        emit(k, k)
    for s in c.states:
        inputs.append(_value_info(s.name, c.dtype, ["batch", *s.shape]))
        outputs.append(_value_info(s.name + ".next", c.dtype, ["batch", *s.shape]))
    used = {i for node in c.nodes for i in node.input}
    onnx_graph = helper.make_graph(c.nodes, "sdmc", inputs, outputs, [t for t in c.inits if t.name in used])
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sdmc")
    meta = {
        "sdmc.format": FORMAT,
        "sdmc.form": form,
        "sdmc.T": str(T),
        "sdmc.dtype": c.dtype,
        "sdmc.io": json.dumps(io_meta),
        "sdmc.states": json.dumps([{"name": s.name, "shape": list(s.shape), "init": s.init} for s in c.states]),
        "sdmc.passes": json.dumps([e["pass"] for e in g.meta.get("passes", [])]),
    }
    for key in ("sdmc_config", "model_config"):
        if key in g.meta:
            meta[f"sdmc.{key}"] = json.dumps(g.meta[key])
    helper.set_model_props(model, meta)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - ValidationError and shape-inference errors: a lowering bug, said plainly
        raise SdmcError(f"ONNX export: the lowered model fails onnx.checker: {first_line(e)}") from e
    return model


def is_sdmc_onnx(path) -> bool:
    """Whether file ``path`` is an ONNX model sdmc wrote: producer ``sdmc``, the second field of the serialised
    ``ModelProto`` (after the ``ir_version`` varint), so the first bytes tell."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return False
    return head[:1] == b"\x08" and b"\x12\x04sdmc" in head


def save_onnx(graph: ir.Graph, path, *, force: bool = False, protect=(), **kwargs) -> Path:
    """Export ``graph`` (see :func:`to_onnx`) and write it to ``path`` atomically (checked before writing).

    An existing ``path`` is replaced only if sdmc wrote it (:func:`is_sdmc_onnx`) or ``force``; never when it
    is one of ``protect`` (the run's inputs): see :func:`sdmc.utils.replace_file`."""
    path = Path(path)
    check_file_replaceable(path, is_sdmc_onnx, force=force, protect=protect)  # before the work
    model = to_onnx(graph, **kwargs)
    data = model.SerializeToString()
    if len(data) >= 2**31:
        raise SdmcError(f"{path}: the model is {len(data) / 2**30:.1f} GiB, over protobuf's 2 GiB limit")
    with replace_file(path, is_sdmc_onnx, force=force, protect=protect) as tmp:
        tmp.write_bytes(data)
    return path


def init_states(model_or_meta, batch: int) -> dict[str, np.ndarray]:
    """The step form's initial state tensors ``{name: [batch, *shape] filled with init}`` (float32/64 as the model)."""
    meta = model_or_meta if isinstance(model_or_meta, dict) else {p.key: p.value for p in model_or_meta.metadata_props}
    dt = meta["sdmc.dtype"]
    return {s["name"]: np.full((batch, *s["shape"]), s["init"], dtype=dt) for s in json.loads(meta["sdmc.states"])}
