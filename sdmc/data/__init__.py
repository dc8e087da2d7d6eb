"""Datasets: torchvision datasets from a local root, image folders, and the bundled digits default.

Every dataset yields ``(image, label)`` with ``image`` a float tensor ``[C, H, W]`` in [-1, 1].
Nothing is downloaded unless ``download=True`` is passed explicitly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import DataError


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    img_ch: int
    img_size: int
    description: str


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 1, 16, "scikit-learn's bundled 8x8 digits (1797 images), resized; offline"),
    "cifar10": DatasetInfo("cifar10", 3, 32, "CIFAR-10 32x32 (torchvision), random h-flip"),
    "mnist": DatasetInfo("mnist", 1, 32, "MNIST resized to 32x32 (torchvision)"),
    "fashion-mnist": DatasetInfo("fashion-mnist", 1, 32, "Fashion-MNIST resized to 32x32 (torchvision)"),
    "celeba64": DatasetInfo("celeba64", 3, 64, "CelebA, CenterCrop 148, resize 64, random h-flip (torchvision)"),
    "folder": DatasetInfo("folder", 3, 32, "any folder of images (folder:PATH), center-cropped and resized"),
}

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def dataset_info(name: str) -> DatasetInfo:
    key = "folder" if name.startswith("folder:") else name
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (or folder:PATH)")
    return DATASETS[key]


class TensorImages(Dataset):
    """In-memory images ``[N, C, H, W]`` in [-1, 1] with integer labels; optional random h-flip."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, hflip: bool = False) -> None:
        self.images, self.labels, self.hflip = images, labels, hflip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = self.images[i]
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, int(self.labels[i])


def digits_arrays(img_size: int = 16, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn digits as ``float32 [N, 1, S, S]`` in [-1, 1] (bilinear resize) and labels.

    The train/test split is a fixed stratified 80/20 split (seed 0), the same on every machine.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if img_size < 8:
        raise DataError(f"digits: img_size must be >= 8, got {img_size}")
    d = load_digits()
    idx = np.arange(len(d.target))
    tr, te = train_test_split(idx, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=d.target)
    sel = np.sort(tr if train else te)
    x = torch.from_numpy(d.images[sel].astype(np.float32) / 16.0 * 2 - 1)[:, None]
    if img_size != 8:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False).clamp(-1, 1)
    return x.contiguous(), torch.from_numpy(d.target[sel].astype(np.int64))


class ImageFolderFlat(Dataset):
    """Every image file under ``root`` (recursively), center-cropped to a square, resized, label 0."""

    def __init__(self, root: str | os.PathLike, img_size: int, img_ch: int = 3, hflip: bool = True) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"folder dataset: {self.root} is not a directory")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise DataError(f"folder dataset: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {self.root}")
        self.img_size, self.img_ch, self.hflip = img_size, img_ch, hflip

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        path = self.files[i]
        try:
            img = Image.open(path).convert("L" if self.img_ch == 1 else "RGB")
        except Exception as e:  # PIL raises many types for broken files
            raise DataError(f"folder dataset: cannot read image {path}: {e}") from None
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        img = img.resize((self.img_size, self.img_size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1)
        x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x.contiguous(), 0


def _torchvision(name: str, root: str | None, img_size: int, train: bool, download: bool) -> Dataset:
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    if root is None:
        root = os.environ.get("SDMC_DATA", str(Path.home() / ".cache" / "sdmc" / "data"))
    aug = [T.RandomHorizontalFlip()] if train and name in ("cifar10", "celeba64") else []
    norm = (
        [T.ToTensor(), T.Normalize((0.5,), (0.5,))]
        if name in ("mnist", "fashion-mnist")
        else [T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
    )
    try:
        if name == "cifar10":
            tf = T.Compose(([T.Resize(img_size)] if img_size != 32 else []) + aug + norm)
            return tvd.CIFAR10(root, train=train, download=download, transform=tf)
        if name == "mnist":
            return tvd.MNIST(root, train=train, download=download, transform=T.Compose([T.Resize(img_size)] + norm))
        if name == "fashion-mnist":
            return tvd.FashionMNIST(
                root, train=train, download=download, transform=T.Compose([T.Resize(img_size)] + norm)
            )
        tf = T.Compose([T.CenterCrop(148), T.Resize(img_size)] + aug + norm)
        return tvd.CelebA(root, split="train" if train else "test", download=download, transform=tf)
    except (RuntimeError, FileNotFoundError, OSError) as e:
        hint = "" if download else " (pass --download to fetch it, or point --data-root at a local copy)"
        raise DataError(f"dataset {name!r} not found under {root}{hint}: {e}") from None


def load_dataset(
    name: str, root: str | None = None, img_size: int | None = None, train: bool = True, download: bool = False
) -> Dataset:
    """Open dataset ``name`` (see :data:`DATASETS`; ``folder:PATH`` for an image folder)."""
    info = dataset_info(name)
    size = int(img_size or info.img_size)
    if name == "digits":
        x, y = digits_arrays(size, train)
        return TensorImages(x, y)
    if name.startswith("folder:"):
        return ImageFolderFlat(name.split(":", 1)[1], size, info.img_ch, hflip=train)
    return _torchvision(name, root, size, train, download)


__all__ = [
    "DATASETS",
    "DatasetInfo",
    "ImageFolderFlat",
    "TensorImages",
    "dataset_info",
    "digits_arrays",
    "load_dataset",
]
