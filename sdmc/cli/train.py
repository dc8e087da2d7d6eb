"""``sdmc train``: train (or resume, or TSM-fine-tune) a diffusion model from a preset (:mod:`sdmc.diffusion.train`)."""

from __future__ import annotations

import argparse

from .base import (
    Command,
    add_device,
    add_precision,
    check_device,
    count,
    fraction,
    int_list,
    positive,
    positive_int,
    rank,
    unit_open,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="digits", help="named settings (see --list-presets; default: digits)")
    p.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    g = p.add_argument_group("run")
    g.add_argument("--out", help="output folder (default: runs/PRESET)")
    g.add_argument(
        "--force",
        action="store_true",
        help="use --out even if it is a non-empty folder sdmc did not create (its files may be replaced)",
    )
    g.add_argument("--steps", type=positive_int, help="total optimiser steps")
    g.add_argument(
        "--batch-size",
        type=positive_int,
        help="GLOBAL batch over all ranks; each of K ranks takes batch/K (must divide)",
    )
    g.add_argument("--lr", type=float, help="learning rate (> 0; checked with the preset's other fields)")
    g.add_argument("--warmup", type=count, help="linear learning-rate warm-up steps (0: none)")
    g.add_argument(
        "--lr-decay",
        type=count,
        metavar="N",
        help="decay the learning rate linearly to 0 over the last N steps (0: off)",
    )
    g.add_argument("--grad-clip", type=positive, help="gradient-norm clip")
    g.add_argument("--ema-decay", type=fraction, help="EMA decay in [0, 1)")
    g.add_argument("--no-ema", dest="ema", action="store_const", const=False, help="no EMA (the papers' SNN runs)")
    g.add_argument(
        "--no-ema-warmup",
        dest="ema_warmup",
        action="store_const",
        const=False,
        help="use the full EMA decay from step 0",
    )
    g.add_argument("--seed", type=count)
    add_device(g, default=None)
    g.add_argument("--resume", help="auto (default: newest checkpoint in --out), never, or a checkpoint path")
    g.add_argument("--keep-last", type=positive_int, help="training checkpoints to keep")
    g.add_argument("--log-every", type=positive_int)
    g.add_argument("--save-every", type=positive_int)
    g.add_argument("--sample-every", type=positive_int)
    g.add_argument("--sample-n", type=count, help="images per sample grid (0: none)")
    g.add_argument("--sample-steps", type=positive_int, help="DDIM steps for the sample grids")
    g.add_argument("--tensorboard", dest="tensorboard", action="store_const", const=True)
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_const", const=False)
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False)
    g.add_argument(
        "--eager",
        action="store_const",
        const=True,
        help="train the plain spikingjelly model instead of the compiled torch executor (default)",
    )
    add_precision(g, default=None, choices=("fp32", "bf16"), what="fp32")
    g.add_argument(
        "--threads",
        type=int,
        help="CPU threads (default: torch's); a CPU run is bit-for-bit reproducible for a given seed and thread count",
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="digits, cifar10, mnist, fashion-mnist, celeba64, folder:PATH")
    g.add_argument("--data-root", help="where the dataset lies (torchvision layout)")
    g.add_argument("--download", action="store_const", const=True, help="allow downloading the dataset")
    g.add_argument("--num-workers", type=count)
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=["sddpm", "sdm", "ann", "qann"])
    g.add_argument("--ch", type=positive_int)
    g.add_argument("--ch-mult", type=int_list, help="e.g. 1,2,2,4")
    g.add_argument("--num-res-blocks", type=positive_int)
    g.add_argument("--snn-steps", type=positive_int, help="SNN time steps T")
    g.add_argument("--img-size", type=positive_int)
    g.add_argument("--threshold", type=positive)
    g.add_argument("--neuron", choices=["if", "lif"])
    g.add_argument("--dropout", type=fraction, help="dropout probability in [0, 1)")
    g.add_argument("--init-from", help="start from this model's weights (its architecture wins)")
    g.add_argument("--init-weights", choices=["auto", "net", "ema"])
    g.add_argument(
        "--tsm",
        action="store_const",
        const=True,
        help="with --init-from SDDPM: inherit into an SDM TSM model (p = 1) and fine-tune",
    )
    g = p.add_argument_group("diffusion")
    g.add_argument("--schedule", choices=["linear", "cosine"])
    g.add_argument("--mean-type", choices=["epsilon", "x0", "v"])
    g.add_argument("--num-timesteps", type=positive_int)
    g.add_argument("--beta-1", type=unit_open, help="first beta, in (0, 1)")
    g.add_argument("--beta-T", dest="beta_T", type=unit_open, help="last beta, in (0, 1)")


# the options that override preset fields (unset ones keep the preset's value)
TRAIN_OPTS = (
    "threads",
    "out",
    "steps",
    "batch_size",
    "lr",
    "warmup",
    "lr_decay",
    "grad_clip",
    "ema_decay",
    "ema",
    "ema_warmup",
    "seed",
    "device",
    "resume",
    "keep_last",
    "log_every",
    "save_every",
    "sample_every",
    "sample_n",
    "sample_steps",
    "tensorboard",
    "progress",
    "dataset",
    "data_root",
    "download",
    "num_workers",
    "arch",
    "ch",
    "ch_mult",
    "num_res_blocks",
    "snn_steps",
    "img_size",
    "threshold",
    "neuron",
    "dropout",
    "init_from",
    "init_weights",
    "tsm",
    "schedule",
    "mean_type",
    "num_timesteps",
    "beta_1",
    "beta_T",
    "eager",
    "precision",
)


def run(args: argparse.Namespace) -> int:
    from ..diffusion.presets import describe_presets

    if args.list_presets:
        print(describe_presets())
        return 0
    from ..diffusion.train import make_config, train

    if args.device is not None:
        check_device(args.device)  # one clear line now, not a traceback once the data is loaded
    cfg = make_config(args.preset, **{k: getattr(args, k) for k in TRAIN_OPTS})
    if rank() != 0:  # torchrun: rank 0 owns the output folder
        print(train(cfg))
        return 0
    from ..utils import claim_dir, output_lock

    claim_dir(cfg.out, force=args.force)
    with output_lock(cfg.out):
        print(train(cfg))
    return 0


TRAIN = Command(
    "train",
    "train a spiking diffusion model (presets; torchrun for many GPUs)",
    add_arguments,
    run,
    description="Train (or resume, or TSM-fine-tune) a diffusion model. Every preset field can be "
    "overridden; unset options keep the preset's value. Many GPUs: torchrun "
    "--nproc_per_node=K -m sdmc train ... (DistributedDataParallel).",
)
