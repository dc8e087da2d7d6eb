"""The torch backend's API under its older name (``sdmc.backends.torch_exec``); the code is in
:mod:`sdmc.backends.torch` (executor, lowering table, kernels)."""

from .torch import (  # noqa: F401
    MODES,
    NeuronModule,
    TorchExecutor,
    compile_torch,
    hoist_affine,
    load_compiled,
    prepare,
    save_compiled,
)
