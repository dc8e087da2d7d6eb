"""Fréchet distance, Inception Score and reference statistics files.

FID between two feature Gaussians ``N(mu1, S1)`` and ``N(mu2, S2)``::

    d² = |mu1 - mu2|² + tr(S1) + tr(S2) - 2·tr((S1·S2)^½)

computed as pytorch-fid / pytorch-ddpm do (``scipy.linalg.sqrtm`` of the product; when the root is not
finite or not accurate, both covariances get ``eps·I`` added; a small imaginary part from round-off is
dropped).  Inception Score of class probabilities ``p(y|x)`` in ``k`` splits::

    IS = exp(E_x KL(p(y|x) || p(y))),   p(y) = E_x p(y|x) within the split;  reported as mean ± std.

Reference statistics are ``.npz`` files with float arrays ``mu [D]`` and ``sigma [D, D]`` (the format of
pytorch-ddpm's ``stats/cifar10.train.npz``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from ..errors import SdmcError
from ..utils import atomic_path


class MetricError(SdmcError):
    """A metric cannot be computed: bad statistics file, bad samples, missing evaluator weights."""


# ----------------------------------------------------------------------------------- pure functions
def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``features [N, D]`` -> ``(mu [D], sigma [D, D])`` in float64; ``sigma`` is the unbiased covariance."""
    f = (
        features.detach().cpu().double().numpy()
        if isinstance(features, torch.Tensor)
        else np.asarray(features, dtype=np.float64)
    )
    if f.ndim != 2:
        raise MetricError(f"feature statistics: features must be [N, D], got shape {list(f.shape)}")
    if f.shape[0] < 2:
        raise MetricError(f"feature statistics: need at least 2 feature vectors, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise MetricError("feature statistics: features contain NaN or inf (are the images finite?)")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrtm(a: np.ndarray) -> tuple[np.ndarray, float]:
    """``scipy.linalg.sqrtm`` and its relative residual ``|X² - A|_F / |A|_F`` (inf when not finite)."""
    from scipy import linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular-matrix warnings: the residual check below decides
        x = linalg.sqrtm(a)
    if not np.isfinite(x).all():
        return x, float("inf")
    denom = max(np.linalg.norm(a), 1e-300)
    return x, float(np.linalg.norm(x @ x - a) / denom)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (see the module docstring)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != mu2.shape or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise MetricError(
            f"Fréchet distance: shapes do not match: mu1 {list(mu1.shape)}, sigma1 {list(sigma1.shape)}, "
            f"mu2 {list(mu2.shape)}, sigma2 {list(sigma2.shape)} (features of different evaluators?)"
        )
    for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise MetricError(f"Fréchet distance: {name} contains NaN or inf")
    diff = mu1 - mu2
    covmean, err = _sqrtm(sigma1 @ sigma2)
    if err > 1e-3:  # singular product (e.g. fewer samples than dimensions): regularise both sides
        offset = np.eye(d) * eps
        covmean, err = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if not np.isfinite(covmean).all():
            raise MetricError("Fréchet distance: the matrix square root is not finite even with eps offset")
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        if imag > 1e-3:
            raise MetricError(f"Fréchet distance: matrix square root has a large imaginary part ({imag:.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def inception_score(probs: np.ndarray | torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """IS ``(mean, std)`` over ``splits`` equal consecutive chunks of ``probs [N, K]`` (rows sum to 1)."""
    p = probs.detach().cpu().double().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[0] < 1:
        raise MetricError(f"inception score: probabilities must be [N, K], got shape {list(p.shape)}")
    if not (np.isfinite(p).all() and (p >= 0).all() and np.allclose(p.sum(1), 1.0, atol=1e-3)):
        raise MetricError("inception score: rows must be probability vectors (non-negative, summing to 1)")
    splits = int(splits)
    if not 1 <= splits <= p.shape[0]:
        raise MetricError(f"inception score: splits must be in [1, N={p.shape[0]}], got {splits}")
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(py)), 0.0).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


# ------------------------------------------------------------------------------- statistics files
def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, **extra) -> None:
    """Write ``mu``/``sigma`` (plus optional arrays such as ``num``) to ``path`` (.npz), atomically."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise MetricError(
            f"save_stats {path}: mu must be [D] and sigma [D, D], got {list(mu.shape)}, {list(sigma.shape)}"
        )
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.savez would otherwise append '.npz' to the name
            np.savez(fh, mu=mu, sigma=sigma, **{k: np.asarray(v) for k, v in extra.items()})


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(mu, sigma)`` from an ``.npz`` statistics file (e.g. ``cifar10.train.npz``)."""
    path = Path(path)
    if not path.is_file():
        raise MetricError(f"reference statistics {path}: no such file")
    from ..validate import LIMITS, check_arrays

    # mu [D] and sigma [D, D] for D = 2048 Inception features take 32 MiB; the headers are checked before reading
    check_arrays(str(path), f"reference statistics {path}", LIMITS.stats_bytes, MetricError)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("mu", "sigma") if k not in f.files]
            if missing:
                raise MetricError(
                    f"reference statistics {path}: missing array(s) {missing}; "
                    f"found {sorted(f.files)} (expected 'mu' and 'sigma')"
                )
            mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
    except MetricError:
        raise
    except Exception as e:  # zipfile / pickle / value errors of a foreign or truncated file
        raise MetricError(f"reference statistics {path}: not a readable .npz file ({e})") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise MetricError(
            f"reference statistics {path}: mu must be [D] and sigma [D, D], got "
            f"{list(mu.shape)} and {list(sigma.shape)}"
        )
    return mu, sigma


# --------------------------------------------------------------------------- features of image sets
FeatureFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def extract(
    net: FeatureFn,
    batches: Iterable[torch.Tensor],
    device: str | torch.device = "cpu",
    progress: bool = False,
    total: int | None = None,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``net`` (images in [-1, 1] -> ``(features, logits)``) over image batches.

    Returns ``(features [N, D], probs [N, K])`` on the CPU in float32 (``probs = softmax(logits)``).
    """
    from tqdm import tqdm

    feats, probs = [], []
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)
    for x in batches:
        x = x.to(device=device, dtype=torch.float32)
        f, logits = net(x)
        feats.append(f.float().cpu())
        probs.append(torch.softmax(logits.double(), dim=1).float().cpu())
        bar.update(len(x))
    bar.close()
    if not feats:
        raise MetricError("no images to evaluate")
    return torch.cat(feats), torch.cat(probs)


def image_batches(images: torch.Tensor, batch_size: int) -> Iterable[torch.Tensor]:
    """Consecutive slices of an image tensor ``[N, C, H, W]``."""
    for i in range(0, len(images), batch_size):
        yield images[i : i + batch_size]


def dataset_batches(dataset, batch_size: int, limit: int | None = None) -> Iterable[torch.Tensor]:
    """Image batches (labels dropped) from a torch Dataset of ``(image, label)``; at most ``limit`` images."""
    from torch.utils.data import DataLoader

    n = len(dataset) if limit is None else min(limit, len(dataset))
    sub = dataset if n == len(dataset) else torch.utils.data.Subset(dataset, range(n))
    for batch in DataLoader(sub, batch_size=batch_size, shuffle=False):
        yield batch[0] if isinstance(batch, (list, tuple)) else batch


def dataset_statistics(
    net: FeatureFn,
    dataset,
    batch_size: int = 100,
    device: str | torch.device = "cpu",
    limit: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of ``net``'s features over (the first ``limit`` images of) a dataset."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    feats, _ = extract(net, dataset_batches(dataset, batch_size, limit), device, progress, total=n, desc="reference")
    return feature_statistics(feats)


__all__ = [
    "MetricError",
    "dataset_batches",
    "dataset_statistics",
    "extract",
    "feature_statistics",
    "frechet_distance",
    "image_batches",
    "inception_score",
    "load_stats",
    "save_stats",
]
