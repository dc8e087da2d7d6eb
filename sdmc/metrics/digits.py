"""Offline quality metrics for the bundled digits data: digits-FID and digits-IS.

A small CNN trained by sdmc on the digits training split (``sdmc.data.digits_arrays``) plays the role
Inception plays for CIFAR-10.  Its 64-d penultimate layer gives features for a **digits-FID** against the
training set; its class probabilities give a **digits-IS** ``exp(E KL(p(y|x) || p(y)))`` (at most 10) with
two readable companions: the mean max-probability (*confidence*) and the entropy of the predicted-class
histogram divided by ``log 10`` (*class coverage*, 1 = every digit equally often).

The trained weights ship as ``digits_classifier.safetensors`` beside this file (with the reference
statistics of the training split at 16x16 and 32x32), so evaluation needs no download and no training.
:func:`train_digits_classifier` / :func:`build_digits_metric_file` reproduce the file deterministically.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .fid import MetricError, extract, feature_statistics, frechet_distance, image_batches, inception_score

WEIGHTS_PATH = Path(__file__).with_name("digits_classifier.safetensors")
INPUT_SIZE = 16
FEATURE_DIM = 64
REF_SIZES = (16, 32)


class DigitsClassifier(nn.Module):
    """CNN ``[B, 1, 16, 16]`` in [-1, 1] -> ``(features [B, 64], logits [B, 10])``.

    ``conv3x3(16)·ReLU·conv3x3(16)·ReLU·maxpool2 · conv3x3(32)·ReLU·conv3x3(32)·ReLU·maxpool2 ·
    flatten · Linear(512, 64) = features · ReLU · Linear(64, 10)``.  Inputs of another size are resized
    to 16x16 (bilinear, antialiased); 3-channel inputs are averaged to gray.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.embed = nn.Linear(32 * 4 * 4, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, 10)

    @staticmethod
    def prepare(x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` in [-1, 1] -> ``[B, 1, 16, 16]`` (gray, resized)."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise MetricError(f"digits classifier: images must be [B, 1|3, H, W], got {list(x.shape)}")
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.embed(self.body(self.prepare(x)))
        return f, self.head(F.relu(f))


# --------------------------------------------------------------------------------------- training
def _shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Random integer translation by up to ``max_shift`` pixels (background -1 fills the border)."""
    b, _, h, w = x.shape
    k = 2 * max_shift + 1
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    views = torch.stack([pad[..., i : i + h, j : j + w] for i in range(k) for j in range(k)], dim=1)
    pick = torch.randint(0, k * k, (b,), generator=g)
    return views[torch.arange(b), pick]


def train_digits_classifier(
    epochs: int = 40, seed: int = 0, batch_size: int = 64, lr: float = 2e-3, log=None
) -> DigitsClassifier:
    """Train :class:`DigitsClassifier` on the digits training split (deterministic for a given seed).

    Each epoch sees the 16x16 split and the 32x32 split (resized back by :meth:`DigitsClassifier.prepare`),
    with random 1-pixel shifts; Adam with cosine learning-rate decay.  Runs on one CPU thread (the model is
    tiny; this keeps the result reproducible and avoids thread contention on busy machines).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(epochs, seed, batch_size, lr, log)
    finally:
        torch.set_num_threads(threads)


def _train(epochs: int, seed: int, batch_size: int, lr: float, log) -> DigitsClassifier:
    from ..data import digits_arrays

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x16, y = digits_arrays(16, train=True)
    x32, _ = digits_arrays(32, train=True)
    xs = torch.cat([x16, DigitsClassifier.prepare(x32)])
    ys = torch.cat([y, y])
    net = DigitsClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * math.ceil(len(xs) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    net.train()
    for ep in range(epochs):
        perm = torch.randperm(len(xs), generator=g)
        total = 0.0
        for i in range(0, len(xs), batch_size):
            idx = perm[i : i + batch_size]
            _, logits = net(_shift(xs[idx], g))
            loss = F.cross_entropy(logits, ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if log is not None:
            log(f"epoch {ep + 1}/{epochs}: loss {total / len(xs):.4f}")
    return net.eval()


@torch.no_grad()
def classifier_accuracy(net: DigitsClassifier, img_size: int = 16, train: bool = False) -> float:
    """Top-1 accuracy of ``net`` on a digits split at ``img_size``."""
    from ..data import digits_arrays

    x, y = digits_arrays(img_size, train=train)
    return float((net(x)[1].argmax(1) == y).float().mean())


def build_digits_metric_file(path: str | os.PathLike = WEIGHTS_PATH, epochs: int = 40, seed: int = 0, log=None) -> dict:
    """Train the classifier, compute training-split reference statistics, write ``path`` atomically.

    Returns the metadata stored in the file (test accuracies, seed, epochs).
    """
    from ..data import digits_arrays
    from ..utils import save_safetensors

    net = train_digits_classifier(epochs=epochs, seed=seed, log=log)
    tensors = {f"net.{k}": v.contiguous() for k, v in net.state_dict().items()}
    for size in REF_SIZES:
        with torch.no_grad():
            mu, sigma = feature_statistics(net(digits_arrays(size, train=True)[0])[0])
        tensors[f"ref{size}.mu"] = torch.from_numpy(mu)
        tensors[f"ref{size}.sigma"] = torch.from_numpy(sigma)
    meta = {
        "seed": seed,
        "epochs": epochs,
        "feature_dim": FEATURE_DIM,
        "test_accuracy": {str(s): round(classifier_accuracy(net, s), 4) for s in REF_SIZES},
    }
    save_safetensors(path, tensors, {"sdmc": json.dumps(meta)})
    load_digits_classifier.cache_clear()
    return meta


# --------------------------------------------------------------------------------------- loading
@functools.lru_cache(maxsize=4)
def load_digits_classifier(
    path: str | None = None,
) -> tuple[DigitsClassifier, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """The shipped (or given) classifier in eval mode and its reference statistics ``{img_size: (mu, sigma)}``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path) if path else WEIGHTS_PATH
    if not p.is_file():
        raise MetricError(
            f"digits classifier weights {p}: no such file (rebuild with sdmc.metrics.digits.build_digits_metric_file())"
        )
    try:
        t = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise MetricError(f"digits classifier weights {p}: unreadable safetensors file ({e})") from None
    net = DigitsClassifier()
    try:
        net.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("net.")}, strict=True)
    except RuntimeError as e:
        raise MetricError(f"digits classifier weights {p}: do not fit DigitsClassifier ({e})") from None
    refs = {
        s: (t[f"ref{s}.mu"].double().numpy(), t[f"ref{s}.sigma"].double().numpy())
        for s in REF_SIZES
        if f"ref{s}.mu" in t and f"ref{s}.sigma" in t
    }
    return net.eval(), refs


@functools.lru_cache(maxsize=8)
def _computed_reference(img_size: int, path: str | None) -> tuple[np.ndarray, np.ndarray]:
    from ..data import digits_arrays

    net, _ = load_digits_classifier(path)
    with torch.no_grad():
        return feature_statistics(net(digits_arrays(img_size, train=True)[0])[0])


def digits_reference_stats(img_size: int = 16, path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of the classifier features of the digits training split at ``img_size``.

    Stored in the weights file for 16 and 32; other sizes are computed once per process and cached.
    """
    _, refs = load_digits_classifier(path)
    if int(img_size) in refs:
        return refs[int(img_size)]
    return _computed_reference(int(img_size), path)


# --------------------------------------------------------------------------------------- metrics
def digits_scores_from(
    features: torch.Tensor, probs: torch.Tensor, img_size: int = 16, path: str | None = None, splits: int = 1
) -> dict[str, float]:
    """Digits metrics from classifier outputs of ``N`` samples.

    ``digits_fid`` (vs the training split at ``img_size``), ``digits_is`` (``splits`` chunks; mean),
    ``digits_confidence`` = mean max p(y|x), ``digits_coverage`` = H(class histogram) / log 10.
    """
    mu_r, sigma_r = digits_reference_stats(img_size, path)
    mu, sigma = feature_statistics(features)
    is_mean, is_std = inception_score(probs, splits=splits)
    hist = np.bincount(probs.argmax(1).numpy(), minlength=10) / len(probs)
    nz = hist[hist > 0]
    return {
        "digits_fid": frechet_distance(mu, sigma, mu_r, sigma_r),
        "digits_is": is_mean,
        "digits_is_std": is_std,
        "digits_confidence": float(probs.max(1).values.mean()),
        "digits_coverage": float(-(nz * np.log(nz)).sum() / np.log(10)),
    }


def digits_scores(
    images: torch.Tensor, img_size: int | None = None, batch_size: int = 500, path: str | None = None
) -> dict[str, float]:
    """Digits metrics of images ``[N, 1, H, W]`` in [-1, 1] (reference at ``img_size``, default ``H``)."""
    if images.dim() != 4:
        raise MetricError(f"digits metrics: images must be [N, C, H, W], got {list(images.shape)}")
    net, _ = load_digits_classifier(path)
    feats, probs = extract(net, image_batches(images, batch_size))
    return digits_scores_from(feats, probs, img_size or images.shape[-1], path)


__all__ = [
    "DigitsClassifier",
    "WEIGHTS_PATH",
    "build_digits_metric_file",
    "classifier_accuracy",
    "digits_reference_stats",
    "digits_scores",
    "digits_scores_from",
    "load_digits_classifier",
    "train_digits_classifier",
]


if __name__ == "__main__":  # python -m sdmc.metrics.digits [OUT]: rebuild the shipped file
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else WEIGHTS_PATH
    print(json.dumps(build_digits_metric_file(out, log=print)))
