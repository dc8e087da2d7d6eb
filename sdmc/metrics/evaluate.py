"""What ``sdmc eval`` runs: metrics of saved samples or of samples drawn from a model, on one or many ranks.

Metrics (names as on the command line):

- ``digits-fid`` / ``digits-is``: the shipped digits classifier (:mod:`sdmc.metrics.digits`), offline;
  the reference is the digits training split at the samples' size.
- ``fid`` / ``is``: the TF-Inception port (:mod:`sdmc.metrics.inception`; local weights); the FID
  reference is an ``.npz`` of ``mu``/``sigma`` (e.g. ``cifar10.train.npz``) or a dataset name, whose
  statistics are computed here (``--save-ref`` keeps them).

Under ``torchrun`` each rank draws the chunks ``c ≡ rank (mod world)`` of ``batch_size`` images (chunk
``c`` uses seed ``SeedSequence([seed, c])``, so the images do not depend on the number of ranks), the
per-image features are all-gathered in chunk order and rank 0 computes and prints the metrics.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .fid import MetricError, extract, feature_statistics, frechet_distance, inception_score, load_stats, save_stats

METRICS = ("digits-fid", "digits-is", "fid", "is")
SAMPLE_KEYS = ("images", "samples", "x", "arr_0")


# ------------------------------------------------------------------------------------------ samples
def load_samples(path: str | os.PathLike) -> torch.Tensor:
    """Images from an ``.npz`` / ``.npy`` file as ``float32 [N, C, H, W]`` in [-1, 1].

    ``uint8`` arrays are ``[N, H, W, C]`` (as :func:`sdmc.data.images.to_uint8` writes), ``[N, C, H, W]``
    or ``[N, H, W]`` in 0..255; float arrays are ``[N, C, H, W]`` (or ``[N, H, W, C]``) in [-1, 1].
    In an ``.npz`` the array is the one named ``images``, ``samples``, ``x`` or ``arr_0``, or the only one.
    """
    p = Path(path)
    if not p.is_file():
        raise MetricError(f"samples {p}: no such file")
    from ..validate import LIMITS, check_arrays

    check_arrays(str(p), f"samples {p}", LIMITS.npz_bytes, MetricError)  # the headers: before any array is read
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        else:
            with np.load(p, allow_pickle=False) as f:
                names = list(f.files)
                key = next((k for k in SAMPLE_KEYS if k in names), names[0] if len(names) == 1 else None)
                if key is None:
                    raise MetricError(
                        f"samples {p}: which array holds the images? found {names}; name it one of {list(SAMPLE_KEYS)}"
                    )
                arr = f[key]
    except MetricError:
        raise
    except Exception as e:  # zip / format errors of a foreign or truncated file
        raise MetricError(f"samples {p}: not a readable .npz/.npy file ({e})") from None
    return images_from_array(arr, where=f"samples {p}")


def images_from_array(arr: np.ndarray, where: str = "samples") -> torch.Tensor:
    """An image array in one of :func:`load_samples`' layouts -> ``float32 [N, C, H, W]`` in [-1, 1]."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8 and arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[0] < 1:
        raise MetricError(f"{where}: expected images [N, H, W, C] or [N, C, H, W], got shape {list(arr.shape)}")
    if arr.shape[1] not in (1, 3) and arr.shape[-1] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.shape[1] not in (1, 3):
        raise MetricError(f"{where}: images must have 1 or 3 channels, got shape {list(arr.shape)}")
    if arr.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(arr)).float() / 127.5 - 1.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise MetricError(f"{where}: images must be uint8 (0..255) or float ([-1, 1]), got {arr.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not torch.isfinite(x).all():
        raise MetricError(f"{where}: images contain NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.01 or hi > 1.01:
        raise MetricError(
            f"{where}: float images must lie in [-1, 1], found values in [{lo:.3g}, {hi:.3g}] "
            "(save uint8 0..255 or scale to [-1, 1])"
        )
    return x.clamp(-1, 1)


def save_samples(path: str | os.PathLike, images: torch.Tensor) -> None:
    """Write images ``[N, C, H, W]`` in [-1, 1] as ``uint8 [N, H, W, C]`` under key ``images`` (atomic)."""
    from ..data.images import to_uint8
    from ..utils import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, images=to_uint8(images))


def parse_metrics(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"digits-fid,is"`` (or a list of such strings) -> validated metric names, in order, unique."""
    if text is None:
        return ()
    parts = [text] if isinstance(text, str) else list(text)
    names = [m.strip().lower() for part in parts for m in part.split(",") if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad:
        raise MetricError(f"unknown metric(s) {bad}; choose from {', '.join(METRICS)}")
    return tuple(dict.fromkeys(names))


# ----------------------------------------------------------------------------------- distributed
@dataclass
class Ranks:
    """This process's place among ``torchrun`` ranks (``world = 1`` without torchrun)."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def join(cls, device: str | torch.device = "cpu") -> Ranks:
        """Join the process group described by ``WORLD_SIZE`` / ``RANK`` (env://) when there is one."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), False)
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        if not dist.is_available():
            raise MetricError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        dist.init_process_group(backend="nccl" if torch.device(device).type == "cuda" else "gloo", init_method="env://")
        return cls(dist.get_rank(), dist.get_world_size(), True)

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``x [n_r, ...]`` (rank order; ``n_r`` may differ) on every rank."""
        if self.world == 1:
            return x
        import torch.distributed as dist

        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        n = torch.tensor([x.shape[0]], device=dev)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n)
        most = int(max(int(s) for s in sizes))
        pad = torch.zeros((most,) + tuple(x.shape[1:]), dtype=x.dtype, device=dev)
        pad[: x.shape[0]] = x.to(dev)
        parts = [torch.empty_like(pad) for _ in range(self.world)]
        dist.all_gather(parts, pad)
        return torch.cat([p[: int(s)].cpu() for p, s in zip(parts, sizes)])

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ report
@dataclass
class EvalReport:
    """Metric values of ``n`` images; ``values`` uses the keys of the metrics computed (see ``line``).

    Over several sampling seeds ``values`` holds the mean and ``per_seed`` each seed's values; ``floor``
    holds the digits metrics of ``n`` held-out real digits (:func:`sdmc.metrics.quality.digits_floor`),
    ``floor_note`` why there is none.
    """

    n: int
    values: dict[str, float]
    reference: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    seeds: list[int | None] = field(default_factory=lambda: [None])
    per_seed: list[dict[str, float]] | None = None
    floor: dict[str, float] | None = None
    floor_note: str = ""

    def quality(self):
        """The values as a :class:`sdmc.metrics.quality.Quality` (spread over seeds, floor)."""
        from .quality import Quality

        return Quality(self.n, list(self.seeds), self.per_seed or [self.values], self.floor, self.floor_note)

    def line(self) -> str:
        v = self.values
        keys = [k for k in ("fid", "is", "digits_fid", "digits_is") if k in v]
        text = self.quality().line(keys)
        if "is" in v and "is_std" in v:
            text += f"  [IS ± {v['is_std']:.3f} over splits]"
        if "digits_is" in v:
            text += f"  [digits confidence {v['digits_confidence']:.3f}, coverage {v['digits_coverage']:.3f}]"
        refs = "; ".join(f"{k} vs {r}" for k, r in self.reference.items())
        return text + (f"  [{refs}]" if refs else "")

    @classmethod
    def merge(cls, reports: Sequence[EvalReport], seeds: Sequence[int]) -> EvalReport:
        """One report of several seeds' reports (same ``n`` and metrics): mean values, each seed's kept."""
        first = reports[0]
        keys = [k for k in first.values if all(k in r.values for r in reports)]
        mean = {k: float(np.mean([r.values[k] for r in reports])) for k in keys}
        return cls(
            n=first.n,
            values=mean,
            reference=first.reference,
            source={**first.source, "seeds": list(seeds)},
            seeds=list(seeds),
            per_seed=[dict(r.values) for r in reports],
            floor=first.floor,
            floor_note=first.floor_note,
        )

    def to_dict(self) -> dict[str, Any]:
        q = self.quality()
        return {
            "n": self.n,
            "metrics": self.values,
            "reference": self.reference,
            "source": self.source,
            "seeds": self.seeds,
            "per_seed": self.per_seed,
            "std": {k: v for k, v in q.std.items() if v is not None} or None,
            "floor": self.floor,
            "floor_note": self.floor_note or None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)


# ---------------------------------------------------------------------------------------- evaluation
@dataclass
class EvalOptions:
    """Where references and evaluator weights come from (see ``sdmc eval --help``)."""

    ref: str | None = None
    inception_weights: str | None = None
    download: bool = False
    splits: int = 10
    data_root: str | None = None
    ref_limit: int | None = None
    save_ref: str | None = None
    device: str = "cpu"
    batch_size: int = 100
    progress: bool = True


def _inception_reference(
    net, opts: EvalOptions, img_size: int, log: Callable[[str], None]
) -> tuple[tuple[np.ndarray, np.ndarray], str]:
    ref = opts.ref
    if not ref:
        raise MetricError(
            "metric 'fid' needs a reference: --ref cifar10.train.npz (mu/sigma statistics) or "
            "--ref DATASET (e.g. cifar10, digits)"
        )
    if ref.endswith(".npz") or Path(ref).is_file():
        return load_stats(ref), ref
    from ..data import load_dataset
    from .fid import dataset_statistics

    try:
        ds = load_dataset(ref, root=opts.data_root, img_size=img_size, train=True)
    except MetricError:
        raise
    except Exception as e:
        raise MetricError(f"--ref {ref!r}: neither a statistics file nor a usable dataset ({e})") from None
    log(
        f"computing Inception statistics of {ref} (train, {img_size}x{img_size}, "
        f"{min(len(ds), opts.ref_limit or len(ds))} images)"
    )
    mu, sigma = dataset_statistics(
        net, ds, batch_size=opts.batch_size, device=opts.device, limit=opts.ref_limit, progress=opts.progress
    )
    if opts.save_ref:
        save_stats(opts.save_ref, mu, sigma)
        log(f"wrote reference statistics {opts.save_ref}")
    return (mu, sigma), f"{ref} train {img_size}x{img_size}"


def evaluate(
    chunks: Iterable[tuple[int, torch.Tensor]],
    metrics: Sequence[str],
    opts: EvalOptions,
    ranks: Ranks | None = None,
    total: int | None = None,
    log: Callable[[str], None] = print,
    source: dict[str, Any] | None = None,
) -> EvalReport | None:
    """Compute ``metrics`` of image chunks ``(chunk_index, images [b, C, H, W] in [-1, 1])``.

    Every rank passes its own chunks; features are gathered in chunk order; rank 0 gets the report,
    other ranks ``None``.
    """
    from tqdm import tqdm

    ranks = ranks or Ranks()
    metrics = parse_metrics(metrics)
    if not metrics:
        raise MetricError("no metric requested")
    nets: dict[str, Any] = {}
    if any(m.startswith("digits") for m in metrics):
        if opts.ref not in (None, "digits"):
            raise MetricError(
                f"digits-fid/digits-is compare with the bundled digits data; --ref {opts.ref!r} "
                "is for fid (use --ref digits or leave it out)"
            )
        from .digits import load_digits_classifier

        net = load_digits_classifier()[0]  # cached and shared: move a copy
        nets["digits"] = net if torch.device(opts.device).type == "cpu" else copy.deepcopy(net).to(opts.device)
    if any(m in ("fid", "is") for m in metrics):
        from .inception import load_inception

        nets["inception"] = load_inception(opts.inception_weights, opts.download, opts.device)

    feats: dict[str, list] = {k: [] for k in nets}
    probs: dict[str, list] = {k: [] for k in nets}
    index: list[torch.Tensor] = []
    img_size = None
    bar = tqdm(total=total, unit="img", desc="eval", disable=not (opts.progress and ranks.main))
    for c, x in chunks:
        if img_size is None:
            img_size = int(x.shape[-1])
        for k, net in nets.items():
            f, p = extract(net, [x], opts.device)
            feats[k].append(f)
            probs[k].append(p)
        index.append(torch.full((len(x),), int(c), dtype=torch.int64) * (1 << 32) + torch.arange(len(x)))
        bar.update(len(x) * ranks.world)
    bar.close()
    if not index:
        raise MetricError(f"rank {ranks.rank}: no images to evaluate")
    order = torch.argsort(ranks.gather_rows(torch.cat(index)))
    gathered = {
        k: (ranks.gather_rows(torch.cat(feats[k]))[order], ranks.gather_rows(torch.cat(probs[k]))[order]) for k in nets
    }
    if not ranks.main:
        return None
    n = len(order)
    values: dict[str, float] = {}
    reference: dict[str, str] = {}
    floor, note = None, ""
    if "digits" in gathered:
        from .digits import digits_scores_from
        from .quality import digits_floor, floor_note

        f, p = gathered["digits"]
        scores = digits_scores_from(f, p, img_size=img_size, splits=1)
        if "digits-fid" in metrics:
            values["digits_fid"] = scores["digits_fid"]
            reference["digits-FID"] = f"digits train {img_size}x{img_size}"
        if "digits-is" in metrics:
            values.update({k: scores[k] for k in ("digits_is", "digits_confidence", "digits_coverage")})
        if n >= 2:
            full = digits_floor(n, img_size)
            floor = None if full is None else {k: full[k] for k in values if k in full}
            note = floor_note(n)
    if "inception" in gathered:
        f, p = gathered["inception"]
        if "fid" in metrics:
            (mu_r, sigma_r), name = _inception_reference(nets["inception"], opts, img_size, log)
            mu, sigma = feature_statistics(f)
            values["fid"] = frechet_distance(mu, sigma, mu_r, sigma_r)
            reference["FID"] = name
        if "is" in metrics:
            splits = min(opts.splits, n)
            values["is"], values["is_std"] = inception_score(p, splits=splits)
            reference["IS"] = f"{splits} splits"
    return EvalReport(n=n, values=values, reference=reference, source=dict(source or {}), floor=floor, floor_note=note)


def tensor_chunks(images: torch.Tensor, batch_size: int, ranks: Ranks) -> Iterable[tuple[int, torch.Tensor]]:
    """This rank's chunks of a tensor of images (chunk ``c`` = images ``[c·b, (c+1)·b)``)."""
    for c in range(ranks.rank, math.ceil(len(images) / batch_size), ranks.world):
        yield c, images[c * batch_size : (c + 1) * batch_size]


def chunk_seed(seed: int, chunk: int) -> int:
    """The sampling seed of chunk ``chunk`` (independent of the number of ranks)."""
    return int(np.random.SeedSequence([int(seed), int(chunk)]).generate_state(1, dtype=np.uint32)[0])


def model_chunks(
    sample: Callable[[int, int], torch.Tensor], n: int, batch_size: int, ranks: Ranks, keep: list | None = None
) -> Iterable[tuple[int, torch.Tensor]]:
    """This rank's chunks of ``n`` generated images; ``sample(count, chunk)`` draws chunk ``chunk``.

    With ``keep`` a list, the chunks are also appended to it (to save the samples afterwards).
    """
    for c in range(ranks.rank, math.ceil(n / batch_size), ranks.world):
        x = sample(min(batch_size, n - c * batch_size), c)
        if keep is not None:
            keep.append((c, x))
        yield c, x


def plan_batch(n: int, batch_size: int, world: int) -> int:
    """A batch size that gives every one of ``world`` ranks at least one chunk of ``n`` images."""
    if n < 1 or batch_size < 1:
        raise MetricError(f"need n >= 1 images and batch size >= 1, got n={n}, batch size={batch_size}")
    if n < world:
        raise MetricError(f"{n} images cannot be shared among {world} ranks; evaluate at least {world}")
    return max(1, min(batch_size, n // world))


def default_metrics(dataset: str | None, ref: str | None, img_ch: int = 3) -> tuple[str, ...]:
    """Digits metrics for digits data (``--ref digits``, a digits model, or gray images without a reference);
    otherwise FID and IS (IS alone without a reference)."""
    if ref == "digits" or (ref is None and (dataset == "digits" or (dataset is None and img_ch == 1))):
        return ("digits-fid", "digits-is")
    return ("fid", "is") if (ref or dataset) else ("is",)


def eval_samples_file(
    path: str | os.PathLike, metrics: Sequence[str] | None, opts: EvalOptions, log: Callable[[str], None] = print
) -> EvalReport | None:
    """Metrics of the images saved in ``path`` (see :func:`load_samples`); rank 0 returns the report."""
    images = load_samples(path)
    metrics = parse_metrics(metrics) or default_metrics(None, opts.ref, images.shape[1])
    ranks = Ranks.join(opts.device)
    try:
        b = plan_batch(len(images), opts.batch_size, ranks.world)
        return evaluate(
            tensor_chunks(images, b, ranks),
            metrics,
            opts,
            ranks,
            total=len(images),
            log=log,
            source={"samples": str(path)},
        )
    finally:
        ranks.close()


DIGITS_EVAL_N = 256  # default images per seed for digits metrics (the real-data floor exists up to 360)
EVAL_N = 1000  # default images for Inception metrics


def eval_model_file(
    path: str | os.PathLike,
    n: int | None,
    metrics: Sequence[str] | None,
    opts: EvalOptions,
    solver: str = "ddim",
    steps: int = 50,
    seed: int | Sequence[int] = 0,
    n_seeds: int | None = 1,
    weights: str = "auto",
    snn_steps: int | None = None,
    threshold: float | None = None,
    save_samples_to: str | None = None,
    log: Callable[[str], None] = print,
    sampler: Callable[..., torch.Tensor] | None = None,
    precision: str | None = None,
    unsafe: bool = False,
) -> EvalReport | None:
    """Draw ``n`` images from the model in ``path`` and compute ``metrics``; rank 0 returns the report.
    ``n=None``: :data:`DIGITS_EVAL_N` for digits metrics, else :data:`EVAL_N`.

    Images come from ``sdmc.diffusion.sampling.sample_images`` (or ``sampler`` with its signature), chunk
    ``c`` with seed :func:`chunk_seed` ``(seed, c)``.  Several seeds (``seed`` a list, or ``n_seeds`` seeds
    ``seed, seed+1, ...``; ``n_seeds=None``: :data:`sdmc.metrics.quality.DEFAULT_SEEDS` many for digits
    metrics, else 1): the whole evaluation runs once per seed and the report gives the mean and each seed's
    values (the seed-to-seed spread); ``save_samples_to`` keeps the first seed's images.  ``precision``
    (``fp32``, ``bf16``, ``int8``): sample with the compiled executor at that precision (default: the eager
    model).
    """
    from ..checkpoint import load_model
    from ..diffusion.schedule import NoiseSchedule

    if sampler is None:
        from ..diffusion.sampling import sample_images as sampler
    opts = dataclasses.replace(opts)  # the device is resolved per rank below
    ranks = Ranks.join(opts.device)
    try:
        dev = torch.device(opts.device)
        if dev.type == "cuda" and ranks.world > 1:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        opts.device = str(dev)
        model, cfg = load_model(path, weights=weights, snn_steps=snn_steps, device=dev, unsafe=unsafe)
        if precision is not None:
            from ..backends.torch import prepare

            model = prepare(model, "inference", device=dev, precision=precision)
            if getattr(model, "precision", None) is not None:
                log(f"precision: {model.precision.note}")
        schedule = NoiseSchedule(cfg.diffusion)
        dataset = cfg.provenance.get("dataset")
        metrics = parse_metrics(metrics) or default_metrics(dataset, opts.ref, cfg.model.img_ch)
        if opts.ref is None and "fid" in metrics and dataset:
            opts.ref = str(dataset)
        digits = any(m.startswith("digits") for m in metrics)
        if n is None:
            n = DIGITS_EVAL_N if digits else EVAL_N
        b = plan_batch(n, opts.batch_size, ranks.world)
        if isinstance(seed, (int, np.integer)):
            if n_seeds is None:
                from .quality import DEFAULT_SEEDS

                n_seeds = len(DEFAULT_SEEDS) if digits else 1
            seeds = list(range(int(seed), int(seed) + int(n_seeds)))
        else:
            seeds = [int(s) for s in seed]
        if not seeds:
            raise MetricError("no sampling seed given (n_seeds must be >= 1)")

        def sampling(s: int) -> Callable[[int, int], torch.Tensor]:
            def sample(count: int, chunk: int) -> torch.Tensor:
                return sampler(
                    model,
                    schedule,
                    count,
                    solver=solver,
                    steps=steps,
                    batch_size=count,
                    seed=chunk_seed(s, chunk),
                    device=dev,
                    progress=False,
                    threshold=threshold,
                )

            return sample

        keep: list | None = [] if save_samples_to else None
        if ranks.main:
            log(
                f"sampling {n} images from {path} ({cfg.model.arch}, T={cfg.model.snn_steps}) with {solver} "
                f"{steps} steps on {ranks.world} rank(s), batch {b}, seed(s) {','.join(map(str, seeds))}"
            )
        reports = [
            evaluate(
                model_chunks(sampling(s), n, b, ranks, keep if i == 0 else None),
                metrics,
                opts,
                ranks,
                total=n,
                log=log,
                source={
                    "model": str(path),
                    "solver": solver,
                    "steps": steps,
                    "seed": s,
                    "threshold": threshold,
                    "arch": cfg.model.arch,
                    "snn_steps": cfg.model.snn_steps,
                },
            )
            for i, s in enumerate(seeds)
        ]
        report = None
        if ranks.main:
            report = EvalReport.merge(reports, seeds)
            if len(seeds) == 1:
                report.source["seed"] = seeds[0]
        if keep is not None:
            idx = torch.cat([torch.full((len(x),), c) for c, x in keep])
            imgs = torch.cat([x for _, x in keep])
            order = torch.argsort(ranks.gather_rows(idx * (1 << 32) + torch.arange(len(idx))), stable=True)
            allimg = ranks.gather_rows(imgs.contiguous())[order]
            if ranks.main:
                save_samples(save_samples_to, allimg)
                log(f"wrote {len(allimg)} samples to {save_samples_to}")
        return report
    finally:
        ranks.close()


__all__ = [
    "EvalOptions",
    "EvalReport",
    "METRICS",
    "Ranks",
    "chunk_seed",
    "default_metrics",
    "eval_model_file",
    "eval_samples_file",
    "evaluate",
    "images_from_array",
    "load_samples",
    "model_chunks",
    "parse_metrics",
    "plan_batch",
    "save_samples",
    "tensor_chunks",
]
