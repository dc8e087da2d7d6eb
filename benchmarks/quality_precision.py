"""Sample quality of each executor precision: digits-FID / IS of a digits model's DDIM samples, same seeds.

    .venv/bin/python benchmarks/quality_precision.py                     # the bundled digits model
    .venv/bin/python benchmarks/quality_precision.py runs/digits/model.safetensors
    .venv/bin/python benchmarks/quality_precision.py CKPT --n 1000 --steps 50 --seeds 0,1,2 --json q.json

For every precision (``fp32``, ``bf16``, ``int8``; one the machine does not support is reported with the
reason) and every seed, the checkpoint is compiled with ``compile_torch(..., mode="inference",
precision=...)`` and ``--n`` images are drawn with the same seed, then scored with the bundled digits
classifier (``sdmc.metrics.digits``).  The fp32 spread over seeds (max - min digits-FID) is the yardstick: a
precision whose mean digits-FID is further from fp32's than that spread costs quality (issue 17: it must not
be a default anywhere).  Also reported: the mean absolute pixel difference to the fp32 samples of the same seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def run(ckpt: str, precisions: list[str], seeds: list[int], n: int, steps: int, batch: int, threads: int) -> dict:
    import torch

    from sdmc.backends.torch import compile_torch
    from sdmc.backends.torch.precision import support
    from sdmc.checkpoint import load_model
    from sdmc.diffusion.sampling import sample_images
    from sdmc.diffusion.schedule import NoiseSchedule
    from sdmc.metrics.digits import digits_scores

    torch.set_num_threads(threads)
    model, cfg = load_model(ckpt)
    sched = NoiseSchedule(cfg.diffusion)
    sup = support("cpu", "inference")
    rows, fp32_imgs = [], {}
    for p in precisions:
        if sup.get(p) is not None:
            rows.append({"precision": p, "skipped": sup[p]})
            continue
        ex = compile_torch(model, mode="inference", precision=p)
        per_seed = []
        for seed in seeds:
            t0 = time.perf_counter()
            imgs = sample_images(ex, sched, n, "ddim", steps, batch_size=batch, seed=seed, progress=False)
            sec = time.perf_counter() - t0
            sc = digits_scores(imgs)
            if p == "fp32":
                fp32_imgs[seed] = imgs
            diff = float((imgs - fp32_imgs[seed]).abs().mean()) if seed in fp32_imgs else float("nan")
            per_seed.append({"seed": seed, "digits_fid": sc["digits_fid"], "digits_is": sc["digits_is"],
                             "pixel_mad_vs_fp32": diff, "sample_s": sec})  # fmt: skip
        fids = [r["digits_fid"] for r in per_seed]
        rows.append({"precision": p, "note": ex.precision.note, "seeds": per_seed, "fid_mean": statistics.mean(fids),
                     "fid_spread": max(fids) - min(fids), "is_mean": statistics.mean(r["digits_is"] for r in per_seed)})  # fmt: skip
    ref = next((r for r in rows if r["precision"] == "fp32" and "fid_mean" in r), None)
    for r in rows:
        if ref is not None and "fid_mean" in r:
            r["fid_delta_vs_fp32"] = r["fid_mean"] - ref["fid_mean"]
            r["within_fp32_seed_spread"] = abs(r["fid_delta_vs_fp32"]) <= ref["fid_spread"]
    from sdmc.metrics.quality import digits_floor, floor_note

    floor = {"values": digits_floor(n, cfg.model.img_size), "note": floor_note(n) or None}
    return {"checkpoint": ckpt, "n": n, "steps": steps, "seeds": seeds, "threads": threads, "floor": floor,
            "rows": rows}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "checkpoint",
        nargs="?",
        default="bundled:digits",
        help="a digits model (default: bundled:digits; or one from `sdmc train --preset digits`)",
    )
    ap.add_argument("--precisions", default="fp32,bf16,int8")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated sampling seeds (>= 2 to measure a spread)")
    ap.add_argument("--n", type=int, default=500, help="samples per seed and precision")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)
    res = run(a.checkpoint, a.precisions.split(","), [int(s) for s in a.seeds.split(",")], a.n, a.steps, a.batch,
              a.threads)  # fmt: skip
    fv = res["floor"]["values"]
    print(f"real-data floor ({a.n} held-out test digits): digits-FID {fv['digits_fid']:.2f}, IS {fv['digits_is']:.2f}"
          if fv else res["floor"]["note"])  # fmt: skip
    print(f"{'precision':9} {'digits-FID':>11} {'spread':>7} {'IS':>6} {'dFID':>7} {'pixel MAD':>9}  note")
    for r in res["rows"]:
        if "skipped" in r:
            print(f"{r['precision']:9} skipped: {r['skipped']}")
            continue
        mad = statistics.mean(s["pixel_mad_vs_fp32"] for s in r["seeds"])
        print(f"{r['precision']:9} {r['fid_mean']:11.2f} {r['fid_spread']:7.2f} {r['is_mean']:6.2f} "
              f"{r.get('fid_delta_vs_fp32', float('nan')):7.2f} {mad:9.4f}  {r['note']}")  # fmt: skip
    if a.json:
        from sdmc.utils import atomic_write_text

        atomic_write_text(a.json, json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
