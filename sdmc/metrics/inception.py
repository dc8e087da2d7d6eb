"""The TF-Inception port used for FID / IS by pytorch-fid and pytorch-ddpm (``pt_inception-2015-12-05``).

Built from torchvision's ``inception_v3`` structure (1008 classes, no aux head) with the blocks patched
to behave like the 2015 TensorFlow graph:

- Mixed_5b/5c/5d (A), 6b–6e (C), 7b (E): the pool branch averages over the *valid* pixels only
  (``avg_pool2d(3, 1, 1, count_include_pad=False)``);
- Mixed_7c (E): the pool branch is a 3x3 *max* pool.

Input: images ``[B, 1|3, H, W]`` in [-1, 1] (gray is repeated to RGB), bilinearly resized to 299x299
(``align_corners=False``) — the same as pytorch-fid's resize of [0, 1] images followed by ``2x - 1``.
Output: the 2048-d pool features (FID) and the 1008 logits ``W·f`` *without* the fc bias (the TF graph's
``softmax/logits/MatMul``, as pytorch-ddpm uses for IS).

Weights are never downloaded implicitly: pass a local file (``--inception-weights PATH`` or the
environment variable ``SDMC_INCEPTION_WEIGHTS``), or ask for the download explicitly (``--download``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import inception as tv

from .fid import MetricError

WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256_PREFIX = "6726825d"
ENV_VAR = "SDMC_INCEPTION_WEIGHTS"
FEATURE_DIM = 2048
NUM_CLASSES = 1008
INPUT_SIZE = 299


def _valid_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average over in-image pixels only (TF ``SAME`` average pooling)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(tv.InceptionA):
    """InceptionA with TF average pooling in the pool branch."""

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_valid_avg_pool(x))], 1)


class FIDInceptionC(tv.InceptionC):
    """InceptionC with TF average pooling in the pool branch."""

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            bd = layer(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_valid_avg_pool(x))], 1)


class FIDInceptionE(tv.InceptionE):
    """InceptionE whose pool branch is TF average pooling (``pool="avg"``) or 3x3 max pooling (``"max"``)."""

    def __init__(self, in_channels: int, pool: str) -> None:
        super().__init__(in_channels)
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = _valid_avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """``images [B, 1|3, H, W] in [-1, 1] -> (features [B, 2048], logits [B, 1008])`` (see module doc).

    Parameter names equal those of pytorch-fid's ``fid_inception_v3()`` state dict, so the released
    ``pt_inception-2015-12-05-6726825d.pth`` loads with ``strict=True``.  Weights start random.
    """

    STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")

    def __init__(self) -> None:
        super().__init__()
        A, C, E = FIDInceptionA, FIDInceptionC, FIDInceptionE
        base = tv.Inception3(num_classes=NUM_CLASSES, aux_logits=False, transform_input=False, init_weights=False)
        for name in self.STEM:
            setattr(self, name, getattr(base, name))
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = A(192, 32), A(256, 64), A(288, 64)
        self.Mixed_6a = base.Mixed_6a
        self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = C(768, 128), C(768, 160), C(768, 160), C(768, 192)
        self.Mixed_7a = base.Mixed_7a
        self.Mixed_7b, self.Mixed_7c = E(1280, "avg"), E(2048, "max")
        self.fc = base.fc
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def prepare(x: torch.Tensor) -> torch.Tensor:
        """``[B, 1|3, H, W]`` in [-1, 1] -> ``[B, 3, 299, 299]`` (gray repeated, bilinear resize)."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise MetricError(f"inception: images must be [B, 1|3, H, W], got {list(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return x

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 299, 299]`` (already in [-1, 1]) -> pool features ``[B, 2048]``."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in (
            "Mixed_5b",
            "Mixed_5c",
            "Mixed_5d",
            "Mixed_6a",
            "Mixed_6b",
            "Mixed_6c",
            "Mixed_6d",
            "Mixed_6e",
            "Mixed_7a",
            "Mixed_7b",
            "Mixed_7c",
        ):
            x = getattr(self, name)(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.trunk(self.prepare(x))
        return f, F.linear(f, self.fc.weight)


# ------------------------------------------------------------------------------------------ weights
def _cache_dirs() -> list[Path]:
    """Where a previously downloaded file may be: sdmc's cache, then torch hub's (pytorch-fid's)."""
    xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    torch_home = Path(os.environ.get("TORCH_HOME", xdg / "torch"))
    return [xdg / "sdmc", torch_home / "hub" / "checkpoints"]


def resolve_weights(path: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The Inception weights file: ``path``, else ``$SDMC_INCEPTION_WEIGHTS``, else a cached copy.

    With ``download=True`` and nothing found, fetch it (SHA-256 checked) into ``~/.cache/sdmc``.
    """
    given = path or os.environ.get(ENV_VAR)
    if given:
        p = Path(given).expanduser()
        if not p.is_file():
            src = "--inception-weights" if path else f"${ENV_VAR}"
            raise MetricError(
                f"Inception weights {p} (from {src}): no such file; it should be {WEIGHTS_NAME} from {WEIGHTS_URL}"
            )
        return p
    for d in _cache_dirs():
        if (d / WEIGHTS_NAME).is_file():
            return d / WEIGHTS_NAME
    if not download:
        raise MetricError(
            f"FID/IS need the TF-Inception weights {WEIGHTS_NAME}, not found in "
            f"{' or '.join(str(d) for d in _cache_dirs())}; pass --inception-weights PATH (or set "
            f"{ENV_VAR}=PATH) to a local copy, or pass --download to fetch it from {WEIGHTS_URL}"
        )
    from torch.hub import download_url_to_file

    from ..utils import atomic_path

    dest = _cache_dirs()[0] / WEIGHTS_NAME
    try:
        with atomic_path(dest) as tmp:
            download_url_to_file(WEIGHTS_URL, str(tmp), hash_prefix=WEIGHTS_SHA256_PREFIX, progress=True)
    except (OSError, RuntimeError) as e:
        raise MetricError(f"could not download the Inception weights from {WEIGHTS_URL}: {e}") from None
    return dest


def load_inception(
    path: str | os.PathLike | None = None, download: bool = False, device: str | torch.device = "cpu"
) -> FIDInceptionV3:
    """:class:`FIDInceptionV3` with the ``pt_inception-2015-12-05`` weights (see :func:`resolve_weights`)."""
    p = resolve_weights(path, download)
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling / zip errors of a foreign or truncated file
        raise MetricError(f"Inception weights {p}: not a readable PyTorch state dict ({e})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise MetricError(f"Inception weights {p}: expected a state dict, found {type(sd).__name__}")
    net = FIDInceptionV3()
    own = net.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise MetricError(
            f"Inception weights {p}: not the {WEIGHTS_NAME} layout (missing {missing[:3]}"
            f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
            f"{'...' if len(unexpected) > 3 else ''})"
        )
    try:
        net.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise MetricError(f"Inception weights {p}: {e}") from None
    return net.to(device).eval()


__all__ = [
    "ENV_VAR",
    "FEATURE_DIM",
    "FIDInceptionA",
    "FIDInceptionC",
    "FIDInceptionE",
    "FIDInceptionV3",
    "NUM_CLASSES",
    "WEIGHTS_URL",
    "load_inception",
    "resolve_weights",
]
