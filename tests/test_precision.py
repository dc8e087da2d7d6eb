"""Executor precisions: int8 == the golden simulator on the same quantised weights (spike for spike), the
8-bit per-channel quantiser, bf16 within stated bounds, and the device checks with their errors."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from strategies import random_inputs, spiking_graphs

from sdmc import ir
from sdmc.backends.torch import NeuronModule, compile_torch
from sdmc.backends.torch import kernels as K
from sdmc.backends.torch import precision as P
from sdmc.errors import ConfigError
from sdmc.sim import golden

FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
INT8 = pytest.mark.skipif(P.support("cpu")["int8"] is not None, reason="no oneDNN int8 convolution in this torch")


def _run(ex, ins):
    """Executor outputs (tuple) and every neuron's spikes ``[T, B, ...]`` by node name."""
    spikes, hooks = {}, []
    for name, m in ex.named_modules():
        if isinstance(m, NeuronModule):
            hook = lambda mod, a, out, name=name: spikes.__setitem__(name, K.steps(out, mod.T).float().numpy())  # noqa: E731
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = ex(*[torch.from_numpy(np.asarray(ins[n.name])) for n in ex.graph.input_nodes])
    finally:
        for h in hooks:
            h.remove()
    return (out if isinstance(out, tuple) else (out,)), spikes


def _margin(graph, vals) -> float:
    """Smallest distance of any neuron's charged potential to its threshold (float64, from golden values)."""
    m = np.inf
    for n in graph:
        if n.op not in ir.NEURON:
            continue
        x, s = vals[n.inputs[0]], vals[n.name]
        r = 0.0 if n.v_reset is None else float(n.v_reset)
        v = np.full(x.shape[1:], r if n.v_init is None else float(n.v_init))
        for t in range(x.shape[0]):
            if n.op == "if":
                h = v + x[t]
            elif n.decay_input:
                h = v + (x[t] - (v - r)) / n.tau
            else:
                h = v - (v - r) / n.tau + x[t]
            m = min(m, float(np.abs(h - n.threshold).min()))
            v = h - s[t] * n.threshold if n.v_reset is None else np.where(s[t] > 0, r, h)
    return m


# ------------------------------------------------------------------------------------------ quantiser
def test_quantize_weight_is_symmetric_8_bit_per_output_channel():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3, 3, 3)) * np.array([1e-3, 1, 10, 0, 0.2]).reshape(-1, 1, 1, 1)
    w_int, s = P.quantize_weight(w)
    assert w_int.dtype == np.int8 and np.abs(w_int).max() <= 127 and s.shape == (5,)
    assert np.abs(w_int[[0, 1, 2, 4]].reshape(4, -1)).max(1).tolist() == [127] * 4  # each channel uses its range
    assert s[3] == 1 and not w_int[3].any()  # a zero channel
    deq = w_int * s.reshape(-1, 1, 1, 1)
    assert np.all(np.abs(deq - w) <= s.reshape(-1, 1, 1, 1) / 2 * (1 + 1e-4))  # round to nearest (scale rounded)
    m, _ = np.frexp(s)
    assert np.array_equal(m * 2**P.SCALE_BITS, np.round(m * 2**P.SCALE_BITS))  # 16 significant bits
    assert np.array_equal(deq.astype(np.float32).astype(np.float64), deq)  # exact in float32


# ------------------------------------------------------------------------------------------ int8 == golden
@INT8
@FAST
@given(spiking_graphs(), st.integers(1, 3), st.integers(0, 1000))
def test_int8_executor_equals_golden_on_the_quantised_graph_float64(g, B, seed):
    """The int32 accumulators are exact, so at float64 the int8 executor is the golden simulator run on
    ``ex.graph`` (the quantised graph), spike for spike."""
    ex = compile_torch(g, mode="inference", dtype=torch.float64, precision="int8")
    q = ex.graph
    assert q.meta["precision"]["int8_convs"] == P.int8_convs(q)
    for name in P.int8_convs(q):
        w = q.params[q[name].weight]
        w_int, s = P.quantize_weight(w)
        assert np.array_equal(w_int * s.reshape(-1, 1, 1, 1), w)  # quantised weights: a fixed point
    ins = random_inputs(g, B, seed)
    vals = golden.run(q, ins, all_values=True)
    outs, spikes = _run(ex, ins)
    for name, s in spikes.items():
        np.testing.assert_array_equal(s, vals[name], err_msg=f"spikes of {name}")
    for o, n in zip(outs, q.output_nodes):
        np.testing.assert_allclose(o.numpy(), vals[n.name], rtol=1e-9, atol=1e-9, err_msg=n.name)


@INT8
@FAST
@given(spiking_graphs(dtype="float32"), st.integers(1, 3), st.integers(0, 1000))
def test_int8_executor_float32_fast_path_equals_golden_away_from_threshold(g, B, seed):
    """The oneDNN path (float32 activations) against golden on the quantised graph."""
    ex = compile_torch(g, mode="inference", dtype=torch.float32, precision="int8")
    ins = {k: v.astype(np.float32) for k, v in random_inputs(g, B, seed).items()}
    vals = golden.run(ex.graph, ins, all_values=True)
    assume(_margin(ex.graph, vals) > 1e-4)
    outs, spikes = _run(ex, ins)
    for name, s in spikes.items():
        np.testing.assert_array_equal(s, vals[name], err_msg=f"spikes of {name}")
    for o, n in zip(outs, ex.graph.output_nodes):
        np.testing.assert_allclose(o.numpy(), vals[n.name], rtol=1e-4, atol=1e-4, err_msg=n.name)


@INT8
def test_int8_conv_onednn_path_equals_the_exact_integer_path():
    """fp32 output of the oneDNN kernel == fl32(s * acc) + b with acc the exact int32 sums; groups, strides."""
    rng = np.random.default_rng(3)
    for groups, stride, pad in [(1, 1, 1), (2, 2, 1), (1, 1, 0)]:
        w = rng.normal(size=(6, 8 // groups, 3, 3))
        w_int, s = P.quantize_weight(w)
        conv = K.Int8Conv(torch.from_numpy(w_int), torch.from_numpy(s), (stride,) * 2, (pad,) * 2, (1, 1), groups)
        x = torch.from_numpy((rng.random((4, 8, 7, 7)) < 0.3).astype(np.float32))
        x = x.contiguous(memory_format=torch.channels_last)
        b = torch.from_numpy(rng.normal(size=6).astype(np.float32))
        fast = conv(x, b)
        exact = conv(x.double(), b.double())
        acc = torch.nn.functional.conv2d(x.double(), torch.from_numpy(w_int).double(), None, stride, pad, 1, groups)
        assert torch.equal(acc, acc.round()) and acc.abs().max() < 2**24
        ref = (acc.float() * torch.from_numpy(s).float().reshape(1, -1, 1, 1)) + b.reshape(1, -1, 1, 1)
        assert fast.dtype == torch.float32 and torch.equal(fast, ref)
        torch.testing.assert_close(exact.float(), fast, rtol=1e-6, atol=1e-6)
    import copy

    copy.deepcopy(conv)(x, b)  # the packed weight is rebuilt, not copied


# ------------------------------------------------------------------------------------------ bf16
@FAST
@given(spiking_graphs(dtype="float32"), st.integers(1, 2), st.integers(0, 1000))
def test_bf16_inference_within_stated_bounds(g, B, seed):
    """bf16 rounds weights and real activations (relative 2^-8): away from the threshold by more than the
    rounding of the currents, spikes equal fp32's; outputs are fp32 within a few bf16 ulps of the values."""
    ins = {k: v.astype(np.float32) for k, v in random_inputs(g, B, seed).items()}
    ref = compile_torch(g, mode="inference")
    vals = golden.run(ref.graph, ins, all_values=True)
    assume(_margin(ref.graph, vals) > 0.1)
    ex = compile_torch(g, mode="inference", precision="bf16")
    assert ex.precision.name == "bf16" and ex.precision.dtype == torch.bfloat16
    outs, spikes = _run(ex, ins)
    for name, s in spikes.items():
        np.testing.assert_array_equal(s, vals[name], err_msg=f"spikes of {name}")
    for o, n in zip(outs, ref.graph.output_nodes):
        assert o.dtype == torch.float32
        want = vals[n.name]
        np.testing.assert_allclose(o.numpy(), want, rtol=0.05, atol=0.05 * max(1.0, float(np.abs(want).max())))


def test_bf16_neuron_keeps_fp32_membranes():
    x = torch.full((4 * 2, 3), 0.1).bfloat16()  # 0.1 is 0.10009765625 in bf16; a bf16 membrane would stall
    s32 = K.multistep_neuron(x.float(), 4, "if", 0.3, 0.0)
    s16 = K.multistep_neuron(x, 4, "if", 0.3, 0.0)
    assert s16.dtype == torch.bfloat16 and torch.equal(s16.float(), s32)
    xt = torch.randn(3 * 2, 5, dtype=torch.bfloat16, requires_grad=True)
    K.multistep_neuron(xt, 3, "lif", 0.5, 0.0).sum().backward()
    assert xt.grad.dtype == torch.bfloat16 and torch.isfinite(xt.grad.float()).all()


# ------------------------------------------------------------------------------------------ choices and errors
def test_precision_choice_is_checked_and_said():
    with pytest.raises(ConfigError, match="precision 'fp8': unknown; choose one of fp32, bf16, int8"):
        P.choose("fp8", "inference")
    with pytest.raises(ConfigError, match="precision 'int8' is not supported here: int8 is for inference"):
        P.choose("int8", "train")
    with pytest.raises(ConfigError, match="int8 is a CPU inference path"):
        P.choose("int8", "inference", "cuda")
    assert P.choose(None, "train").name == "fp32" and P.choose("bf16", "train").autocast == torch.bfloat16
    with pytest.raises(ConfigError, match="precision= or autocast=, not both"):
        compile_torch(ir.Graph(1), precision="bf16", autocast=torch.bfloat16)
    sup = P.support("cpu")
    assert sup["fp32"] is None and set(sup) == set(P.PRECISIONS)
    note = P.choose("bf16", "inference").note
    assert ("emulated" in note) == (not P.cpu_has_native_bf16())


@INT8
def test_int8_executor_converts_each_spike_value_once_and_loads_from_file(tmp_path):
    rng = np.random.default_rng(0)
    g = ir.Graph(T=2)
    g.add(ir.Input(name="x", shape=(2, 4, 4)))
    g.add(ir.Repeat(name="rep", inputs=("x",)))
    for k, (src, cin) in {"c0": ("rep", 2), "c1": ("s0", 3), "c2": ("s0", 3)}.items():
        g.add_param(f"{k}.w", rng.normal(size=(3, cin, 3, 3)).astype(np.float32))
        g.add(ir.Conv2d(name=k, inputs=(src,), weight=f"{k}.w", padding=1))
        if k == "c0":
            g.add(ir.IF(name="s0", inputs=("c0",), threshold=0.5))
    g.add(ir.Add(name="sum", inputs=("c1", "c2")))
    g.add(ir.IF(name="s1", inputs=("sum",), threshold=0.5))
    g.add(ir.MembraneReadout(name="ro", inputs=("s1",)))
    g.add(ir.Output(name="out", inputs=("ro",)))
    ex = compile_torch(ir.check(g), mode="inference", precision="int8")
    assert P.int8_convs(ex.graph) == ["c1", "c2"]  # c0 reads the real-valued image: fp32
    assert ex.code.count("kernels_to_uint8(") == 1 and "int8" in ex.precision.note  # one conversion, two convs
    from sdmc.backends.torch import load_compiled, save_compiled

    path = save_compiled(tmp_path / "g.sdmc", g)
    ex2, _ = load_compiled(path, precision="int8")
    x = torch.randn(3, 2, 4, 4)
    with torch.no_grad():
        assert torch.equal(ex(x), ex2(x))
    with pytest.raises(ConfigError, match="int8 is for inference"):
        compile_torch(g, mode="train", precision="int8")


def test_prepare_refuses_a_precision_it_cannot_give():
    from sdmc.backends.torch import prepare
    from sdmc.config import ModelConfig
    from sdmc.models import build_model

    ann = build_model(ModelConfig(arch="ann", ch=32, ch_mult=(1,), num_res_blocks=1, img_ch=1, img_size=8, attn=()))
    assert prepare(ann, "inference", precision="fp32") is ann
    with pytest.raises(ConfigError, match="precision 'bf16': the model has no spiking neurons"):
        prepare(ann, "inference", precision="bf16")
    snn = build_model(ModelConfig(arch="sddpm", ch=16, ch_mult=(1,), num_res_blocks=1, img_ch=1, img_size=8))
    ex = prepare(snn, "train", precision="bf16")
    assert ex.precision.autocast == torch.bfloat16 and prepare(ex, "train", precision="bf16") is ex
    with pytest.raises(ConfigError, match="already compiled and runs in bf16"):
        prepare(ex, "train", precision="fp32")


def test_cli_precision_flags(tmp_path, capsys):
    from sdmc.checkpoint import save_model
    from sdmc.cli import main
    from sdmc.cli.base import PRECISIONS
    from sdmc.config import ModelConfig, SdmcConfig
    from sdmc.models import build_model

    assert PRECISIONS == P.PRECISIONS  # the CLI keeps its own copy (no torch import for --help)
    cfg = ModelConfig(arch="sddpm", ch=16, ch_mult=(1,), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8)
    src = save_model(tmp_path / "m.safetensors", build_model(cfg).eval(), SdmcConfig(model=cfg))
    common = [str(src), "-n", "2", "--steps", "2", "--batch-size", "2", "--no-progress"]
    want = "int8" if P.support("cpu")["int8"] is None else "bf16"
    assert main(["sample", *common, "--precision", want, "--out", str(tmp_path / "s")]) == 0
    assert f"precision: {want}:" in capsys.readouterr().err
    assert main(["sample", *common, "--eager", "--precision", want, "--out", str(tmp_path / "e")]) == 2
    assert "drop --eager" in capsys.readouterr().err
    for argv in (["sample", *common, "--precision", "fp8"], ["train", "--precision", "int8", "--steps", "1"]):
        assert main(argv) == 2  # argparse refuses, one line (train offers fp32 / bf16 only)
    err = capsys.readouterr().err
    assert "invalid choice: 'fp8'" in err and "invalid choice: 'int8'" in err


def test_bf16_membrane_readout_accumulates_in_fp32():
    """The readout sums T weighted steps: for a bf16 input it accumulates (and returns) fp32."""
    T = 4
    x = (torch.randn(T * 2, 3, generator=torch.Generator().manual_seed(0)) * 3).bfloat16()
    y = K.membrane_readout(x, T, 0.8)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, K.membrane_readout(x.float(), T, 0.8), rtol=0, atol=0)
