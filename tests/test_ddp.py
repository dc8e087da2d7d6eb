"""Two-process DistributedDataParallel training on CPU (gloo): global batch, steps, ranks in sync."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sdmc.data import TensorImages, digits_arrays
from sdmc.diffusion import train as tr

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

MODEL = dict(arch="sddpm", ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8)
TINY = dict(**MODEL, tensorboard=False, progress=False, sample_n=4, sample_steps=2, lr=2e-3, warmup=2, device="cpu")
N_IMAGES, GLOBAL_BATCH, STEPS = 24, 8, 5  # 3 steps per epoch: the run crosses an epoch boundary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recording(TensorImages):
    """Digits that append every index they serve to ``log_dir/rank<R>.txt``."""

    def __init__(self, log_dir: str) -> None:
        x, y = digits_arrays(8, train=True)
        super().__init__(x[:N_IMAGES], y[:N_IMAGES])
        self.log_dir = log_dir

    def __getitem__(self, i: int):
        with open(os.path.join(self.log_dir, f"rank{os.environ.get('RANK', '0')}.txt"), "a") as fh:
            fh.write(f"{i}\n")
        return super().__getitem__(i)


def _worker(rank: int, world: int, port: int, out: str, log_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    cfg = tr.make_config(
        "digits", out=out, steps=STEPS, batch_size=GLOBAL_BATCH, save_every=2, sample_every=100, log_every=1, **TINY
    )
    tr.train(cfg, dataset=Recording(log_dir), log=lambda s: None)
    assert not dist.is_initialized()  # train() leaves no process group behind


def test_two_gloo_ranks_train_in_sync_with_the_global_batch(tmp_path):
    out, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    mp.spawn(_worker, args=(2, free_port(), str(out), str(logs)), nprocs=2, join=True)

    served = {r: [int(v) for v in (logs / f"rank{r}.txt").read_text().split()] for r in (0, 1)}
    per_rank = GLOBAL_BATCH // 2
    # each rank read one probe image (shape check), then per_rank images per step
    for r in (0, 1):
        assert len(served[r]) == 1 + STEPS * per_rank, (r, served[r])
    steps_per_epoch = (N_IMAGES // 2) // per_rank
    for e in range(2):  # within an epoch the two ranks see disjoint images (DistributedSampler)
        lo, hi = 1 + e * steps_per_epoch * per_rank, 1 + min(STEPS, (e + 1) * steps_per_epoch) * per_rank
        assert not set(served[0][lo:hi]) & set(served[1][lo:hi])

    assert [s for s, _ in tr.list_checkpoints(out)] == [2, 4, 5]
    state = torch.load(tr.checkpoint_path(out, STEPS), weights_only=True)
    assert (state["step"], state["world_size"], state["global_batch"]) == (STEPS, 2, GLOBAL_BATCH)
    prints = state["rank_fingerprints"]
    assert prints.shape[0] == 2 and torch.equal(prints[0], prints[1])  # ranks hold identical weights
    assert torch.equal(prints[0], tr.state_fingerprint(tr.synced_entries(state["net_model"])))
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    assert all(r["world_size"] == 2 and r["global_batch"] == GLOBAL_BATCH for r in recs)
    assert (out / "model.safetensors").is_file()
    assert not list(out.rglob("*.tmp"))


def test_torchrun_cli_two_ranks(tmp_path):
    out = tmp_path / "cli"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port",
        str(free_port()),
        "-m",
        "sdmc",
        "train",
        "--preset",
        "digits",
        "--steps",
        "3",
        "--batch-size",
        "16",
        "--ch",
        "8",
        "--ch-mult",
        "1,2",
        "--num-res-blocks",
        "1",
        "--snn-steps",
        "2",
        "--img-size",
        "8",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--sample-n",
        "0",
        "--no-tensorboard",
        "--no-progress",
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "global batch 16 = 8 per rank x 2 rank(s)" in res.stderr
    assert res.stderr.count("sdmc train: preset digits") == 1  # rank 0 alone prints
    state = torch.load(tr.checkpoint_path(out, 3), weights_only=True)
    assert (state["world_size"], state["global_batch"]) == (2, 16)
    assert torch.equal(state["rank_fingerprints"][0], state["rank_fingerprints"][1])
