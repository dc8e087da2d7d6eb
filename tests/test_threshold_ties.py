"""Exact-threshold ties: a neuron whose charged potential lands exactly on θ fires (``s = [h >= θ]``), in
every implementation -- the golden simulator, the executor's fused kernel (forward, grad-free path and
surrogate backward), the plain-torch reference neuron, the compiled executor (both modes) and spikingjelly's
eager IF/LIF nodes.

Random float inputs almost never land on θ, so the ``>=`` of each implementation is pinned here with
dyadic inputs (multiples of 1/4) whose sums, differences and halvings are exact in float32 and float64.
Every case below reaches ``h == θ`` at least once and was computed by hand (comments: ``h`` per step).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from spikingjelly.activation_based import neuron as sj_neuron
from spikingjelly.activation_based import surrogate

from sdmc import ir
from sdmc.backends.torch import kernels as K
from sdmc.backends.torch_exec import compile_torch
from sdmc.sim import golden

# (id, kind, v_reset, threshold, tau, decay_input, x[t], spikes[t])
CASES = [
    # IF, hard reset to 0:  h = .5, 1 (fire, v=0), .25, 1 (fire), 1 (fire)
    ("if-hard", "if", 0.0, 1.0, 2.0, True, [0.5, 0.5, 0.25, 0.75, 1.0], [0, 1, 0, 1, 1]),
    # IF, hard reset to -0.5 (the kernel's masked-reset branch):  h = .5 (fire, v=-.5), 0, .5 (fire), 0
    ("if-hard-r", "if", -0.5, 0.5, 2.0, True, [1.0, 0.5, 0.5, 0.5], [1, 0, 1, 0]),
    # IF, soft reset:  h = .75, 1 (fire, v=0), .5, 1 (fire, v=0), 1 (fire)
    ("if-soft", "if", None, 1.0, 2.0, True, [0.75, 0.25, 0.5, 0.5, 1.0], [0, 1, 0, 1, 1]),
    # LIF tau=2, decay_input:  h = v + (x - v)/2 = 1 (fire, v=0), .5, .75, 1 (fire)
    ("lif-decay", "lif", 0.0, 1.0, 2.0, True, [2.0, 1.0, 1.0, 1.25], [1, 0, 0, 1]),
    # LIF tau=2, no decay_input:  h = v/2 + x = 1 (fire, v=0), .5, 1 (fire), .5
    ("lif-nodecay", "lif", 0.0, 1.0, 2.0, False, [1.0, 0.5, 0.75, 0.5], [1, 0, 1, 0]),
    # LIF tau=2, soft reset, reset point 0:  h = .5, 1 (fire, v=0), .5
    ("lif-soft", "lif", None, 1.0, 2.0, True, [1.0, 1.5, 1.0], [0, 1, 0]),
]
IDS = [c[0] for c in CASES]
SHAPE = (2, 3, 2, 2)  # B, C, H, W: every neuron sees the same input series


def _node(kind, v_reset, threshold, tau, decay_input, name="sn", inputs=("x",)):
    common = dict(name=name, inputs=inputs, threshold=threshold, v_reset=v_reset)
    return ir.IF(**common) if kind == "if" else ir.LIF(tau=tau, decay_input=decay_input, **common)


def _series(x, dtype=torch.float64, channels_last=False):
    """The input series broadcast to a folded ``[T*B, C, H, W]`` tensor (optionally channels-last)."""
    t = torch.tensor(x, dtype=dtype)[:, None, None, None, None].expand(len(x), *SHAPE)
    t = t.reshape(len(x) * SHAPE[0], *SHAPE[1:]).contiguous()
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _per_neuron(s, T):
    """Folded spikes ``[T*B, ...]`` -> the spike train of every neuron, ``[T, n_neurons]``."""
    return s.reshape(T, -1)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_golden_neuron_fires_on_ties(case):
    _, kind, v_reset, th, tau, di, x, want = case
    out = golden.neuron(np.array(x)[:, None], _node(kind, v_reset, th, tau, di))
    assert out[:, 0].tolist() == want


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_kernel_fires_on_ties(case, dtype, channels_last):
    _, kind, v_reset, th, tau, di, x, want = case
    T = len(x)
    xs = _series(x, dtype, channels_last)
    args = (T, kind, th, v_reset, tau, di)
    expect = torch.tensor(want, dtype=dtype)[:, None].expand(T, xs.numel() // T)
    s, H = K.neuron_forward(xs, *args, save_h=True)
    assert torch.equal(_per_neuron(s, T), expect)
    assert (H == th).any()  # the case really lands on the threshold
    assert torch.equal(_per_neuron(K.multistep_neuron(xs, *args), T), expect)  # grad-free path
    assert torch.equal(_per_neuron(K.multistep_neuron(xs.clone().requires_grad_(True), *args), T), expect)
    assert torch.equal(_per_neuron(K.neuron_reference(xs, *args), T), expect)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fused_backward_at_ties_equals_reference_autograd(case):
    """At a tie the neuron fired, so the hard reset's ``dv/dh`` has no ``(1 - s)`` part: the fused backward
    (``h < θ``) and autograd through the reference (``h (1 - s) + r s``) must agree there."""
    _, kind, v_reset, th, tau, di, x, _ = case
    T = len(x)
    xa = _series(x).requires_grad_(True)
    xb = _series(x).requires_grad_(True)
    gs = torch.linspace(-1.0, 2.0, xa.numel(), dtype=torch.float64).reshape(xa.shape)
    (K.multistep_neuron(xa, T, kind, th, v_reset, tau, di) * gs).sum().backward()
    (K.neuron_reference(xb, T, kind, th, v_reset, tau, di) * gs).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-12, atol=1e-12)


def test_reference_neuron_with_initial_membrane_fires_on_ties():
    """The converted-QANN neuron (``v_init = θ/2``, soft reset, signed): ``h = .5 + .5 = 1`` fires at once;
    then ``h = 0 + .25 = .25``, ``.25 - .25 = 0``, ``0 - .5 = -.5`` (inhibitory spike: one was sent, v=.5)."""
    x = [0.5, 0.25, -0.25, -0.5, 0.5]
    node = ir.IF(name="q", threshold=1.0, v_reset=None, v_init=0.5, signed=True)
    want = [1, 0, 0, -1, 1]  # the last: h = .5 + .5 = 1 again
    assert golden.neuron(np.array(x)[:, None], node)[:, 0].tolist() == want
    xs = torch.tensor(x, dtype=torch.float32)[:, None]
    got = K.neuron_reference(xs, len(x), "if", 1.0, None, v_init=0.5, signed=True)
    assert got[:, 0].tolist() == want


def _one_neuron_graph(case, dtype="float64"):
    _, kind, v_reset, th, tau, di, x, _ = case
    g = ir.Graph(len(x))
    g.add(ir.Input(name="x", shape=SHAPE[1:], dtype=dtype, timing=ir.PER_STEP))
    g.add(_node(kind, v_reset, th, tau, di))
    g.add(ir.Output(name="out", inputs=("sn",)))
    return ir.check(g)


def _sj(case):
    _, kind, v_reset, th, tau, di, _, _ = case
    common = dict(v_threshold=th, v_reset=v_reset, surrogate_function=surrogate.ATan(), step_mode="m")
    return sj_neuron.IFNode(**common) if kind == "if" else sj_neuron.LIFNode(tau=tau, decay_input=di, **common)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("mode", ["train", "inference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_executor_fires_on_ties_like_golden_and_spikingjelly(case, mode, dtype):
    x, want = case[6], case[7]
    T = len(x)
    g = _one_neuron_graph(case)
    xs = _series(x, dtype).reshape(T, *SHAPE)  # [T, B, C, H, W]
    ref = golden.run(g, [xs.double().numpy()])["out"]
    assert ref.reshape(T, -1)[:, 0].tolist() == want
    ex = compile_torch(g, mode=mode, dtype=dtype).eval()
    with torch.no_grad():
        got = ex(xs)
        sj = _sj(case).to(dtype)(xs)
    assert got.dtype == dtype and got.shape == xs.shape
    np.testing.assert_array_equal(got.double().numpy(), ref)
    np.testing.assert_array_equal(sj.double().numpy(), ref)
    if mode == "train":  # the differentiable path of the executor fires on ties too
        ex.train()
        got = ex(xs.clone().requires_grad_(True))
        np.testing.assert_array_equal(got.detach().double().numpy(), ref)


@pytest.mark.parametrize("guided", [False, True])
def test_threshold_guidance_ties_on_the_guided_threshold(guided):
    """Threshold guidance moves the compare, not the inputs: with θ' = 0.75 the tie is at 0.75."""
    from sdmc.diffusion.sampling import threshold_guidance

    case = ("if-hard", "if", 0.0, 1.0, 2.0, True, [0.5, 0.25, 0.75, 0.25], None)
    ex = compile_torch(_one_neuron_graph(case), mode="inference", dtype=torch.float64).eval()
    xs = _series(case[6]).reshape(4, *SHAPE)
    with torch.no_grad(), threshold_guidance(ex, 0.75 if guided else None):
        got = ex(xs).reshape(4, -1)[:, 0].tolist()
    # theta 1: h = .5, .75, 1.5 (fire), .25;   theta .75: h = .5, .75 (fire), .75 (fire), .25
    assert got == ([0, 1, 1, 0] if guided else [0, 0, 1, 0])
