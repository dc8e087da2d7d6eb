"""Digits-FID of the ANN->SNN conversion route against an ANN, a quantised ANN and a directly trained SNN.

    .venv/bin/python benchmarks/conversion_table.py --steps 300 --finetune 50 --device cpu --out conv.json
    python benchmarks/conversion_table.py --steps 20000 --finetune 2000 --device cuda --out conv.json

Trains three models (one after the other, each scored as soon as it is trained) on the bundled digits
data with the same number of steps (presets ``digits-ann``,
``digits-qann-2bit``, ``digits``: the float ANN, the 2-bit quantised ANN and the SDDPM spiking UNet, all
ch 32, ch_mult 1,2, one block, about 0.67M parameters), converts the quantised ANN (``sdmc.convert``: IF,
threshold = clip, membrane clip/2, reset by subtraction, T = 3), block-wise fine-tunes a copy, then samples
every model with the same solver, steps and seeds and scores the images with digits-FID (the offline
digits classifier of ``sdmc eval``; training-split reference features, lower is better), as mean ± std over
``--seeds`` beside the real-data floor at the same n (held-out test digits; ``sdmc.metrics.quality``).

Rows: ANN, QANN, the literal conversion (unsigned spikes, GroupNorm per step; SDM paper) before and after
fine-tuning, two conversion variants without fine-tuning (signed spikes as in the released SDM code;
running-statistics GroupNorm, an sdmc option), and the directly trained SNN.  Also reported: parameter
counts, wall times, and the conversion error |SNN - QANN| / |QANN| on one fixed noised batch.

Validated on CPU only (``--steps 10 --finetune 2 -n 16 --sample-steps 3``: runs to completion in ~4 min
on the loaded 2-core box).  GPU time is not measured: for one H100 run under a 10-minute limit, start
around ``--steps 2000 --finetune 200`` (an estimate; the JSON is rewritten after every row, so a run cut
short still leaves the rows done).  Re-running with the same ``--workdir`` and ``--steps`` reuses the
trained models (training resumes from the newest checkpoint, which is already at the last step).

Needs nothing beyond sdmc's dependencies and no network.  ``--device cuda`` puts training, conversion,
fine-tuning, sampling and the FID features on the GPU.  Progress goes to stdout (flushed) and tqdm bars (training,
sampling, fine-tuning) to stderr; the markdown table is printed at the end and the JSON written to ``--out`` (atomically).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from pathlib import Path

import torch


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600, help="training steps of each model (default 600)")
    p.add_argument("--finetune", type=int, default=200, help="fine-tuning steps per UNet block (default 200)")
    p.add_argument(
        "--ft-lr",
        type=float,
        default=1e-4,
        help="fine-tuning learning rate (default 1e-4; the paper's 1e-6 goes with 20k steps per block; "
        "measured on a 200-step digits QANN, 20 steps/block, batch 16: relative error 0.146 -> "
        "0.135 (1e-5), 0.127 (1e-4), 0.126 (1e-3))",
    )
    p.add_argument("--ft-batch", type=int, default=32, help="fine-tuning batch size (default 32)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("-n", "--num", type=int, default=256, help="samples per model (default 256)")
    p.add_argument("--solver", default="ddim", help="sampling solver (default ddim)")
    p.add_argument("--sample-steps", type=int, default=20, help="solver steps (default 20)")
    p.add_argument("--batch-size", type=int, default=256, help="sampling batch (default 256)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument(
        "--seeds",
        default="0,1,2",
        help="sampling seeds (comma list; default 0,1,2): digits-FID/IS are reported as mean ± std over them",
    )
    p.add_argument("--workdir", help="where the trained models go (default: OUT stem + '_work')")
    p.add_argument("--out", default="conversion_table.json", help="JSON result (default conversion_table.json)")
    return p.parse_args(argv)


def train_preset(preset: str, args: argparse.Namespace, workdir: Path) -> tuple[Path, float]:
    from sdmc.diffusion.train import make_config, train

    cfg = make_config(
        preset,
        steps=args.steps,
        out=str(workdir / preset),
        device=args.device,
        seed=args.seed,
        sample_every=args.steps,
        save_every=args.steps,
        sample_n=0,
        log_every=max(1, args.steps // 10),
        tensorboard=False,
        progress=True,
        resume="auto",
    )
    t0 = time.perf_counter()
    path = train(cfg, log=lambda s: print(f"    {s}", flush=True))
    return Path(path), time.perf_counter() - t0


@functools.cache
def _digits(img_size: int):
    """The digits training set, loaded once (fine-tuning draws a batch per step per block)."""
    from sdmc.data import load_dataset

    return load_dataset("digits", img_size=img_size)


def noised_digits(n: int, img_size: int, schedule, gen: torch.Generator, device: torch.device):
    """``(x_t, t)``: ``n`` digits training images noised to uniform random diffusion steps."""
    ds = _digits(img_size)
    idx = torch.randint(len(ds), (n,), generator=gen)
    x0 = torch.stack([ds[int(i)][0] for i in idx])
    t = torch.randint(schedule.num_timesteps, (n,), generator=gen)
    xt = schedule.q_sample(x0, t, torch.randn(x0.shape, generator=gen))
    return xt.to(device), t.to(device)


def digits_quality(model, schedule, args: argparse.Namespace, device: torch.device):
    """``(Quality, seconds)``: digits metrics of ``args.num`` samples per sampling seed, with the floor."""
    from sdmc.diffusion.sampling import sample_images
    from sdmc.metrics.quality import digits_quality as quality

    t0 = time.perf_counter()
    q = quality(
        lambda seed: sample_images(
            model,
            schedule,
            args.num,
            solver=args.solver,
            steps=args.sample_steps,
            batch_size=args.batch_size,
            seed=seed,
            device=device,
            progress=True,
        ),
        args.num,
        seeds=[int(s) for s in args.seeds.split(",")],
    )
    return q, time.perf_counter() - t0


def n_params(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from sdmc import convert as cv
    from sdmc.backends.torch_exec import prepare
    from sdmc.checkpoint import load_model
    from sdmc.diffusion.schedule import NoiseSchedule
    from sdmc.utils import atomic_path

    if args.device == "cuda" and not torch.cuda.is_available():
        print("conversion_table: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    out = Path(args.out)
    workdir = Path(args.workdir) if args.workdir else out.with_name(out.stem + "_work")
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    say(
        f"conversion table: {args.steps} training steps per model, fine-tune {args.finetune} steps/block "
        f"(lr {args.ft_lr}), {args.num} samples {args.solver} {args.sample_steps} steps, device {device}; "
        f"work dir {workdir}"
    )
    rows: list[dict] = []
    result = {
        "args": vars(args),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "rows": rows,
    }

    def add_row(name: str, model, schedule, **extra) -> None:
        say(f"sampling {name} ...")
        q, wall = digits_quality(model, schedule, args, device)
        row = {
            "model": name,
            "digits_fid": q.mean["digits_fid"],
            "digits_fid_std": q.std["digits_fid"],
            "digits_is": q.mean["digits_is"],
            "digits_is_std": q.std["digits_is"],
            "sample_s": wall,
            **extra,
            "quality": q.to_dict(),
        }
        rows.append(row)
        result["floor"] = {"n": args.num, "values": q.floor, "note": q.note or None}
        say(f"  {name}: {q.line()} (sampling {wall:.1f} s)")
        write(partial=True)

    def write(partial: bool) -> None:
        result["complete"] = not partial
        with atomic_path(out) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=1))

    paths, train_s = {}, {}

    def trained(preset: str) -> Path:
        say(f"training {preset} for {args.steps} steps ...")
        paths[preset], train_s[preset] = train_preset(preset, args, workdir)
        say(f"  {preset}: {train_s[preset]:.1f} s -> {paths[preset]}")
        return paths[preset]

    ann, acfg = load_model(trained("digits-ann"), device=device)
    schedule = NoiseSchedule(acfg.diffusion)
    add_row("ANN (float, Swish)", ann, schedule, params=n_params(ann), train_s=train_s["digits-ann"], T=None)
    del ann

    qann, qcfg, _ = cv.load_qann(trained("digits-qann-2bit"))
    qann = qann.to(device).eval()
    add_row(
        "QANN (2-bit QuantReLU)", qann, schedule, params=n_params(qann), train_s=train_s["digits-qann-2bit"], T=None
    )

    gen = torch.Generator().manual_seed(args.seed + 1)
    x_chk, t_chk = noised_digits(64, qcfg.model.img_size, schedule, gen, device)
    variants = [
        ("converted SNN (paper: unsigned, per-step GroupNorm)", False, "step"),
        ("converted SNN, signed spikes (released code)", True, "step"),
        ("converted SNN, running GroupNorm (sdmc option)", False, "running"),
    ]
    snn0 = None
    for name, signed, norm in variants:
        t0 = time.perf_counter()
        snn = cv.convert(qann, signed=signed, norm=norm).to(device)
        conv_s = time.perf_counter() - t0
        err = cv.conversion_error(qann, snn, x_chk, t_chk)
        say(f"{name}: T={snn.steps}, relative error vs QANN {err:.4f}")
        add_row(
            name,
            snn,
            schedule,
            params=n_params(snn),
            train_s=train_s["digits-qann-2bit"],
            T=snn.steps,
            convert_s=conv_s,
            conversion_error=err,
            signed=signed,
            norm=norm,
        )
        if snn0 is None:
            snn0 = snn

    if args.finetune > 0:
        say(f"block-wise fine-tuning: {args.finetune} steps per block, lr {args.ft_lr}, batch {args.ft_batch} ...")
        ft_gen = torch.Generator().manual_seed(args.seed + 2)
        t0 = time.perf_counter()
        rep = cv.finetune(
            snn0,
            qann,
            lambda: noised_digits(args.ft_batch, qcfg.model.img_size, schedule, ft_gen, device),
            args.finetune,
            lr=args.ft_lr,
            progress=True,
        )
        ft_s = time.perf_counter() - t0
        err = cv.conversion_error(qann, snn0, x_chk, t_chk)
        say(f"fine-tuned in {ft_s:.1f} s; relative error vs QANN {err:.4f}")
        add_row(
            "converted SNN (paper) + block-wise fine-tuning",
            snn0,
            schedule,
            params=n_params(snn0),
            train_s=train_s["digits-qann-2bit"],
            T=snn0.steps,
            finetune_s=ft_s,
            conversion_error=err,
            signed=False,
            norm="step",
            finetune_report={k: list(v) for k, v in rep.items()},
        )
    del snn0, qann

    snn, scfg = load_model(trained("digits"), device=device)
    try:  # sample through the compiled executor, as sdmc sample does
        runner, how = prepare(snn, "inference"), "compiled torch executor"
    except Exception as e:  # noqa: BLE001 - one GPU run must not die here: fall back to the eager model, say so
        runner, how = snn, f"eager model (executor failed: {type(e).__name__}: {e})"
    say(f"directly trained SNN samples through the {how}")
    add_row(
        "directly trained SNN (SDDPM, IF)",
        runner,
        schedule,
        params=n_params(snn),
        train_s=train_s["digits"],
        T=scfg.model.snn_steps,
        sampled_with=how,
    )

    write(partial=False)
    print()
    floor = result.get("floor") or {}
    fv = floor.get("values")
    print(
        f"digits-FID / IS: mean ± std over sampling seeds {args.seeds}, {args.num} samples each, {args.solver} "
        f"{args.sample_steps} steps; {args.steps} training steps each; device {result['device_name'] or device}"
    )
    print(
        f"real-data floor ({args.num} held-out test digits): digits-FID {fv['digits_fid']:.1f}, digits-IS "
        f"{fv['digits_is']:.2f}"
        if fv
        else floor.get("note") or "no real-data floor"
    )
    print()
    print("| model | T | params | digits-FID | digits-IS | conv. error | train s | sample s |")
    print("|---|---|---|---|---|---|---|---|")

    def pm(v, s, fmt):
        return fmt.format(v) + ("" if s is None else " ± " + fmt.format(s))

    for r in rows:
        err = r.get("conversion_error")
        print(
            f"| {r['model']} | {r['T'] or '-'} | {r['params']:,} | {pm(r['digits_fid'], r['digits_fid_std'], '{:.1f}')}"
            f" | {pm(r['digits_is'], r['digits_is_std'], '{:.2f}')} | {'-' if err is None else f'{err:.3f}'} | "
            f"{r['train_s']:.0f} | {r['sample_s']:.1f} |"
        )
    print(f"\nwrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
