"""Analytic-DPM's Γ statistics at their edges: the weights key, the cache file and where it lives, the fallback
from guided to unguided statistics, and the estimator's arguments, model state and progress bar.  (Γ against
its closed form is in ``test_solvers.py``, the cache round trip in ``test_sampling.py``.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from spikingjelly.activation_based import neuron

from sdmc.config import DiffusionConfig
from sdmc.diffusion import NoiseSchedule
from sdmc.diffusion.analytic import (
    GAMMA_FORMAT,
    estimate_gamma,
    gamma_cache_path,
    gamma_for_checkpoint,
    load_gamma,
    save_gamma,
    weights_key,
)
from sdmc.diffusion.sampling import threshold_guidance
from sdmc.errors import ConfigError, DataError, SdmcError

SCHED = NoiseSchedule(DiffusionConfig(num_timesteps=6))


class Spiky(torch.nn.Module):
    """A 1x1 conv into IF neurons; records whether the neurons were fresh (reset) at each call."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():  # seeded weights without touching the global generator
            torch.manual_seed(0)
            self.c = torch.nn.Conv2d(1, 1, 1)
        self.sn = neuron.IFNode(v_threshold=0.5)
        self.fresh: list[bool] = []
        self.modes: list[bool] = []

    def forward(self, x, t):
        self.fresh.append(isinstance(self.sn.v, float))
        self.modes.append(self.training)
        return self.sn(self.c(x))


def _data(n=5):
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _half(x, t):
    return 0.5 * x


# ----------------------------------------------------------------------------------------------- weights key
def test_the_weights_key_sees_names_and_shapes_not_only_bytes():
    """Two state dicts with the same bytes under another name or shape are different weights."""

    def holder(name, shape):
        m = torch.nn.Module()
        m.register_buffer(name, torch.arange(6.0).reshape(shape))
        return m

    keys = {weights_key(holder("w", (2, 3))), weights_key(holder("w", (3, 2))), weights_key(holder("v", (2, 3)))}
    assert len(keys) == 3


# ------------------------------------------------------------------------------------------------ the file
def test_a_bundled_models_statistics_go_to_the_user_cache_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv("SDMC_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    got = gamma_cache_path("bundled:digits", "cd" * 32)
    assert got == tmp_path / ".cache" / "sdmc" / f"bundled-digits.gamma-{'cd' * 8}.safetensors"


def test_the_same_statistics_give_the_same_file_bytes(tmp_path):
    """The provenance header is written with sorted keys: neither the order a caller built its dict in nor
    safetensors' hash-map order of the header entries (new each call) shows in the file."""
    gamma = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    metas = [
        {"weights_sha256": "k", "budget": 3, "data": "digits"},
        {"data": "digits", "budget": 3, "weights_sha256": "k"},
    ]
    files = [save_gamma(tmp_path / f"{i}.safetensors", gamma, metas[i % 2]) for i in range(8)]
    assert len({f.read_bytes() for f in files}) == 1
    got, meta = load_gamma(files[0])
    assert torch.equal(got, gamma) and meta == metas[0]


@pytest.mark.parametrize(
    "tensors, fmt",
    [({"gamma": torch.ones(3, dtype=torch.float64)}, "someone-elses-format"), ({"other": torch.ones(3)}, None)],
)
def test_a_file_that_is_not_a_gamma_file_is_refused(tmp_path, tensors, fmt):
    """Right tensor name in a foreign format, or the right format without the tensor: both refused."""
    path = tmp_path / "g.safetensors"
    save_file(tensors, str(path), metadata={"format": fmt or GAMMA_FORMAT, "meta": "{}"})
    with pytest.raises(SdmcError, match="not an sdmc Γ file"):
        load_gamma(path)


# ------------------------------------------------------------------------------------- guided / unguided
def _cache(ckpt, model, value):
    key = weights_key(model)
    save_gamma(gamma_cache_path(ckpt, key), torch.full((6,), value, dtype=torch.float64), {"weights_sha256": key})


def test_guided_statistics_are_preferred_and_unguided_ones_are_a_noted_fallback(tmp_path):
    model, ckpt, notes = Spiky(), tmp_path / "m.safetensors", []
    with pytest.raises(SdmcError, match="analytic-stats"):  # nothing cached: no note, one error
        gamma_for_checkpoint(ckpt, model, 6, threshold=0.8, log=notes.append)
    assert notes == []
    _cache(ckpt, model, 0.25)  # unguided only
    assert gamma_for_checkpoint(ckpt, model, 6, threshold=0.8).tolist() == [0.25] * 6  # no log: no note, no error
    assert gamma_for_checkpoint(ckpt, model, 6, threshold=0.8, log=notes.append).tolist() == [0.25] * 6
    assert notes == ["note: using the Γ statistics of the unguided model for threshold 0.8"]
    with threshold_guidance(model, 0.8):
        _cache(ckpt, model, 0.5)
    assert gamma_for_checkpoint(ckpt, model, 6, threshold=0.8, log=notes.append).tolist() == [0.5] * 6  # preferred
    assert len(notes) == 1
    (Path(f"{ckpt}.gamma-{weights_key(model)[:16]}.safetensors")).unlink()  # only the guided ones are left
    assert gamma_for_checkpoint(ckpt, model, 6, threshold=0.8, log=notes.append).tolist() == [0.5] * 6
    assert len(notes) == 1


# ----------------------------------------------------------------------------------------------- estimator
def test_estimate_defaults_and_argument_checks(capsys):
    data = _data()
    default = estimate_gamma(_half, SCHED, data)
    assert torch.equal(default, estimate_gamma(_half, SCHED, data, budget=64, seed=0))
    assert not torch.equal(default, estimate_gamma(_half, SCHED, data, budget=64, seed=1))
    assert not torch.equal(default, estimate_gamma(_half, SCHED, data, budget=65, seed=0))
    assert capsys.readouterr().err == ""  # no progress bar unless asked
    assert estimate_gamma(_half, SCHED, data[:1], budget=2).shape == (6,)  # one image is a dataset
    assert estimate_gamma(_half, SCHED, data, budget=1, batch_size=1).shape == (6,)
    with pytest.raises(DataError, match="empty"):
        estimate_gamma(_half, SCHED, data[:0])
    for bad in (dict(budget=0), dict(batch_size=0), dict(budget=0, batch_size=5), dict(budget=5, batch_size=-1)):
        with pytest.raises(ConfigError, match="must be >= 1"):
            estimate_gamma(_half, SCHED, data, **bad)


def test_the_estimate_does_not_depend_on_the_batch_size():
    """The draws come from one generator in order whatever the chunking; with images of a multiple of 16
    pixels (torch draws normals in blocks of 16; every UNet shape qualifies) the result is the same, so
    ``batch_size`` only trades memory for speed.  Here 16 pixels, batches of 1, 7 and larger than the 54 draws."""
    data = _data()
    ref = estimate_gamma(_half, SCHED, data, budget=9)
    for bs in (1, 7, 256, 257):
        assert torch.equal(estimate_gamma(_half, SCHED, data, budget=9, batch_size=bs), ref)


def test_a_spiking_model_is_estimated_in_eval_mode_with_fresh_neurons_and_put_back():
    model = Spiky().train()
    estimate_gamma(model, SCHED, _data(), budget=2, batch_size=4)
    assert len(model.fresh) == 3 and all(model.fresh)  # 12 draws in batches of 4, each from reset neurons
    assert model.modes == [False] * 3 and model.training
    model.eval()
    estimate_gamma(model, SCHED, _data(), budget=1, batch_size=6)
    assert not model.training  # a model in eval mode stays there


def test_the_progress_bar_counts_every_draw_when_asked(capsys):
    estimate_gamma(_half, SCHED, _data(), budget=3, batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "Γ statistics" in err and "18/18" in err


def test_provenance_header_is_json_of_the_meta(tmp_path):
    from safetensors import safe_open

    path = save_gamma(tmp_path / "g.safetensors", torch.zeros(2), {"b": 1, "a": 2})
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata()
    assert md["format"] == GAMMA_FORMAT and json.loads(md["meta"]) == {"a": 2, "b": 1}
    assert load_gamma(path)[0].dtype == torch.float64
