"""``sdmc convert``: ANN -> SNN conversion of a quantised-activation ANN UNet (:mod:`sdmc.convert`, SDM §6)."""

from __future__ import annotations

import argparse
import sys

from .base import Command, add_out, add_seed, add_weights, count, positive, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="quantised ANN (.safetensors from sdmc) or a plain ANN checkpoint (.pt/.safetensors)")
    add_out(p, "converted SNN to write (.safetensors)", required=True, directory=False)
    p.add_argument(
        "--bits",
        type=positive_int,
        default=None,
        help="activation bits (required for a plain ANN; must match a quantised ANN's)",
    )
    p.add_argument(
        "--signed",
        action="store_true",
        help="Fast-SNN inhibitory -1 spikes (released SDM code: on; paper: off; default off)",
    )
    p.add_argument(
        "--norm",
        choices=["step", "running"],
        default="step",
        help="GroupNorm in the SNN: on each step's input (step, literal) or with running-mean "
        "statistics (running: sdmc option, error falls with T)",
    )
    add_weights(p)
    p.add_argument("--alpha-init", type=positive, default=6.0, help="clip alpha for a plain ANN (default 6.0)")
    p.add_argument(
        "--calibrate",
        type=count,
        default=0,
        metavar="N",
        help="set each clip to the 99.9%% quantile of its inputs on N noised digits images (plain ANNs; 0: keep alpha)",
    )
    p.add_argument(
        "--check",
        type=count,
        default=4,
        metavar="N",
        help="report the SNN-vs-quantised-ANN relative error on N noised inputs (0: skip)",
    )
    p.add_argument(
        "--finetune",
        type=count,
        default=0,
        metavar="N",
        help="block-wise fine-tuning: N Adam steps per UNet block on noised digits (0: none)",
    )
    p.add_argument("--lr", type=positive, default=1e-6, help="fine-tuning learning rate (paper: 1e-6)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="fine-tuning batch size (default 16)")
    add_seed(p)


def run(args: argparse.Namespace) -> int:
    from .. import convert as cv
    from ..models.qann import calibrate_alpha, quant_layers

    qann, cfg, fresh = cv.load_qann(args.file, bits=args.bits, alpha_init=args.alpha_init, weights=args.weights)
    batch = cv.noised_batches(cfg, args.seed, digits=bool(args.calibrate or args.finetune))
    if args.calibrate:
        calibrate_alpha(qann, *batch(args.calibrate))
        cfg.provenance["calibrated_on"] = f"{args.calibrate} noised digits images"
    elif fresh:
        print(
            f"note: {args.file} is a plain ANN; its clips are alpha={args.alpha_init} untrained "
            "(train a quantised ANN or pass --calibrate N)",
            file=sys.stderr,
        )
    snn = cv.convert(qann, signed=args.signed, norm=args.norm)
    if args.finetune:
        rep = cv.finetune(snn, qann, lambda: batch(args.batch_size), args.finetune, lr=args.lr, progress=True)
        cfg.provenance["finetune"] = {"steps_per_block": args.finetune, "lr": args.lr, "batch_size": args.batch_size}
        print(
            f"fine-tuned {len(rep)} blocks x {args.finetune} steps; block MSE first -> last: "
            + ", ".join(f"{k} {a:.3g}->{b:.3g}" for k, (a, b) in rep.items())
        )
    cfg.provenance["converted_from"] = str(args.file)
    cv.save_converted(args.out, snn, cfg)
    bits = cfg.model.bits
    print(
        f"wrote {args.out}: {len(quant_layers(qann))} IF layers, {bits}-bit -> T={snn.steps}, "
        f"{'signed' if args.signed else 'unsigned'} spikes, {args.norm} GroupNorm"
    )
    if args.check:
        x, t = batch(args.check)
        print(
            f"relative error SNN vs quantised ANN on {args.check} noised inputs: "
            f"{cv.conversion_error(qann, snn, x, t):.4f}"
        )
    return 0


CONVERT = Command(
    "convert",
    "ANN -> SNN conversion of a quantised-activation ANN UNet (SDM §6)",
    add_arguments,
    run,
    description="Every QuantReLU becomes an IF neuron (threshold = clip alpha, membrane "
    "alpha/2, reset by subtraction), run for T = 2**bits - 1 steps. Input: a "
    "quantised ANN (e.g. from 'sdmc train --preset digits-qann-2bit') or a plain ANN "
    "with --bits. The output is an ordinary model file (arch qsnn) that sdmc "
    "sample / eval / compile / energy / info read.",
)
