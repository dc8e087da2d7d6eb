# ruff: noqa: E402  (the imports below need the nir package, checked first)
"""NIR import: graphs built with the nir API (and exported by SpikingJelly, snnTorch and Norse) -> IR -> golden
simulator == a direct numpy simulation of the NIR semantics (sdmc.sim.nir); unsupported nodes refused by name;
hostile files get one error."""

import pytest

nir = pytest.importorskip("nir")  # a pyproject dependency; missing only from a venv made before it was added

import h5py
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdmc import ir
from sdmc.errors import SdmcError, UnsupportedOpError
from sdmc.frontends.nir import from_nir, read_nir
from sdmc.sim import golden
from sdmc.sim import nir as nirsim

DT = nirsim.DT


def full(shape, v):
    return np.full(shape, float(v))


def compare(ng: nir.NIRGraph, x: np.ndarray, T: int, dt: float = DT, **kw) -> ir.Graph:
    """Import ``ng``; golden on the IR == the interpreter on the NIR graph: every neuron's spikes, and each output
    (per step, or at the last step for a static IR output).  ``x``: ``[T, B, ...]``."""
    g = from_nir(ng, T=T, dt=dt, dtype="float64", **kw)
    (inp,) = [k for k, v in ng.nodes.items() if isinstance(v, nir.Input)]
    ref = nirsim.run(ng, {inp: x}, dt=dt, record=True)
    vals = golden.run(g, {g.input_nodes[0].name: x}, all_values=True)
    neurons = [n.name for n in g if n.op in ir.NEURON]
    assert neurons
    for k in neurons:  # IR neurons keep their NIR names
        np.testing.assert_array_equal(vals[k], ref[k], err_msg=f"spikes of {k}")
        assert 0 < vals[k].mean() < 1, f"{k} never or always fires: a weak test"
    for n in g.output_nodes:
        want = ref[n.name] if n.type.per_step else ref[n.name][-1]
        np.testing.assert_allclose(vals[n.name], want, rtol=1e-9, atol=1e-12, err_msg=n.name)
    return g


# ------------------------------------------------------------------------------------------ nir API graphs
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.integers(0, 10_000),
    st.sampled_from([1e-4, 1e-3]),
    st.sampled_from([2.0, 3.0, 5.0]),
    st.sampled_from([0.5, 1.0, 2.0]),
    st.sampled_from([0.0, 0.2]),
)
def test_dense_lif_if_li_graph(seed, dt, tau_steps, r, v_reset):
    rng = np.random.default_rng(seed)
    ng = nir.NIRGraph(
        nodes={
            "in": nir.Input(input_type=np.array([5])),
            "fc1": nir.Affine(weight=rng.normal(0, 1.0, (8, 5)), bias=rng.normal(0, 0.2, 8)),
            "lif": nir.LIF(
                tau=full(8, tau_steps * dt),
                r=full(8, r),
                v_leak=full(8, v_reset),
                v_threshold=full(8, 0.4),
                v_reset=full(8, v_reset),
            ),
            "fc2": nir.Linear(weight=rng.normal(0, 1.2, (6, 8))),
            "if": nir.IF(r=full(6, 1.0 / dt), v_threshold=full(6, 0.5), v_reset=full(6, v_reset)),
            "fc3": nir.Linear(weight=rng.normal(0, 1.0, (3, 6))),
            "li": nir.LI(tau=full(3, 4 * dt), r=full(3, 2.0), v_leak=full(3, 0.0)),
            "out": nir.Output(output_type=np.array([3])),
        },
        edges=[
            ("in", "fc1"),
            ("fc1", "lif"),
            ("lif", "fc2"),
            ("fc2", "if"),
            ("if", "fc3"),
            ("fc3", "li"),
            ("li", "out"),
        ],
    )
    g = compare(ng, rng.normal(0, 1.0, (6, 4, 5)), T=6, dt=dt)
    assert [n.op for n in g if n.op in ("lif", "if", "membrane_readout")] == ["lif", "if", "membrane_readout"]


def _conv_graph(rng) -> nir.NIRGraph:
    C, dt = 3, DT
    return nir.NIRGraph(
        nodes={
            "in": nir.Input(input_type=np.array([2, 8, 8])),
            "conv": nir.Conv2d(
                input_shape=(8, 8),
                weight=rng.normal(0, 0.8, (C, 2, 3, 3)),
                stride=1,
                padding="same",
                dilation=1,
                groups=1,
                bias=rng.normal(0, 0.1, C),
            ),
            "if1": nir.IF(r=full((C, 8, 8), 2.0 / dt), v_threshold=full((C, 8, 8), 0.6), v_reset=full((C, 8, 8), 0.1)),
            "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
            "gain": nir.Scale(scale=np.broadcast_to(np.array([0.5, 1.0, 2.0])[:, None, None], (C, 4, 4)).copy()),
            "avg": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
            "flat": nir.Flatten(input_type={"input": np.array([C, 2, 2])}, start_dim=0, end_dim=-1),
            "delay": nir.Delay(delay=full(C * 4, 0.0)),
            "fc": nir.Affine(weight=rng.normal(0, 1.0, (5, C * 4)), bias=rng.normal(0, 0.3, 5)),
            "cuba": nir.CubaLIF(
                tau_syn=full(5, dt),  # a synaptic current that does not persist: exactly a LIF
                tau_mem=full(5, 3 * dt),
                r=full(5, 1.5),
                v_leak=full(5, 0.0),
                v_threshold=full(5, 0.3),
                v_reset=full(5, 0.0),
                w_in=full(5, 2.0),
            ),
            "skip": nir.Linear(weight=rng.normal(0, 0.5, (5, C * 4))),
            "sum": nir.I(r=full(5, 1.0 / dt)),
            "out": nir.Output(output_type=np.array([5])),
            "spikes": nir.Output(output_type=np.array([5])),
        },
        edges=[
            ("in", "conv"),
            ("conv", "if1"),
            ("if1", "pool"),
            ("pool", "gain"),
            ("gain", "avg"),
            ("avg", "flat"),
            ("flat", "delay"),
            ("delay", "fc"),
            ("fc", "cuba"),
            ("flat", "skip"),
            ("cuba", "sum"),
            ("skip", "sum"),  # fan-in: the sum of both
            ("sum", "out"),
            ("cuba", "spikes"),
        ],
    )


@pytest.mark.parametrize("seed", range(3))
def test_conv_pool_cubalif_graph(seed):
    rng = np.random.default_rng(seed)
    g = compare(_conv_graph(rng), rng.normal(0, 1.0, (5, 3, 2, 8, 8)), T=5)
    ops = [n.op for n in g]
    assert ops.count("if") == 1 and ops.count("lif") == 1 and "membrane_readout" in ops and "add" in ops
    assert g["if1"].v_init == 0.0 and g["if1"].v_reset == 0.1  # NIR starts at 0, not at v_reset
    assert [(n.mode, n.count_include_pad) for n in g if n.op == "pool2d"] == [("sum", True), ("avg", True)]


@pytest.mark.parametrize("padding, op", [((1, 1), "pool2d"), ((2, 2), "conv2d")])
def test_padded_pools_import_as_pool2d_or_a_conv_of_ones(padding, op):
    """NIR pools pad with zeros and average over kh kw (count_include_pad); a padding wider than half the window,
    which pool2d refuses as torch does, comes in as the same window sums by a depthwise conv of ones."""
    rng = np.random.default_rng(3)
    C, H = 2, 6
    Ho = (H + 2 * padding[0] - 3) // 2 + 1
    ng = nir.NIRGraph(
        nodes={
            "in": nir.Input(input_type=np.array([C, H, H])),
            "avg": nir.AvgPool2d(kernel_size=np.array([3, 3]), stride=np.array([2, 2]), padding=np.array(padding)),
            "if1": nir.IF(
                r=full((C, Ho, Ho), 1 / DT), v_threshold=full((C, Ho, Ho), 0.3), v_reset=full((C, Ho, Ho), 0)
            ),
            "out": nir.Output(output_type=np.array([C, Ho, Ho])),
        },
        edges=[("in", "avg"), ("avg", "if1"), ("if1", "out")],
    )
    g = compare(ng, rng.normal(0, 1.0, (4, 3, C, H, H)), T=4)
    assert g[g["if1"].inputs[0]].op == op


def test_imported_graph_runs_in_the_torch_executor(tmp_path):
    from sdmc.backends.torch_exec import compile_torch

    rng = np.random.default_rng(5)
    path = tmp_path / "m.nir"
    nir.write(str(path), _conv_graph(rng))  # its input is named 'in', a Python keyword: the generated forward copes
    g = from_nir(path, T=4, dtype="float64")
    x = rng.normal(0, 1.0, (4, 2, 2, 8, 8))
    ref = golden.run(g, {"in": x})
    ex = compile_torch(g, mode="inference", dtype=torch.float64)
    with torch.no_grad():
        out = ex(torch.from_numpy(x))
    got = dict(zip([n.name for n in g.output_nodes], out if isinstance(out, tuple) else (out,)))
    for k, v in ref.items():
        np.testing.assert_allclose(got[k].numpy(), v, rtol=1e-9, atol=1e-9, err_msg=k)


def test_spikingjelly_export_imports_and_runs_like_spikingjelly():
    from spikingjelly.activation_based import functional, layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        layer.Conv2d(1, 4, 3, padding=1),
        neuron.IFNode(v_threshold=0.5),
        layer.Flatten(),
        layer.Linear(4 * 6 * 6, 7),
        neuron.LIFNode(tau=2.0, v_threshold=0.3),
    ).double()
    ng = export_to_nir(net, torch.zeros(1, 1, 6, 6, dtype=torch.float64))
    T, x = 5, torch.randn(5, 3, 1, 6, 6, dtype=torch.float64)
    functional.set_step_mode(net, "m")
    with torch.no_grad():
        ref = net(x).numpy()
    g = from_nir(ng, T=T, dtype="float64")
    out = golden.run(g, {g.input_nodes[0].name: x.numpy()})
    (name,) = out
    assert 0 < ref.mean() < 1
    np.testing.assert_array_equal(out[name], ref)


def _neurons_match_interpreter(ng: nir.NIRGraph, x: np.ndarray, T: int, dt: float) -> tuple[ir.Graph, dict]:
    """Import ``ng`` (a foreign export whose node names may start with a digit: the IR prefixes ``n_``); golden's
    spikes of every neuron == the interpreter's.  Returns the graph and golden's values."""
    g = from_nir(ng, T=T, dt=dt, dtype="float64")
    (inp,) = [k for k, v in ng.nodes.items() if isinstance(v, nir.Input)]
    ref = nirsim.run(ng, {inp: x}, dt=dt, record=True)
    vals = golden.run(g, {g.input_nodes[0].name: x}, all_values=True)
    neurons = [n.name for n in g if n.op in ir.NEURON]
    assert len(neurons) == 2
    for k in neurons:
        np.testing.assert_array_equal(vals[k], ref[k.removeprefix("n_")], err_msg=f"spikes of {k}")
        assert 0 < vals[k].mean() < 1, f"{k} never or always fires: a weak test"
    return g, vals


# snntorch's and norse's exporters call nirtorch's extract_nir_graph, which nirtorch 2 deprecates: their warning,
# not sdmc's (sdmc's NIR code does not import nirtorch)
_THEIR_DEPRECATION = pytest.mark.filterwarnings("ignore:nirtorch.extract_nir_graph:DeprecationWarning")


@_THEIR_DEPRECATION
def test_snntorch_export_imports_and_runs_like_snntorch():
    """snnTorch's own NIR export (Linear + Leaky, reset to zero) -> IR: golden == the NIR semantics == snnTorch."""
    snn = pytest.importorskip("snntorch")
    from snntorch import utils
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(0)

    def leaky(n, beta, th, **kw):  # per-neuron tensors: snnTorch 1.0 writes a scalar beta as a shapeless NIR LIF
        return snn.Leaky(beta=torch.full((n,), beta), threshold=torch.full((n,), th), reset_mechanism="zero", **kw)

    net = torch.nn.Sequential(
        torch.nn.Linear(12, 8),
        leaky(8, 0.8, 0.5, init_hidden=True),
        torch.nn.Linear(8, 5),
        leaky(5, 0.9, 0.4, init_hidden=True, output=True),
    )
    ng = export_to_nir(net, torch.zeros(12))
    T, x = 6, np.random.default_rng(0).normal(0, 1, (6, 3, 12))
    g, vals = _neurons_match_interpreter(ng, x, T, DT)
    assert [n.op for n in g if n.op in ir.NEURON] == ["lif", "lif"]
    utils.reset(net)
    with torch.no_grad():
        spikes = np.stack([net(torch.tensor(x[t], dtype=torch.float32))[0].numpy() for t in range(T)])
    np.testing.assert_array_equal(vals[[n.name for n in g if n.op == "lif"][-1]], spikes)


@_THEIR_DEPRECATION
def test_norse_export_imports_like_the_nir_semantics():
    """Norse's own NIR export (Linear + LIFBoxCell) -> IR: golden == the NIR semantics, spike for spike.  Norse 1.1
    writes ``tau = dt / tau_mem_inv`` (dt times the time constant), so at its own dt the import refuses the graph
    naming the node (dt/tau = 200), and read at dt**2 it runs like Norse."""
    nt = pytest.importorskip("norse.torch")
    from norse.torch.utils.export_nir import to_nir

    torch.manual_seed(0)
    p = nt.LIFBoxParameters(tau_mem_inv=torch.tensor(200.0), v_th=torch.tensor(0.3), v_leak=torch.tensor(0.0))
    net = nt.SequentialState(torch.nn.Linear(12, 8), nt.LIFBoxCell(p), torch.nn.Linear(8, 5), nt.LIFBoxCell(p))
    with torch.no_grad():
        net[2].weight.mul_(10.0)  # so that the second layer fires
    ng = to_nir(net, torch.zeros(12), dt=1e-3)
    with pytest.raises(UnsupportedOpError, match=r"node '1' \(LIF\): dt/tau = 199\.99"):
        from_nir(ng, T=8, dt=1e-3)
    x = np.random.default_rng(0).normal(0, 3, (8, 3, 12))
    g, vals = _neurons_match_interpreter(ng, x, 8, 1e-6)  # dt / tau = 1e-6 / (1e-3 / 200): Norse's own leak
    assert [n.op for n in g if n.op in ir.NEURON] == ["lif", "lif"]
    state, spikes = None, []
    with torch.no_grad():
        for t in range(8):
            z, state = net(torch.tensor(x[t], dtype=torch.float32), state)
            spikes.append(z.numpy())
    np.testing.assert_array_equal(vals[[n.name for n in g if n.op == "lif"][-1]], np.stack(spikes))


# ------------------------------------------------------------------------------------------ refusals
def _one(node, shape=(4,), extra=None) -> nir.NIRGraph:
    nodes = {"in": nir.Input(input_type=np.array(shape)), "n": node, "out": nir.Output(output_type=np.array(shape))}
    edges = [("in", "n"), ("n", "out")] + (extra or [])
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


@pytest.mark.parametrize(
    "node, why",
    [
        (nir.Threshold(threshold=full(4, 0.5)), "bare Heaviside"),
        (nir.CubaLI(tau_syn=full(4, 2e-4), tau_mem=full(4, 3e-4), r=full(4, 1), v_leak=full(4, 0)), "synaptic-filter"),
        (
            nir.CubaLIF(
                tau_syn=full(4, 3e-4), tau_mem=full(4, 3e-4), r=full(4, 1), v_leak=full(4, 0), v_threshold=full(4, 1)
            ),
            "synaptic current persists",
        ),
        (nir.IF(r=full(4, 1e4), v_threshold=np.array([1.0, 1.0, 2.0, 1.0])), "per-neuron v_threshold"),
        (
            nir.LIF(tau=full(4, 2e-4), r=full(4, 1), v_leak=full(4, 0.5), v_threshold=full(4, 1)),
            "leaks toward v_leak=0.5",
        ),
        (nir.LIF(tau=full(4, 5e-5), r=full(4, 1), v_leak=full(4, 0), v_threshold=full(4, 1)), "dt/tau = 2.0"),
        (nir.Delay(delay=full(4, 2e-4)), "delay of"),
    ],
)
def test_unsupported_nodes_are_refused_by_name(node, why):
    with pytest.raises(UnsupportedOpError, match=rf"node 'n' \({type(node).__name__}\): .*{why}"):
        from_nir(_one(node), T=3)


def test_conv1d_recurrence_and_stateful_readers_are_refused():
    conv1d = nir.Conv1d(
        input_shape=8, weight=np.ones((2, 2, 3)), stride=1, padding=1, dilation=1, groups=1, bias=np.zeros(2)
    )
    with pytest.raises(UnsupportedOpError, match=r"node 'n' \(Conv1d\): the IR has no 1-d convolution"):
        from_nir(_one(conv1d, (2, 8)), T=3)
    rec = _one(nir.IF(r=full(4, 1e4), v_threshold=full(4, 1.0)))
    rec.nodes["w"] = nir.Linear(weight=np.eye(4))
    rec.edges += [("n", "w"), ("w", "n")]
    with pytest.raises(UnsupportedOpError, match="closes a cycle: the IR has no recurrent connections"):
        from_nir(rec, T=3)
    li = _one(nir.LI(tau=full(4, 2e-4), r=full(4, 1), v_leak=full(4, 0)))
    li.nodes["s"] = nir.IF(r=full(4, 1e4), v_threshold=full(4, 1.0))
    li.edges = [("in", "n"), ("n", "s"), ("s", "out")]
    with pytest.raises(UnsupportedOpError, match=r"node 'n' \(LI\): its potential is read by stateful nodes"):
        from_nir(li, T=3)
    with pytest.raises(SdmcError, match="give the number of SNN steps T"):
        from_nir(_one(nir.Linear(weight=np.eye(4))))


def test_hostile_files_get_one_clear_error(tmp_path):
    good = tmp_path / "good.nir"
    nir.write(str(good), _conv_graph(np.random.default_rng(0)))
    data = good.read_bytes()
    (tmp_path / "garbage.nir").write_bytes(b"\x89HDF but not really" * 10)
    (tmp_path / "truncated.nir").write_bytes(data[: len(data) // 3])
    with h5py.File(tmp_path / "empty.nir", "w") as f:
        f.create_dataset("version", data="1.0")
    with h5py.File(tmp_path / "bogus.nir", "w") as f:
        n = f.create_group("node")
        n.create_dataset("type", data="NIRGraph")
        n.create_group("nodes").create_group("x").create_dataset("type", data="Bogus")
        n.create_dataset("edges", data=np.zeros((0, 2), "S1"))
    with h5py.File(tmp_path / "leaf.nir", "w") as f:
        f.create_group("node").create_dataset("type", data="Affine")
    with h5py.File(tmp_path / "huge.nir", "w") as f:  # a few kB on disk, 8 GiB once read
        n = f.create_group("node")
        n.create_dataset("type", data="NIRGraph")
        n.create_dataset("w", shape=(1 << 30,), dtype="f8", compression="gzip", chunks=(1 << 20,))
    cases = {
        "garbage.nir": "not a NIR file",
        "truncated.nir": "not a NIR file|not a valid NIR graph",
        "empty.nir": "no 'node' group",
        "bogus.nir": "not a valid NIR graph",
        "leaf.nir": "not a NIRGraph",
        "huge.nir": "declares 8.0 GiB of arrays",
        "missing.nir": "no such file",
    }
    for name, msg in cases.items():
        with pytest.raises(SdmcError, match=msg) as e:
            from_nir(tmp_path / name, T=2)
        assert str(tmp_path / name) in str(e.value)
    g = read_nir(good)
    g.metadata = {"sdmc": "{not json"}
    with pytest.raises(SdmcError, match="sdmc metadata is malformed"):
        from_nir(g, T=2)


# ------------------------------------------------------------------------------------------ the interpreter itself
def test_interpreter_runs_cubalif_like_spikingjelly_and_delays_by_whole_steps():
    """sdmc.sim.nir against independent implementations: SpikingJelly's CUBA-LIF (exported to NIR by
    SpikingJelly itself) and a delay line."""
    from spikingjelly.activation_based import functional, layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    torch.manual_seed(1)
    net = torch.nn.Sequential(
        layer.Linear(6, 5), neuron.CUBALIFNode(c_decay=0.5, v_decay=0.75, v_threshold=0.4)
    ).double()
    ng = export_to_nir(net, torch.zeros(1, 6, dtype=torch.float64))
    x = torch.randn(7, 3, 6, dtype=torch.float64)
    functional.set_step_mode(net, "m")
    with torch.no_grad():
        ref = net(x).numpy()
    (inp,) = [k for k, v in ng.nodes.items() if isinstance(v, nir.Input)]
    (out,) = [k for k, v in ng.nodes.items() if isinstance(v, nir.Output)]
    assert 0 < ref.mean() < 1
    np.testing.assert_array_equal(nirsim.run(ng, {inp: x.numpy()})[out], ref)
    with pytest.raises(UnsupportedOpError, match="synaptic current persists"):
        from_nir(ng, T=7)  # the IR has no synaptic filter: refused, not approximated

    delay = _one(nir.Delay(delay=np.array([0.0, 1.0, 2.0, 2.0]) * DT))
    xs = np.random.default_rng(0).normal(size=(5, 2, 4))
    y = nirsim.run(delay, {"in": xs})["out"]
    for j, d in enumerate([0, 1, 2, 2]):
        np.testing.assert_array_equal(y[d:, :, j], xs[: 5 - d, :, j])
        assert np.all(y[:d, :, j] == 0)
