"""Training under faults (issue 15 item 5): ``--resume auto`` falls back to the newest checkpoint that loads, stale
temporary files are removed at start, SIGINT/SIGTERM save a checkpoint before stopping, and ``metrics.jsonl``
after any of these equals the uninterrupted run's (losses, steps, learning rates)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from sdmc.data import TensorImages, digits_arrays
from sdmc.diffusion import train as tr
from sdmc.errors import CheckpointError

TINY = dict(arch="sddpm", ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8)
QUIET = dict(tensorboard=False, progress=False, sample_n=0, threads=1)  # one thread: bit-equal reductions


@pytest.fixture(scope="module")
def data():
    x, y = digits_arrays(8, train=True)
    return TensorImages(x[:20], y[:20])  # batch 8: 2 steps per epoch


def cfg(out: Path, **kw) -> tr.TrainConfig:
    return tr.make_config("digits", out=str(out), **{**TINY, **QUIET, "lr": 2e-3, "warmup": 2, "batch_size": 8, **kw})


def weights(out: Path, step: int) -> dict:
    return torch.load(tr.checkpoint_path(out, step), weights_only=True)["net_model"]


def metrics(out: Path) -> list[tuple]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["epoch"], r["loss"], r["lr"], r["grad_norm"]) for r in recs]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """The uninterrupted 6-step run (checkpoint every 2 steps, a metrics record every 2)."""
    out = tmp_path_factory.mktemp("ref")
    tr.train(cfg(out, steps=6, save_every=2, log_every=2), dataset=data)
    return out


def test_resume_auto_skips_a_checkpoint_that_does_not_load(tmp_path, data, reference):
    out = tmp_path / "run"
    tr.train(cfg(out, steps=4, save_every=2, log_every=2), dataset=data)
    newest = tr.checkpoint_path(out, 4)
    newest.write_bytes(newest.read_bytes()[:1000])  # cut short, as by a full disk
    said: list[str] = []
    tr.train(cfg(out, steps=6, save_every=2, log_every=2), dataset=data, log=said.append)
    assert any("skipping step_00000004.pt, it does not load" in s for s in said), said
    assert any("resuming from" in s and "step_00000002.pt at step 2" in s for s in said), said
    assert_same(weights(out, 6), weights(reference, 6))
    assert metrics(out) == metrics(reference)


def test_resume_auto_with_no_loadable_checkpoint_is_an_error(tmp_path, data):
    out = tmp_path / "run"
    tr.train(cfg(out, steps=2, save_every=1), dataset=data)
    for _, p in tr.list_checkpoints(out):
        p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"none of the 2 checkpoints in .*checkpoints loads"):
        tr.train(cfg(out, steps=4), dataset=data)
    assert all(p.read_bytes() == b"garbage" for _, p in tr.list_checkpoints(out))  # left as they were


def test_stale_temporary_files_are_removed_at_start(tmp_path, data):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "samples").mkdir()
    stale = [
        out / "checkpoints" / ".step_00000002.pt.k3j4h5g6.tmp",
        out / ".metrics.jsonl.abcdefgh.tmp",
        out / ".model.safetensors.zz99yy88.tmp",
        out / "samples" / ".step_00000002.png.q1w2e3r4.tmp",
    ]
    foreign = [out / ".notes.abc.tmp", out / "checkpoints" / "mine.tmp", out / "keep.txt"]
    for p in stale + foreign:
        p.write_text("x")
    tr.train(cfg(out, steps=1), dataset=data)
    assert not any(p.exists() for p in stale)
    assert all(p.read_text() == "x" for p in foreign)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_and_the_resumed_run_equals_the_uninterrupted_one(
    tmp_path, data, reference, monkeypatch, sig
):
    out = tmp_path / "run"
    real = tr._loss
    calls = {"n": 0}

    def signalled(schedule, model, x0):
        calls["n"] += 1
        if calls["n"] == 3:  # during step 3: not a checkpoint step (every 2) nor a metrics step (every 2)
            os.kill(os.getpid(), sig)
        return real(schedule, model, x0)

    monkeypatch.setattr(tr, "_loss", signalled)
    before = signal.getsignal(sig)  # SIG_IGN for SIGINT when pytest itself runs as a background job
    with pytest.raises(tr.TrainingInterrupted, match=rf"stopped by {sig.name} at step 3: saved .*step_00000003.pt"):
        tr.train(cfg(out, steps=6, save_every=2, log_every=2), dataset=data)
    assert [s for s, _ in tr.list_checkpoints(out)] == [2, 3]
    assert signal.getsignal(sig) == before  # the handlers are restored
    monkeypatch.setattr(tr, "_loss", real)
    tr.train(cfg(out, steps=6, save_every=2, log_every=2), dataset=data)
    assert_same(weights(out, 6), weights(reference, 6))
    # the step-4 record averages steps 3 and 4 across the interruption, as the uninterrupted run's does
    assert metrics(out) == metrics(reference)


def test_resume_of_a_bare_tensor_or_nan_weights_is_one_clear_error(tmp_path, data):
    bare = tmp_path / "bare.pt"
    torch.save(torch.zeros(3), bare)
    with pytest.raises(CheckpointError, match="not an sdmc training checkpoint \\(it holds a Tensor, not a dict\\)"):
        tr.train(cfg(tmp_path / "a", steps=1, resume=str(bare)), dataset=data)
    tr.train(cfg(tmp_path / "b", steps=1), dataset=data)
    state = torch.load(tr.checkpoint_path(tmp_path / "b", 1), weights_only=True)
    state["net_model"]["conv.weight"][0, 0, 0, 0] = float("nan")
    nan = tmp_path / "nan.pt"
    torch.save(state, nan)
    with pytest.raises(CheckpointError, match="tensor 'conv.weight' holds 1 non-finite"):
        tr.train(cfg(tmp_path / "c", steps=2, resume=str(nan)), dataset=data)


def test_metrics_reader_drops_torn_and_foreign_lines_and_filters_by_step(tmp_path):
    """One reader for metrics.jsonl (resume, the demo, the bundled-model builder): a torn last line, a line
    that is not an object with an integer step, and blank lines are dropped with one warning."""
    from sdmc.diffusion.train_outputs import read_metrics

    p = tmp_path / "metrics.jsonl"
    assert read_metrics(p) == []
    lines = [{"step": 1, "loss": 0.9}, {"step": 2, "loss": 0.8}, [1, 2], {"step": "3"}, {"step": 4, "loss": 0.5}]
    p.write_text("".join(json.dumps(r) + "\n" for r in lines) + "\n" + '{"step": 5, "lo')
    said = []
    assert [r["step"] for r in read_metrics(p, say=said.append)] == [1, 2, 4]
    assert len(said) == 1 and "dropped 3 unreadable line(s)" in said[0]
    assert [r["step"] for r in read_metrics(p, step=2)] == [1, 2]
