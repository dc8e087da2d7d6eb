"""The executor's neuron module: one multi-step IF/LIF/PLIF node, stateless between calls, whose ``v_threshold``
is read at every call (threshold guidance sets it).  The kernels: :mod:`.kernels` (CPU, and the references),
:mod:`.triton_neuron` (the fused Triton kernel, on CUDA tensors)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from sdmc import ir
from sdmc.errors import SdmcError

from . import kernels as K


class NeuronModule(nn.Module):
    """One multi-step IF/LIF/PLIF node; stateless between calls.  ``v_threshold`` is read at every call."""

    is_spiking_neuron = True

    def __init__(self, node: ir.NeuronNode, T: int) -> None:
        super().__init__()
        self.kind, self.T = node.op, T
        self.v_threshold = float(node.threshold)
        self.v_reset = None if node.v_reset is None else float(node.v_reset)
        self.tau = float(getattr(node, "tau", 2.0))
        self.decay_input = bool(getattr(node, "decay_input", True))
        self.alpha = float(node.alpha)
        self.v_init = None if node.v_init is None else float(node.v_init)
        self.signed = bool(getattr(node, "signed", False))
        self.surrogate, self.detach_reset = node.surrogate, bool(node.detach_reset)
        if node.surrogate not in K.SURROGATES:
            raise SdmcError(
                f"torch backend: node {node.name!r}: surrogate {node.surrogate!r} is not supported "
                f"(supported: {', '.join(K.SURROGATES)})"
            )

    def forward(self, x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        fused = self.surrogate == "atan" and not self.detach_reset
        if self.kind == "plif" or self.v_init is not None or self.signed or not fused:
            return K.neuron_reference(
                x,
                self.T,
                self.kind,
                self.v_threshold,
                self.v_reset,
                self.tau,
                self.decay_input,
                self.alpha,
                w,
                self.v_init,
                self.signed,
                self.surrogate,
                self.detach_reset,
            )
        if x.is_cuda and _triton_neuron() is not None:  # the fused Triton kernel, a custom op (compile / CUDA graphs)
            return _triton_neuron().neuron(
                x, self.T, self.kind, self.v_threshold, self.v_reset, self.tau, self.decay_input, self.alpha
            )
        return K.multistep_neuron(
            x, self.T, self.kind, self.v_threshold, self.v_reset, self.tau, self.decay_input, self.alpha
        )

    def extra_repr(self) -> str:
        return f"{self.kind}, T={self.T}, v_threshold={self.v_threshold}, v_reset={self.v_reset}"


@functools.cache
def _triton_neuron():
    """:mod:`.triton_neuron` when Triton imports (GPU runs), else ``None``."""
    from . import triton_neuron

    return triton_neuron if triton_neuron.available() else None
