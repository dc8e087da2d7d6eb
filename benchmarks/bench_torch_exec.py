"""Eager spikingjelly UNet vs the compiled torch executor: time and peak memory, same weights.

    .venv/bin/python benchmarks/bench_torch_exec.py                 # all cases, 2 threads
    .venv/bin/python benchmarks/bench_torch_exec.py --cases ddim10,train --repeats 5 --json out.json

Cases (CPU defaults):
  fwd-T4 / fwd-T8   eval forward of the full CIFAR-10 SDM UNet (ch 128, ch_mult 1,2,2,4, 2 blocks), batch 2
  ddim10            DDIM, 10 steps, small SDM UNet (ch 32, ch_mult 1,2,2, 1 block, T=4, 32x32), batch 8
  train             one training step (loss, backward, clip, Adam) of that small UNet, batch 8

Every case runs in a fresh subprocess: build the eager model, compile the executor from it (eval cases:
``mode="inference"``; training: ``mode="train"``), check that their outputs agree, then time both
interleaved (eager, executor, eager, ...; median of ``--repeats`` after one warm-up each) so that load
from other processes hits both alike.  Peak memory: the Linux peak RSS (``VmHWM``) of that subprocess,
reset through ``/proc/self/clear_refs`` right before one run of each, minus the RSS at that moment
(glibc runs with a fixed ``MALLOC_MMAP_THRESHOLD_`` so that freed tensors leave the RSS).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time

CASES = ("fwd-T4", "fwd-T8", "ddim10", "train")


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _peak_delta(fn) -> int:
    """Bytes of peak RSS above the current RSS while ``fn()`` runs (Linux; 0 elsewhere)."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return 0
    base = _status("VmRSS")
    fn()
    return max(0, _status("VmHWM") - base)


def _small_cfg(T=4):
    from sdmc.config import ModelConfig

    return ModelConfig(arch="sdm", ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, snn_steps=T, img_ch=3, img_size=32)


def _setup(case: str, channels_last: bool, device: str = "cpu", batch: int | None = None):
    """(eager_fn, exec_fn, agreement check) for a case; both callables run one unit of work on ``device``."""
    import torch

    from sdmc.backends.torch_exec import compile_torch
    from sdmc.config import DiffusionConfig, ModelConfig
    from sdmc.diffusion.schedule import NoiseSchedule
    from sdmc.models import build_model

    torch.manual_seed(0)
    if case.startswith("fwd"):
        T = int(case.split("T")[1])
        cfg = ModelConfig(
            arch="sdm", ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2, snn_steps=T, img_ch=3, img_size=32
        )
        eager = build_model(cfg).eval().to(device)
        ex = compile_torch(eager, mode="inference", channels_last=channels_last, device=device)
        B = batch or 2
        x = torch.randn(B, 3, 32, 32, device=device)
        t = torch.linspace(10, 990, B, device=device).long()

        def run(m):
            with torch.no_grad():
                return m(x, t)

        a, b = run(eager), run(ex)
        check = {"max_abs_diff": float((a - b).abs().max()), "out_abs_max": float(a.abs().max())}
        return (lambda: run(eager)), (lambda: run(ex)), check
    cfg = _small_cfg()
    eager = build_model(cfg).to(device)
    sched = NoiseSchedule(DiffusionConfig())
    B = batch or 8
    if case == "ddim10":
        from sdmc.diffusion.sampling import sample_images

        eager.eval()
        ex = compile_torch(eager, mode="inference", channels_last=channels_last, device=device)

        def run(m):
            return sample_images(
                m, sched, B, solver="ddim", steps=10, batch_size=B, seed=0, progress=False, device=device
            )

        a, b = run(eager), run(ex)
        check = {"max_abs_diff": float((a - b).abs().max()), "mean_abs_diff": float((a - b).abs().mean())}
        return (lambda: run(eager)), (lambda: run(ex)), check
    if case == "train":
        eager.train()
        ex = compile_torch(copy.deepcopy(eager), mode="train", channels_last=channels_last, device=device)
        x0 = torch.rand(B, 3, 32, 32, device=device) * 2 - 1
        opts = {id(m): torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-4) for m in (eager, ex)}

        def step(m, seed=0):
            opt = opts[id(m)]
            g = torch.Generator(device=device).manual_seed(seed)
            loss = sched.loss(m, x0, generator=g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            return loss.detach()

        # agreement: gradients of one step from the same weights, in float64 (in float32 a different conv
        # summation order can flip a spike whose membrane sits at the threshold, and the surrogate gradient
        # downstream of it changes)
        ga, gb = {}, {}
        e64 = copy.deepcopy(eager).double()
        x64 = compile_torch(copy.deepcopy(e64), mode="train", channels_last=channels_last, device=device)
        x0d = x0.double()
        for m, grads in ((e64, ga), (x64, gb)):
            g = torch.Generator(device=device).manual_seed(1)
            m.zero_grad(set_to_none=True)
            sched.loss(m, x0d, generator=g).backward()
            grads.update({k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
            m.zero_grad(set_to_none=True)
        # one relative error over all gradients (a conv bias before a training-mode BN has a gradient that is
        # zero up to rounding, so per-tensor relative errors are meaningless there)
        num = sum(float((ga[k] - gb[k]).pow(2).sum()) for k in ga) ** 0.5
        den = sum(float(ga[k].pow(2).sum()) for k in ga) ** 0.5
        check = {"rel_grad_diff": num / den, "same_param_names": sorted(ga) == sorted(gb)}
        return (lambda: step(eager)), (lambda: step(ex)), check
    raise SystemExit(f"unknown case {case!r}; choose from {CASES}")


def _cuda_peak(fn, device) -> int:
    """Bytes of CUDA memory allocated at peak above what was allocated before ``fn()``."""
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - base)


def worker(
    case: str, repeats: int, threads: int, channels_last: bool, device: str = "cpu", batch: int | None = None
) -> dict:
    import torch

    torch.set_num_threads(threads)
    cuda = device.startswith("cuda")
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    t0 = time.perf_counter()
    f_eager, f_exec, check = _setup(case, channels_last, device, batch)
    setup_s = time.perf_counter() - t0
    f_eager(), f_exec()  # warm-up
    te, tx = [], []
    for _ in range(repeats):
        for fn, acc in ((f_eager, te), (f_exec, tx)):
            sync()
            a = time.perf_counter()
            fn()
            sync()
            acc.append(time.perf_counter() - a)
    peak = (lambda f: _cuda_peak(f, device)) if cuda else _peak_delta
    mem_e = peak(f_eager)
    mem_x = peak(f_exec)
    return {
        "case": case,
        "threads": threads,
        "repeats": repeats,
        "setup_s": setup_s,
        "eager_s": statistics.median(te),
        "exec_s": statistics.median(tx),
        "eager_all": te,
        "exec_all": tx,
        "speedup": statistics.median(te) / statistics.median(tx),
        "eager_peak_mb": mem_e / 2**20,
        "exec_peak_mb": mem_x / 2**20,
        "mem_ratio": (mem_x / mem_e) if mem_e else float("nan"),
        "check": check,
        "channels_last": channels_last,
        "device": device,
        "batch": batch,
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--nchw",
        dest="channels_last",
        action="store_false",
        default=None,
        help="compile the executor without channels-last (the CPU default is channels-last)",
    )
    ap.add_argument(
        "--device",
        default="cpu",
        help="cpu (default) or cuda[:N]; on CUDA, peak memory is "
        "torch.cuda.max_memory_allocated and channels-last is off unless --channels-last",
    )
    ap.add_argument("--channels-last", dest="channels_last", action="store_true", default=None)
    ap.add_argument("--batch", type=int, help="batch size (default: 2 for fwd, 8 for ddim10/train)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.channels_last is None:
        a.channels_last = not a.device.startswith("cuda")
    if a.worker:
        print(json.dumps(worker(a.worker, a.repeats, a.threads, a.channels_last, a.device, a.batch)))
        return 0
    # a fixed mmap threshold makes glibc return big freed blocks to the OS, so RSS follows live memory
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(a.threads),
        MKL_NUM_THREADS=str(a.threads),
        MALLOC_MMAP_THRESHOLD_="65536",
        MALLOC_TRIM_THRESHOLD_="131072",
    )
    rows = []
    print(f"{'case':8} {'eager s':>9} {'exec s':>9} {'speedup':>8} {'eager MB':>9} {'exec MB':>9} {'mem':>6}  check")
    for case in a.cases.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            case,
            "--repeats",
            str(a.repeats),
            "--threads",
            str(a.threads),
            "--device",
            a.device,
        ]
        cmd.append("--channels-last" if a.channels_last else "--nchw")
        if a.batch:
            cmd += ["--batch", str(a.batch)]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode:
            print(f"{case}: worker failed:\n{p.stderr[-3000:]}")
            return 1
        r = json.loads(p.stdout.strip().splitlines()[-1])
        rows.append(r)
        chk = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["check"].items())
        print(
            f"{case:8} {r['eager_s']:9.3f} {r['exec_s']:9.3f} {r['speedup']:7.2f}x {r['eager_peak_mb']:9.1f} "
            f"{r['exec_peak_mb']:9.1f} {r['mem_ratio']:5.2f}x  {chk}",
            flush=True,
        )
    if a.json:
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
        from sdmc.utils import atomic_write_text

        atomic_write_text(a.json, json.dumps({"machine": _machine(a.threads), "rows": rows}, indent=1))
    print(f"machine: {_machine(a.threads)}" + (f", {rows[0]['gpu']}" if rows and rows[0].get("gpu") else ""))
    return 0


def _machine(threads: int) -> str:
    import platform

    try:
        import torch

        tv = torch.__version__
    except ImportError:  # pragma: no cover
        tv = "?"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} CPUs, {threads} threads, torch {tv}, load avg {load:.1f}"


if __name__ == "__main__":
    sys.exit(main())
