"""Metrics: Fréchet distance, Inception Score, statistics files, the TF-Inception port, digits metrics."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import linalg

from sdmc.errors import SdmcError
from sdmc.metrics.fid import (MetricError, feature_statistics, frechet_distance, inception_score, load_stats,
                              save_stats)


def _random_gaussian(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d + 3))
    return rng.normal(size=d), a @ a.T / a.shape[1]


def _scipy_fid(mu1, s1, mu2, s2):
    """Direct symmetric form: |mu1-mu2|² + tr S1 + tr S2 - 2 tr (S1^½ S2 S1^½)^½."""
    r1 = linalg.sqrtm(s1).real
    inner = linalg.sqrtm(r1 @ s2 @ r1).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(inner))


# ----------------------------------------------------------------------------------- Fréchet distance
@settings(max_examples=15, deadline=None)
@given(d=st.integers(1, 24), seed=st.integers(0, 2**31 - 1))
def test_frechet_distance_matches_direct_scipy(d, seed):
    rng = np.random.default_rng(seed)
    mu1, s1 = _random_gaussian(rng, d)
    mu2, s2 = _random_gaussian(rng, d)
    got = frechet_distance(mu1, s1, mu2, s2)
    want = _scipy_fid(mu1, s1, mu2, s2)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-8)
    assert got >= -1e-8
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-6, abs=1e-8)  # symmetric


def test_frechet_distance_closed_forms():
    # diagonal covariances: d² = |Δmu|² + Σ (√a - √b)²
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
    want = 9.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want)
    rng = np.random.default_rng(0)
    mu, s = _random_gaussian(rng, 16)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-6


def test_frechet_distance_singular_covariances_use_eps_fallback():
    rng = np.random.default_rng(1)
    mu1, s1 = _random_gaussian(rng, 32, rank=4)  # rank-4 covariances in 32 dimensions
    mu2, s2 = _random_gaussian(rng, 32, rank=4)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(got)
    off = np.eye(32) * 1e-6
    assert got == pytest.approx(_scipy_fid(mu1, s1 + off, mu2, s2 + off), rel=1e-3)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(MetricError, match="shapes do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(MetricError, match="NaN"):
        frechet_distance(np.array([np.nan]), np.eye(1), np.zeros(1), np.eye(1))


def test_feature_statistics_and_fid_of_samples_converges():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(20000, 4)) * [1, 2, 3, 4] + 5
    mu, sigma = feature_statistics(torch.from_numpy(f).float())
    assert mu == pytest.approx([5] * 4, abs=0.1)
    assert np.diag(sigma) == pytest.approx([1, 4, 9, 16], rel=0.05)
    assert frechet_distance(mu, sigma, np.full(4, 5.0), np.diag([1.0, 4, 9, 16])) < 0.05
    with pytest.raises(MetricError, match=r"\[N, D\]"):
        feature_statistics(np.zeros(5))
    with pytest.raises(MetricError, match="at least 2"):
        feature_statistics(np.zeros((1, 3)))


# -------------------------------------------------------------------------------------- Inception Score
def test_inception_score_extremes_and_splits():
    k = 10
    onehot = np.eye(k)[np.arange(1000) % k]  # confident and uniform over classes: IS = k
    assert inception_score(onehot, splits=10)[0] == pytest.approx(k)
    assert inception_score(np.full((100, k), 1 / k), splits=1)[0] == pytest.approx(1.0)
    same = np.eye(k)[np.zeros(100, int)]  # always the same class: IS = 1
    assert inception_score(same, splits=4) == pytest.approx((1.0, 0.0))
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(k) * 0.3, size=500)
    # manual formula for one split
    py = p.mean(0)
    want = np.exp(np.mean(np.sum(p * (np.log(p) - np.log(py)), axis=1)))
    assert inception_score(p, splits=1)[0] == pytest.approx(want)
    m, s = inception_score(p, splits=5)
    assert 1 < m < k and s > 0
    with pytest.raises(MetricError, match="splits"):
        inception_score(p, splits=0)
    with pytest.raises(MetricError, match="probability"):
        inception_score(p * 2, splits=1)


# --------------------------------------------------------------------------------- statistics files
def test_stats_roundtrip_atomic_and_errors(tmp_path):
    rng = np.random.default_rng(4)
    mu, sigma = _random_gaussian(rng, 6)
    path = tmp_path / "ref.npz"
    save_stats(path, mu, sigma)
    assert sorted(os.listdir(tmp_path)) == ["ref.npz"]  # no temporary left, no '.npz.npz'
    with np.load(path) as f:  # the cifar10.train.npz layout: plain 'mu' and 'sigma'
        assert set(f.files) == {"mu", "sigma"}
    mu2, sigma2 = load_stats(path)
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)

    with pytest.raises(MetricError, match="no such file"):
        load_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "foreign.npz", m=mu, s=sigma)
    with pytest.raises(MetricError, match=r"missing array\(s\) \['mu', 'sigma'\]"):
        load_stats(tmp_path / "foreign.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(SdmcError, match="junk.npz"):
        load_stats(tmp_path / "junk.npz")
    np.savez(tmp_path / "shape.npz", mu=mu, sigma=sigma[:3])
    with pytest.raises(MetricError, match=r"sigma \[D, D\]"):
        load_stats(tmp_path / "shape.npz")


# ----------------------------------------------------------------------------------- digits metrics
def _blur(x, sigma):
    import torchvision.transforms.functional as TF
    s = sigma * x.shape[-1] / 16
    return TF.gaussian_blur(x, kernel_size=2 * int(3 * s) + 1, sigma=s)


def _shuffle(x, frac, g):
    flat = x.flatten(1).clone()
    k = int(frac * flat.shape[1])
    for i in range(len(flat)):
        idx = torch.randperm(flat.shape[1], generator=g)[:k]
        flat[i, idx] = flat[i, idx[torch.randperm(k, generator=g)]]
    return flat.view_as(x)


def test_shipped_digits_classifier_is_small_and_accurate():
    from safetensors import safe_open

    from sdmc.metrics.digits import WEIGHTS_PATH, classifier_accuracy, load_digits_classifier

    assert WEIGHTS_PATH.stat().st_size < 512 * 1024
    net, refs = load_digits_classifier()
    assert sorted(refs) == [16, 32]
    for size in (16, 32):
        assert classifier_accuracy(net, size, train=False) >= 0.95
    with safe_open(str(WEIGHTS_PATH), "pt") as f:
        meta = json.loads(f.metadata()["sdmc"])
    assert min(meta["test_accuracy"].values()) >= 0.95


@pytest.mark.parametrize("size", [16, 32])
def test_digits_fid_separates_real_from_corrupted(size):
    from sdmc.data import digits_arrays
    from sdmc.metrics.digits import digits_reference_stats, digits_scores

    train, _ = digits_arrays(size, train=True)
    test, _ = digits_arrays(size, train=False)
    assert abs(digits_scores(train)["digits_fid"]) < 1e-6  # the shipped reference is the training split
    real = digits_scores(test)
    assert real["digits_is"] > 9.5 and real["digits_confidence"] > 0.95 and real["digits_coverage"] > 0.99
    g = torch.Generator().manual_seed(0)
    noisy = [digits_scores((test + s * torch.randn(test.shape, generator=g)).clamp(-1, 1))["digits_fid"]
             for s in (0.3, 0.6, 1.0)]
    blurred = [digits_scores(_blur(test, s))["digits_fid"] for s in (0.5, 1.0, 2.0)]
    shuffled = [digits_scores(_shuffle(test, f, g))["digits_fid"] for f in (0.1, 0.3, 1.0)]
    for curve in (noisy, blurred, shuffled):
        assert curve == sorted(curve), curve  # monotone in the corruption strength
        assert curve[0] > 1.5 * real["digits_fid"] and curve[-1] > 20 * real["digits_fid"], (real, curve)
    pure = digits_scores(torch.rand(test.shape, generator=g) * 2 - 1)
    assert pure["digits_fid"] > 50 * real["digits_fid"] and pure["digits_is"] < real["digits_is"] - 3
    # the stored reference equals a fresh computation on the training split
    mu, sigma = digits_reference_stats(size)
    net_mu = feature_statistics(__import__("sdmc.metrics.digits", fromlist=["x"]).load_digits_classifier()[0](
        train)[0].detach())[0]
    np.testing.assert_allclose(mu, net_mu, rtol=1e-4, atol=1e-4)
    assert sigma.shape == (64, 64)


def test_digits_scores_accept_rgb_and_other_sizes_and_reject_bad_shapes():
    from sdmc.data import digits_arrays
    from sdmc.metrics.digits import digits_reference_stats, digits_scores

    x, _ = digits_arrays(16, train=False)
    gray = digits_scores(x)
    rgb = digits_scores(x.repeat(1, 3, 1, 1))
    assert rgb["digits_fid"] == pytest.approx(gray["digits_fid"], rel=1e-4)
    mu24, sigma24 = digits_reference_stats(24)  # not stored: computed once and cached
    assert digits_reference_stats(24)[0] is mu24
    x24, _ = digits_arrays(24, train=False)
    assert digits_scores(x24)["digits_fid"] < 2 * gray["digits_fid"]
    with pytest.raises(MetricError, match=r"\[B, 1\|3, H, W\]"):
        digits_scores(torch.zeros(4, 2, 16, 16))
    with pytest.raises(MetricError, match=r"\[N, C, H, W\]"):
        digits_scores(torch.zeros(4, 16, 16))


def test_digits_classifier_training_is_deterministic_and_file_loads(tmp_path):
    from sdmc.metrics.digits import build_digits_metric_file, load_digits_classifier, train_digits_classifier

    a = train_digits_classifier(epochs=1, seed=3)
    b = train_digits_classifier(epochs=1, seed=3)
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k
    path = tmp_path / "clf.safetensors"
    meta = build_digits_metric_file(path, epochs=1, seed=3)
    assert set(meta["test_accuracy"]) == {"16", "32"}
    net, refs = load_digits_classifier(str(path))
    assert torch.equal(net.head.weight, a.head.weight) and sorted(refs) == [16, 32]
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(MetricError, match="bad.safetensors"):
        load_digits_classifier(str(tmp_path / "bad.safetensors"))
    with pytest.raises(MetricError, match="no such file"):
        load_digits_classifier(str(tmp_path / "none.safetensors"))
