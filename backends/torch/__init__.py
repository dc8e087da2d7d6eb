"""The torch backend: an IR graph (or a traced model) compiled into an ``nn.Module`` that trains and samples.

    >>> from sdmc.backends.torch import compile_torch
    >>> ex = compile_torch(model, mode="train")

Modules, one concept each: :mod:`.executor` (the generated module, ``compile_torch``, ``prepare``, ``.sdmc``
files), :mod:`.lowering` (the IR op -> kernel call table), :mod:`.kernels` (the tensor kernels: fused
multi-step neuron, per-op functions).  ``sdmc.backends.torch_exec`` is the older name of this package's API.
"""

from sdmc.passes import hoist_affine

from .executor import MODES, NeuronModule, TorchExecutor, compile_torch, load_compiled, prepare, save_compiled

__all__ = [
    "MODES",
    "NeuronModule",
    "TorchExecutor",
    "compile_torch",
    "hoist_affine",
    "load_compiled",
    "prepare",
    "save_compiled",
]
