"""Analytic-DPM statistics (Bao et al., ICLR 2022): Γ_k = E_{x0, ε} ‖ε_θ(x_k, k)‖² / d for every step k.

The optimal reverse variance of a step t -> s is ``λ² + c0² · clamp((1-ᾱ_t)/ᾱ_t · (1 - Γ_t), 0, 1)``
(see :func:`sdmc.diffusion.solvers.analytic_sigma2`).  Γ costs N × budget network calls, so it is cached
beside the checkpoint in ``<checkpoint>.gamma-<key>.safetensors`` where ``key`` hashes the weights and
the neuron thresholds (threshold guidance changes ε_θ, hence Γ).  Files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, DataError, SdmcError
from ..utils import save_safetensors
from ..validate import parse_json
from .schedule import NoiseSchedule

GAMMA_FORMAT = "sdmc-analytic-gamma-v1"


def weights_key(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes) and every neuron threshold."""
    h = hashlib.sha256()
    for name, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    thr = [(n, float(m.v_threshold)) for n, m in model.named_modules() if hasattr(m, "v_threshold")]
    h.update(json.dumps(thr).encode())
    return h.hexdigest()


def gamma_cache_path(checkpoint: str | os.PathLike, key: str) -> Path:
    """Where the Γ of ``checkpoint`` with weights ``key`` is cached: beside the file; for a bundled model
    (``bundled:NAME``, inside the installed package) in ``$SDMC_CACHE`` (default ``~/.cache/sdmc``)."""
    from ..models.bundled import PREFIX, is_bundled

    if is_bundled(checkpoint):
        root = Path(os.environ.get("SDMC_CACHE", Path.home() / ".cache" / "sdmc"))
        return root / f"bundled-{str(checkpoint)[len(PREFIX) :]}.gamma-{key[:16]}.safetensors"
    return Path(f"{checkpoint}.gamma-{key[:16]}.safetensors")


def save_gamma(path: str | os.PathLike, gamma: torch.Tensor, meta: dict[str, Any]) -> Path:
    """Write Γ (float64 [N]) and its provenance atomically."""
    md = {"format": GAMMA_FORMAT, "meta": json.dumps(meta, sort_keys=True)}
    return save_safetensors(path, {"gamma": gamma.detach().to(torch.float64).cpu().contiguous()}, md)


def load_gamma(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read a Γ file written by :func:`save_gamma`; returns ``(gamma, meta)``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SdmcError(f"{path}: no Analytic-DPM statistics file")
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            if md.get("format") != GAMMA_FORMAT or "gamma" not in f.keys():
                raise SdmcError(f"{path}: not an sdmc Γ file (format {md.get('format')!r})")
            gamma = f.get_tensor("gamma")
    except SdmcError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on a corrupt header
        raise SdmcError(f"{path}: unreadable Γ file: {e}") from None
    meta = parse_json(md.get("meta", "{}"), f"{path}: header entry 'meta'", SdmcError)
    if not isinstance(meta, dict):
        raise SdmcError(f"{path}: header entry 'meta' is a JSON {type(meta).__name__}, not an object")
    return gamma, meta


def find_cached_gamma(
    checkpoint: str | os.PathLike, model: nn.Module, num_timesteps: int | None = None
) -> tuple[torch.Tensor, dict[str, Any]] | None:
    """The cached Γ of ``checkpoint`` for exactly these weights and thresholds, or None."""
    key = weights_key(model)
    path = gamma_cache_path(checkpoint, key)
    if not path.is_file():
        return None
    gamma, meta = load_gamma(path)
    if meta.get("weights_sha256") != key:
        return None
    if num_timesteps is not None and gamma.numel() != num_timesteps:
        raise SdmcError(f"{path}: Γ has {gamma.numel()} steps, the schedule {num_timesteps}")
    return gamma, meta


def gamma_for_checkpoint(
    checkpoint: str | os.PathLike,
    model: nn.Module,
    num_timesteps: int,
    threshold: float | None = None,
    log: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """The cached Γ for sampling ``model`` (from ``checkpoint``) with threshold guidance ``threshold``.

    Prefers statistics estimated for the guided model and falls back (with a note to ``log``) to those
    of the unguided one; raises :class:`SdmcError` naming the command that computes them.
    """
    from .sampling import threshold_guidance

    with threshold_guidance(model, threshold):
        found = find_cached_gamma(checkpoint, model, num_timesteps)
    if found is None and threshold is not None:
        found = find_cached_gamma(checkpoint, model, num_timesteps)
        if found is not None and log is not None:
            log(f"note: using the Γ statistics of the unguided model for threshold {threshold}")
    if found is None:
        raise SdmcError(
            f"{checkpoint}: no Analytic-DPM statistics for these weights; run "
            f"`sdmc analytic-stats {checkpoint} --data DATASET` first (or pass --gamma FILE)"
        )
    return found[0]


def _images(data: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from an index tensor to stacked images for a Tensor or an (image, label) Dataset."""
    if isinstance(data, torch.Tensor):
        return lambda idx: data[idx]

    def get(idx: torch.Tensor) -> torch.Tensor:
        items = [data[int(i)] for i in idx]
        return torch.stack([it[0] if isinstance(it, (tuple, list)) else it for it in items])

    return get


@torch.no_grad()
def estimate_gamma(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: NoiseSchedule,
    data: Any,
    budget: int = 64,
    batch_size: int = 256,  # pragma: no mutate (a chunk size: test_the_estimate_does_not_depend_on_the_batch_size)
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Monte-Carlo Γ_k = mean over ``budget`` draws of ‖ε_θ(sqrt(ᾱ_k) x0 + sqrt(1-ᾱ_k) ε, k)‖² / d.

    ``data`` is an image tensor ``[M, C, H, W]`` or a Dataset of ``(image, label)`` in [-1, 1]; x0 are
    drawn uniformly with replacement, independently per step; an ``nn.Module`` runs in eval mode (and is
    put back afterwards).  Returns float64 ``[N]``.
    """
    n_steps = schedule.num_timesteps
    m = len(data)
    if m == 0:
        raise DataError("estimate_gamma: the dataset is empty")
    if budget < 1 or batch_size < 1:
        raise ConfigError(f"estimate_gamma: budget and batch_size must be >= 1, got {budget}, {batch_size}")
    gen = torch.Generator().manual_seed(int(seed))
    steps = torch.arange(n_steps).repeat_interleave(budget)
    idx = torch.randint(m, (n_steps * budget,), generator=gen)
    get = _images(data)
    total = torch.zeros(n_steps, dtype=torch.float64)
    from .sampling import _reset

    reset = _reset(model)
    was_training = isinstance(model, nn.Module) and model.training
    if was_training:
        model.eval()
    from tqdm import tqdm

    bar = tqdm(total=len(steps), disable=not progress, unit="img", desc="Γ statistics")
    for lo in range(0, len(steps), batch_size):
        t = steps[lo : lo + batch_size]
        x0 = get(idx[lo : lo + batch_size])
        x0 = x0.to(device=device, dtype=x0.dtype if x0.is_floating_point() else torch.float32)
        noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype).to(device)
        td = t.to(device)
        x_t = schedule.q_sample(x0, td, noise)
        eps = schedule.eps_from_output(model(x_t, td), x_t, td)
        reset()
        sq = eps.double().flatten(1).pow(2).mean(1).cpu()
        total.index_add_(0, t, sq)
        bar.update(len(t))
    bar.close()
    if was_training:
        model.train()
    return total / budget


__all__ = [
    "estimate_gamma",
    "find_cached_gamma",
    "gamma_cache_path",
    "gamma_for_checkpoint",
    "load_gamma",
    "save_gamma",
    "weights_key",
]
