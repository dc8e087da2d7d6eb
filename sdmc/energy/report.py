"""Energy report: per layer and in total, per network call, per sampling step and per generated image,
under two conventions, next to the ANN UNet of the same width.

``paper`` (SDM Eq. 20)::

    E = E_MAC * MACs(Conv1) + E_AC * sum_{other conv, FC} fr_in(l) * n_exec(l) * MACs(l)

Conv1 is the conv on the image (counted once); ``fr_in`` is the measured fraction of non-zero inputs
(the firing rate for spike inputs, about 1 for the real-valued inputs of shortcuts, tail, Conv3d and
the time-embedding Linears, which Eq. 20 still counts as ACs); ``n_exec`` = T for per-step layers.
No BN, neuron, read-out or addition terms.

``faithful``: real-valued inputs cost dense MACs (static layers once: the head conv is hoisted);
spike inputs cost exact SOPs (each spike times its exact fan-out, borders included) at E_AC; graded
inputs cost their events times fan-out at E_MAC; BN / TSM scales not foldable into a conv, the membrane
read-out and real additions are counted; every neuron update costs ``neuron_update`` and every spike
``spike``.

Per image: measured along the model's own sampling trajectories (the default), the exact sum over the
trajectory's calls ``E_image = sum_i E(call i)`` (each call at its own firing rates); calibrated on noised
dataset images (``data=``), NFE x the mean per call over the calibration steps (an estimate: the steps
are a subsample and the inputs are not the sampler's).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, SdmcError
from ..utils import atomic_path, atomic_write_text
from .count import NodeCost, ann_counterpart, count_graph, model_macs
from .measure import Activity
from .profiles import EnergyProfile, load_profile

CONVENTIONS = ("paper", "faithful")
PJ_PER_MJ = 1e9


def layer_energy(c: NodeCost, act: Activity, prof: EnergyProfile, k: int | None = None) -> dict[str, Any]:
    """Counts and energies (pJ, both conventions) of one node per call and sample; ``k``: one diffusion step."""
    row: dict[str, Any] = dict(
        name=c.name,
        op=c.op,
        cls=c.cls,
        input_kind=c.input_kind,
        timing=c.timing,
        executions=c.executions,
        dense_macs=c.per_exec * c.eager_executions,
        input_rate=None,
        rate=None,
        macs=0.0,
        sops=0.0,
        adds=0.0,
        updates=0.0,
        spikes=0.0,
        paper_pJ=0.0,
        faithful_pJ=0.0,
        measured=True,
    )
    if c.cls == "synapse":
        st = act.synapses.get(c.name)
        if st is None or (k is not None and k not in st.by_step):
            if c.input_kind != "real":
                raise SdmcError(
                    f"energy: no activity was measured for spike-driven layer {c.name!r} "
                    "(its module path does not match the IR node name?)"
                )
            fr, row["measured"] = 1.0, False  # a real input: dense MACs below, no SOPs to read
        else:
            fr, sops = st.rate(k), st.sops(k)
        row["input_rate"] = fr
        if c.reads_image:
            row["paper_pJ"] = prof.mac * c.per_exec
        else:
            row["paper_pJ"] = prof.ac * fr * c.per_exec * c.eager_executions
        if c.input_kind == "real":
            row["macs"] = float(c.per_exec * c.executions)
        elif c.input_kind == "spike":
            row["sops"] = sops
        else:
            row["macs"] = sops
    elif c.cls == "neuron":
        st = act.neurons.get(c.name)
        if st is None:
            raise SdmcError(f"energy: no firing rate was measured for neuron layer {c.name!r}")
        row["rate"] = st.rate(k)
        row["updates"] = float(c.per_exec * c.executions)
        row["spikes"] = row["rate"] * c.per_exec * c.executions
    elif c.cls in ("norm", "scale", "readout"):
        row["macs"] = 0.0 if c.folded else float(c.per_exec * c.executions)
    elif c.cls in ("add", "pool"):
        row["adds"] = float(c.per_exec * c.executions)
    row["faithful_pJ"] = (
        prof.mac * row["macs"]
        + prof.ac * row["sops"]
        + prof.add * row["adds"]
        + prof.neuron_update * row["updates"]
        + prof.spike * row["spikes"]
    )
    return row


@dataclass
class EnergyReport:
    """The result of :func:`analyze`.  Energies in mJ unless a key says ``pJ``."""

    model: dict[str, Any]
    profile: dict[str, Any]
    calibration: dict[str, Any]
    layers: list[dict[str, Any]]
    totals: dict[str, dict[str, float]]
    ann: dict[str, Any] | None
    by_step: list[dict[str, Any]]
    neurons: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    conventions: list[str] = field(default_factory=lambda: list(CONVENTIONS))  # shown in tables

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=float)

    # ---- tables
    def _summary_rows(self) -> list[list[str]]:
        rows = []
        for conv in self.conventions:
            t = self.totals[conv]
            rows.append(
                [
                    f"SNN ({conv})",
                    f"{t['per_call_mJ']:.4g}",
                    f"{t['per_step_mJ']:.4g}",
                    f"{t['per_image_mJ']:.4g}",
                    f"{100 * t['per_call_mJ'] / self.ann['per_call_mJ']:.1f}%" if self.ann else "-",
                ]
            )
        if self.ann:
            a = self.ann
            rows.append(
                [
                    "ANN UNet (dense MACs)",
                    f"{a['per_call_mJ']:.4g}",
                    f"{a['per_step_mJ']:.4g}",
                    f"{a['per_image_mJ']:.4g}",
                    "100%",
                ]
            )
        return rows

    def _layer_rows(self) -> list[list[str]]:
        out = []
        for r in self.layers:
            if r["cls"] == "free":
                continue
            rate = r["input_rate"] if r["cls"] == "synapse" else r["rate"]
            out.append(
                [
                    r["name"],
                    r["op"],
                    r["input_kind"] or "",
                    "" if rate is None else f"{rate:.3f}",
                    f"{r['dense_macs']:.4g}" if r["cls"] == "synapse" else "",
                    f"{r['macs']:.4g}",
                    f"{r['sops']:.4g}",
                ]
                + [f"{r[c + '_pJ'] / PJ_PER_MJ:.4g}" for c in self.conventions]
            )
        return out

    @property
    def LAYER_HEAD(self) -> list[str]:
        return ["layer", "op", "input", "rate", "dense MACs", "MACs", "SOPs"] + [f"{c} mJ" for c in self.conventions]

    SUMMARY_HEAD = ["model", "per call (mJ)", "per sampling step (mJ)", "per image (mJ)", "vs ANN"]

    def _header_lines(self) -> list[str]:
        m, c, p = self.model, self.calibration, self.profile
        if c.get("mode") == "trajectory":
            guide = f", threshold guidance {c['threshold']}" if c.get("threshold") is not None else ""
            act = (
                f"activity: {c['n_images']} sampling trajectories from noise ({c['solver']} {c['sampling_steps']} "
                f"steps: NFE {c['nfe']}{guide}, seed {c['seed']}), every call measured; per image = exact sum "
                f"over the {c['nfe']} calls; mean firing rate {c['mean_firing_rate']:.4f}"
            )
        elif c.get("mode") == "inputs":
            act = (
                f"activity: {c['n_images']} samples of {c['data']}, one forward pass each (all T steps), seed "
                f"{c['seed']}; mean firing rate {c['mean_firing_rate']:.4f}"
            )
        else:
            act = (
                f"calibration: {c['n_images']} images of {c['data']}, diffusion steps {c['steps']} "
                f"({c['solver']} {c['sampling_steps']} steps: NFE {c['nfe']}); mean firing rate "
                f"{c['mean_firing_rate']:.4f}"
            )
        what = (
            f"model: {m.get('arch')} ch={m.get('ch')} ch_mult={m.get('ch_mult')} T={m.get('snn_steps')} "
            f"img={m.get('img_ch')}x{m.get('img_size')}x{m.get('img_size')}"
            if m.get("arch") is not None
            else f"model: {m.get('source', 'IR graph')} T={m.get('snn_steps')} input {m.get('input')}"
        )
        return [
            what,
            f"profile: {p['name']} (MAC {p['costs']['mac']} pJ, AC {p['costs']['ac']} pJ) - {p['citation']}",
            act,
        ]

    def _step_rows(self, limit: int | None = None) -> tuple[list[str], list[list[str]], str | None]:
        """The per-call table: head, rows (at most ``limit``, evenly spaced, first and last kept), a note
        when rows were left out."""
        calls = bool(self.by_step) and "call" in self.by_step[0]
        head = (["call", "t"] if calls else ["t"]) + [f"{c} mJ" for c in self.conventions] + ["firing rate"]
        idx = list(range(len(self.by_step)))
        if limit is not None and len(idx) > limit:
            idx = sorted(set(np.round(np.linspace(0, len(idx) - 1, limit)).astype(int).tolist()))
        rows = []
        for i in idx:
            st = self.by_step[i]
            first = [str(st["call"]), f"{st['t']:g}"] if calls else [str(st["t"])]
            rows.append(first + [f"{st[c + '_mJ']:.4g}" for c in self.conventions] + [f"{st['firing_rate']:.4f}"])
        note = (
            f"{len(idx)} of {len(self.by_step)} calls shown; all in the JSON" if len(idx) < len(self.by_step) else None
        )
        return head, rows, note

    def to_markdown(self) -> str:
        def table(head, rows):
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            return "\n".join(lines)

        parts = [
            "# sdmc energy report",
            "",
            *[f"- {h}" for h in self._header_lines()],
            "",
            "## Totals",
            "",
            table(self.SUMMARY_HEAD, self._summary_rows()),
            "",
            "## Per call (one image)",
            "",
            table(*self._step_rows()[:2]),
            "",
            "## Per layer (per call, one image)",
            "",
            table(self.LAYER_HEAD, self._layer_rows()),
            "",
            "## Notes",
            "",
            *[f"- {n}" for n in self.notes],
            "",
        ]
        return "\n".join(parts)

    def to_csv(self) -> str:
        buf = io.StringIO()
        keys = [
            "name",
            "op",
            "cls",
            "input_kind",
            "timing",
            "executions",
            "dense_macs",
            "input_rate",
            "rate",
            "macs",
            "sops",
            "adds",
            "updates",
            "spikes",
            "paper_pJ",
            "faithful_pJ",
            "measured",
        ]
        w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in self.layers:
            w.writerow(r)
        return buf.getvalue()

    def print(self, console=None, layers: bool = True) -> None:
        """A readable terminal report (rich tables)."""
        from rich.console import Console

        from ..tables import rich_table

        console = console or Console(width=max(Console().width, 150))
        for h in self._header_lines():
            console.print(h)
        if layers:
            console.print(
                rich_table(
                    "per layer (per call, one image)", self.LAYER_HEAD, self._layer_rows(), left=3, no_wrap_first=True
                )
            )
        head, rows, note = self._step_rows(limit=12)
        console.print(rich_table("per call (one image)" + (f"; {note}" if note else ""), head, rows, left=0))
        console.print(rich_table("energy", self.SUMMARY_HEAD, self._summary_rows()))
        for n in self.notes:
            console.print(f"note: {n}")

    def plot(self, path) -> None:
        """Per-layer energy (both conventions) and firing rates, as a PNG (matplotlib Agg)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        syn = [r for r in self.layers if r["cls"] == "synapse"]
        neu = self.neurons
        fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(8, 0.18 * len(syn)), 8))
        x = np.arange(len(syn))
        a1.bar(x - 0.2, [r["paper_pJ"] / PJ_PER_MJ for r in syn], 0.4, label="paper (Eq. 20)")
        a1.bar(x + 0.2, [r["faithful_pJ"] / PJ_PER_MJ for r in syn], 0.4, label="faithful")
        a1.set_xticks(x, [r["name"] for r in syn], rotation=90, fontsize=5)
        a1.set_ylabel("mJ per call")
        a1.set_yscale("log")
        a1.legend()
        a1.set_title(f"energy per synaptic layer ({self.profile['name']})")
        xs = np.arange(len(neu))
        a2.bar(xs, [n["rate"] for n in neu], color="tab:green")
        a2.set_xticks(xs, [n["name"] for n in neu], rotation=90, fontsize=5)
        a2.set_ylabel("firing rate")
        a2.set_title("firing rate per neuron layer")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)

    def write(self, path, fmt: str) -> None:
        """Write ``json`` / ``markdown`` / ``csv`` atomically."""
        text = {"json": self.to_json, "markdown": self.to_markdown, "csv": self.to_csv}.get(fmt)
        if text is None:
            raise ConfigError(f"energy report: unknown format {fmt!r}; choose json, markdown or csv")
        atomic_write_text(path, text())


def build_report(
    costs: dict[str, NodeCost],
    act: Activity,
    prof: EnergyProfile,
    model_cfg: dict[str, Any],
    calibration: dict[str, Any],
    nfe: int,
    sampling_steps: int,
    ann_macs: int | None,
    notes: list[str] | None = None,
) -> EnergyReport:
    """Combine the static costs, the measured activity and a profile into an :class:`EnergyReport`.

    Activity keyed by call (a measured trajectory, ``act.keyed_by == "call"``): per image is the exact sum
    over the ``nfe`` calls; keyed by diffusion step (calibration): ``nfe`` x the mean over the steps seen.
    """
    rows = [layer_energy(c, act, prof) for c in costs.values()]
    calls_per_step = nfe / sampling_steps
    by_call = act.keyed_by == "call"
    if by_call and act.steps != list(range(nfe)):
        raise SdmcError(
            f"energy: the measured trajectory has calls {act.steps[:3]}...{act.steps[-1:]} "
            f"({len(act.steps)}), not the solver's {nfe}"
        )
    by_step = []
    for k in act.steps:
        rk = [layer_energy(c, act, prof, k) for c in costs.values()]
        key = dict(call=k, t=act.call_t[k]) if by_call else dict(t=k)  # every measured call has its t
        by_step.append(
            dict(
                **key,
                paper_mJ=sum(r["paper_pJ"] for r in rk) / PJ_PER_MJ,
                faithful_mJ=sum(r["faithful_pJ"] for r in rk) / PJ_PER_MJ,
                firing_rate=act.mean_rate(k),
            )
        )
    totals = {}
    for conv in CONVENTIONS:
        if by_call:  # the exact sum over the trajectory's calls
            per_image = float(sum(s[f"{conv}_mJ"] for s in by_step))
            per_call = per_image / nfe
        else:  # mean per call over the calibration steps (each step weighs equally, as in a sampling run)
            per_call = (
                float(np.mean([s[f"{conv}_mJ"] for s in by_step]))
                if by_step
                else sum(r[f"{conv}_pJ"] for r in rows) / PJ_PER_MJ
            )
            per_image = per_call * nfe
        totals[conv] = dict(
            per_call_mJ=per_call,
            per_step_mJ=per_call * calls_per_step,
            per_image_mJ=per_image,
            macs=(
                sum(r["macs"] for r in rows)
                if conv == "faithful"
                else float(sum(c.per_exec for c in costs.values() if c.reads_image))
            ),
            sops=(
                sum(r["sops"] for r in rows)
                if conv == "faithful"
                else sum(
                    r["input_rate"] * r["dense_macs"]
                    for r, c in zip(rows, costs.values())
                    if c.cls == "synapse" and not c.reads_image
                )
            ),
        )
    ann = None
    if ann_macs is not None:
        e = ann_macs * prof.mac / PJ_PER_MJ
        ann = dict(macs=ann_macs, per_call_mJ=e, per_step_mJ=e * calls_per_step, per_image_mJ=e * nfe)
    neurons = [
        dict(
            name=n,
            rate=s.rate(),
            rate_per_step=s.rate_per_step().tolist(),
            size=s.size,
            by_t={str(k): s.rate(k) for k in act.steps if k in s.samples},
        )
        for n, s in act.neurons.items()
    ]
    per_image_note = (
        f"per call = one network evaluation of one image (all T SNN steps); per image = the exact sum over the "
        f"{nfe} calls of the measured trajectories (each call at its own firing rates); per call in the totals = "
        "per image / NFE"
        if by_call
        else "per call = one network evaluation of one image (all T SNN steps); per image = NFE x per call, the "
        "mean over the calibration steps"
    )
    notes = list(notes or []) + [
        per_image_note,
        "paper: SDM Eq. 20 - Conv1 as MACs once, every other conv/FC as fr_in x T x MACs at E_AC, including the "
        "real-valued shortcut, tail, Conv3d and time-embedding inputs (fr_in ~ 1 there); no BN/neuron terms",
        "faithful: real inputs cost MACs (head hoisted: once), spikes cost exact SOPs incl. border effects, "
        "plus unfolded BN, read-out, real adds, neuron updates and spikes; Swish/sigmoid not counted",
        "ANN: the pytorch-ddpm UNet of the same width (middle attention kept), dense MACs x E_MAC",
    ]
    unmeasured = [r["name"] for r in rows if not r["measured"]]
    if unmeasured:
        notes.append(f"no activity measured for real-input layers {unmeasured}: fr_in taken as 1")
    return EnergyReport(
        model=model_cfg,
        profile=prof.to_dict(),
        calibration=dict(calibration, nfe=nfe, sampling_steps=sampling_steps, mean_firing_rate=act.mean_rate()),
        layers=rows,
        totals=totals,
        ann=ann,
        by_step=by_step,
        neurons=neurons,
        notes=notes,
    )


TRAJECTORY_IMAGES = 8  # default trajectories measured (each costs NFE calls)
DATA_IMAGES = 32  # default calibration images (each measured at calib_steps steps)


def analyze(
    model_or_graph,
    *,
    data: str | None = None,
    images=None,
    data_root: str | None = None,
    solver: str = "ddim",
    steps: int = 50,
    n_images: int | None = None,
    calib_steps: int = 8,
    profile="45nm-fp32",
    batch_size: int = 32,  # pragma: no mutate (a chunk size: counts do not depend on it; each image is seeded and run alone)
    seed: int = 0,
    diffusion=None,
    ann: bool = True,
    assume_rate: float | None = None,
    threshold: float | None = None,
    solver_kwargs: dict[str, Any] | None = None,
    graph=None,
) -> EnergyReport:
    """Measure and report the energy of a spiking UNet (``nn.Module``) or an IR graph.

    Where the firing rates come from, first match:

    - ``assume_rate``: no measurement; every input fires with that probability (a what-if, e.g. the
      paper's implied 0.47);
    - ``images`` ``[N, C, H, W]`` in [-1, 1] or a dataset name ``data`` (``noise``: uniform random
      images): *data* mode, ``n_images`` (default 32) images noised with ``q_sample`` to ``calib_steps``
      of the diffusion steps ``solver`` visits; per image = NFE x mean per call.  A dataset whose images
      do not fit the model (channels) falls back to the trajectory mode, with a note;
    - otherwise *trajectory* mode: ``n_images`` (default 8) images sampled from noise with ``solver`` in
      ``steps`` steps (``threshold``: with threshold guidance), every call measured; per image = the exact
      sum over the calls (:func:`sdmc.energy.measure.measure_trajectory`).

    A module is measured eagerly with a :class:`FiringRateMonitor`; a graph with the golden simulator.
    ``diffusion``: the forward process (default: the one the graph's recorded config names, else 1000 linear steps).
    ``graph``: the module's traced IR graph when it is at hand (its static costs; skips the trace).
    """
    import torch

    from ..config import DiffusionConfig, ModelConfig
    from ..data import dataset_info
    from ..diffusion.sampling import threshold_guidance
    from ..diffusion.schedule import NoiseSchedule
    from ..diffusion.solvers import make_solver
    from ..ir import Graph
    from .measure import calibration_steps, dataset_images, measure_graph, measure_model, measure_trajectory

    prof = load_profile(profile)
    if threshold is not None and isinstance(model_or_graph, Graph):
        raise ConfigError("energy: threshold guidance applies to a model; recompile the graph with the threshold")
    stored = model_or_graph.meta.get("sdmc_config") if isinstance(model_or_graph, Graph) else None
    stored = stored if isinstance(stored, dict) else {}
    if diffusion is None and isinstance(stored.get("diffusion"), dict):  # the schedule the model was trained on
        diffusion = DiffusionConfig.from_dict(stored["diffusion"])
    dcfg = diffusion or DiffusionConfig()
    schedule = NoiseSchedule(dcfg)
    from ..ir import check

    if isinstance(model_or_graph, Graph):
        graph = check(model_or_graph)
        mc = stored.get("model") or graph.meta.get("model_config")
        cfg = ModelConfig.from_dict(mc) if mc else None
        x = next(n for n in graph.input_nodes if n.type.dtype.startswith("float"))
        img = x.type.shape
        if not _is_denoiser(graph, x):
            return _analyze_network(graph, x, prof, data, images, n_images, batch_size, seed, assume_rate)
        module = None
    else:
        module = model_or_graph
        cfg = getattr(module, "config", None)
        if not isinstance(cfg, ModelConfig):
            raise ConfigError(
                "energy: the model has no sdmc ModelConfig (.config); build it with "
                "sdmc.models.build_model or load it with sdmc.checkpoint.load_model"
            )
        if not cfg.spiking:
            raise ConfigError(
                f"energy: {cfg.arch!r} is not a spiking model; the ANN baseline is reported next "
                "to a spiking model's energy"
            )
        img = (cfg.img_ch, cfg.img_size, cfg.img_size)
        from ..frontends import trace

        dev = next(module.parameters()).device
        example = (1, *img)  # pragma: no mutate (trace ignores the example's batch: the IR is batch-agnostic)
        if graph is not None:  # traced before (e.g. once for many sampling settings)
            graph = check(graph)
        elif dev.type != "cpu":  # the frontend traces on CPU examples
            import copy

            graph = trace(copy.deepcopy(module).cpu(), example)
        else:
            graph = trace(module, example)
    costs = count_graph(graph)
    skw = dict(solver_kwargs or {})
    s = make_solver(solver, schedule, **skw)
    s.set_timesteps(steps)
    ann_macs = model_macs(ann_counterpart(cfg)) if (ann and cfg is not None) else None
    model_cfg = cfg.to_dict() if cfg is not None else {"snn_steps": graph.T}

    def report(act: Activity, calib: dict[str, Any], notes: list[str] | None = None) -> EnergyReport:
        calib = dict(calib, solver=solver, seed=seed, threshold=threshold)
        return build_report(
            costs, act, prof, model_cfg, calib, nfe=s.nfe, sampling_steps=steps, ann_macs=ann_macs, notes=notes
        )

    if assume_rate is not None:
        act = Activity.uniform(costs, float(assume_rate), graph.T)
        return report(
            act, dict(mode="assumed", data=f"none (assumed uniform firing rate {assume_rate})", n_images=0, steps=[])
        )
    notes: list[str] = []
    if images is None and data is not None:
        have = None if data in ("noise",) or data.startswith("folder:") else dataset_info(data).img_ch
        if have is not None and have != img[0]:
            notes.append(
                f"dataset {data!r} has {have}-channel images, the model takes {img[0]}: measured along the "
                "model's own sampling trajectories instead"
            )
        else:
            images = dataset_images(data, n_images or DATA_IMAGES, img[1], img[0], root=data_root, seed=seed)
            src = data
    elif images is not None:
        images = torch.as_tensor(images, dtype=torch.float32)
        if tuple(images.shape[1:]) != tuple(img):
            raise ConfigError(
                f"energy: calibration images have shape {list(images.shape[1:])}, the model takes {list(img)}"
            )
        src = "given images"
    if images is not None:
        ks = calibration_steps(dcfg.num_timesteps, solver, steps, calib_steps)
        if module is not None:
            with threshold_guidance(module, threshold):
                act = measure_model(module, images, ks, schedule, batch_size=batch_size, seed=seed)
        else:
            act = measure_graph(graph, images, ks, schedule, seed=seed)
        return report(act, dict(mode="data", data=src, n_images=int(images.shape[0]), steps=ks), notes)
    n = n_images or TRAJECTORY_IMAGES
    act, _ = measure_trajectory(
        module if module is not None else graph,
        schedule,
        solver=solver,
        steps=steps,
        n=n,
        batch_size=min(batch_size, n),
        seed=seed,
        threshold=threshold,
        **skw,
    )
    ts = [act.call_t[k] for k in act.steps]
    calib = dict(mode="trajectory", data="none (the model's own sampling trajectories)", n_images=n, steps=ts)
    return report(act, calib, notes)


def _is_denoiser(graph, x) -> bool:
    """Whether ``graph`` is a denoiser ``f(x_t[, t])`` (measured on sampling trajectories / noised images): its
    input ``x`` is a static image ``[C, H, W]``, and it takes the diffusion step or returns an image ``[C', H, W]``
    (an imported graph with ``t`` folded in); not a classifier's ``[classes]``."""
    if x.type.per_step or len(x.type.shape) != 3:
        return False
    takes_t = any(n.type.dtype.startswith("int") for n in graph.input_nodes)
    hw = tuple(x.type.shape[1:])
    return takes_t or any(len(o.type.shape) == 3 and tuple(o.type.shape[1:]) == hw for o in graph.output_nodes)


def _analyze_network(graph, x, prof, data, images, n_images, batch_size, seed, assume_rate) -> EnergyReport:
    """:func:`analyze` for a graph that is no denoiser (a classifier, say): one forward pass per sample,
    measured with the golden simulator on :func:`~sdmc.energy.measure.measure_network`'s random inputs, or
    ``assume_rate``; no ANN baseline (the network is not a UNet)."""
    from .measure import measure_network

    if data not in (None, "noise") or images is not None:
        raise ConfigError(
            f"energy: graph input {x.name!r} ({'per-step ' if x.type.per_step else ''}{list(x.type.shape)}) is "
            "not a denoiser's image [C, H, W]: this network is measured on random inputs (no --data) or at "
            "--assume-rate, not on dataset images"
        )
    costs = count_graph(graph)
    n = n_images or TRAJECTORY_IMAGES
    if assume_rate is not None:
        act = Activity.uniform(costs, float(assume_rate), graph.T)
        calib = dict(mode="assumed", data=f"none (assumed uniform firing rate {assume_rate})", n_images=0, steps=[])
    else:
        act = measure_network(graph, n, batch_size=batch_size, seed=seed)
        calib = dict(mode="inputs", data="random inputs (spikes p=0.3 / standard normal values)", n_images=n, steps=[0])
    calib.update(solver="none (one forward pass per sample)", seed=seed, threshold=None)
    model = dict(
        snn_steps=graph.T,
        source=graph.meta.get("source_class") or graph.meta.get("source") or "IR graph",
        input=("[T, B, " if x.type.per_step else "[B, ") + ", ".join(map(str, x.type.shape)) + "]",
    )
    return build_report(costs, act, prof, model, calib, nfe=1, sampling_steps=1, ann_macs=None)
