"""The ops the frontend brought to the IR (pooling; sequence inputs; every neuron flavour) across the IR, the
golden simulator and the passes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import POOL_CHOICES, random_inputs, sequence_graphs

from sdmc import ir, passes
from sdmc.sim import golden

FAST = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))


def _torch_pool(x, mode, k, s, p, cip):
    if mode == "max":
        return F.max_pool2d(x, k, s, p)
    return F.avg_pool2d(x, k, s, p, count_include_pad=cip, divisor_override=1 if mode == "sum" else None)


@FAST
@given(st.sampled_from(POOL_CHOICES), st.integers(1, 3), st.integers(4, 9), st.integers(0, 100), st.booleans())
def test_pool2d_golden_equals_torch(choice, C, H, seed, per_step):
    mode, k, s, p, cip = choice
    g = ir.Graph(T=3)
    g.add(ir.Input(name="x", shape=(C, H, H + 1), dtype="float64", timing=ir.PER_STEP if per_step else ir.STATIC))
    g.add(ir.Pool2d(name="pool", inputs=("x",), mode=mode, kernel=k, stride=s, padding=p, count_include_pad=cip))
    g.add(ir.Output(name="out", inputs=("pool",)))
    ir.check(g)
    x = np.random.default_rng(seed).normal(size=((3, 2) if per_step else (2,)) + (C, H, H + 1))
    ref = _torch_pool(torch.from_numpy(x.reshape((-1, C, H, H + 1))), mode, k, s, p, cip).numpy()
    out = golden.run(g, [x])["out"]
    assert out.shape == ((3, 2) if per_step else (2,)) + g["pool"].type.shape
    np.testing.assert_allclose(out.reshape(ref.shape), ref, rtol=0, atol=1e-12)


def test_pool2d_types_and_refusals():
    g = ir.Graph(T=2)
    g.add(ir.Input(name="x", shape=(2, 5, 5), timing=ir.PER_STEP))
    g.add(ir.IF(name="s", inputs=("x",)))
    for mode in ("max", "avg", "sum"):
        g.add(ir.Pool2d(name=mode, inputs=("s",), mode=mode, kernel=3, stride=2, padding=1))
    g.add(ir.Output(name="out", inputs=("max",)))
    ir.check(g)
    assert g["max"].type == ir.ValueType((2, 3, 3), "float32", ir.SPIKE, ir.PER_STEP)
    assert g["sum"].type.kind == g["avg"].type.kind == ir.GRADED and g["max"].kernel == (3, 3)
    bad = [
        (dict(mode="min"), "mode 'min' is not one of"),
        (dict(kernel=2, padding=2), r"padding \(2, 2\) must be at most half the kernel"),
        (dict(kernel=7, padding=0), "shape mismatch: kernel 7x7 does not fit input 5x5"),
        (dict(stride=0), r"kernel \(2, 2\) and stride \(0, 0\) must be >= 1"),
    ]
    for kw, msg in bad:
        h = g.copy()
        h.replace("max", ir.Pool2d(name="max", inputs=("s",), **kw))
        with pytest.raises(ir.IRError, match=f"node 'max' \\(pool2d\\): {msg}"):
            ir.check(h)


@FAST
@given(sequence_graphs(), st.integers(0, 1000))
def test_sequence_graphs_round_trip_and_survive_the_inference_passes(tmp_path_factory, g, seed):
    assert g.input_nodes[0].type.timing == ir.PER_STEP
    h = ir.load(ir.save(g, tmp_path_factory.mktemp("seq") / "g.sdmc"))
    assert h == g and ir.parse(ir.format_graph(g), g.params) == g
    ins = random_inputs(g, 2, seed)
    ref = golden.run(g, ins)["out"]
    opt = passes.run(g, "inference")
    np.testing.assert_allclose(golden.run(opt, ins)["out"], ref, rtol=1e-9, atol=1e-9)


@FAST
@given(sequence_graphs(), st.integers(1, 3), st.sampled_from(["train", "inference"]), st.integers(0, 1000))
def test_sequence_graphs_torch_executor_equals_golden(g, B, mode, seed):
    from sdmc.backends.torch import compile_torch

    ins = random_inputs(g, B, seed)
    ref = golden.run(g, ins)["out"]
    ex = compile_torch(g, mode=mode, dtype=torch.float64).eval()
    with torch.no_grad():
        out = ex(*[torch.from_numpy(ins[n.name]) for n in g.input_nodes])
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-9, atol=1e-9)
