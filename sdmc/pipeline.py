"""``sdmc demo``: the whole pipeline on the bundled digits data, on a laptop CPU, in minutes.

Stages, each writing into ``--out`` and printing one summary line:

1. ``data``     a grid of the bundled digits (scikit-learn 8x8, resized to 16x16, in [-1, 1])
2. ``train``    a small SDDPM spiking UNet (preset ``digits``), EMA exported as ``model.safetensors``
3. ``sample``   several solvers through the torch executor (PNG grids + uint8 ``.npz``), scored with digits-FID
4. ``compile``  trace to the spiking IR, run the inference and neuromorphic pass pipelines, save ``.sdmc``
                files, check the torch executor against the golden simulator
5. ``energy``   per-layer SOP/MAC energy report (table, JSON, Markdown, plot) next to the ANN UNet
6. ``lava``     netx export of the model's spiking encoder, run in Lava's fixed-point CPU simulation
                and compared with sdmc's bit-exact Loihi model

Nothing is faked: a stage that cannot run here (e.g. Lava not installed) says so and is skipped.
``summary.json`` records every stage's numbers.
"""
from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import SdmcError
from .utils import atomic_write_text

# (solver name, steps, extra options); 'analytic-ddim' needs the Γ statistics estimated in the stage
DEMO_SOLVERS = [("ddpm", 100, {}), ("ddim", 20, {}), ("dpm-solver-2", 20, {"method": "multistep"}),
                ("dpm-solver++", 10, {}), ("analytic-ddim", 20, {})]
QUICK_SOLVERS = [("ddim", 5, {}), ("dpm-solver++", 5, {})]


class Pipeline:
    def __init__(self, out: Path, quick: bool = False, device: str = "cpu", seed: int = 0,
                 steps: int | None = None, n_samples: int | None = None) -> None:
        self.out, self.quick, self.device, self.seed = Path(out), quick, device, seed
        self.train_steps = steps if steps is not None else (30 if quick else None)
        self.n_samples = n_samples or (32 if quick else 256)
        self.out.mkdir(parents=True, exist_ok=True)
        self.summary: dict[str, dict] = {}
        self.model = None
        self.cfg = None
        self.model_path: Path | None = None
        self.graph = None

    def stage(self, name: str, fn: Callable[[], dict], required: bool = True) -> None:
        t0 = time.perf_counter()
        print(f"\n[{name}] ...", flush=True)
        try:
            result = fn()
        except SdmcError as e:
            if required:
                raise
            result = {"status": f"failed: {e}"}
        except Exception as e:  # an optional stage must not hide the stages before it
            if required:
                raise
            traceback.print_exc()
            result = {"status": f"failed: {type(e).__name__}: {e}"}
        result["seconds"] = round(time.perf_counter() - t0, 1)
        self.summary[name] = result
        shown = {k: v for k, v in result.items() if k != "seconds" and not isinstance(v, (dict, list))}
        print(f"[{name}] {result['seconds']:.1f}s: " + ", ".join(f"{k}={v}" for k, v in shown.items()), flush=True)

    # ------------------------------------------------------------------------------------ stages
    def data(self) -> dict:
        from .data import load_dataset
        from .data.images import save_grid

        ds = load_dataset("digits", img_size=16)
        save_grid(torch.stack([ds[i][0] for i in range(64)]), self.out / "data_digits.png", nrow=8)
        return {"train_images": len(ds), "grid": "data_digits.png"}

    def train(self) -> dict:
        from .checkpoint import load_model
        from .diffusion.train import make_config, train

        overrides = dict(out=str(self.out / "train"), device=self.device, seed=self.seed)
        if self.train_steps is not None:
            overrides.update(steps=self.train_steps, sample_every=max(self.train_steps, 1),
                             save_every=max(self.train_steps, 1), log_every=max(1, self.train_steps // 5))
        cfg = make_config("digits", **overrides)
        path = train(cfg, log=lambda s: print("  " + s, flush=True))
        self.model_path = Path(path)
        self.model, self.cfg = load_model(self.model_path, device=self.device)
        losses = []
        metrics = Path(cfg.out) / "metrics.jsonl"
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                rec = json.loads(line)
                if "loss" in rec:
                    losses.append(rec["loss"])
        m = self.cfg.model
        return {"model": str(self.model_path.relative_to(self.out)), "arch": m.arch, "T": m.snn_steps,
                "ch": m.ch, "steps": cfg.steps, "batch": cfg.batch_size,
                "loss_first": round(losses[0], 4) if losses else None,
                "loss_last": round(losses[-1], 4) if losses else None}

    def sample(self) -> dict:
        from .data.images import save_grid, to_uint8
        from .diffusion.analytic import estimate_gamma
        from .diffusion.sampling import sample_images
        from .diffusion.schedule import NoiseSchedule
        from .metrics.digits import digits_scores
        from .utils import atomic_path

        from .backends.torch_exec import prepare

        schedule = NoiseSchedule(self.cfg.diffusion)
        fast = prepare(self.model, "inference")  # the compiled executor, as `sdmc sample` uses by default
        rows = {}
        gamma = None
        solvers = QUICK_SOLVERS if self.quick else DEMO_SOLVERS
        for name, steps, opts in solvers:
            kw = dict(opts)
            if name.startswith("analytic"):
                if gamma is None:
                    from .data import load_dataset
                    ds = load_dataset("digits", img_size=self.cfg.model.img_size)
                    gamma = estimate_gamma(self.model, schedule, ds, budget=2 if self.quick else 8,
                                           batch_size=64, seed=self.seed, progress=False)
                kw["gamma"] = gamma
            t0 = time.perf_counter()
            imgs = sample_images(fast, schedule, self.n_samples, solver=name, steps=steps, batch_size=128,
                                 seed=self.seed, device=self.device, progress=False, **kw)
            secs = time.perf_counter() - t0
            tag = f"{name}_{steps}"
            save_grid(imgs[:64], self.out / f"samples_{tag}.png", nrow=8)
            with atomic_path(self.out / f"samples_{tag}.npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez_compressed(fh, images=to_uint8(imgs))
            scores = digits_scores(imgs)
            rows[tag] = {"seconds": round(secs, 1), "digits_fid": round(float(scores["digits_fid"]), 1),
                         "digits_is": round(float(scores["digits_is"]), 2)}
            print(f"  {tag:>18}: {secs:6.1f}s  digits-FID {rows[tag]['digits_fid']:8.1f}  "
                  f"digits-IS {rows[tag]['digits_is']:.2f}", flush=True)
        # threshold guidance (SDM §4.3) on the DDIM row, and the untrained reference for scale
        name, steps, _ = next(row for row in solvers if row[0] == "ddim")
        imgs = sample_images(fast, schedule, self.n_samples, solver=name, steps=steps, batch_size=128,
                             seed=self.seed, device=self.device, progress=False, threshold=0.997)
        s = digits_scores(imgs)
        rows[f"{name}_{steps}_threshold0.997"] = {"digits_fid": round(float(s["digits_fid"]), 1),
                                                  "digits_is": round(float(s["digits_is"]), 2)}
        noise = torch.randn(self.n_samples, *imgs.shape[1:], generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
        rows["reference_gaussian_noise"] = {"digits_fid": round(float(digits_scores(noise)["digits_fid"]), 1)}
        best = min((v["digits_fid"], k) for k, v in rows.items() if "seconds" in v)
        return {"n": self.n_samples, "best": f"{best[1]} (digits-FID {best[0]})", "solvers": rows}

    def compile(self) -> dict:
        from . import ir, passes
        from .backends import torch_exec
        from .frontends import trace
        from .sim import golden

        m = self.cfg.model
        graph = trace(self.model.cpu(), (1, m.img_ch, m.img_size, m.img_size))
        ir.save(graph, self.out / "model.ir.sdmc")
        inf = passes.run(graph, "inference")
        ir.save(inf, self.out / "model.inference.sdmc")
        neu = passes.run(graph, "neuromorphic")
        ir.save(neu, self.out / "model.neuromorphic.sdmc")
        summary_text = passes.format_summary(passes.summarize(neu))
        atomic_write_text(self.out / "inspect.txt", summary_text + "\n")
        torch_exec.save_compiled(self.out / "model.torch.sdmc", graph, self.cfg, mode="inference")
        self.graph = graph
        # the executor agrees with the golden simulator on a real batch
        g = torch.Generator().manual_seed(self.seed)
        x = torch.randn(4, m.img_ch, m.img_size, m.img_size, generator=g)
        t = torch.tensor([0, 250, 500, 999])
        ref = golden.run(graph, {"x": x.double().numpy(), "t": t.numpy()})
        ref = next(iter(ref.values()))
        ex = torch_exec.compile_torch(graph, mode="inference", dtype=torch.float64)
        with torch.no_grad():
            got = ex(x.double(), t).numpy()
        eager = self.model.double()(x.double(), t).detach().numpy()
        self.model.float()
        return {"nodes": len(list(graph)), "inference_nodes": len(list(inf)), "neuromorphic_nodes": len(list(neu)),
                "executor_vs_golden_maxdiff": float(np.abs(got - ref).max()),
                "eager_vs_golden_maxdiff": float(np.abs(eager - ref).max()),
                "files": "model.ir.sdmc, model.inference.sdmc, model.neuromorphic.sdmc, model.torch.sdmc, inspect.txt"}

    def energy(self) -> dict:
        from .energy import analyze

        rep = analyze(self.model, data="digits", solver="ddim", steps=20, n_images=16 if self.quick else 32,
                      calib_steps=4 if self.quick else 8, seed=self.seed)
        rep.write(self.out / "energy.json", "json")
        rep.write(self.out / "energy.md", "markdown")
        rep.plot(self.out / "energy.png")
        rep.print(layers=False)
        d = rep.to_dict()
        out = {"files": "energy.json, energy.md, energy.png",
               "mean_firing_rate": round(float(d["calibration"]["mean_firing_rate"]), 4)}
        for conv, tot in d["totals"].items():
            out[f"{conv}_mJ_per_image"] = round(tot["per_image_mJ"], 4)
        ann = d.get("ann") or {}
        if "per_image_mJ" in ann:
            out["ann_mJ_per_image"] = round(ann["per_image_mJ"], 4)
        return out

    def lava(self) -> dict:
        from . import ir
        from .backends.lava import export_netx, install_import_fixes, run_netx
        from .backends.lava import quantize as lq
        from .backends.lava.export import extract_chain
        from .sim import loihi as lm

        # the spiking encoder: static image -> conv -> BN -> IF (the first neuromorphic layer of the UNet)
        sd = {k: v.detach().cpu().double().numpy() for k, v in self.model.state_dict().items()}
        m = self.cfg.model
        g = ir.Graph(T=m.snn_steps)
        g.add(ir.Input(name="x", shape=(m.img_ch, m.img_size, m.img_size), dtype="float64"))
        g.add(ir.Repeat(name="xs", inputs=("x",)))
        for k in ("conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
            g.add_param(k, sd[k])
        g.add(ir.Conv2d(name="conv", inputs=("xs",), weight="conv.weight", bias="conv.bias", padding=(1, 1)))
        g.add(ir.BatchNorm(name="bn", inputs=("conv",), weight="bn.weight", bias="bn.bias",
                           running_mean="bn.running_mean", running_var="bn.running_var"))
        g.add(ir.IF(name="neuron", inputs=("bn",), threshold=m.threshold, v_reset=0.0))
        g.add(ir.Output(name="out", inputs=("neuron",)))
        ir.check(g)
        path = self.out / "encoder.netx.h5"
        chain, report = export_netx(g, path, on_overflow="rescale")
        from .data import load_dataset
        ds = load_dataset("digits", img_size=m.img_size, train=False)
        n = 2 if self.quick else 4
        x = torch.stack([ds[i][0] for i in range(n)]).double().numpy()
        fchain = extract_chain(g)
        xs = np.broadcast_to(x, (m.snn_steps,) + x.shape)
        lq.evaluate(fchain, chain, report, xs)
        atomic_write_text(self.out / "lava_quantisation.txt", report.format() + "\n")
        xq = lq.quantize_input(chain, xs)
        T, L = m.snn_steps, len(chain.layers)
        model_spikes = lm.aligned_spikes(lm.run_chain(chain, xq, num_steps=T + L, reset_interval=T + L), T)
        try:
            install_import_fixes()
            res = run_netx(path, xq, input_message_bits=chain.input_bits, read_v=False)
        except Exception as e:  # Lava not installed or not importable here
            return {"netx": path.name, "lava": f"not run ({type(e).__name__}: {e})",
                    "loihi_model_rate": float(model_spikes[-1].mean())}
        same = all(np.array_equal(a, b) for a, b in zip(res.spikes, model_spikes))
        return {"netx": path.name, "samples": n, "T": T, "lava_spikes_equal_loihi_model": bool(same),
                "lava_seconds_per_sample": round(res.times["run"] / n, 3),
                "output_rate": round(float(res.spikes[-1].mean()), 4),
                "note": "encoder only: the full UNet needs the multi-segment manifest (issue 8)"}

    def run(self) -> dict:
        self.stage("data", self.data)
        self.stage("train", self.train)
        self.stage("sample", self.sample)
        self.stage("compile", self.compile)
        self.stage("energy", self.energy, required=False)
        self.stage("lava", self.lava, required=False)
        path = self.out / "summary.json"
        atomic_write_text(path, json.dumps(self.summary, indent=1, default=str))
        print(f"\nsummary: {path}")
        return self.summary


def run_demo(out: str | Path = "runs/demo", quick: bool = False, device: str = "cpu", seed: int = 0,
             steps: int | None = None, n_samples: int | None = None) -> dict:
    return Pipeline(Path(out), quick=quick, device=device, seed=seed, steps=steps, n_samples=n_samples).run()
