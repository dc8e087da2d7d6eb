"""Kill tests: SIGKILL at random points of ``compile``, ``export`` and ``train``; afterwards the output is the old
one or the new one, whole (issue 15 item 6).

Each command runs once to completion to record the old output and its duration ``D``, then again with other
settings (a different output) and is killed after a random time in ``(0, D)`` (the child is forked: no start-up
cost, so the kill falls inside the command's own work).  The output path must then hold exactly the old bytes or
exactly the new ones (a directory: the same tree); for training every checkpoint on disk loads and equals the
uninterrupted run's at its step, ``metrics.jsonl`` parses, and the run resumed to the end equals the
uninterrupted one.  The default run kills a few times per command; ``-m slow`` many times.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from crafted import TRAIN_ARGS, run_cli, snapshot

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill tests fork")


def _kill_points(duration: float, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return sorted(rng.uniform(0.0, duration) for _ in range(n))


def _tree(path: Path) -> dict[str, str] | bytes | None:
    """What a reader sees at ``path``: the bytes of a file, the tree of a directory, or ``None``."""
    if path.is_file():
        return path.read_bytes()
    if path.is_dir():
        return snapshot(path)
    return None


def _check_replacement(corpus, argv_old, argv_new, out: Path, kills: int, seed: int) -> None:
    work = corpus.root.parent / f"kill-{out.name}-{seed}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    done = run_cli(argv_new(work), work)
    assert done.rc == 0, done.err
    new = _tree(work / out)
    shutil.rmtree(work / out) if (work / out).is_dir() else (work / out).unlink()
    first = run_cli(argv_old(work), work)
    assert first.rc == 0, first.err
    old = _tree(work / out)
    assert old != new and old is not None
    for t in _kill_points(done.seconds, kills, seed):
        res = run_cli(argv_new(work), work, kill_after=t)
        now = _tree(work / out)
        assert now in (old, new), f"killed after {t:.2f} s (rc {res.rc}): {out} is neither the old nor the new output"
        if now == new:  # put the old one back, so the next kill again replaces old by new
            shutil.rmtree(work / out) if (work / out).is_dir() else (work / out).unlink()
            assert run_cli(argv_old(work), work).rc == 0
    # the next run after all those kills finishes and cleans up what the killed ones left
    assert run_cli(argv_new(work), work).rc == 0
    assert _tree(work / out) == new
    shutil.rmtree(work, ignore_errors=True)


def _compile(corpus, kills, seed):
    _check_replacement(
        corpus,
        lambda w: ["compile", str(corpus.model), "-o", str(w / "g.sdmc"), "--passes", "none"],
        lambda w: ["compile", str(corpus.model), "-o", str(w / "g.sdmc")],
        Path("g.sdmc"),
        kills,
        seed,
    )
    _check_replacement(
        corpus,
        lambda w: ["compile", str(corpus.model), "-o", str(w / "gdir"), "--passes", "none"],
        lambda w: ["compile", str(corpus.model), "-o", str(w / "gdir")],
        Path("gdir"),
        kills,
        seed,
    )


def _export(corpus, kills, seed):
    _check_replacement(
        corpus,
        lambda w: ["export", str(corpus.model), "-o", str(w / "exp"), "--t", "10"],
        lambda w: ["export", str(corpus.model), "-o", str(w / "exp"), "--t", "10", "--pow2"],
        Path("exp"),
        kills,
        seed,
    )


def test_kill_compile(corpus):
    _compile(corpus, kills=3, seed=0)


def test_kill_export(corpus):
    _export(corpus, kills=2, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_kill_compile_and_export_slow(corpus, seed):
    _compile(corpus, kills=10, seed=seed + 1)
    _export(corpus, kills=10, seed=seed + 1)


def _train(corpus, kills: int, seed: int) -> None:
    work = corpus.root.parent / f"kill-train-{seed}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    args = ["--steps", "6", "--save-every", "2", "--log-every", "2", *TRAIN_ARGS]
    ref = run_cli(["train", "--out", str(work / "ref"), *args], work)
    assert ref.rc == 0, ref.err
    want = {p.name: torch.load(p, weights_only=True) for p in (work / "ref" / "checkpoints").iterdir()}
    out = work / "run"
    for t in _kill_points(ref.seconds, kills, seed):
        run_cli(["train", "--out", str(out), *args], work, kill_after=t)
        for p in (out / "checkpoints").glob("step_*.pt") if (out / "checkpoints").is_dir() else []:
            got = torch.load(p, weights_only=True)  # whole: it loads ...
            for k, v in want[p.name]["net_model"].items():  # ... and holds the uninterrupted run's weights
                assert torch.equal(got["net_model"][k], v), f"{p.name}: {k}"
        if (out / "metrics.jsonl").exists():
            [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert run_cli(["train", "--out", str(out), *args], work).rc == 0
    got = torch.load(out / "checkpoints" / "step_00000006.pt", weights_only=True)["net_model"]
    for k, v in want["step_00000006.pt"]["net_model"].items():
        assert torch.equal(got[k], v), k
    assert not list(out.rglob("*.tmp"))
    ref_losses = [json.loads(x)["loss"] for x in (work / "ref" / "metrics.jsonl").read_text().splitlines()]
    run_losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert run_losses == ref_losses
    shutil.rmtree(work, ignore_errors=True)


def test_kill_train(corpus):
    _train(corpus, kills=1, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_kill_train_slow(corpus, seed):
    _train(corpus, kills=12, seed=seed + 1)
