"""ONNX backend: the IR lowered to a standard ONNX graph that stock onnxruntime runs.

    >>> from sdmc.backends import onnx as sdmc_onnx
    >>> sdmc_onnx.save_onnx(graph, "model.onnx")                 # full form: all T steps in one call
    >>> sdmc_onnx.save_onnx(graph, "step.onnx", form="step")     # one SNN step, membrane state as I/O
    >>> sdmc_onnx.OnnxModel("model.onnx").run({"x": x, "t": t})

Opset 17, no custom ops.  The full form keeps the folded ``[T*B, ...]`` layout, unrolls every neuron over T
with Add / GreaterOrEqual / Cast / Where / Mul, applies TSM as a per-step constant Mul, the membrane read-out
as a weighted sum over T, and computes static work (head conv, time embedding) once.  ``onnx.checker``
(``full_check=True``) passes before a file is written, atomically.  Modules: :mod:`.lower` (one lowering
per IR op), :mod:`.export` (graph I/O, forms, metadata), :mod:`.runtime` (validated loading, onnxruntime).
"""

from .export import FORMS, init_states, is_sdmc_onnx, prepare, save_onnx, to_onnx
from .lower import LOWER, OPSET
from .runtime import OnnxModel, load_onnx

__all__ = [
    "FORMS",
    "LOWER",
    "OPSET",
    "OnnxModel",
    "init_states",
    "is_sdmc_onnx",
    "load_onnx",
    "prepare",
    "save_onnx",
    "to_onnx",
]
