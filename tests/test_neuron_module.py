"""Which kernel the executor's neuron module (:class:`sdmc.backends.torch.neuron.NeuronModule`) runs: the fused
ATan kernel only where it computes the node's own gradient, the step-by-step reference otherwise, and never
Triton for CPU tensors.  (Kernel values against the golden simulator: ``test_torch_exec.py``.)"""

from __future__ import annotations

import pytest
import torch

from sdmc import ir
from sdmc.backends.torch import kernels as K
from sdmc.backends.torch.neuron import NeuronModule

T = 4


def _x(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T * 3, 2, 5, generator=g, dtype=torch.float64) * 0.8 + 0.4).requires_grad_(True)


def _grad(fn, x):
    (gx,) = torch.autograd.grad((fn(x) * torch.linspace(-1, 1, x[0].numel(), dtype=x.dtype).view(x[0].shape)).sum(), x)
    return gx


@pytest.mark.parametrize(
    "node",
    [
        ir.IF(name="sn", inputs=("x",), threshold=0.7, v_reset=0.0, surrogate="sigmoid"),
        ir.IF(name="sn", inputs=("x",), threshold=0.7, v_reset=0.0, detach_reset=True),
        ir.LIF(name="sn", inputs=("x",), threshold=0.7, v_reset=None, tau=2.0, surrogate="sigmoid", alpha=4.0),
        ir.LIF(name="sn", inputs=("x",), threshold=0.7, v_reset=0.0, tau=3.0, detach_reset=True),
    ],
    ids=["if-sigmoid", "if-detach", "lif-sigmoid", "lif-detach"],
)
def test_a_node_the_fused_kernel_cannot_differentiate_gets_the_reference_gradient(node):
    """The fused kernel's backward is ATan through the reset; a Sigmoid surrogate or a detached reset must take
    the reference, whose gradient differs (checked here, so the comparison can fail)."""
    mod, x = NeuronModule(node, T), _x()
    tau, di = getattr(node, "tau", 2.0), getattr(node, "decay_input", True)
    ref = _grad(
        lambda v: K.neuron_reference(
            v, T, node.op, 0.7, node.v_reset, tau, di, node.alpha, surrogate=node.surrogate,
            detach_reset=node.detach_reset,
        ),
        x,
    )  # fmt: skip
    fused = _grad(lambda v: K.multistep_neuron(v, T, node.op, 0.7, node.v_reset, tau, di, node.alpha), x)
    assert not torch.allclose(fused, ref)
    torch.testing.assert_close(_grad(mod, x), ref)
    assert torch.equal(mod(x), K.multistep_neuron(x, T, node.op, 0.7, node.v_reset, tau, di, node.alpha))


def test_cpu_tensors_never_go_to_triton(monkeypatch):
    """Triton runs CUDA tensors; on the CPU (even with ``TRITON_INTERPRET=1``, the slow interpreter) the torch
    kernel runs."""
    tn = pytest.importorskip("sdmc.backends.torch.triton_neuron")
    if not tn.available():  # pragma: no cover - triton ships with the CUDA torch wheels
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("the Triton neuron was called with CPU tensors")

    monkeypatch.setattr(tn, "neuron", refuse)
    mod = NeuronModule(ir.IF(name="sn", inputs=("x",), threshold=0.7, v_reset=0.0), T)
    x = _x(1)
    assert torch.equal(mod(x), K.multistep_neuron(x, T, "if", 0.7, 0.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by benchmarks/gpu_checks.sh)")
def test_cuda_tensors_go_to_triton(monkeypatch):
    """The other half of the dispatch: on a GPU with Triton the fused Triton kernel runs (same spikes)."""
    tn = pytest.importorskip("sdmc.backends.torch.triton_neuron")
    if not tn.available():
        pytest.skip("triton is not installed")
    calls = []
    real = tn.neuron
    monkeypatch.setattr(tn, "neuron", lambda *a, **k: calls.append(1) or real(*a, **k))
    mod = NeuronModule(ir.IF(name="sn", inputs=("x",), threshold=0.7, v_reset=0.0), T)
    x = _x(2).detach().float().cuda()
    assert torch.equal(mod(x), K.multistep_neuron(x, T, "if", 0.7, 0.0)) and calls == [1]
