"""``sdmc train`` computes exactly the algorithm its docstring states, bit for bit.

The model that ships with sdmc is trained with this loop, and must stay reproducible after any refactoring
of it: a short run of :func:`sdmc.diffusion.train.train` (with its checkpoints, metrics, sample grids and
export in between) is compared, every weight ``torch.equal``, with a plain reference loop written out here.
"""

from __future__ import annotations

import copy

import pytest
import torch
from spikingjelly.activation_based import functional

from sdmc.checkpoint import read_checkpoint
from sdmc.data import TensorImages, digits_arrays
from sdmc.diffusion import NoiseSchedule
from sdmc.diffusion import train as tr
from sdmc.models import build_model

TINY = dict(arch="sddpm", ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8, dropout=0.1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def reference_run(cfg: tr.TrainConfig, data) -> tuple[dict, dict]:
    """The training algorithm, single process, no resume: returns ``(net state_dict, EMA state_dict)``."""
    from sdmc.backends.torch_exec import prepare

    tr._seed_all(cfg.seed)
    model = build_model(cfg.model)
    if not cfg.eager:
        model = prepare(model, "train", device=torch.device("cpu"))
    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: tr.lr_factor(s, cfg.warmup, cfg.steps, cfg.lr_decay))
    schedule = NoiseSchedule(cfg.diffusion)
    sampler = torch.utils.data.DistributedSampler(
        data, num_replicas=1, rank=0, shuffle=True, seed=cfg.seed, drop_last=True
    )
    gen = torch.Generator()
    loader = torch.utils.data.DataLoader(
        data, batch_size=cfg.batch_size, sampler=sampler, drop_last=True, generator=gen
    )
    step, epoch = 0, 0
    while step < cfg.steps:
        sampler.set_epoch(epoch)
        gen.manual_seed(cfg.seed + 104_729 * epoch)
        for x0, *_ in loader:
            loss = schedule.loss(model, x0.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            functional.reset_net(model)
            tr.ema_update_(ema, model, tr.ema_decay_at(step, cfg.ema_decay, cfg.ema_warmup))
            step += 1
            if step == cfg.steps:
                break
        epoch += 1
    return model.state_dict(), ema.state_dict()


@pytest.mark.parametrize("eager", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["executor", "eager"])
def test_train_equals_the_reference_loop_bitwise(tmp_path, eager):
    x, y = digits_arrays(8, train=True)
    data = TensorImages(x[:20], y[:20])  # batch 8: 2 steps per epoch, so 5 steps cross 2 epochs
    cfg = tr.make_config(
        "digits",
        out=str(tmp_path),
        **TINY,
        steps=5,
        batch_size=8,
        warmup=3,
        lr_decay=2,
        ema_decay=0.9,
        eager=eager,
        save_every=2,
        sample_every=2,
        sample_n=2,
        sample_steps=2,
        log_every=1,
        tensorboard=False,
        progress=False,
    )
    final = tr.train(cfg, dataset=data)
    net_ref, ema_ref = reference_run(cfg, data)
    state = torch.load(tr.checkpoint_path(tmp_path, 5), weights_only=True)
    exported, _, _ = read_checkpoint(final)
    for name, got, want in (("net", state["net_model"], net_ref), ("ema", exported, ema_ref)):
        assert got.keys() == want.keys(), name
        for k in want:
            assert torch.equal(got[k], want[k]), f"{name}: {k} differs from the reference loop"
