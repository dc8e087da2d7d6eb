"""Crafted files for the fuzz and kill tests, generated at test time (no binary is committed), and a runner that
executes one ``sdmc`` command in a forked child under a memory budget.

* :func:`make_corpus` writes real tiny files: a native model (``.safetensors``), a released-style ``.pt``, a
  compiled graph (``.sdmc``), a training checkpoint, an ``.npz`` of samples and a Γ file.
* The mutators rewrite one part of such a file the way a hostile or broken file would: a field of the config
  JSON in a safetensors header, a tensor entry of that header, an attribute of a graph node, a ``.npy`` header,
  raw bytes (truncation, flips).
* :func:`run_cli` forks (the parent's imports are reused, so a command costs its own work only; ``train``
  runs in a fresh interpreter, see there), limits the child's address space to what it already maps plus ``budget`` bytes, runs ``sdmc.cli.main(argv)`` with
  stdout/stderr in files and returns the exit status and both texts.  A child killed by the limit or a timeout
  shows as a negative status.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import signal
import struct
import sys
import time
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GiB = 2**30

# values a hostile file puts where a number, a string or a list belongs
HOSTILE: tuple[Any, ...] = (
    0,
    -1,
    1,
    3,
    2.5,
    10**5,
    10**9,
    2**31,
    2**63,
    -(2**63),
    1e308,
    float("nan"),
    float("inf"),
    "abc",
    "",
    None,
    True,
    [],
    [0, 0],
    [-1, -1],
    [10**6, 10**6],
    {},
    {"a": 1},
)

TINY = dict(arch="sddpm", ch=8, ch_mult=[1, 2], num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8, diffusion_steps=50)

# the tiny training run of the corpus and the kill tests (its checkpoint is the resume corpus)
TRAIN_ARGS = ["--ch", "8", "--ch-mult", "1,2", "--num-res-blocks", "1", "--snn-steps", "2", "--img-size", "8",
              "--batch-size", "4", "--sample-n", "0", "--no-progress", "--no-tensorboard", "--eager"]  # fmt: skip


# ------------------------------------------------------------------------------------------------ corpus
def session_corpus(root: Path) -> Corpus:
    """:func:`make_corpus` for the session fixture ``corpus`` (tests/conftest.py; the fuzz and kill tests share
    it and only read it), with what the commands import imported once: each forked child then costs its own
    work only."""
    c = make_corpus(root)
    import sdmc.backends.torch_exec  # noqa: F401
    import sdmc.cli  # noqa: F401
    import sdmc.energy  # noqa: F401
    import sdmc.frontends  # noqa: F401
    import sdmc.passes  # noqa: F401

    return c


@dataclass
class Corpus:
    root: Path
    model: Path  # native .safetensors (TINY, 50 diffusion steps)
    released: Path  # {'net_model': sd} .pt
    graph: Path  # .sdmc from sdmc compile
    ckpt: Path  # training checkpoint (step 1)
    samples: Path  # .npz of uint8 NHWC samples
    gamma: Path  # Γ file of the model


def make_corpus(root: Path) -> Corpus:
    """Write the tiny real files every mutant starts from."""
    import torch

    from sdmc import ir
    from sdmc.checkpoint import save_model
    from sdmc.config import DiffusionConfig, ModelConfig, SdmcConfig
    from sdmc.diffusion import train as tr
    from sdmc.diffusion.analytic import save_gamma
    from sdmc.frontends import from_checkpoint
    from sdmc.models import build_model

    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = SdmcConfig(model=ModelConfig(**TINY), diffusion=DiffusionConfig(num_timesteps=50))
    model = build_model(cfg.model).eval()
    model_path = save_model(root / "tiny.safetensors", model, cfg)
    released = root / "released.pt"
    torch.save({"net_model": model.state_dict()}, released)
    graph_path = ir.save(from_checkpoint(model_path), root / "tiny.sdmc")  # records the config, as compile does
    run = root / "run"
    # in a child: a backward pass in this process would forbid autograd in every later forked child
    res = run_cli(["train", "--out", str(run), "--steps", "1", *TRAIN_ARGS], root)
    assert res.rc == 0, res.err
    ckpt = tr.checkpoint_path(run, 1)
    samples = root / "samples.npz"
    np.savez(samples, images=np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1), dtype=np.uint8))
    gamma = save_gamma(root / "gamma.safetensors", torch.full((50,), 0.9, dtype=torch.float64), {"n": 50})
    return Corpus(root, Path(model_path), released, Path(graph_path), ckpt, samples, Path(gamma))


# ---------------------------------------------------------------------------------------------- mutators
def read_safetensors_header(data: bytes) -> tuple[dict[str, Any], bytes]:
    """``(header JSON, tensor bytes)`` of a safetensors file."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def write_safetensors_header(header: dict[str, Any], body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def mutate_config(data: bytes, section: str, key: str, value: Any, delete: bool = False) -> bytes:
    """Set (or delete) ``section.key`` of the sdmc config JSON in a safetensors header (section ``""``: the top
    level, which holds ``model``, ``diffusion``, ``provenance`` and ``version``)."""
    header, body = read_safetensors_header(data)
    cfg = json.loads(header["__metadata__"]["sdmc_config"])
    target = cfg if not section else cfg.setdefault(section, {})
    if not isinstance(target, dict):
        cfg[section] = target = {}
    if delete:
        target.pop(key, None)
    else:
        target[key] = value
    header["__metadata__"]["sdmc_config"] = json.dumps(cfg)
    return write_safetensors_header(header, body)


def mutate_tensor_entry(data: bytes, index: int, key: str, value: Any) -> bytes:
    """Set ``key`` (``dtype``, ``shape``, ``data_offsets``) of the ``index``-th tensor entry of a safetensors header."""
    header, body = read_safetensors_header(data)
    names = sorted(k for k in header if k != "__metadata__")
    header[names[index % len(names)]][key] = value
    return write_safetensors_header(header, body)


def nonfinite_tensor(data: bytes, index: int, value: float) -> bytes:
    """Overwrite the first element of the ``index``-th float32 tensor with ``value`` (NaN / Inf)."""
    header, body = read_safetensors_header(data)
    names = sorted(k for k in header if k != "__metadata__" and header[k]["dtype"] == "F32")
    start, _ = header[names[index % len(names)]]["data_offsets"]
    body = body[:start] + struct.pack("<f", value) + body[start + 4 :]
    return write_safetensors_header(header, body)


def raw_mutation(data: bytes, kind: str, pos: float, byte: int) -> bytes:
    """``truncate`` at a fraction ``pos`` of the file, ``flip`` the byte there, or ``length`` (the safetensors
    header length field set to ``byte`` * 2**40)."""
    i = min(int(pos * len(data)), len(data) - 1)
    if kind == "truncate":
        return data[:i]
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ (byte or 1)]) + data[i + 1 :]
    return struct.pack("<Q", byte * 2**40) + data[8:]


def read_graph_zip(path: Path) -> tuple[dict[str, Any], bytes]:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("graph.json")), z.read("weights.safetensors")


def write_graph_zip(path: Path, graph: Any, weights: bytes, graph_bytes: bytes | None = None) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("graph.json", graph_bytes if graph_bytes is not None else json.dumps(graph))
        z.writestr("weights.safetensors", weights)


def mutate_graph(graph: dict[str, Any], where: str, index: int, key: str, value: Any, delete: bool) -> dict[str, Any]:
    """Set (or delete) ``key`` of the top level (``where == "top"``) or of the ``index``-th node (any attribute,
    ``op``, ``inputs``, ``name``) of a graph JSON."""
    g = json.loads(json.dumps(graph))
    target = g if where == "top" else g["nodes"][index % len(g["nodes"])]
    if key == "@attr":  # one of the node's own attributes
        keys = sorted(k for k in target if k not in ("name", "op", "inputs")) or ["name"]
        key = keys[index % len(keys)]
    if delete:
        target.pop(key, None)
    else:
        target[key] = value
    return g


def npz_with_shape(path: Path, shape: tuple[int, ...], dtype: str = "|u1") -> None:
    """An ``.npz`` whose ``images`` member declares ``shape`` but holds (almost) no data: a header that asks."""
    header = {"descr": dtype, "fortran_order": False, "shape": tuple(shape)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    buf.write(b"\0" * 64)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images.npy", buf.getvalue())


# ------------------------------------------------------------------------------------------------ runner
@dataclass
class Result:
    rc: int  # exit status; negative: killed by that signal (-9 also for a timeout)
    out: str
    err: str
    seconds: float

    def lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _child(argv: list[str], cwd: Path, out: Path, err: Path, budget: int) -> int:
    fo = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    fe = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fo, 1)
    os.dup2(fe, 2)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the child exits with os._exit
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    os.chdir(cwd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import torch

    torch.set_num_threads(1)
    if budget:
        limit = _vm_size() + budget
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from sdmc.cli import main

    try:
        return int(main(argv) or 0)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    except BaseException:  # noqa: BLE001 - a traceback is exactly what the fuzz looks for
        traceback.print_exc()
        return 1


_SPAWNED = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import crafted
import sdmc.cli  # noqa: F401 - imported before the ready mark: kill times count the command's own work
Path({ready!r}).touch()
sys.exit(crafted._child({argv!r}, Path({cwd!r}), Path({out!r}), Path({err!r}), {budget!r}))
"""


def run_cli(
    argv: list[str],
    cwd: Path,
    budget: int = 2 * GiB,
    timeout: float = 600.0,  # a hang guard only: a loaded 2-core CI box can be slow
    kill_after: float | None = None,
    fresh: bool | None = None,
) -> Result:
    """Run ``sdmc ARGV`` in a child in ``cwd`` under an address-space budget; ``kill_after`` seconds: SIGKILL it
    then (the kill tests).  The child is forked, except with ``fresh`` (default: for ``train``), a new
    interpreter: autograd refuses to run in a child forked from a process that has run a backward pass (as
    the test process may have), and training needs it.  Times (``seconds``, ``kill_after``) start once the
    child has imported sdmc."""
    logs = cwd.parent / f".{cwd.name}.logs"
    logs.mkdir(exist_ok=True)
    out, err, ready = logs / "stdout", logs / "stderr", logs / "ready"
    ready.unlink(missing_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    if fresh if fresh is not None else argv[:1] == ["train"]:
        import subprocess

        code = _SPAWNED.format(
            tests=str(Path(__file__).parent), ready=str(ready), argv=argv, cwd=str(cwd), out=str(out), err=str(err),
            budget=budget,
        )  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
        start = time.monotonic()
        while not ready.exists() and proc.poll() is None and time.monotonic() < start + 600:
            time.sleep(0.005)
        pid = proc.pid
    else:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            rc = 1
            try:
                rc = _child(argv, cwd, out, err, budget)
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(rc)
    t0 = time.monotonic()
    deadline = t0 + (kill_after if kill_after is not None else timeout)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.005)
    rc = os.waitstatus_to_exitcode(status)
    return Result(rc, out.read_text(errors="replace"), err.read_text(errors="replace"), time.monotonic() - t0)


# ---------------------------------------------------------------------------------------------- snapshot
def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """``{relative path: sha1 of the content}`` of every file under ``root`` (directories as ``dir``), leaving out
    ``skip`` and everything below it."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        rel = str(p.relative_to(root))
        if p.is_dir():
            out[rel] = "dir"
        elif p.is_file():
            out[rel] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out
