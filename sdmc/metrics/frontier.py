"""The quality-per-energy frontier of a digits model (``sdmc eval MODEL --frontier``): digits-FID against
the energy of one generated image, from DDPM-1000 down to DPM-Solver++ at a few steps, with threshold
guidance and fewer SNN steps T where the model allows them.

Each sampling :class:`Setting` (solver, steps, threshold θ', T) gets

- **quality**: :func:`sdmc.metrics.quality.model_quality`: ``n`` images per seed, digits-FID / IS as
  mean ± std over the seeds, beside the real-data floor at ``n``;
- **energy per image**: :func:`sdmc.energy.analyze` along the setting's own sampling trajectories
  (``energy_images`` of them, every call measured): ``E_image = sum_i E(call i)`` over its NFE calls, in
  both conventions (``paper``: SDM Eq. 20; ``faithful``), and the ANN UNet of the same width (dense MACs
  x NFE) for scale.

The reference is the first setting (DDPM-1000 by default).  A setting **matches** it when

    mean_FID <= mean_FID_ref + 2 max(s_ref, s)          (s: the seed standard deviations)

i.e. the seeds cannot tell it from the reference or it is better.  The frontier's answer is the matching
setting with the least energy per image and its saving ``E_ref / E`` in each convention.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError, ConfigError
from .quality import DEFAULT_SEEDS, Quality

DEFAULT_SETTINGS = (
    "ddpm:1000",
    "ddim:100",
    "ddim:50",
    "ddim:20",
    "dpm-solver++:20",
    "dpm-solver++:15",
    "dpm-solver++:10",
    "dpm-solver++:5",
    "dpm-solver++:10:th0.997",
    "dpm-solver++:20:T2",
    "dpm-solver++:10:T2",
)
DEFAULT_N = 128  # images per seed: DDPM-1000 at n=256 x 3 seeds is ~768k image-calls, too slow for 2 cores
CONVENTIONS = ("paper", "faithful")
ENERGY_TIE = 0.01  # energies per image within 1 % are the same cost (rates measured on a few trajectories)
_SETTING = re.compile(r"^(?P<solver>[a-z0-9+\-]+):(?P<steps>\d+)(?P<opts>(:(th[0-9.]+|T\d+))*)$")


@dataclass(frozen=True)
class Setting:
    """One way to sample: ``solver`` in ``steps`` steps, threshold guidance ``threshold`` (θ'), ``T`` SNN
    steps (``None``: the model's own).  Written ``SOLVER:STEPS[:thθ'][:TN]``, e.g. ``dpm-solver++:10:T2``."""

    solver: str
    steps: int
    threshold: float | None = None
    T: int | None = None

    @classmethod
    def parse(cls, text: str) -> Setting:
        from ..diffusion.solvers import SOLVER_NAMES

        m = _SETTING.match(text.strip())
        if not m:
            raise ConfigError(f"frontier setting {text!r}: write SOLVER:STEPS[:thTHRESHOLD][:TSTEPS], e.g. ddim:50:T2")
        if m["solver"] not in SOLVER_NAMES:
            raise ConfigError(f"frontier setting {text!r}: unknown solver {m['solver']!r}; one of {SOLVER_NAMES}")
        th = T = None
        for opt in filter(None, m["opts"].split(":")):
            if opt.startswith("th"):
                th = float(opt[2:])
                if not (math.isfinite(th) and th > 0):
                    raise ConfigError(f"frontier setting {text!r}: the threshold must be positive")
            else:
                T = int(opt[1:])
        if int(m["steps"]) < 1 or (T is not None and T < 1):
            raise ConfigError(f"frontier setting {text!r}: steps and T must be >= 1")
        return cls(m["solver"], int(m["steps"]), th, T)

    @property
    def label(self) -> str:
        return (
            f"{self.solver}:{self.steps}"
            + (f":th{self.threshold:g}" if self.threshold is not None else "")
            + (f":T{self.T}" if self.T is not None else "")
        )


@dataclass
class Frontier:
    """The measured points (``points``: one dict per setting, in order; ``skipped`` says why a setting
    did not run), the reference label and what was measured how (``meta``)."""

    points: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def measured(self) -> list[dict[str, Any]]:
        return [p for p in self.points if "skipped" not in p]

    @property
    def reference(self) -> dict[str, Any] | None:
        return next(iter(self.measured), None)

    def quality(self, p: dict[str, Any]) -> Quality:
        q = p["quality"]
        return Quality(q["n"], q["seeds"], q["per_seed"], q.get("floor"), q.get("floor_note") or "")

    def matches(self, p: dict[str, Any]) -> bool:
        """``p``'s mean digits-FID is within the reference's seed spread: at most its mean plus twice its seed
        std.  The reference's spread, not the larger of the two: a setting whose own seeds scatter widely (a
        sampler on the edge of breaking) must not match by being noisy."""
        ref = self.reference
        if ref is None:
            return False
        qr, qp = self.quality(ref), self.quality(p)
        return qp.mean["digits_fid"] <= qr.mean["digits_fid"] + 2 * (qr.std["digits_fid"] or 0.0)

    def saving(self, p: dict[str, Any], conv: str) -> float:
        """Energy per image of the reference over ``p``'s."""
        return self.reference["energy_mJ"][conv] / p["energy_mJ"][conv]

    def best(self) -> dict[str, Any] | None:
        """The matching setting (other than the reference) with the least faithful energy per image; among
        those within :data:`ENERGY_TIE` of that least energy, the one with the lowest mean digits-FID.

        The energy comes from firing rates on a few trajectories, so two settings with the same calls (say,
        DPM-Solver++ 10 with and without threshold guidance) differ by a fraction of a percent that is
        measurement, not cost; the quality decides between them."""
        ref = self.reference
        cands = [p for p in self.measured if p is not ref and self.matches(p)]
        if not cands:
            return None
        least = min(p["energy_mJ"]["faithful"] for p in cands)
        tied = [p for p in cands if p["energy_mJ"]["faithful"] <= least * (1 + ENERGY_TIE)]
        return min(tied, key=lambda p: self.quality(p).mean["digits_fid"])

    # ---- presentation
    HEAD = ["setting", "NFE", "T", "digits-FID", "digits-IS", "paper mJ/img", "faithful mJ/img", "saving", "match"]

    def rows(self) -> list[list[str]]:
        out = []
        for p in self.points:
            if "skipped" in p:
                out.append([p["label"], "-", "-", f"skipped: {p['skipped']}", "", "", "", "", ""])
                continue
            q = self.quality(p)
            out.append(
                [
                    p["label"],
                    str(p["nfe"]),
                    str(p["T"]),
                    q.format("digits_fid").split(" (floor")[0].replace("digits-FID ", ""),
                    q.format("digits_is").split(" (floor")[0].replace("digits-IS ", ""),
                    f"{p['energy_mJ']['paper']:.4g}",
                    f"{p['energy_mJ']['faithful']:.4g}",
                    f"{self.saving(p, 'faithful'):.1f}x",
                    "ref" if p is self.reference else ("yes" if self.matches(p) else "no"),
                ]
            )
        return out

    def summary_lines(self) -> list[str]:
        ref, best = self.reference, self.best()
        m = self.meta
        lines = [
            f"n={m.get('n')} images per seed, seeds {m.get('seeds')}; energy per image: exact sum over each "
            f"setting's calls, measured on {m.get('energy_images')} trajectories ({m.get('profile')}); "
            f"saving = the reference's faithful energy per image / the setting's",
        ]
        if ref is not None:
            q = self.quality(ref)
            floor = q.floor["digits_fid"] if q.floor else None
            lines.append(
                f"reference {ref['label']}: {q.format('digits_fid')}"
                + ("" if floor is not None else f" ({q.note})")
                + f"; match = mean digits-FID <= {q.mean['digits_fid']:.1f} + 2 x its seed std"
            )
        if best is None:
            lines.append("no setting matches the reference's quality at less energy")
        else:
            lines.append(
                f"best quality per joule: {best['label']} matches {ref['label']} at "
                f"{self.saving(best, 'faithful'):.1f}x less energy per image (faithful; "
                f"{self.saving(best, 'paper'):.1f}x paper): {best['energy_mJ']['faithful']:.4g} mJ vs "
                f"{ref['energy_mJ']['faithful']:.4g} mJ"
            )
        return lines

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self.HEAD) + " |", "|" + "---|" * len(self.HEAD)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows()]
        return "\n".join(lines + [""] + [f"- {s}" for s in self.summary_lines()]) + "\n"

    def print(self, console=None) -> None:
        from rich.console import Console

        from ..tables import rich_table

        console = console or Console(width=max(Console().width, 140))
        console.print(rich_table("quality per energy (digits-FID: mean ± std over seeds)", self.HEAD, self.rows()))
        for s in self.summary_lines():
            console.print(s)

    def to_dict(self) -> dict[str, Any]:
        best = self.best()
        return {
            "meta": self.meta,
            "points": [
                {**p, **({} if "skipped" in p else {"matches_reference": self.matches(p)})} for p in self.points
            ],
            "reference": None if self.reference is None else self.reference["label"],
            "best": None
            if best is None
            else {"label": best["label"], **{f"saving_{c}": self.saving(best, c) for c in CONVENTIONS}},
        }

    def plot(self, path) -> None:
        """digits-FID (mean ± std) against energy per image, one panel per convention, floor and the
        reference's match band drawn, the best setting starred; both axes logarithmic (a collapsed setting
        at FID ~5000 would otherwise flatten every useful one onto the floor); PNG written atomically."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ..utils import atomic_path

        pts = self.measured
        fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
        ref, best = self.reference, self.best()
        for ax, conv in zip(axes, CONVENTIONS):
            # labels of neighbours in energy alternate above and below their point, so near ties stay legible
            for i, p in enumerate(sorted(pts, key=lambda p: p["energy_mJ"][conv])):
                q = self.quality(p)
                e, f, s = p["energy_mJ"][conv], q.mean["digits_fid"], q.std["digits_fid"] or 0.0
                color = "tab:red" if p is ref else ("tab:green" if self.matches(p) else "tab:blue")
                ax.errorbar([e], [f], yerr=[s], fmt="*" if p is best else "o", ms=12 if p is best else 6,
                            color=color, capsize=3)  # fmt: skip
                ax.annotate(p["label"], (e, f), textcoords="offset points", xytext=(5, 6 if i % 2 else -11),
                            fontsize=7, fontweight="bold" if p is best else "normal")  # fmt: skip
            if ref is not None:
                q = self.quality(ref)
                if q.floor:
                    ax.axhline(q.floor["digits_fid"], ls=":", color="gray", label=f"real-data floor (n={q.n})")
                s = q.std["digits_fid"] or 0.0  # the reference's own seeds (the match rule also takes the point's)
                ax.axhspan(
                    q.mean["digits_fid"] - 2 * s, q.mean["digits_fid"] + 2 * s, color="tab:red", alpha=0.1,
                    label=f"{ref['label']} ± 2 std",
                )  # fmt: skip
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(f"energy per generated image, mJ ({conv})")
            ax.set_title(f"digits-FID vs energy ({conv} convention)")
            ax.legend(fontsize=7)
        axes[0].set_ylabel("digits-FID (mean ± std over seeds)")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)


def _model_at(path, T: int | None, weights: str, cache: dict) -> tuple[Any, Any, Any, Any]:
    """``(model, config, traced graph, compiled executor)`` of the model in ``path`` at ``T`` SNN steps, loaded,
    traced and compiled once (every setting at this ``T`` samples through the same executor)."""
    from ..backends.torch_exec import prepare
    from ..checkpoint import load_model
    from ..frontends import trace

    if T not in cache:
        model, cfg = load_model(path, weights=weights, snn_steps=T)
        m = cfg.model
        graph = trace(model, (1, m.img_ch, m.img_size, m.img_size))
        cache[T] = (model, cfg, graph, prepare(model, "inference"))
    return cache[T]


def seconds_per_call(model, batch: int, img: tuple[int, ...], repeats: int = 2) -> float:
    """Wall seconds of one compiled-executor call on ``batch`` images (after one warm-up call); ``model`` may
    already be the executor."""
    import torch

    from ..backends.torch_exec import prepare

    fast = prepare(model, "inference")
    x, t = torch.randn(batch, *img), torch.full((batch,), 500)
    with torch.no_grad():
        fast(x, t)
        t0 = time.perf_counter()
        for _ in range(repeats):
            fast(x, t)
    return (time.perf_counter() - t0) / repeats


def energy_per_image(
    model,
    diffusion,
    solver: str,
    steps: int,
    *,
    threshold: float | None = None,
    n_images: int = 4,
    profile: str = "45nm-fp32",
    graph=None,
    ann: bool = True,
    seed: int = 0,
    solver_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Energy per generated image of one sampler setting, measured along ``n_images`` of the model's own
    trajectories from noise (every call counted: the exact sum, not NFE x a mean): ``{"nfe", "energy_mJ":
    {convention: mJ}, "ann_mJ" (None without the ANN baseline), "firing_rate"}``.  One frontier point's energy;
    the demo's quality-per-energy table calls it too."""
    from ..energy import analyze

    rep = analyze(
        model,
        solver=solver,
        steps=steps,
        n_images=n_images,
        batch_size=n_images,
        threshold=threshold,
        diffusion=diffusion,
        profile=profile,
        graph=graph,
        ann=ann,
        seed=seed,
        solver_kwargs=solver_kwargs,
    )
    return {
        "nfe": rep.calibration["nfe"],
        "energy_mJ": {conv: rep.totals[conv]["per_image_mJ"] for conv in CONVENTIONS},
        "ann_mJ": None if rep.ann is None else rep.ann["per_image_mJ"],
        "firing_rate": rep.calibration["mean_firing_rate"],
    }


def run_frontier(
    path,
    settings: Sequence[str | Setting] = DEFAULT_SETTINGS,
    n: int = DEFAULT_N,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    energy_images: int = 4,
    profile: str = "45nm-fp32",
    batch_size: int = 256,
    weights: str = "auto",
    log: Callable[[str], None] = print,
) -> Frontier:
    """Measure every setting of the model in ``path`` (any checkpoint ``load_model`` reads, or
    ``bundled:NAME``): quality over ``seeds`` at ``n`` images per seed and energy per image along
    ``energy_images`` trajectories.  The first setting that runs is the reference.  Logs an estimate of the
    sampling time before starting (from one timed call)."""
    from ..diffusion.schedule import NoiseSchedule
    from ..diffusion.solvers import make_solver
    from .quality import model_quality

    sets = [s if isinstance(s, Setting) else Setting.parse(s) for s in settings]
    if not sets:
        raise ConfigError("frontier: no sampling settings")
    if n < 2 or energy_images < 1 or not seeds:
        raise ConfigError(f"frontier: needs n >= 2, energy_images >= 1 and a seed (got {n}, {energy_images}, {seeds})")
    cache: dict = {}
    _, cfg, _, fast = _model_at(path, None, weights, cache)
    if cfg.model.img_ch != 1:
        raise ConfigError(
            f"frontier: digits-FID needs a 1-channel digits model, {path} makes {cfg.model.img_ch}-channel images"
        )
    schedule = NoiseSchedule(cfg.diffusion)

    def nfe(s: Setting) -> int:
        sol = make_solver(s.solver, schedule)
        sol.set_timesteps(s.steps)
        return sol.nfe

    b = min(batch_size, n)
    per_call = seconds_per_call(fast, b, (cfg.model.img_ch, cfg.model.img_size, cfg.model.img_size))
    batches = math.ceil(n / b) * len(seeds)
    est = {s.label: nfe(s) * batches * per_call * ((s.T or cfg.model.snn_steps) / cfg.model.snn_steps) for s in sets}
    log(
        f"frontier of {path}: {len(sets)} settings, n={n} per seed x {len(seeds)} seeds; one call on {b} images "
        f"takes {per_call:.3g} s here, so sampling needs ~{sum(est.values()) / 60:.1f} min "
        f"({sets[0].label}: ~{est[sets[0].label] / 60:.1f} min) plus the energy trajectories"
    )
    points: list[dict[str, Any]] = []
    for s in sets:
        t0 = time.perf_counter()
        try:
            m, c, graph, fast = _model_at(path, s.T, weights, cache)
        except CheckpointError as e:  # e.g. a TSM model cannot run at another T
            points.append({"label": s.label, "skipped": str(e)})
            log(f"  {s.label}: skipped ({e})")
            continue
        q = model_quality(fast, c.diffusion, n, seeds, s.solver, s.steps, threshold=s.threshold, batch_size=batch_size)
        e = energy_per_image(
            m,
            c.diffusion,
            s.solver,
            s.steps,
            threshold=s.threshold,
            n_images=energy_images,
            profile=profile,
            graph=graph,
        )
        p = {
            "label": s.label,
            "solver": s.solver,
            "steps": s.steps,
            "nfe": e["nfe"],
            "threshold": s.threshold,
            "T": c.model.snn_steps,
            "quality": q.to_dict(),
            "energy_mJ": e["energy_mJ"],
            "ann_mJ": e["ann_mJ"],
            "firing_rate": e["firing_rate"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        points.append(p)
        log(
            f"  {s.label}: {q.line()}; {p['energy_mJ']['faithful']:.4g} mJ/image faithful, "
            f"{p['energy_mJ']['paper']:.4g} paper ({p['seconds']:.0f} s)"
        )
    meta = {
        "model": str(path),
        "n": n,
        "seeds": list(seeds),
        "energy_images": energy_images,
        "profile": profile,
        "seconds_per_call": per_call,
        "call_batch": b,
    }
    return Frontier(points, meta)


__all__ = [
    "DEFAULT_N",
    "DEFAULT_SETTINGS",
    "Frontier",
    "Setting",
    "energy_per_image",
    "run_frontier",
    "seconds_per_call",
]
