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
from sdmc.metrics.fid import MetricError, feature_statistics, frechet_distance, inception_score, load_stats, save_stats


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
    noisy = [
        digits_scores((test + s * torch.randn(test.shape, generator=g)).clamp(-1, 1))["digits_fid"]
        for s in (0.3, 0.6, 1.0)
    ]
    blurred = [digits_scores(_blur(test, s))["digits_fid"] for s in (0.5, 1.0, 2.0)]
    shuffled = [digits_scores(_shuffle(test, f, g))["digits_fid"] for f in (0.1, 0.3, 1.0)]
    for curve in (noisy, blurred, shuffled):
        assert curve == sorted(curve), curve  # monotone in the corruption strength
        assert curve[0] > 1.5 * real["digits_fid"] and curve[-1] > 20 * real["digits_fid"], (real, curve)
    pure = digits_scores(torch.rand(test.shape, generator=g) * 2 - 1)
    assert pure["digits_fid"] > 50 * real["digits_fid"] and pure["digits_is"] < real["digits_is"] - 3
    # the stored reference equals a fresh computation on the training split
    mu, sigma = digits_reference_stats(size)
    net_mu = feature_statistics(
        __import__("sdmc.metrics.digits", fromlist=["x"]).load_digits_classifier()[0](train)[0].detach()
    )[0]
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
    path = tmp_path / "clf.safetensors"
    meta = build_digits_metric_file(path, epochs=1, seed=3)  # trains again with the same seed
    assert set(meta["test_accuracy"]) == {"16", "32"}
    net, refs = load_digits_classifier(str(path))
    for (k, v), (_, w) in zip(a.state_dict().items(), net.state_dict().items()):
        assert torch.equal(v, w), k
    assert sorted(refs) == [16, 32]
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(MetricError, match="bad.safetensors"):
        load_digits_classifier(str(tmp_path / "bad.safetensors"))
    with pytest.raises(MetricError, match="no such file"):
        load_digits_classifier(str(tmp_path / "none.safetensors"))


# ------------------------------------------------------------------------------- TF-Inception port
@pytest.fixture(scope="module")
def inception_random():
    """The port with random but well-scaled weights (activations stay O(1) through the 94 layers)."""
    from sdmc.metrics.inception import FIDInceptionV3

    net = FIDInceptionV3()
    g = torch.Generator().manual_seed(1)
    sd = net.state_dict()
    for k, v in sd.items():
        if k.endswith("running_var"):
            sd[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("running_mean"):
            sd[k] = torch.randn(v.shape, generator=g) * 0.1
        elif k.endswith("weight") and v.dim() > 1:
            sd[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
    net.load_state_dict(sd)
    return net


def test_inception_shapes_resize_and_input_scaling(inception_random):
    import torch.nn.functional as F

    from sdmc.metrics.inception import FEATURE_DIM, NUM_CLASSES

    net = inception_random
    assert sum(p.numel() for p in net.parameters()) == 23_850_960  # torchvision Inception3, 1008 classes
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bias = net.fc.bias.clone()
    net.fc.bias.fill_(100.0)
    try:
        with torch.no_grad():
            f, logits = net(x)  # the only 299x299 pass: the trunk is slow on a CPU
    finally:
        net.fc.bias.copy_(bias)
    assert f.shape == (2, FEATURE_DIM) and logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(f).all() and (f >= 0).all() and f.std() > 0  # pool of ReLU outputs
    # logits are W·f without the fc bias (the TF graph's softmax/logits/MatMul)
    torch.testing.assert_close(logits, f @ net.fc.weight.T, atol=1e-4, rtol=1e-5)
    # pytorch-fid's pipeline: [0, 1] images, bilinear resize to 299, then 2x - 1
    x01 = (x + 1) / 2
    ref = 2 * F.interpolate(x01, size=(299, 299), mode="bilinear", align_corners=False) - 1
    prepared = net.prepare(x)
    assert prepared.shape == (2, 3, 299, 299)
    torch.testing.assert_close(prepared, ref, atol=1e-6, rtol=0)
    assert net.prepare(ref) is ref  # already 299x299: no second resize
    # gray images are repeated to RGB
    torch.testing.assert_close(net.prepare(x[:, :1]), net.prepare(x[:, :1].repeat(1, 3, 1, 1)))
    with pytest.raises(MetricError, match=r"\[B, 1\|3, H, W\]"):
        net(torch.zeros(1, 2, 8, 8))


def test_inception_blocks_have_the_tf_pooling_quirks():
    from torchvision.models import inception as tv

    from sdmc.metrics.inception import FIDInceptionA, FIDInceptionE

    torch.manual_seed(0)
    x = torch.randn(1, 64, 7, 7)
    for ours, theirs, pool_ch in (
        (FIDInceptionA(64, 32), tv.InceptionA(64, 32), 32),
        (FIDInceptionE(64, "avg"), tv.InceptionE(64), 192),
        (FIDInceptionE(64, "max"), tv.InceptionE(64), 192),
    ):
        theirs.load_state_dict(ours.state_dict())
        ours.eval(), theirs.eval()
        with torch.no_grad():
            a, b = ours(x), theirs(x)
        torch.testing.assert_close(a[:, :-pool_ch], b[:, :-pool_ch])  # conv branches identical
        pa, pb = a[:, -pool_ch:], b[:, -pool_ch:]
        if getattr(ours, "pool", "avg") == "avg":  # TF average ignores the padding: differs on the border only
            torch.testing.assert_close(pa[..., 1:-1, 1:-1], pb[..., 1:-1, 1:-1])
            assert not torch.allclose(pa[..., 0, :], pb[..., 0, :])
        else:  # Mixed_7c: max pooling instead of average
            assert not torch.allclose(pa[..., 1:-1, 1:-1], pb[..., 1:-1, 1:-1])


def test_inception_matches_pytorch_fid_with_the_same_weights(inception_random, monkeypatch):
    pi = pytest.importorskip("pytorch_fid.inception")
    sd = {k: v for k, v in inception_random.state_dict().items() if not k.endswith("num_batches_tracked")}
    monkeypatch.setattr(pi, "load_state_dict_from_url", lambda *a, **k: sd)  # their loader is strict
    theirs = pi.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(inception_random(x)[0], theirs((x + 1) / 2)[0].flatten(1), atol=1e-4, rtol=1e-4)


def test_inception_weights_are_local_only_and_errors_name_the_flag(tmp_path, monkeypatch, inception_random):
    from sdmc.metrics.inception import ENV_VAR, load_inception, resolve_weights

    for var in ("XDG_CACHE_HOME", "TORCH_HOME"):
        monkeypatch.setenv(var, str(tmp_path / "cache"))
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(MetricError, match="--inception-weights PATH.*SDMC_INCEPTION_WEIGHTS.*--download"):
        load_inception()
    with pytest.raises(MetricError, match="nope.pth.*--inception-weights"):
        load_inception(tmp_path / "nope.pth")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env.pth"))
    with pytest.raises(MetricError, match=r"env.pth \(from \$SDMC_INCEPTION_WEIGHTS\)"):
        load_inception()
    # a state dict in pytorch-fid's layout (no num_batches_tracked) loads from the path or the env variable
    good = tmp_path / "pt_inception.pth"
    torch.save({k: v for k, v in inception_random.state_dict().items() if "num_batches" not in k}, good)
    monkeypatch.setenv(ENV_VAR, str(good))
    net = load_inception()
    assert torch.equal(net.fc.weight, inception_random.fc.weight)
    # a cached download in torch hub's folder (where pytorch-fid puts it) is found without flags
    monkeypatch.delenv(ENV_VAR)
    hub = tmp_path / "cache" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "pt_inception-2015-12-05-6726825d.pth").write_bytes(good.read_bytes())
    assert resolve_weights() == hub / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(MetricError, match="other.pth: not the pt_inception"):
        load_inception(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(MetricError, match="junk.pth: not a readable"):
        load_inception(tmp_path / "junk.pth")


# --------------------------------------------------------------------------------- sdmc eval plumbing
class _TinyFeatures(torch.nn.Module):
    """A cheap stand-in for Inception: 8 features (channel means/stds/quantiles), 1008 logits."""

    def forward(self, x):
        x = torch.nn.functional.interpolate(x.expand(-1, 3, -1, -1), size=(8, 8), mode="area")
        f = torch.cat([x.mean((2, 3)), x.std((2, 3)), x[:, :, ::4, ::4].flatten(1)], 1)[:, :8]
        g = torch.Generator().manual_seed(0)
        return f, f @ torch.randn(8, 1008, generator=g)


@pytest.fixture()
def fake_inception(monkeypatch):
    import sdmc.metrics.inception as inc

    monkeypatch.setattr(inc, "load_inception", lambda *a, **k: _TinyFeatures())


@pytest.fixture(scope="module")
def digits16():
    from sdmc.data import digits_arrays

    return digits_arrays(16, train=False)[0], digits_arrays(16, train=True)[0]


def test_load_samples_layouts_and_errors(tmp_path, digits16):
    from sdmc.data.images import to_uint8
    from sdmc.metrics.evaluate import load_samples, save_samples

    x = digits16[0][:10]
    u8 = to_uint8(x)  # [N, H, W, 1]
    q = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1
    layouts = {
        "nhwc.npz": dict(images=u8),
        "nchw.npz": dict(samples=u8.transpose(0, 3, 1, 2)),
        "nhw.npz": dict(arr_0=u8[..., 0]),
        "float.npz": dict(x=x.numpy()),
        "floatnhwc.npz": dict(whatever=x.permute(0, 2, 3, 1).numpy()),
    }
    for name, arrays in layouts.items():
        np.savez(tmp_path / name, **arrays)
        got = load_samples(tmp_path / name)
        assert got.shape == (10, 1, 16, 16) and got.dtype == torch.float32, name
        torch.testing.assert_close(got, x if name.startswith("float") else q, atol=1e-6, rtol=0)
    np.save(tmp_path / "plain.npy", u8)
    torch.testing.assert_close(load_samples(tmp_path / "plain.npy"), q)
    save_samples(tmp_path / "saved.npz", x)
    torch.testing.assert_close(load_samples(tmp_path / "saved.npz"), q)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]

    np.savez(tmp_path / "two.npz", a=u8, b=u8)
    with pytest.raises(MetricError, match=r"two.npz: which array.*\['a', 'b'\]"):
        load_samples(tmp_path / "two.npz")
    np.savez(tmp_path / "range.npz", images=(x * 127.5 + 127.5).numpy())
    with pytest.raises(MetricError, match=r"range.npz: float images must lie in \[-1, 1\]"):
        load_samples(tmp_path / "range.npz")
    np.savez(tmp_path / "ch.npz", images=np.zeros((2, 5, 8, 8), np.uint8))
    with pytest.raises(MetricError, match="1 or 3 channels"):
        load_samples(tmp_path / "ch.npz")
    np.savez(tmp_path / "int.npz", images=np.zeros((2, 1, 8, 8), np.int64))
    with pytest.raises(MetricError, match="uint8"):
        load_samples(tmp_path / "int.npz")
    with pytest.raises(MetricError, match="no such file"):
        load_samples(tmp_path / "missing.npz")


def test_parse_metrics_and_defaults():
    from sdmc.metrics.evaluate import default_metrics, parse_metrics, plan_batch

    assert parse_metrics(["digits-fid,IS", "is"]) == ("digits-fid", "is")
    with pytest.raises(MetricError, match=r"unknown metric\(s\) \['kid'\]"):
        parse_metrics("fid,kid")
    assert default_metrics("digits", None) == ("digits-fid", "digits-is")
    assert default_metrics(None, None, img_ch=1) == ("digits-fid", "digits-is")
    assert default_metrics("cifar10", None) == ("fid", "is")
    assert default_metrics(None, "cifar10.train.npz", img_ch=1) == ("fid", "is")
    assert default_metrics(None, None, img_ch=3) == ("is",)
    assert plan_batch(10, 100, 2) == 5 and plan_batch(1000, 100, 4) == 100
    with pytest.raises(MetricError, match="2 ranks"):
        plan_batch(1, 100, 2)


def test_evaluate_digits_matches_direct_scores_and_report(digits16):
    from sdmc.metrics.digits import digits_scores
    from sdmc.metrics.evaluate import EvalOptions, Ranks, evaluate, tensor_chunks

    test, _ = digits16
    rep = evaluate(tensor_chunks(test, 64, Ranks()), ["digits-fid", "digits-is"], EvalOptions(progress=False))
    direct = digits_scores(test)
    assert rep.n == len(test)
    for k in ("digits_fid", "digits_is", "digits_confidence", "digits_coverage"):
        assert rep.values[k] == pytest.approx(direct[k], rel=1e-6)
    # the whole held-out split is the real-data floor at n = 360: the report shows it beside the value
    assert rep.floor["digits_fid"] == pytest.approx(direct["digits_fid"], rel=1e-6)
    f = f"{direct['digits_fid']:.1f}"
    assert rep.line().startswith(f"digits-FID {f} (floor {f})  digits-IS")
    assert "no seed spread" in rep.line() and "floor = 360 held-out real digits" in rep.line()
    assert json.loads(rep.to_json())["metrics"]["digits_fid"] == pytest.approx(direct["digits_fid"])
    only_fid = evaluate(tensor_chunks(test, 64, Ranks()), ["digits-fid"], EvalOptions(progress=False))
    assert set(only_fid.values) == {"digits_fid"}
    with pytest.raises(MetricError, match="--ref 'cifar10.train.npz' is for fid"):
        evaluate(tensor_chunks(test, 64, Ranks()), ["digits-fid"], EvalOptions(ref="cifar10.train.npz"))


def test_evaluate_fid_with_dataset_reference_and_saved_stats(tmp_path, digits16, fake_inception):
    from sdmc.metrics.evaluate import EvalOptions, Ranks, evaluate, tensor_chunks

    test, train = digits16
    ref_file = tmp_path / "digits16.npz"
    opts = EvalOptions(ref="digits", save_ref=str(ref_file), progress=False, splits=4)
    on_train = evaluate(tensor_chunks(train, 100, Ranks()), ["fid", "is"], opts, log=lambda s: None)
    assert abs(on_train.values["fid"]) < 1e-6  # the training split against its own statistics
    assert 1.0 <= on_train.values["is"] and on_train.values["is_std"] >= 0
    assert on_train.reference == {"FID": "digits train 16x16", "IS": "4 splits"}
    assert ref_file.is_file()
    opts2 = EvalOptions(ref=str(ref_file), progress=False)
    on_test = evaluate(tensor_chunks(test, 100, Ranks()), ["fid"], opts2)
    noise = evaluate(tensor_chunks(torch.rand_like(test) * 2 - 1, 100, Ranks()), ["fid"], opts2)
    assert 0 < on_test.values["fid"] < noise.values["fid"] / 10
    with pytest.raises(MetricError, match="needs a reference"):
        evaluate(tensor_chunks(test, 100, Ranks()), ["fid"], EvalOptions(progress=False))
    with pytest.raises(MetricError, match="--ref 'nope'"):
        evaluate(tensor_chunks(test, 100, Ranks()), ["fid"], EvalOptions(ref="nope", progress=False))


def test_cli_eval_samples(tmp_path, capsys, digits16):
    from sdmc.cli import main
    from sdmc.metrics.digits import digits_scores
    from sdmc.metrics.evaluate import save_samples

    path = tmp_path / "s.npz"
    save_samples(path, digits16[0])
    assert main(["eval", "--samples", str(path), "--ref", "digits", "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = digits_scores(torch.from_numpy(np.load(path)["images"]).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert out["n"] == 360 and out["metrics"]["digits_fid"] == pytest.approx(want["digits_fid"], rel=1e-6)
    assert main(["eval", "--samples", str(path), "--no-progress"]) == 0  # gray: digits metrics by default
    assert capsys.readouterr().out.startswith("digits-FID ")
    assert main(["eval", "--no-progress"]) == 2
    assert "exactly one" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "--samples",
                str(path),
                "--metric",
                "fid",
                "--inception-weights",
                str(tmp_path / "none.pth"),
                "--ref",
                "x.npz",
            ]
        )
        == 2
    )
    assert "none.pth" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from sdmc.checkpoint import save_model
    from sdmc.config import ModelConfig, SdmcConfig
    from sdmc.models import build_model

    cfg = SdmcConfig(
        model=ModelConfig(arch="sdm", ch=8, ch_mult=(1, 2), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=16),
        provenance={"dataset": "digits"},
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(path, build_model(cfg.model), cfg)
    return path


def test_eval_model_file_samples_in_chunks(tmp_path, tiny_model):
    from sdmc.metrics.evaluate import EvalOptions, chunk_seed, eval_model_file, load_samples

    calls = []

    def sampler(model, schedule, n, **kw):  # records the calls; real images come from sample_images
        from sdmc.diffusion.sampling import sample_images

        calls.append((n, kw["seed"], kw["batch_size"], kw["solver"], kw["steps"]))
        return sample_images(model, schedule, n, **kw)

    opts = EvalOptions(batch_size=4, progress=False)
    out = tmp_path / "gen.npz"
    rep = eval_model_file(
        tiny_model,
        10,
        None,
        opts,
        solver="ddim",
        steps=2,
        seed=5,
        save_samples_to=str(out),
        sampler=sampler,
        log=lambda s: None,
    )
    assert calls == [
        (4, chunk_seed(5, 0), 4, "ddim", 2),
        (4, chunk_seed(5, 1), 4, "ddim", 2),
        (2, chunk_seed(5, 2), 2, "ddim", 2),
    ]
    assert rep.n == 10 and set(rep.values) == {"digits_fid", "digits_is", "digits_confidence", "digits_coverage"}
    assert rep.source["model"] == str(tiny_model) and rep.source["solver"] == "ddim"
    saved = load_samples(out)
    assert saved.shape == (10, 1, 16, 16)
    rep2 = eval_model_file(
        tiny_model, 10, ["digits-fid"], EvalOptions(batch_size=4, progress=False), steps=2, seed=5, log=lambda s: None
    )
    assert rep2.values["digits_fid"] == pytest.approx(rep.values["digits_fid"], rel=1e-9)  # reproducible


def test_eval_model_over_seeds_reports_spread_and_floor(tiny_model, capsys):
    """Several seeds: values are the mean, each seed's kept, the line shows mean ± std and the floor."""
    from sdmc.cli import main
    from sdmc.metrics.evaluate import EvalOptions, eval_model_file

    opts = EvalOptions(batch_size=8, progress=False)
    rep = eval_model_file(tiny_model, 8, None, opts, steps=2, seed=3, n_seeds=2, log=lambda s: None)
    one = [eval_model_file(tiny_model, 8, None, opts, steps=2, seed=s, log=lambda s: None) for s in (3, 4)]
    assert rep.seeds == [3, 4] and [p["digits_fid"] for p in rep.per_seed] == [r.values["digits_fid"] for r in one]
    assert rep.values["digits_fid"] == pytest.approx((one[0].values["digits_fid"] + one[1].values["digits_fid"]) / 2)
    assert rep.floor["digits_fid"] > 0 and {"digits_fid", "digits_is", "digits_coverage"} <= set(rep.floor)
    std = rep.quality().std["digits_fid"]
    assert std > 0 and f"digits-FID {rep.values['digits_fid']:.1f} ± {std:.1f} (floor " in rep.line()
    assert "mean ± std over 2 seeds 3,4" in rep.line()
    # the CLI default for digits metrics: 3 seeds, 256 images (the floor exists up to 360)
    assert main(["eval", str(tiny_model), "--steps", "1", "--no-progress", "--json", "--batch-size", "128"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["seeds"] == [0, 1, 2] and d["n"] == 256 and d["floor"]["digits_fid"] > 0 and d["std"]["digits_fid"] > 0
    assert main(["eval", str(tiny_model), "-n", "400", "--seeds", "1", "--steps", "1", "--no-progress"]) == 0
    assert "no real-data floor at n=400" in capsys.readouterr().out


def test_eval_under_torchrun_equals_one_rank(tmp_path, tiny_model):
    import subprocess
    import sys

    base = [
        str(tiny_model),
        "-n",
        "10",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--seed",
        "1",
        "--seeds",
        "2",
        "--device",
        "cpu",
        "--json",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    from sdmc.metrics.evaluate import EvalOptions, eval_model_file

    one = eval_model_file(
        tiny_model,
        10,
        None,
        EvalOptions(batch_size=4, progress=False),
        steps=2,
        seed=1,
        n_seeds=2,
        save_samples_to=str(tmp_path / "a.npz"),
        log=lambda s: None,
    )
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "sdmc",
            "eval",
            *base,
            "--save-samples",
            str(tmp_path / "b.npz"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert two.returncode == 0, two.stderr
    r1, r2 = json.loads(one.to_json()), json.loads(two.stdout)  # only rank 0 prints
    assert r1["n"] == r2["n"] == 10
    assert r1["seeds"] == r2["seeds"] == [1, 2] and len(r2["per_seed"]) == 2
    for k, v in r1["metrics"].items():
        assert r2["metrics"][k] == pytest.approx(v, rel=1e-5), k
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["images"], np.load(tmp_path / "b.npz")["images"])
