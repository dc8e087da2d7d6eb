"""Run an sdmc ONNX export with onnxruntime, without torch on the path: :class:`OnnxModel`.

    >>> m = OnnxModel("model.onnx")
    >>> out = m.run({"x": x, "t": t})["out"]      # numpy in, numpy out; the step form loops over T itself
    >>> eps = m(x_tensor, t_tensor)                # the denoiser call sdmc's samplers make (torch tensors)

A file is validated before use: it must parse as ONNX, pass ``onnx.checker`` and carry sdmc's metadata
(``sdmc.format``); anything else is one :class:`~sdmc.errors.SdmcError` naming the file and the problem.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sdmc.errors import SdmcError, first_line

from .export import FORMAT, FORMS, init_states

MAX_BYTES = 2**31  # protobuf's limit for one message


def load_onnx(path) -> onnx.ModelProto:
    """Read and validate an sdmc ONNX export; every failure is one :class:`SdmcError` naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise SdmcError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0 or size >= MAX_BYTES:
        raise SdmcError(f"{path}: not an ONNX model ({size} bytes)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for foreign bytes
        raise SdmcError(f"{path}: not an ONNX model (cannot parse: {type(e).__name__}: {e})") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise SdmcError(f"{path}: its tensors live in external files; sdmc reads only self-contained models")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - checker errors name the offending node
        raise SdmcError(f"{path}: invalid ONNX model: {first_line(e)}") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("sdmc.format") != FORMAT:
        found = meta.get("sdmc.format")
        raise SdmcError(
            f"{path}: not an sdmc ONNX export (metadata sdmc.format is {found!r}, expected {FORMAT!r}); "
            "sdmc runs the ONNX files it wrote ('sdmc export MODEL --backend onnx')"
        )
    for key in ("sdmc.form", "sdmc.T", "sdmc.dtype", "sdmc.io", "sdmc.states"):
        if key not in meta:
            raise SdmcError(f"{path}: sdmc metadata {key!r} is missing")
    try:
        io, states, T = json.loads(meta["sdmc.io"]), json.loads(meta["sdmc.states"]), int(meta["sdmc.T"])
        ok = meta["sdmc.form"] in FORMS and T >= 1 and isinstance(io["inputs"], list) and isinstance(states, list)
    except (ValueError, KeyError, TypeError) as e:
        raise SdmcError(f"{path}: sdmc metadata is malformed ({type(e).__name__}: {e})") from None
    if not ok:
        raise SdmcError(f"{path}: sdmc metadata is malformed (form {meta['sdmc.form']!r}, T {meta['sdmc.T']!r})")
    return model


class OnnxModel:
    """An sdmc ONNX export on onnxruntime's CPU provider.

    ``run(inputs)`` returns every output by name in the IR's layout (static ``[B, ...]``, per-step
    ``[T, B, ...]``) for both forms; ``model(x, t)`` is the denoiser call of :func:`sdmc.diffusion.sample_images`.
    ``config`` / ``sdmc_config``: the model and full sdmc configuration recorded at export (or None).
    """

    def __init__(self, path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:  # a dev / optional dependency: sdmc itself only writes ONNX
            raise SdmcError(f"{path}: running ONNX needs onnxruntime ({e}); pip install onnxruntime") from None
        self.path = Path(path)
        model = load_onnx(self.path)
        self.meta = {p.key: p.value for p in model.metadata_props}
        self.form, self.T = self.meta["sdmc.form"], int(self.meta["sdmc.T"])
        io = json.loads(self.meta["sdmc.io"])
        self.inputs, self.outputs = io["inputs"], io["outputs"]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors are plain RuntimeErrors
            raise SdmcError(f"{self.path}: onnxruntime cannot load it: {first_line(e)}") from None
        self.sdmc_config = self.config = None
        if "sdmc.sdmc_config" in self.meta:
            from sdmc.config import SdmcConfig

            self.sdmc_config = SdmcConfig.from_json(self.meta["sdmc.sdmc_config"])
            self.config = self.sdmc_config.model
        elif "sdmc.model_config" in self.meta:
            from sdmc.config import ModelConfig
            from sdmc.validate import parse_json

            where = f"{self.path}: metadata sdmc.model_config"
            self.config = ModelConfig.from_dict(parse_json(self.meta["sdmc.model_config"], where))

    def _bind(self, inputs: Mapping[str, Any] | Sequence[Any]) -> tuple[dict[str, np.ndarray], int]:
        names = [i["name"] for i in self.inputs]
        if not isinstance(inputs, Mapping):
            inputs = list(inputs)
            if len(inputs) != len(names):
                raise SdmcError(f"{self.path}: expected {len(names)} input(s) {names}, got {len(inputs)}")
            inputs = dict(zip(names, inputs))
        unknown = sorted(set(inputs) - set(names))
        if unknown or len(inputs) != len(names):
            raise SdmcError(f"{self.path}: inputs {sorted(inputs)} do not match the model's {names}")
        feed, B = {}, None
        for spec in self.inputs:
            a = np.asarray(inputs[spec["name"]])
            lead = 2 if spec["timing"] == "per-step" else 1
            if (
                a.ndim != lead + len(spec["shape"])
                or list(a.shape[lead:]) != spec["shape"]
                or (lead == 2 and a.shape[0] != self.T)
            ):
                want = (["T"] if lead == 2 else []) + ["B"] + spec["shape"]
                raise SdmcError(f"{self.path}: input {spec['name']!r}: expected shape {want}, got {list(a.shape)}")
            b = a.shape[lead - 1]
            if B is not None and b != B:
                raise SdmcError(f"{self.path}: input {spec['name']!r}: batch {b} differs from the other inputs' {B}")
            B = b
            feed[spec["name"]] = a.astype(spec["dtype"])
        return feed, int(B)

    def run(self, inputs: Mapping[str, Any] | Sequence[Any]) -> dict[str, np.ndarray]:
        """Outputs by name for ``inputs`` (by input name, or in input order)."""
        feed, B = self._bind(inputs)
        names = [o["name"] for o in self.outputs]
        if self.form == "full":
            return dict(zip(names, self.session.run(names, feed)))
        states = init_states(self.meta, B)
        per_step = {s["name"] for s in self.inputs if s["timing"] == "per-step"}
        state_out = [k + ".next" for k in states]
        steps: list[list[np.ndarray]] = []
        for k in range(self.T):
            f = {n: (a[k] if n in per_step else a) for n, a in feed.items()}
            f.update(states, step=np.array(k, np.int64))
            res = self.session.run(names + state_out, f)
            steps.append(res[: len(names)])
            states = dict(zip(states, res[len(names) :]))
        return {
            o["name"]: (np.stack([s[i] for s in steps]) if o["timing"] == "per-step" else steps[-1][i])
            for i, o in enumerate(self.outputs)
        }

    def __call__(self, *args):
        """The denoiser call ``model(x, t)`` with torch tensors: returns the first output as a tensor like ``x``."""
        import torch

        ref = args[0]
        arrays = [a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a) for a in args]
        out = self.run(arrays)[self.outputs[0]["name"]]
        return torch.from_numpy(np.ascontiguousarray(out)).to(device=ref.device, dtype=ref.dtype)
