"""``sdmc demo``: the whole pipeline on the bundled digits data, on a laptop CPU, in minutes.

Stages, each writing into ``--out`` and printing one summary line:

1. ``data``     a grid of the bundled digits (scikit-learn 8x8, resized to 16x16, in [-1, 1])
2. ``train``    a *short* run from scratch (preset ``digits``, :data:`SHORT_STEPS` steps), EMA exported as
                ``train/model.safetensors``, scored like every model here: it shows that training works, its
                digits-FID is that of a short run
3. ``sample``   every solver from the bundled, well-trained model (``bundled:digits``; the short run when the
                weights are not installed, said so) through the torch executor (PNG grids + uint8 ``.npz``),
                each scored with digits-FID/IS as mean ± std over seeds beside the real-data floor at the same n
4. ``compile``  trace to the spiking IR, run the inference and neuromorphic pass pipelines, save ``.sdmc``
                files, check the torch executor against the golden simulator
5. ``energy``   the energy report (table, JSON, Markdown, plot) measured along the model's own DPM-Solver++
                trajectories next to the ANN UNet, and the energy per image of every sample-stage solver beside
                its quality (the quality-per-energy table; ``sdmc eval --frontier`` is the full frontier)
6. ``lava``     the whole UNet for Loihi 2 (``backends.lava``): compiled with calibration on held-out
                digits, exported to ``lava/`` (manifest + weights + host graph), read back and run host/chip
                with sdmc's bit-exact Loihi model against the float golden (output error, spike mismatch,
                ``lava_quantisation.txt``), one sample in Lava's fixed-point CPU simulation against that model,
                the resource estimate in ``lava_resources.txt``; one self-contained netx segment file of the
                export run in stock ``lava.lib.dl.netx`` against that model
7. ``convert``  the ANN->SNN route: a 2-bit quantised ANN (preset ``digits-qann-2bit``, as many steps as the
                short run) converted to an IF SNN (``sdmc.convert``), both scored like the short run, beside it
                (``convert_grid.png``: one row of samples each)

Models 3-6 use the bundled model; 2 and 7 compare runs of equal length from scratch.

Nothing is faked: a stage that cannot run here (e.g. Lava not installed) says so and is skipped.
``summary.json`` records every stage's numbers.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .errors import SdmcError
from .utils import atomic_paths, atomic_write_text

# (solver name, steps, extra options); 'analytic-ddim' needs the Γ statistics estimated in the stage.  Sampling
# is the demo's largest cost: n x seeds x NFE calls (n=128 x 3 x 100 here), so the step counts are small ones.
DEMO_SOLVERS = [
    ("ddpm", 50, {}),
    ("ddim", 10, {}),
    ("dpm-solver-2", 10, {"method": "multistep"}),
    ("dpm-solver++", 10, {}),
    ("analytic-ddim", 10, {}),
]
QUICK_SOLVERS = [("ddim", 5, {}), ("dpm-solver++", 5, {})]
GUIDANCE = ("dpm-solver++", 0.997)  # threshold guidance (SDM §4.3) on this solver's row, θ' = 0.997
SHORT_SOLVER = "ddim"  # the short run and the convert stage are scored with the DDIM row's settings
SHORT_STEPS = 150  # the short run from scratch (the bundled model had 48000); 300 made the demo 11.5 min on 2 cores
# QANN training steps of the convert stage: as many as the short SNN run.  Measured on the shared 2-core box:
# 300 steps + DDIM-20 on 256 images each for QANN and converted SNN = 197 s (train 163 s; QANN digits-FID 1312,
# converted 1510, a 600-step SNN 1463); 100 steps left the QANN at FID 3299.  Step time varies 10x with load.
CONVERT_STEPS = SHORT_STEPS
N_SAMPLES = 128  # images per seed and solver (the real-data floor exists up to 360)
SEEDS = 3  # sampling seeds: seed, seed+1, seed+2 (mean ± std)
ENERGY_IMAGES = 8  # trajectories of the energy report; 2 per solver in the quality-per-energy table


class Pipeline:
    def __init__(
        self,
        out: Path,
        quick: bool = False,
        device: str = "cpu",
        seed: int = 0,
        steps: int | None = None,
        n_samples: int | None = None,
        convert_steps: int | None = None,
    ) -> None:
        for flag, v in (("steps", steps), ("n-samples", n_samples), ("convert-steps", convert_steps)):
            if v is not None and v < 1:  # checked before anything is written
                raise SdmcError(f"demo: --{flag} must be at least 1, got {v}")
        self.out, self.quick, self.device, self.seed = Path(out), quick, device, seed
        self.train_steps = steps if steps is not None else (30 if quick else SHORT_STEPS)
        if convert_steps is None:  # the QANN of the convert stage: as long as the short SNN run
            convert_steps = steps if steps is not None else (20 if quick else CONVERT_STEPS)
        self.convert_steps = convert_steps
        self.partial: dict = {}
        self.n_samples = n_samples if n_samples is not None else (16 if quick else N_SAMPLES)
        self.seeds = [seed + i for i in range(2 if quick else SEEDS)]
        self.solvers = QUICK_SOLVERS if quick else DEMO_SOLVERS
        self.out.mkdir(parents=True, exist_ok=True)
        self.summary: dict[str, dict] = {}
        self.short = None  # (model, config) of the short run
        self.short_images = None  # its first seed's samples
        self.model = None  # the model of stages 3-6: bundled:digits, or the short run
        self.cfg = None
        self.graph = None
        self.gamma = None  # Analytic-DPM Γ of self.model (sample stage)

    def stage(self, name: str, fn: Callable[[], dict], required: bool = True) -> None:
        t0 = time.perf_counter()
        print(f"\n[{name}] ...", flush=True)
        self.partial = {}  # a stage may record numbers here as it goes; kept if it fails later on
        try:
            result = fn()
        except SdmcError as e:
            if required:
                raise
            result = {"status": f"failed: {e}", **self.partial}
        except Exception as e:  # an optional stage must not hide the stages before it
            if required:
                raise
            traceback.print_exc()
            result = {"status": f"failed: {type(e).__name__}: {e}", **self.partial}
        result["seconds"] = round(time.perf_counter() - t0, 1)
        self.summary[name] = result
        shown = {k: v for k, v in result.items() if k != "seconds" and not isinstance(v, (dict, list))}
        print(f"[{name}] {result['seconds']:.1f}s: " + ", ".join(f"{k}={v}" for k, v in shown.items()), flush=True)

    def _eager64(self, x: torch.Tensor, t: torch.Tensor) -> np.ndarray:
        """The trained eager model's output in float64 (the reference the compiled paths are checked against);
        the model is back in float32 afterwards, also when this fails."""
        try:
            with torch.no_grad():
                return self.model.double()(x.double(), t).numpy()
        finally:
            self.model.float()

    def _quality(self, model, cfg, solver: str, steps: int, threshold: float | None = None, keep=None, **kw):
        """Digits quality over the demo's seeds (n images each, the floor at n): see ``model_quality``."""
        from .metrics.quality import model_quality

        return model_quality(
            model,
            cfg.diffusion,
            self.n_samples,
            self.seeds,
            solver,
            steps,
            threshold=threshold,
            batch_size=128,
            device=self.device,
            keep=keep,
            **kw,
        )

    @staticmethod
    def _row(q, **extra) -> dict:
        """A summary row: mean ± std of digits-FID / IS over the seeds (rounded), and ``extra``."""
        m, s = q.mean, q.std
        return {
            "digits_fid": round(m["digits_fid"], 1),
            "digits_fid_std": None if s["digits_fid"] is None else round(s["digits_fid"], 1),
            "digits_is": round(m["digits_is"], 2),
            "digits_is_std": None if s["digits_is"] is None else round(s["digits_is"], 2),
            **extra,
        }

    def _short_tag(self) -> tuple[str, int]:
        steps = next(st for name, st, _ in self.solvers if name == SHORT_SOLVER)
        return f"{SHORT_SOLVER}_{steps}", steps

    # ------------------------------------------------------------------------------------ stages
    def data(self) -> dict:
        from .data import load_dataset
        from .data.images import save_grid

        ds = load_dataset("digits", img_size=16)
        save_grid(torch.stack([ds[i][0] for i in range(64)]), self.out / "data_digits.png", nrow=8)
        return {"train_images": len(ds), "grid": "data_digits.png"}

    def train(self) -> dict:
        """A short run from scratch: training works (loss falls, the samples beat noise), nothing more."""
        from .checkpoint import load_model
        from .diffusion.train import make_config, train
        from .diffusion.train_outputs import read_metrics

        steps = self.train_steps
        cfg = make_config(
            "digits",
            out=str(self.out / "train"),
            device=self.device,
            seed=self.seed,
            steps=steps,
            sample_every=steps,
            save_every=steps,
            log_every=max(1, steps // 5),
        )
        path = Path(train(cfg, log=lambda s: print("  " + s, flush=True)))
        model, mcfg = load_model(path, device=self.device)
        self.short = (model, mcfg)
        losses = [r["loss"] for r in read_metrics(Path(cfg.out) / "metrics.jsonl") if "loss" in r]
        tag, sstep = self._short_tag()
        keep: dict = {}
        q = self._quality(model, mcfg, SHORT_SOLVER, sstep, keep=keep)
        self.short_images = keep[self.seeds[0]]
        print(f"  short run, {tag}: {q.line()}", flush=True)
        m = mcfg.model
        return {
            "model": str(path.relative_to(self.out)),
            "what": f"a short run from scratch ({steps} steps): shows that training works; the sample stage uses "
            "the bundled model",
            "arch": m.arch,
            "T": m.snn_steps,
            "ch": m.ch,
            "steps": cfg.steps,
            "batch": cfg.batch_size,
            "loss_first": round(losses[0], 4) if losses else None,
            "loss_last": round(losses[-1], 4) if losses else None,
            "solver": tag,
            **self._row(q),
            "quality": q.to_dict(),
        }

    def _load_bundled(self) -> str:
        """``self.model``: the bundled digits model, or the short run when its weights are not installed."""
        from .checkpoint import load_model
        from .errors import CheckpointError
        from .models.bundled import bundled_path

        try:
            self.model, self.cfg = load_model(bundled_path("digits"), device=self.device)
            return "bundled:digits"
        except CheckpointError as e:
            self.model, self.cfg = self.short
            print(f"  {e}\n  -> sampling the short run instead", flush=True)
            return "the short run of the train stage (bundled:digits is not installed)"

    def sample(self) -> dict:
        from .backends.torch_exec import prepare
        from .data.images import save_grid
        from .diffusion.analytic import estimate_gamma
        from .diffusion.schedule import NoiseSchedule
        from .metrics.digits import digits_scores
        from .metrics.evaluate import save_samples

        source = self._load_bundled()
        schedule = NoiseSchedule(self.cfg.diffusion)
        fast = prepare(self.model, "inference")  # the compiled executor, as `sdmc sample` uses by default
        rows, qs = {}, {}
        runs = [(name, steps, opts, None) for name, steps, opts in self.solvers]
        g_steps = next(st for name, st, _ in self.solvers if name == GUIDANCE[0])
        runs.append((GUIDANCE[0], g_steps, {}, GUIDANCE[1]))
        for name, steps, opts, threshold in runs:
            kw = dict(opts)
            if name.startswith("analytic"):
                if self.gamma is None:
                    from .data import load_dataset

                    ds = load_dataset("digits", img_size=self.cfg.model.img_size)
                    self.gamma = estimate_gamma(
                        self.model,
                        schedule,
                        ds,
                        budget=2 if self.quick else 8,
                        batch_size=64,
                        seed=self.seed,
                        progress=False,
                    )
                kw["gamma"] = self.gamma
            t0 = time.perf_counter()
            keep: dict = {}
            q = self._quality(fast, self.cfg, name, steps, threshold=threshold, keep=keep, **kw)
            secs = time.perf_counter() - t0
            tag = f"{name}_{steps}" + (f"_threshold{threshold:g}" if threshold is not None else "")
            imgs = keep[self.seeds[0]]
            with atomic_paths(self.out / f"samples_{tag}.png", self.out / f"samples_{tag}.npz") as (png, npz):
                save_grid(imgs[:64], png, nrow=8)  # the pair is written together
                save_samples(npz, imgs)
            rows[tag] = self._row(q, seconds=round(secs, 1))
            qs[tag] = q
            print(f"  {tag:>26}: {secs:6.1f}s  {q.line()}", flush=True)
        noise = torch.randn(self.n_samples, *imgs.shape[1:], generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
        rows["reference_gaussian_noise"] = {"digits_fid": round(float(digits_scores(noise)["digits_fid"]), 1)}
        best = min((v["digits_fid"], k) for k, v in rows.items() if "seconds" in v)
        q = qs[best[1]]
        floor = q.floor
        return {
            "model": source,
            "n": self.n_samples,
            "seeds": ",".join(map(str, self.seeds)),
            "floor_digits_fid": None if floor is None else round(floor["digits_fid"], 1),
            "floor_digits_is": None if floor is None else round(floor["digits_is"], 2),
            "floor": q.note or f"digits-FID/IS of {self.n_samples} held-out real digits (what a perfect model scores)",
            "best": f"{best[1]} ({q.format('digits_fid')})",
            "solvers": rows,
        }

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
        eager = self._eager64(x, t)
        return {
            "nodes": len(list(graph)),
            "inference_nodes": len(list(inf)),
            "neuromorphic_nodes": len(list(neu)),
            "executor_vs_golden_maxdiff": float(np.abs(got - ref).max()),
            "eager_vs_golden_maxdiff": float(np.abs(eager - ref).max()),
            "files": "model.ir.sdmc, model.inference.sdmc, model.neuromorphic.sdmc, model.torch.sdmc, inspect.txt",
        }

    def energy(self) -> dict:
        """The energy report along the model's own DPM-Solver++ trajectories, then the energy per image of every
        sample-stage row along its own trajectories, beside its quality (the quality-per-energy table)."""
        from .energy import analyze
        from .frontends import trace
        from .metrics.frontier import energy_per_image

        out = self.partial
        m = self.cfg.model
        graph = self.graph if self.graph is not None else trace(self.model.cpu(), (1, m.img_ch, m.img_size, m.img_size))
        solver, steps = "dpm-solver++", next(st for name, st, _ in self.solvers if name == "dpm-solver++")
        n_traj = 2 if self.quick else ENERGY_IMAGES
        rep = analyze(
            self.model, solver=solver, steps=steps, n_images=n_traj, seed=self.seed, diffusion=self.cfg.diffusion,
            graph=graph,
        )  # fmt: skip
        rep.write(self.out / "energy.json", "json")
        rep.write(self.out / "energy.md", "markdown")
        rep.plot(self.out / "energy.png")
        rep.print(layers=False)
        d = rep.to_dict()
        out.update(
            files="energy.json, energy.md, energy.png",
            measured=f"{n_traj} {solver} {steps}-step trajectories from noise (every call)",
            mean_firing_rate=round(float(d["calibration"]["mean_firing_rate"]), 4),
        )
        for conv, tot in d["totals"].items():
            out[f"{conv}_mJ_per_image"] = round(tot["per_image_mJ"], 4)
        ann = d.get("ann") or {}
        if "per_image_mJ" in ann:
            out["ann_mJ_per_image"] = round(ann["per_image_mJ"], 4)
        # quality per energy: each sample-stage row's energy per image, measured along its own trajectories
        rows = self.summary.get("sample", {}).get("solvers", {})
        table = {}
        runs = [(name, st, opts, None) for name, st, opts in self.solvers]
        runs.append((GUIDANCE[0], next(st for name, st, _ in self.solvers if name == GUIDANCE[0]), {}, GUIDANCE[1]))
        for name, st, opts, threshold in runs:
            tag = f"{name}_{st}" + (f"_threshold{threshold:g}" if threshold is not None else "")
            kw = dict(opts, **({"gamma": self.gamma} if name.startswith("analytic") else {}))
            e = energy_per_image(
                self.model, self.cfg.diffusion, name, st, threshold=threshold, n_images=1 if self.quick else 2,
                graph=graph, ann=False, solver_kwargs=kw, seed=self.seed,
            )  # fmt: skip
            table[tag] = {
                "nfe": e["nfe"],
                **{f"{c}_mJ_per_image": round(e["energy_mJ"][c], 4) for c in ("paper", "faithful")},
                **{k: rows.get(tag, {}).get(k) for k in ("digits_fid", "digits_fid_std")},
            }
        out["quality_per_energy"] = table
        print("  quality per energy (digits-FID: mean ± std over seeds; mJ per generated image):")
        for tag, r in table.items():
            fid = "-" if r["digits_fid"] is None else f"{r['digits_fid']:.1f} ± {r['digits_fid_std']}"
            print(
                f"  {tag:>26}: NFE {r['nfe']:4d}  digits-FID {fid:>14}  {r['faithful_mJ_per_image']:.4g} mJ faithful, "
                f"{r['paper_mJ_per_image']:.4g} mJ paper",
                flush=True,
            )
        return out

    def _heldout_noised(self, n: int, offset: int, seed: int) -> dict[str, np.ndarray]:
        """``{"x": x_t, "t": t}`` (float64 / int64): held-out digits ``offset..offset+n`` noised to diffusion
        steps spread over the whole schedule (the inputs a denoiser sees while sampling)."""
        from .data import load_dataset
        from .diffusion.schedule import NoiseSchedule

        m = self.cfg.model
        ds = load_dataset("digits", img_size=m.img_size, train=False)
        if offset + n > len(ds):
            raise SdmcError(f"demo: needs {offset + n} held-out digits, the test split has {len(ds)}")
        g = torch.Generator().manual_seed(seed)
        x0 = torch.stack([ds[offset + i][0] for i in range(n)]).double()
        sched = NoiseSchedule(self.cfg.diffusion)
        t = (
            ((torch.arange(n) + torch.rand(n, generator=g)) * sched.num_timesteps / n)
            .long()
            .clamp_max(sched.num_timesteps - 1)
        )
        xt = sched.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=x0.dtype))
        return {"x": xt.double().numpy(), "t": t.numpy()}

    def lava(self) -> dict:
        """The whole UNet for Loihi: compile (calibrated on held-out digits), export, hybrid host/chip run with
        the numpy Loihi model against the float golden, one sample in Lava against the numpy model."""
        from .backends import lava
        from .backends.lava import compat
        from .frontends import trace

        out = self.partial
        m = self.cfg.model
        graph = self.graph if self.graph is not None else trace(self.model.cpu(), (1, m.img_ch, m.img_size, m.img_size))
        n_cal, n_eval, n_lava = (2, 2, 1) if self.quick else (8, 8, 2)
        calib = self._heldout_noised(n_cal, 0, self.seed + 11)
        inputs = self._heldout_noised(n_eval, n_cal, self.seed + 12)
        t0 = time.perf_counter()
        net, plan, rep = lava.compile_net(graph, calib=calib, on_overflow="rescale")
        out["compile_seconds"] = round(time.perf_counter() - t0, 1)
        res = lava.resources(net, plan.graph)
        atomic_write_text(self.out / "lava_resources.txt", lava.format_resources(res, top=len(net.populations)) + "\n")
        tot = res["totals"]
        out.update(
            populations=tot["populations"],
            projections=tot["projections"],
            neurons=tot["neurons"],
            synapses=tot["synapses"],
            loihi2_cores=tot["cores"],
            loihi2_chips=tot["chips"],
            calib_output_rel_error=round(float(rep.output_error), 5),
        )
        export = lava.export_dir(net, plan, rep, self.out / "lava", resources=res)
        # from here on everything runs the exported net as read back (what a user of the export gets); the
        # float reference needs the compiled graph: the export's graph.sdmc holds only the host part
        full = plan.graph
        net, plan, manifest = lava.load_export(export)
        out.update(export="lava/", netx_segments=len(manifest["segments"]))
        pops = [p.name for p in net.populations]
        chk = lava.check_hybrid(net, plan, inputs, reference=full)
        hy, mism = chk["hybrid"], chk["spike_mismatch"]
        (o,) = [n.name for n in plan.graph.output_nodes]
        eager = self._eager64(torch.from_numpy(inputs["x"]), torch.from_numpy(inputs["t"]))
        out.update(
            eval_samples=n_eval,
            output_rel_error_vs_golden=round(chk["output_error"][o], 5),
            output_rel_error_vs_torch=round(lava.rel_error(hy["outputs"][o], eager), 5),
            # the two float references differ: the compiled graph's folded BN weights are float32-rounded, and
            # a trained net's near-threshold membranes turn that into a few spike flips
            golden_vs_torch_rel_error=float(lava.rel_error(chk["golden"][o], eager)),
            spike_mismatch_mean=round(float(np.mean(list(mism.values()))), 5),
            spike_mismatch_max=round(max(mism.values()), 5),
            numpy_loihi_seconds_per_sample=round(hy["times"]["run"] / n_eval, 3),
        )
        text = [
            rep.format(),
            "",
            f"held-out check ({n_eval} noised test digits, not the {n_cal} calibration ones), exported net "
            f"read back: output relative error {out['output_rel_error_vs_golden']:.4g} vs the float golden, "
            f"{out['output_rel_error_vs_torch']:.4g} vs the torch model",
            f"{'population':<28}{'spike mismatch':>15}",
        ] + [f"{p[-27:]:<28}{v:>15.4f}" for p, v in mism.items()]
        atomic_write_text(self.out / "lava_quantisation.txt", "\n".join(text) + "\n")
        out["files"] = (
            "lava/ (manifest.json, segment_NN.h5 netx files, projections.h5, graph.sdmc), "
            "lava_quantisation.txt, lava_resources.txt"
        )
        # one sample through Lava's fixed-point CPU simulation: spikes must equal the numpy model's
        try:
            compat.import_lava()
        except compat.LavaUnavailable as e:
            out["lava"] = f"not run: {e}"
            return out
        out["netx_segment"] = self._stock_netx_segment(
            export, manifest, {k: v[:, :n_lava] for k, v in hy["spikes"].items()}
        )
        one = {k: v[:n_lava] for k, v in inputs.items()}
        la = lava.run_hybrid(net, plan, one, lava=True, probe=pops)
        same = all(np.array_equal(la["spikes"][p], hy["spikes"][p][:, :n_lava]) for p in pops)
        tm = la["times"]
        out.update(
            lava_samples=n_lava,
            lava_spikes_equal_numpy_model=bool(same),
            lava_output_equal_numpy_model=bool(np.array_equal(la["outputs"][o], hy["outputs"][o][:n_lava])),
            lava_first_sample_seconds=round(tm["build"] + tm["first_run"], 1),
        )
        if n_lava > 1:  # later samples reuse the compiled Lava network
            out["lava_seconds_per_sample"] = round(tm["run"] / (n_lava - 1), 2)
        return out

    @staticmethod
    def _stock_netx_segment(export: Path, manifest: dict, spikes: dict[str, np.ndarray]) -> dict:
        """Run one segment file of the export in stock ``lava.lib.dl.netx`` on its input population's spikes
        (from the numpy model) and compare its spikes with the numpy model's.  Only a segment that holds all
        its populations' input is a net on its own: input spikes from a population, one incoming projection
        per population, biases in the file."""
        from collections import Counter

        from .backends.lava import run_netx

        fan_in = Counter(pr["dst"] for pr in manifest["projections"])
        pops = {p["name"]: p for p in manifest["populations"]}
        for seg in manifest["segments"]:
            names = seg["populations"]
            if seg.get("input_kind") != "spikes" or seg.get("input") not in spikes:
                continue
            if any(
                fan_in[n] != 1 or (pops[n].get("bias") or {}).get("file", seg["file"]) != seg["file"] for n in names
            ):
                continue
            t0 = time.perf_counter()
            res = run_netx(export / seg["file"], spikes[seg["input"]], input_message_bits=0, read_v=False)
            same = len(res.spikes) == len(names) and all(
                np.array_equal(a, spikes[n]) for a, n in zip(res.spikes, names)
            )
            return {
                "file": f"lava/{seg['file']}",
                "input": seg["input"],
                "populations": names,
                "stock_netx_spikes_equal_numpy_model": bool(same),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        return {"note": "no segment file of this export is a net on its own (every one reads wiring or host input)"}

    def convert(self) -> dict:
        """Issue 9's ANN->SNN route next to direct training: a 2-bit quantised ANN (preset ``digits-qann-2bit``,
        as many steps as the short run), converted to an IF SNN (``sdmc.convert``, T = 3), both scored like the
        short run, beside it."""
        from . import convert as cv
        from .data.images import save_grid, to_uint8
        from .diffusion.train import make_config, train

        out = self.partial
        steps = self.convert_steps
        cfg = make_config(
            "digits-qann-2bit",
            out=str(self.out / "convert" / "qann"),
            device=self.device,
            seed=self.seed,
            steps=steps,
            sample_every=steps,
            save_every=steps,
            sample_n=0,
            log_every=max(1, steps // 5),
            tensorboard=False,
            progress=False,
        )
        t0 = time.perf_counter()
        path = Path(train(cfg, log=lambda s: print("  " + s, flush=True)))
        out.update(
            qann_train_steps=steps,
            qann_train_seconds=round(time.perf_counter() - t0, 1),
            qann=str(path.relative_to(self.out)),
        )
        qann, qcfg, _ = cv.load_qann(path)
        qann = qann.to(self.device).eval()
        snn = cv.convert(qann).to(self.device).eval()  # the paper's conversion: unsigned spikes, GroupNorm per step
        cv.save_converted(self.out / "convert" / "converted.safetensors", snn, qcfg)
        chk = self._heldout_noised(16, 0, self.seed + 13)
        with torch.no_grad():
            err = cv.conversion_error(
                qann,
                snn,
                torch.from_numpy(chk["x"]).float().to(self.device),
                torch.from_numpy(chk["t"]).to(self.device),
            )
        out.update(T=snn.steps, conversion_rel_error=round(err, 4), converted="convert/converted.safetensors")
        tag, sstep = self._short_tag()
        grid = []
        for name, model in (("qann", qann), ("converted", snn)):
            t0 = time.perf_counter()
            keep: dict = {}
            q = self._quality(model, qcfg, SHORT_SOLVER, sstep, keep=keep)
            out[f"{name}_sample_seconds"] = round(time.perf_counter() - t0, 1)
            row = self._row(q)
            out[f"{name}_digits_fid"], out[f"{name}_digits_fid_std"] = row["digits_fid"], row["digits_fid_std"]
            grid.append(to_uint8(keep[self.seeds[0]][:8]))
        short = self.summary.get("train", {})
        out.update(
            direct_snn_digits_fid=short.get("digits_fid"),
            direct_snn_digits_fid_std=short.get("digits_fid_std"),
            direct_snn_train_steps=short.get("steps"),
            solver=tag,
            n=self.n_samples,
            seeds=",".join(map(str, self.seeds)),
            floor_digits_fid=None if q.floor is None else round(q.floor["digits_fid"], 1),
        )
        if self.short_images is not None:
            grid.append(to_uint8(self.short_images[:8]))
        save_grid(np.concatenate(grid), self.out / "convert_grid.png", nrow=8)
        out["grid"] = "convert_grid.png (rows: QANN, converted SNN" + (
            ", directly trained short-run SNN)" if len(grid) > 2 else ")"
        )

        def pm(k: str) -> str:
            return f"{out[k]} ± {out[k + '_std']}"

        print(
            f"  {tag} digits-FID (mean ± std over seeds {out['seeds']}, n={self.n_samples}; floor "
            f"{out['floor_digits_fid']}): QANN {pm('qann_digits_fid')}, converted SNN {pm('converted_digits_fid')}, "
            f"directly trained SNN {pm('direct_snn_digits_fid')} (all {steps}-step runs)",
            flush=True,
        )
        return out

    def run(self) -> dict:
        self.stage("data", self.data)
        self.stage("train", self.train)
        self.stage("sample", self.sample)
        self.stage("compile", self.compile)
        self.stage("energy", self.energy, required=False)
        self.stage("lava", self.lava, required=False)
        self.stage("convert", self.convert, required=False)
        path = self.out / "summary.json"
        atomic_write_text(path, json.dumps(self.summary, indent=1, default=str))
        print(f"\nsummary: {path}")
        return self.summary


def run_demo(
    out: str | Path = "runs/demo",
    quick: bool = False,
    device: str = "cpu",
    seed: int = 0,
    steps: int | None = None,
    n_samples: int | None = None,
    convert_steps: int | None = None,
) -> dict:
    return Pipeline(
        Path(out), quick=quick, device=device, seed=seed, steps=steps, n_samples=n_samples, convert_steps=convert_steps
    ).run()
