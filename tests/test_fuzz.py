"""Fuzz: every command on mutants of real tiny files exits 0 or 2 with one line, within a memory budget.

Each example mutates one part of a file the corpus (:mod:`crafted`) wrote at test time — a field of the config
JSON in a model's header, a tensor entry, raw bytes, an attribute of a graph node, an ``.npz`` header, a
training checkpoint — and runs one command on it in a forked child whose address space may grow by
``BUDGET`` only (``RLIMIT_AS``).  Asserted for every mutant:

* the exit status is 0 (the mutant was harmless) or 2 (refused), never a traceback, a crash or the budget;
* a refusal is one ``sdmc CMD: error: ...`` line;
* nothing is written outside the command's output, and the files that were there (the inputs, a file beside
  the output) are byte-for-byte what they were.

The default run takes the cheap commands and a few dozen examples; ``-m slow`` runs every command on many more.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
from pathlib import Path

import pytest
from crafted import (
    HOSTILE,
    TRAIN_ARGS,
    Corpus,
    GiB,
    mutate_config,
    mutate_graph,
    mutate_tensor_entry,
    nonfinite_tensor,
    npz_with_shape,
    raw_mutation,
    read_graph_zip,
    run_cli,
    snapshot,
    write_graph_zip,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdmc.config import DiffusionConfig, ModelConfig

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the fuzz runner forks")

BUDGET = 2 * GiB  # what one command on a tiny file may add to the parent's address space
FAST = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

CONFIG_KEYS = (
    [("model", f.name) for f in dataclasses.fields(ModelConfig)]
    + [("diffusion", f.name) for f in dataclasses.fields(DiffusionConfig)]
    + [("", k) for k in ("model", "diffusion", "provenance", "version")]
    + [("model", "bogus")]
)
DTYPES = ("F16", "F64", "I64", "BOOL", "U8", "XX", "")

# command -> argv builder (input file, output directory that does not exist yet)
MODEL_COMMANDS = {
    "info": lambda f, o: ["info", f],
    "sample": lambda f, o: ["sample", f, "-n", "2", "--steps", "2", "--batch-size", "2", "--out", o, "--no-progress"],
    "compile": lambda f, o: ["compile", f, "-o", f"{o}/g.sdmc"],
    "inherit-tsm": lambda f, o: ["inherit-tsm", f, "-o", f"{o}/x.safetensors"],
}
SLOW_MODEL_COMMANDS = {
    "info-json": lambda f, o: ["info", f, "--json"],
    "energy": lambda f, o: ["energy", f, "--images", "1", "--steps", "2", "--batch-size", "1", "--no-layers"],
    "export": lambda f, o: ["export", f, "-o", o, "--t", "10"],
    "sim": lambda f, o: ["sim", f, "--t", "10"],
    "eval": lambda f, o: ["eval", f, "-n", "4", "--steps", "2", "--batch-size", "4", "--no-progress"],
    "sample-ddpm": lambda f, o: ["sample", f, "--solver", "ddpm", "-n", "1", "--steps", "2", "--out", o],
    "sample-dpm": lambda f, o: ["sample", f, "--solver", "dpm-solver++", "-n", "1", "--steps", "3", "--out", o],
}
GRAPH_COMMANDS = {
    "inspect": lambda f, o: ["inspect", f],
    "energy": lambda f, o: ["energy", f, "--images", "1", "--steps", "2", "--batch-size", "1", "--no-layers"],
}
SLOW_GRAPH_COMMANDS = {
    "inspect-json": lambda f, o: ["inspect", f, "--json", "--nodes"],
    "sim": lambda f, o: ["sim", f, "--t", "10"],
    "export": lambda f, o: ["export", f, "-o", o, "--t", "10"],
    "lava-export": lambda f, o: ["lava", "export", f, "-o", f"{o}/net.net"],
}


_case = itertools.count()


def check_command(
    corpus: Corpus, name: str, data: bytes, argv_of, budget: int = BUDGET, fresh: bool | None = None
) -> int:
    """Write ``data`` as ``in/NAME`` in a fresh case directory, run the command (``fresh``: as
    :func:`crafted.run_cli`), check the contract."""
    case = corpus.root.parent / f"case{next(_case)}"
    shutil.rmtree(case, ignore_errors=True)
    (case / "in").mkdir(parents=True)
    (case / "out").mkdir()
    (case / "out" / "keep.txt").write_text("written by the user, not by sdmc\n")
    src = case / "in" / name
    src.write_bytes(data)
    target = case / "out" / "sub"
    argv = argv_of(str(src), str(target))
    before = snapshot(case, skip=target)
    res = run_cli(argv, case, budget=budget, fresh=fresh)
    where = f"sdmc {' '.join(argv)}\n--- stderr ---\n{res.err[-3000:]}"
    assert res.rc in (0, 2), f"exit status {res.rc} (negative: killed by a signal or the memory budget): {where}"
    assert "Traceback" not in res.err, where
    if res.rc == 2:
        errors = [line for line in res.lines() if "error" in line.lower()]
        assert len(errors) == 1 and errors[0].startswith("sdmc "), f"not one error line: {where}"
    assert snapshot(case, skip=target) == before, f"files outside {target} changed: {where}"
    shutil.rmtree(case, ignore_errors=True)
    return res.rc


def test_unmutated_corpus_runs(corpus):
    """The control: every command succeeds on the files as written (so a refusal below is the mutation's)."""
    for name, cmd in (MODEL_COMMANDS | SLOW_MODEL_COMMANDS).items():
        if name in ("eval", "export", "sim", "energy"):
            continue  # the slow variant runs these (tiny untrained models can fail their own accuracy checks)
        assert check_command(corpus, "model.safetensors", corpus.model.read_bytes(), cmd) == 0, name
    assert check_command(corpus, "model.pt", corpus.released.read_bytes(), MODEL_COMMANDS["info"]) == 0
    for name, cmd in GRAPH_COMMANDS.items():
        assert check_command(corpus, "graph.sdmc", corpus.graph.read_bytes(), cmd) == 0, name


# ----------------------------------------------------------------------------------------- model files
config_mutation = st.tuples(st.just("config"), st.sampled_from(CONFIG_KEYS), st.sampled_from(HOSTILE), st.booleans())
tensor_mutation = st.tuples(
    st.just("tensor"),
    st.integers(0, 200),
    st.sampled_from(["dtype", "shape", "data_offsets"]),
    st.sampled_from(HOSTILE + DTYPES),
)
nonfinite_mutation = st.tuples(st.just("nonfinite"), st.integers(0, 200), st.sampled_from([float("nan"), float("inf")]))
raw_mut = st.tuples(
    st.just("raw"), st.sampled_from(["truncate", "flip", "length"]), st.floats(0, 1), st.integers(0, 255)
)
model_mutation = st.one_of(config_mutation, tensor_mutation, nonfinite_mutation, raw_mut)


def mutate_model(data: bytes, m: tuple) -> bytes:
    kind = m[0]
    if kind == "config":
        (section, key), value, delete = m[1], m[2], m[3]
        return mutate_config(data, section, key, value, delete)
    if kind == "tensor":
        return mutate_tensor_entry(data, m[1], m[2], m[3])
    if kind == "nonfinite":
        return nonfinite_tensor(data, m[1], m[2])
    return raw_mutation(data, m[1], m[2], m[3])


def _model_fuzz(corpus, mutation, command):
    data = mutate_model(corpus.model.read_bytes(), mutation)
    check_command(corpus, "model.safetensors", data, command)


@settings(max_examples=24, **FAST)
@given(mutation=model_mutation, command=st.sampled_from(sorted(MODEL_COMMANDS)))
def test_fuzz_model_files(corpus, mutation, command):
    _model_fuzz(corpus, mutation, MODEL_COMMANDS[command])


@pytest.mark.slow
@settings(max_examples=400, **{**FAST, "derandomize": False})
@given(mutation=model_mutation, command=st.sampled_from(sorted(MODEL_COMMANDS | SLOW_MODEL_COMMANDS)))
def test_fuzz_model_files_slow(corpus, mutation, command):
    _model_fuzz(corpus, mutation, (MODEL_COMMANDS | SLOW_MODEL_COMMANDS)[command])


@pytest.mark.parametrize(
    "mutation",
    [
        ("config", ("model", "ch"), "abc", False),
        ("config", ("", "model"), None, False),
        ("config", ("model", "ch_mult"), 2, False),
        ("config", ("model", "snn_steps"), "abc", False),
        ("config", ("model", "threshold"), "x", False),
        ("config", ("model", "snn_steps"), 10_000, False),
        ("config", ("model", "img_size"), 10**5, False),
        ("config", ("model", "diffusion_steps"), 10**9, False),
        ("config", ("diffusion", "num_timesteps"), 0, False),
        ("config", ("diffusion", "num_timesteps"), -1, False),
        ("config", ("diffusion", "num_timesteps"), 10**9, False),
        ("config", ("diffusion", "beta_1"), 5, False),
        ("nonfinite", 0, float("nan"), None),
    ],
    ids=lambda m: "-".join(str(x) for x in m if x is not None and not isinstance(x, bool))[:40],
)
def test_issue_cases_refused_in_one_line(corpus, mutation):
    """The header edits issue 15 lists: each refused by `sdmc sample` with one line naming the field."""
    data = mutate_model(corpus.model.read_bytes(), mutation)
    check_command(corpus, "model.safetensors", data, MODEL_COMMANDS["sample"])


# ----------------------------------------------------------------------------------------- graph files
graph_mutation = st.tuples(
    st.sampled_from(["top", "node"]),
    st.integers(0, 500),
    st.sampled_from(["@attr", "@attr", "@attr", "op", "inputs", "name", "T", "ir_version", "nodes", "meta"]),
    st.sampled_from(HOSTILE + ("conv2d", "if", "output")),
    st.booleans(),
)


def _graph_fuzz(corpus, mutation, command):
    graph, weights = read_graph_zip(corpus.graph)
    where, index, key, value, delete = mutation
    if where == "top" and key.startswith("@"):
        key = "T"
    mutated = mutate_graph(graph, where, index, key, value, delete)
    path = corpus.root.parent / "graph-mutant.sdmc"
    write_graph_zip(path, mutated, weights)
    check_command(corpus, "graph.sdmc", path.read_bytes(), command)


@settings(max_examples=16, **FAST)
@given(mutation=graph_mutation, command=st.sampled_from(sorted(GRAPH_COMMANDS)))
def test_fuzz_graph_files(corpus, mutation, command):
    _graph_fuzz(corpus, mutation, GRAPH_COMMANDS[command])


@pytest.mark.slow
@settings(max_examples=300, **{**FAST, "derandomize": False})
@given(mutation=graph_mutation, command=st.sampled_from(sorted(GRAPH_COMMANDS | SLOW_GRAPH_COMMANDS)))
def test_fuzz_graph_files_slow(corpus, mutation, command):
    _graph_fuzz(corpus, mutation, (GRAPH_COMMANDS | SLOW_GRAPH_COMMANDS)[command])


def test_graph_issue_cases(corpus):
    """A zero stride, T = 10**7, a 3 GiB graph.json behind a 7 MB-style lying zip header, a node count bomb."""
    graph, weights = read_graph_zip(corpus.graph)
    conv = next(i for i, n in enumerate(graph["nodes"]) if n["op"] == "conv2d")
    cases = [
        mutate_graph(graph, "node", conv, "stride", [0, 0], False),
        mutate_graph(graph, "node", conv, "threshold", "x", False),
        mutate_graph(graph, "top", 0, "T", 10**7, False),
        mutate_graph(graph, "top", 0, "T", "abc", False),
    ]
    for i, g in enumerate(cases):
        path = corpus.root.parent / f"graph-case{i}.sdmc"
        write_graph_zip(path, g, weights)
        for cmd in GRAPH_COMMANDS.values():
            check_command(corpus, "graph.sdmc", path.read_bytes(), cmd)
    # a member whose header says 3 GiB: refused from the header, before reading
    path = corpus.root.parent / "graph-bomb.sdmc"
    write_graph_zip(path, graph, weights)
    data = bytearray(path.read_bytes())
    cd = data.rfind(b"PK\x01\x02")  # the central directory entries; graph.json is the first
    first = data.find(b"PK\x01\x02")
    assert first < cd or first == cd
    data[first + 24 : first + 28] = (3 * GiB).to_bytes(4, "little")  # uncompressed size field
    check_command(corpus, "graph.sdmc", bytes(data), GRAPH_COMMANDS["inspect"])


# -------------------------------------------------------------------------------------- npz and Γ files
@pytest.mark.parametrize(
    "shape,dtype",
    [((4096, 4096, 4096, 3), "|u1"), ((2, 8, 8, 1), "<f8"), ((8, 8), "|u1"), ((0, 8, 8, 1), "|u1"), ((2, 8), "|O")],
)
def test_npz_headers_refused_before_loading(corpus, shape, dtype):
    path = corpus.root.parent / "samples-mutant.npz"
    npz_with_shape(path, shape, dtype)
    check_command(
        corpus,
        "samples.npz",
        path.read_bytes(),
        lambda f, o: ["eval", "--samples", f, "--ref", "digits"],
        budget=BUDGET,
    )


@pytest.mark.parametrize("meta", ["{not json", "[1, 2]", json.dumps({"n": "x"})])
def test_gamma_with_malformed_meta(corpus, meta):
    from crafted import read_safetensors_header, write_safetensors_header

    header, body = read_safetensors_header(corpus.gamma.read_bytes())
    header["__metadata__"]["meta"] = meta
    data = write_safetensors_header(header, body)
    model = corpus.model.read_bytes()

    def argv(f, o):
        Path(f).with_name("model.safetensors").write_bytes(model)
        return ["sample", str(Path(f).with_name("model.safetensors")), "--solver", "analytic-ddim", "--gamma", f,
                "-n", "1", "--steps", "2", "--out", o]  # fmt: skip

    check_command(corpus, "gamma.safetensors", data, argv)


# ------------------------------------------------------------------------------------- training resume
@pytest.mark.parametrize(
    "edit",
    ["none", "bare-tensor", "no-net", "nan-weight", "truncate", "step-string", "config-garbage"],
)
def test_resume_from_hostile_checkpoint(corpus, edit):
    import torch

    state = torch.load(corpus.ckpt, weights_only=True)
    if edit == "bare-tensor":
        state = torch.zeros(3)
    elif edit == "no-net":
        del state["net_model"]
    elif edit == "nan-weight":
        k = next(k for k, v in state["net_model"].items() if v.is_floating_point())
        state["net_model"][k] = state["net_model"][k] * float("nan")
    elif edit == "step-string":
        state["step"] = "abc"
    elif edit == "config-garbage":
        state["sdmc_config"] = "{bad"
    path = corpus.root.parent / "ckpt-mutant.pt"
    torch.save(state, path)
    data = path.read_bytes()
    if edit == "truncate":
        data = data[: len(data) // 2]

    # only the control trains (in a fresh interpreter); a hostile file must be refused before any training step,
    # so a forked child (no interpreter start-up) serves: one that is not refused fails the assertion below
    rc = check_command(
        corpus,
        "step_00000001.pt",
        data,
        lambda f, o: ["train", "--resume", f, "--out", o, "--steps", "2", *TRAIN_ARGS],
        fresh=edit == "none",
    )
    assert (rc == 0) == (edit == "none")
