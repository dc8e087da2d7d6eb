"""Sample quality beside its real-data floor and its seed-to-seed spread.

A digits-FID means little alone: FID of ``n`` images is biased upwards at small ``n``, and two runs of the
same model differ.  Every digits-FID / IS that sdmc reports (``sdmc eval``, the demo, the conversion
table, the frontier) therefore comes with

- the **floor**: the same metrics of ``n`` held-out real digits (the test split, never trained on: 360
  images, so the floor exists up to ``n = 360``) against the same reference (the training split), i.e.
  what a perfect generator would score at this ``n``;
- the **spread**: the metrics over several sampling seeds, reported as mean ± sample standard deviation
  ``s = sqrt(sum_i (v_i - mean)^2 / (k - 1))`` over ``k`` seeds; two settings whose means differ by less
  than about ``2 s`` are not told apart by ``k`` seeds.

:class:`Quality` holds one such result; :func:`digits_quality` makes one from a sampler;
:func:`digits_floor` is the floor alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .fid import MetricError

DIGITS_HELD_OUT = 360  # images in the digits test split (20 % of scikit-learn's 1797, stratified)
FLOOR_SEED = 0  # the fixed subset of the test split the floor uses below n = 360
DEFAULT_SEEDS = (0, 1, 2)
LABELS = {
    "digits_fid": ("digits-FID", "{:.1f}"),
    "digits_is": ("digits-IS", "{:.2f}"),
    "fid": ("FID", "{:.2f}"),
    "is": ("IS", "{:.2f}"),
}


@functools.lru_cache(maxsize=16)
def digits_floor(n: int, img_size: int = 16) -> dict[str, float] | None:
    """Digits metrics of ``n`` held-out test digits at ``img_size`` (a fixed random subset; all 360 at
    ``n = 360``) against the training-split reference; ``None`` when ``n`` exceeds the test split."""
    from ..data import digits_arrays
    from .digits import digits_scores

    if n < 2:
        raise MetricError(f"real-data floor: needs n >= 2 images, got {n}")
    if n > DIGITS_HELD_OUT:
        return None
    x, _ = digits_arrays(img_size, train=False)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(FLOOR_SEED))[:n]
    s = digits_scores(x[idx], img_size=img_size)
    return {k: float(v) for k, v in s.items()}


def floor_note(n: int) -> str:
    """Why there is no floor at ``n`` (empty when there is one)."""
    if n > DIGITS_HELD_OUT:
        return f"no real-data floor at n={n}: the held-out digits are {DIGITS_HELD_OUT}; evaluate n <= 360 to get one"
    return ""


@dataclass
class Quality:
    """Metrics of ``n`` generated images for each of ``seeds`` (``per_seed[i]``: ``{metric: value}``), and
    the real-data ``floor`` at the same ``n`` (``None`` where there is none, ``note`` says why)."""

    n: int
    seeds: list[int | None]
    per_seed: list[dict[str, float]]
    floor: dict[str, float] | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.per_seed) != len(self.seeds) or not self.seeds:
            raise MetricError(f"quality: {len(self.per_seed)} results for seeds {self.seeds}")

    @property
    def keys(self) -> list[str]:
        return [k for k in self.per_seed[0] if all(k in p for p in self.per_seed)]

    @property
    def mean(self) -> dict[str, float]:
        return {k: float(np.mean([p[k] for p in self.per_seed])) for k in self.keys}

    @property
    def std(self) -> dict[str, float | None]:
        """Sample standard deviation over the seeds (``None`` with one seed)."""
        if len(self.seeds) < 2:
            return {k: None for k in self.keys}
        return {k: float(np.std([p[k] for p in self.per_seed], ddof=1)) for k in self.keys}

    def within_spread(self, key: str, value: float, k: float = 3.0) -> bool:
        """Whether ``value`` lies within ``k`` seed standard deviations of the mean (no spread: equal)."""
        s = self.std[key]
        return abs(value - self.mean[key]) <= (k * s if s is not None else 1e-9 * max(1.0, abs(value)))

    def format(self, key: str) -> str:
        """``digits-FID 245.1 ± 12.3 (floor 128.0)`` for one metric."""
        label, fmt = LABELS.get(key, (key, "{:.3g}"))
        s = self.std[key]
        text = f"{label} {fmt.format(self.mean[key])}" + (f" ± {fmt.format(s)}" if s is not None else "")
        if self.floor is not None and key in self.floor:
            text += f" (floor {fmt.format(self.floor[key])})"
        return text

    def line(self, keys: Sequence[str] = ("digits_fid", "digits_is")) -> str:
        """One line: each metric with its spread and floor, then what they are."""
        shown = [k for k in keys if k in self.keys]
        if len(self.seeds) > 1:
            seeds = f"mean ± std over {len(self.seeds)} seeds {','.join(map(str, self.seeds))}"
        elif self.seeds[0] is None:
            seeds = "one set of samples: no seed spread (evaluate a model with several seeds)"
        else:
            seeds = f"1 seed ({self.seeds[0]}): no spread"
        where = (
            f"floor = {self.n} held-out real digits" if self.floor is not None else (self.note or "no real-data floor")
        )
        return "  ".join(self.format(k) for k in shown) + f"  [n={self.n}; {seeds}; {where}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "seeds": list(self.seeds),
            "mean": self.mean,
            "std": self.std,
            "per_seed": self.per_seed,
            "floor": self.floor,
            "floor_note": self.note or None,
            **self.extra,
        }


def with_floor(n: int, img_size: int, seeds: Sequence[int | None], per_seed: list[dict[str, float]]) -> Quality:
    """A :class:`Quality` of digits metrics with the floor at ``n`` (images of ``img_size``) attached;
    ``seeds`` ``[None]`` for one set of samples of unknown seed."""
    return Quality(n=n, seeds=list(seeds), per_seed=per_seed, floor=digits_floor(n, img_size), note=floor_note(n))


def digits_quality(
    sample: Callable[[int], torch.Tensor], n: int, seeds: Sequence[int] = DEFAULT_SEEDS, keep: dict | None = None
) -> Quality:
    """Digits metrics of ``sample(seed) -> images [n, C, H, W]`` in [-1, 1] for every seed, with the floor.

    ``keep``: a dict that receives each seed's images (``keep[seed]``), e.g. to save a grid.
    """
    from .digits import digits_scores

    if n < 2:
        raise MetricError(f"digits quality: needs n >= 2 images, got {n}")
    per_seed, size = [], None
    for s in seeds:
        imgs = sample(int(s))
        if imgs.shape[0] != n:
            raise MetricError(f"digits quality: the sampler gave {imgs.shape[0]} images for seed {s}, expected {n}")
        size = int(imgs.shape[-1])
        sc = digits_scores(imgs)
        per_seed.append({k: float(sc[k]) for k in ("digits_fid", "digits_is")})
        if keep is not None:
            keep[int(s)] = imgs
    return with_floor(n, size, seeds, per_seed)


def model_quality(
    model,
    diffusion,
    n: int,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    solver: str = "dpm-solver++",
    steps: int = 10,
    threshold: float | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    keep: dict | None = None,
    **solver_kwargs: Any,
) -> Quality:
    """Digits quality of a denoiser ``model`` with the noise schedule of ``diffusion`` (a
    :class:`~sdmc.config.DiffusionConfig`): ``n`` images per seed drawn with ``solver`` in ``steps`` steps
    (``threshold``: threshold guidance) through the compiled torch executor, as ``sdmc sample`` draws them."""
    from ..backends.torch_exec import prepare
    from ..diffusion.sampling import sample_images
    from ..diffusion.schedule import NoiseSchedule

    fast = prepare(model, "inference")
    schedule = NoiseSchedule(diffusion)

    def sample(seed: int) -> torch.Tensor:
        return sample_images(
            fast,
            schedule,
            n,
            solver=solver,
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            device=device,
            progress=False,
            threshold=threshold,
            **solver_kwargs,
        )

    return digits_quality(sample, n, seeds, keep=keep)


__all__ = [
    "DEFAULT_SEEDS",
    "DIGITS_HELD_OUT",
    "Quality",
    "digits_floor",
    "digits_quality",
    "floor_note",
    "model_quality",
    "with_floor",
]
