"""Image helpers: [-1, 1] tensors to uint8 arrays and PNG grids (written atomically)."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image

from ..utils import atomic_path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B, C, H, W]`` in [-1, 1] -> ``uint8 [B, H, W, C]`` (values clipped)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, scale: int = 1) -> np.ndarray:
    """Tile ``uint8 [B, H, W, C]`` images into one ``[H', W', C]`` array (``nrow`` images per row)."""
    b, h, w, c = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(b))))
    ncol = int(math.ceil(b / nrow))
    grid = np.zeros((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(b):
        r, q = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    if scale > 1:
        grid = grid.repeat(scale, 0).repeat(scale, 1)
    return grid


def save_grid(
    images: torch.Tensor | np.ndarray, path: str | os.PathLike, nrow: int | None = None, scale: int | None = None
) -> None:
    """Save a PNG grid of images given as a [-1, 1] tensor ``[B, C, H, W]`` or ``uint8 [B, H, W, C]``."""
    arr = to_uint8(images) if isinstance(images, torch.Tensor) else np.asarray(images, dtype=np.uint8)
    if scale is None:  # small images (digits) are hard to see: enlarge to about 64 px
        scale = max(1, 64 // arr.shape[1])
    grid = make_grid(arr, nrow=nrow, scale=scale)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
