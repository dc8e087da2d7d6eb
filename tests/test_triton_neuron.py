"""The Triton multi-step neuron against the torch kernel, run on the CPU by Triton's interpreter
(``TRITON_INTERPRET=1``), and its ``torch.library`` registration (fake implementation, autograd)."""

import importlib
import importlib.util
import os
import zlib

import pytest
import torch

from sdmc.backends.torch import kernels as K

if importlib.util.find_spec("triton") is None:  # pragma: no cover - triton ships with the CUDA torch wheels
    pytest.skip("triton is not installed", allow_module_level=True)
tn = importlib.import_module("sdmc.backends.torch.triton_neuron")


def test_the_kernel_is_available_where_triton_imports():
    assert tn.available()


CASES = [
    ("if", True, 0.0),
    ("if", True, None),
    ("if", True, -0.3),
    ("lif", True, 0.0),
    ("lif", False, None),
    ("lif", True, -0.3),
    ("lif", False, -0.3),
]


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("kind,decay_input,v_reset", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_kernels_equal_the_torch_kernel(interpret, kind, decay_input, v_reset, dtype):
    T, shape = 4, (3, 5, 7)  # N = 105 neurons per step: a partial block
    g = torch.Generator().manual_seed(zlib.crc32(repr((kind, decay_input, v_reset)).encode()))
    x = (torch.randn((T * shape[0],) + shape[1:], generator=g) * 0.8 + 0.3).to(dtype)
    s_ref, h_ref = K.neuron_forward(x, T, kind, 0.7, v_reset, 2.0, decay_input, save_h=True)
    s, h = tn.triton_forward(x, T, kind, 0.7, v_reset, 2.0, decay_input, save_h=True)
    assert s.dtype == dtype and h.dtype == torch.float32
    assert torch.equal(s, s_ref) and 0 < s.float().mean() < 1  # spikes exactly those of the torch kernel
    torch.testing.assert_close(h, h_ref.float(), rtol=0, atol=0)
    gs = torch.randn(x.shape, generator=g).to(dtype)
    gx_ref = K._neuron_backward(gs, h_ref, T, kind, 0.7, v_reset, 2.0, decay_input, 2.0).to(dtype)
    gx = tn.triton_backward(gs, h, T, kind, 0.7, v_reset, 2.0, decay_input, 2.0)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(gx, gx_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("kind,decay_input,v_reset", [("if", True, 0.0), ("lif", False, -0.3)])
def test_more_neurons_than_one_block_and_another_surrogate_width(interpret, kind, decay_input, v_reset):
    """N = 1100 neurons per step: two programs, the second partial (the offsets of every program, the grid's
    rounding up); ``alpha = 4`` so the surrogate's height alpha/2 is not 1."""
    T, N = 3, 1100
    assert tn.BLOCK < N < 2 * tn.BLOCK
    g = torch.Generator().manual_seed(7)
    x = torch.randn(T * 2, N // 2, generator=g) * 0.8 + 0.3
    s_ref, h_ref = K.neuron_forward(x, T, kind, 0.7, v_reset, 2.0, decay_input, save_h=True)
    s, h = tn.triton_forward(x, T, kind, 0.7, v_reset, 2.0, decay_input, save_h=True)
    assert torch.equal(s, s_ref) and torch.equal(h, h_ref.float())
    assert s.reshape(T, N)[:, tn.BLOCK :].sum() > 0  # the second program's neurons fire too
    gs = torch.randn(x.shape, generator=g)
    gx_ref = K._neuron_backward(gs, h_ref, T, kind, 0.7, v_reset, 2.0, decay_input, 4.0)
    torch.testing.assert_close(tn.triton_backward(gs, h, T, kind, 0.7, v_reset, 2.0, decay_input, 4.0), gx_ref)


@pytest.mark.parametrize("v_reset", [0.0, None])
def test_a_membrane_exactly_at_threshold_fires_and_its_gradient_is_the_torch_kernels(interpret, v_reset):
    """Dyadic inputs summing exactly to the threshold (0.25 + 0.25 = 0.5): a tie fires (``h >= threshold``),
    and the backward's reset term counts ``h < threshold`` as the torch kernel does."""
    T = 4
    x = torch.tensor([[0.25, 0.5, 0.125]] * T)  # [T*B, n] with B = 1
    s_ref, h_ref = K.neuron_forward(x, T, "if", 0.5, v_reset, 2.0, True, save_h=True)
    s, h = tn.triton_forward(x, T, "if", 0.5, v_reset, 2.0, True, save_h=True)
    assert s[1, 0] == 1 and s[0, 1] == 1 and torch.equal(s, s_ref)
    assert (h == 0.5).any()
    gs = torch.ones_like(x)
    gx_ref = K._neuron_backward(gs, h_ref, T, "if", 0.5, v_reset, 2.0, True, 2.0)
    torch.testing.assert_close(tn.triton_backward(gs, h, T, "if", 0.5, v_reset, 2.0, True, 2.0), gx_ref)


def test_compiling_the_kernels_leaves_the_environment_as_it_was(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    tn._kernels.cache_clear()
    try:
        tn._kernels(True)
        assert "TRITON_INTERPRET" not in os.environ
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        tn._kernels.cache_clear()
        tn._kernels(True)
        assert os.environ["TRITON_INTERPRET"] == "0"
    finally:
        tn._kernels.cache_clear()


def test_triton_forward_without_saving_h_and_T1(interpret):
    x = torch.randn(6, 4)
    s, h = tn.triton_forward(x, 1, "if", 0.5, 0.0, 2.0, True, save_h=False)
    assert h is None and torch.equal(s, (x >= 0.5).float())


def test_custom_op_is_registered_with_fake_and_autograd(interpret):
    x = torch.randn(3 * 8, 6, requires_grad=True)
    args = (x, 3, "lif", 0.5, 0.0, 2.0, True, 2.0, True)
    torch.library.opcheck(tn.multistep_neuron, args, test_utils=("test_schema", "test_faketensor"))
    s = tn.neuron(x, 3, "lif", 0.5, 0.0)
    ref = K.multistep_neuron(x, 3, "lif", 0.5, 0.0)
    assert torch.equal(s, ref)
    (s * torch.arange(s.numel()).reshape(s.shape)).sum().backward()
    g1 = x.grad.clone()
    x.grad = None
    (ref * torch.arange(ref.numel()).reshape(ref.shape)).sum().backward()
    torch.testing.assert_close(g1, x.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by benchmarks/gpu_checks.sh)")
@pytest.mark.parametrize("kind,decay_input,v_reset", CASES)
def test_triton_kernels_on_gpu_equal_the_torch_kernel(kind, decay_input, v_reset):
    T = 8
    x = torch.randn(T * 16, 64, 8, 8, device="cuda") * 0.8 + 0.3
    s_ref, h_ref = K.neuron_forward(x, T, kind, 0.7, v_reset, 2.0, decay_input, save_h=True)
    s, h = tn.triton_forward(x, T, kind, 0.7, v_reset, 2.0, decay_input, save_h=True)
    assert torch.equal(s, s_ref)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=0)
    gs = torch.randn_like(x)
    gx_ref = K._neuron_backward(gs, h_ref, T, kind, 0.7, v_reset, 2.0, decay_input, 2.0)
    torch.testing.assert_close(tn.triton_backward(gs, h, T, kind, 0.7, v_reset, 2.0, decay_input, 2.0), gx_ref)
    compiled = torch.compile(lambda y: tn.neuron(y, T, kind, 0.7, v_reset, 2.0, decay_input), mode="reduce-overhead")
    assert torch.equal(compiled(x), s_ref) and torch.equal(compiled(x), s_ref)  # CUDA graph replay


def test_on_cpu_tensors_the_op_runs_triton_only_under_the_interpreter(monkeypatch):
    """On CPU tensors the op runs the torch kernel unless ``TRITON_INTERPRET=1`` asks for the interpreter."""
    calls = []
    real = tn.triton_forward
    monkeypatch.setattr(tn, "triton_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2 * 4, 6)
    for flag, want in (("0", 0), ("1", 1)):
        monkeypatch.setenv("TRITON_INTERPRET", flag)
        s, _ = tn.multistep_neuron(x, 2, "if", 0.5, 0.0, 2.0, True, 2.0, False)
        assert len(calls) == want and torch.equal(s, K.multistep_neuron(x, 2, "if", 0.5, 0.0))


def test_potentials_are_kept_only_for_a_backward_and_the_fake_agrees(interpret, monkeypatch):
    """``neuron`` saves ``h`` only when a gradient will be asked for (grad mode on and ``x`` requiring it);
    unsaved, the op returns an empty ``h``, and so does its fake (shape propagation under torch.compile)."""
    x = torch.randn(2 * 4, 6)
    s, h = tn.multistep_neuron(x, 2, "if", 0.5, 0.0, 2.0, True, 2.0, False)
    assert h.numel() == 0 and s.shape == x.shape
    torch.library.opcheck(
        tn.multistep_neuron, (x, 2, "if", 0.5, 0.0, 2.0, True, 2.0, False), test_utils=("test_faketensor",)
    )
    seen = []
    real = tn.multistep_neuron
    monkeypatch.setattr(tn, "multistep_neuron", lambda *a: seen.append(a[-1]) or real(*a))
    xg = x.clone().requires_grad_(True)
    tn.neuron(xg, 2, "if", 0.5, 0.0)
    tn.neuron(x, 2, "if", 0.5, 0.0)
    with torch.no_grad():
        tn.neuron(xg, 2, "if", 0.5, 0.0)
    assert seen == [True, False, False]
