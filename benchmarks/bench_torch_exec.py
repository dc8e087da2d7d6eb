"""Eager spikingjelly UNet vs the compiled torch executor: time and peak memory, same weights, per precision.

    .venv/bin/python benchmarks/bench_torch_exec.py                 # all cases, fp32, 1 and 2 threads
    .venv/bin/python benchmarks/bench_torch_exec.py --cases fwd-T8,ddim10 --precision fp32,bf16,int8 --threads 1
    .venv/bin/python benchmarks/bench_torch_exec.py --device cuda --threads 8 --json out.json   # + cupy/triton

Cases (CPU defaults):
  fwd-T4 / fwd-T8   eval forward of the full CIFAR-10 SDM UNet (ch 128, ch_mult 1,2,2,4, 2 blocks), batch 2
  ddim10            DDIM, 10 steps, small SDM UNet (ch 32, ch_mult 1,2,2, 1 block, T=4, 32x32), batch 8
  train             one training step (loss, backward, clip, Adam) of that small UNet, batch 8 (fp32 / bf16)

Every (case, precision, threads) runs in a fresh subprocess: build the eager model, compile the executor from
it (eval cases: ``mode="inference"``; training: ``mode="train"``) at ``--precision``, check that their outputs
agree, then time both alternating (eager, executor, eager, ...; median of ``--repeats`` after one warm-up each)
so that load from other processes hits both alike.  The 1-thread figure is the headline; the load average is
printed before and after each case (a figure taken at load > 1 is not a result).  Quality, for a reduced
precision: the relative L2 error of the output against the fp32 executor and the per-layer spike mismatch
(fraction of spikes that differ from fp32's, every neuron layer; eval cases).  On CUDA the eager model is also
timed with each of spikingjelly's neuron implementations (``--sj-impl``: its ``torch`` reference, its native
``cuda`` kernels and its ``triton`` kernels, chosen through ``SJ_IF_CUDA_IMPLEMENTATION`` /
``SJ_LIF_CUDA_IMPLEMENTATION``, which spikingjelly reads at import: one worker each).
Peak memory: the Linux peak RSS (``VmHWM``) of that subprocess, reset through ``/proc/self/clear_refs`` right
before one run of each, minus the RSS at that moment (glibc runs with a fixed ``MALLOC_MMAP_THRESHOLD_`` so
that freed tensors leave the RSS); on CUDA ``torch.cuda.max_memory_allocated``.
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


def _tag(fn, model):
    fn.model = model  # the eager model behind a timed callable (spikingjelly backend switching)
    return fn


def _spikes(ex, *args) -> dict:
    """Every neuron layer's spikes of one call of executor ``ex``."""
    import torch

    from sdmc.backends.torch import NeuronModule

    out, hooks = {}, []
    for name, m in ex.named_modules():
        if isinstance(m, NeuronModule):
            hooks.append(
                m.register_forward_hook(lambda mod, a, y, name=name: out.__setitem__(name, y.detach().float()))
            )
    try:
        with torch.no_grad():
            y = ex(*args)
    finally:
        for h in hooks:
            h.remove()
    return {"__out__": y.float(), **out}


def _quality(eager, ex, precision: str, *args) -> dict:
    """Output error and per-layer spike mismatch of ``ex`` (at ``precision``) against the fp32 executor."""
    if precision == "fp32":
        return {}
    from sdmc.backends.torch import compile_torch

    ref = compile_torch(eager, mode="inference", channels_last=ex._channels_last, device=args[0].device)
    a, b = _spikes(ref, *args), _spikes(ex, *args)
    ya, yb = a.pop("__out__"), b.pop("__out__")
    mism = {k: float((a[k] != b[k]).float().mean()) for k in a if k in b}
    return {
        "out_rel_err_vs_fp32": float((ya - yb).norm() / ya.norm()),
        "spike_mismatch_max": max(mism.values(), default=0.0),
        "spike_mismatch_mean": sum(mism.values()) / max(1, len(mism)),
        "spike_mismatch_per_layer": mism,
    }


def _setup(case: str, channels_last: bool, device: str = "cpu", batch: int | None = None, precision: str = "fp32"):
    """(eager_fn, exec_fn, agreement check) for a case; both callables run one unit of work on ``device``."""
    import torch

    from sdmc.backends.torch import compile_torch
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
        ex = compile_torch(eager, mode="inference", channels_last=channels_last, device=device, precision=precision)
        B = batch or 2
        x = torch.randn(B, 3, 32, 32, device=device)
        t = torch.linspace(10, 990, B, device=device).long()

        def run(m):
            with torch.no_grad():
                return m(x, t)

        a, b = run(eager), run(ex)
        check = {"max_abs_diff": float((a - b).abs().max()), "out_abs_max": float(a.abs().max())}
        check.update(_quality(eager, ex, precision, x, t))
        return _tag(lambda: run(eager), eager), (lambda: run(ex)), check
    cfg = _small_cfg()
    eager = build_model(cfg).to(device)
    sched = NoiseSchedule(DiffusionConfig())
    B = batch or 8
    if case == "ddim10":
        from sdmc.diffusion.sampling import sample_images

        eager.eval()
        ex = compile_torch(eager, mode="inference", channels_last=channels_last, device=device, precision=precision)

        def run(m):
            return sample_images(
                m, sched, B, solver="ddim", steps=10, batch_size=B, seed=0, progress=False, device=device
            )

        a, b = run(eager), run(ex)
        check = {"max_abs_diff": float((a - b).abs().max()), "mean_abs_diff": float((a - b).abs().mean())}
        x1 = torch.randn(B, 3, 32, 32, device=device)
        check.update(_quality(eager, ex, precision, x1, torch.linspace(10, 990, B, device=device).long()))
        return _tag(lambda: run(eager), eager), (lambda: run(ex)), check
    if case == "train":
        eager.train()
        ex = compile_torch(
            copy.deepcopy(eager), mode="train", channels_last=channels_last, device=device, precision=precision
        )
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
        return _tag(lambda: step(eager), eager), (lambda: step(ex)), check
    raise SystemExit(f"unknown case {case!r}; choose from {CASES}")


def _profile(fn, cuda: bool, top: int = 12) -> list:
    """Where one run of ``fn`` spends its time (torch.profiler): the ``top`` ops by self time, with shares."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as p:
        fn()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    evs = sorted(p.key_averages(), key=lambda e: -getattr(e, key))
    total = sum(getattr(e, key) for e in evs) or 1.0
    return [[e.key, getattr(e, key) / 1e3, getattr(e, key) / total] for e in evs[:top]]


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
    case: str,
    repeats: int,
    threads: int,
    channels_last: bool,
    device: str = "cpu",
    batch: int | None = None,
    precision: str = "fp32",
) -> dict:
    import torch

    torch.set_num_threads(threads)
    cuda = device.startswith("cuda")
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    t0 = time.perf_counter()
    f_eager, f_exec, check = _setup(case, channels_last, device, batch, precision)
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
    prof = _profile(f_exec, cuda) if os.environ.get("SDMC_BENCH_PROFILE") else None
    peak = (lambda f: _cuda_peak(f, device)) if cuda else _peak_delta
    mem_e = peak(f_eager)
    mem_x = peak(f_exec)
    return {
        "case": case,
        "precision": precision,
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
        "sj_impl": os.environ.get("SJ_IF_CUDA_IMPLEMENTATION", "auto") if cuda else "cpu",
        "exec_profile": prof,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (headline: 1)")
    ap.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16, int8 (int8: eval cases)")
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
    ap.add_argument(
        "--sj-impl",
        default=None,
        help="CUDA: spikingjelly neuron implementations for the eager baseline, comma-separated from torch, cuda, "
        "triton, auto (default: torch,cuda,triton)",
    )
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--profile", action="store_true", help="torch.profiler table of one executor run per case")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.channels_last is None:
        a.channels_last = not a.device.startswith("cuda")
    if a.profile:
        os.environ["SDMC_BENCH_PROFILE"] = "1"  # read by the workers
    threads = [int(t) for t in str(a.threads).split(",")]
    if a.worker:
        print(json.dumps(worker(a.worker, a.repeats, threads[0], a.channels_last, a.device, a.batch, a.precision)))
        return 0
    rows, failed = [], 0
    print(
        f"{'case':8} {'prec':5} {'thr':>3} {'eager s':>9} {'exec s':>9} {'speedup':>8} {'eager MB':>9} {'exec MB':>9} "
        f"{'mem':>6} {'load before/after':>17}  check"
    )
    for case in a.cases.split(","):
        for prec in a.precision.split(","):
            if prec == "int8" and case == "train":
                continue  # int8 is an inference precision
            impls = (a.sj_impl or "torch,cuda,triton").split(",") if a.device.startswith("cuda") else [None]
            for th, impl in ((th, impl) for th in threads for impl in impls):
                r = _run_worker(a, case, prec, th, impl)
                if r is None:
                    failed += 1
                    continue
                rows.append(r)
                chk = ", ".join(
                    f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in r["check"].items()
                    if not isinstance(v, dict)
                )
                sj = f"; eager neurons: spikingjelly {impl}" if impl else ""
                print(
                    f"{case:8} {prec:5} {th:3d} {r['eager_s']:9.3f} {r['exec_s']:9.3f} {r['speedup']:7.2f}x "
                    f"{r['eager_peak_mb']:9.1f} {r['exec_peak_mb']:9.1f} {r['mem_ratio']:5.2f}x "
                    f"{r['load_before']:8.2f}/{r['load_after']:<8.2f}  {chk}{sj}",
                    flush=True,
                )
                for name, ms, share in r.get("exec_profile") or []:
                    print(f"    {100 * share:5.1f}%  {ms:9.2f} ms  {name}")
    if a.json:
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
        from sdmc.utils import atomic_write_text

        atomic_write_text(a.json, json.dumps({"machine": _machine(threads), "rows": rows}, indent=1))
    print(f"machine: {_machine(threads)}" + (f", {rows[0]['gpu']}" if rows and rows[0].get("gpu") else ""))
    return 1 if failed else 0


def _run_worker(a, case: str, precision: str, threads: int, sj_impl: str | None = None) -> dict | None:
    """One (case, precision, threads) in a fresh subprocess, with the 1-minute load average around it;
    ``sj_impl``: spikingjelly's neuron implementation for the eager model (CUDA)."""
    # a fixed mmap threshold makes glibc return big freed blocks to the OS, so RSS follows live memory
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        MALLOC_MMAP_THRESHOLD_="65536",
        MALLOC_TRIM_THRESHOLD_="131072",
    )
    if sj_impl:
        env.update(SJ_IF_CUDA_IMPLEMENTATION=sj_impl, SJ_LIF_CUDA_IMPLEMENTATION=sj_impl)
    cmd = [sys.executable, __file__, "--worker", case, "--repeats", str(a.repeats), "--threads", str(threads)]
    cmd += ["--device", a.device, "--precision", precision, "--channels-last" if a.channels_last else "--nchw"]
    if a.batch:
        cmd += ["--batch", str(a.batch)]
    before = os.getloadavg()[0]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    after = os.getloadavg()[0]
    if p.returncode:
        print(f"{case} {precision} {threads} threads {sj_impl or ''}: worker failed:\n{p.stderr[-3000:]}")
        return None
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r.update(load_before=before, load_after=after)
    return r


def _machine(threads) -> str:
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
    caps = ""
    try:
        import torch

        from sdmc.backends.torch.precision import cpu_has_native_bf16

        caps = f", {torch.backends.cpu.get_cpu_capability()}, native bf16 {cpu_has_native_bf16()}"
    except Exception:  # noqa: BLE001 - a description only
        pass
    return f"{cpu}, {os.cpu_count()} CPUs{caps}, threads {threads}, torch {tv}, load avg {load:.1f}"


if __name__ == "__main__":
    sys.exit(main())
