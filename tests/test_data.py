"""Datasets: the bundled digits default, image folders, clear errors for missing data."""

import numpy as np
import pytest
import torch
from PIL import Image

from sdmc.data import dataset_info, load_dataset
from sdmc.data.images import make_grid, save_grid, to_uint8
from sdmc.errors import DataError


@pytest.mark.parametrize("size", [16, 32])
def test_digits_in_range_and_split(size):
    train, test = load_dataset("digits", img_size=size), load_dataset("digits", img_size=size, train=False)
    assert len(train) + len(test) == 1797 and len(test) == 360
    x = torch.stack([train[i][0] for i in range(len(train))])
    assert x.shape == (len(train), 1, size, size) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert x.min() == -1 and x.max() > 0.9  # the full range is used: background -1, strokes near +1
    labels = {train[i][1] for i in range(len(train))}
    assert labels == set(range(10))
    # train and test are disjoint images
    xt = torch.stack([test[i][0] for i in range(len(test))])
    assert not any(torch.equal(xt[0], x[i]) for i in range(len(x)))


def test_digits_is_deterministic():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert torch.equal(a.images, b.images)


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "sub" / f"{i}.png")
    ds = load_dataset(f"folder:{tmp_path}", img_size=16, train=False)
    x, y = ds[0]
    assert len(ds) == 3 and x.shape == (3, 16, 16) and -1 <= x.min() and x.max() <= 1 and y == 0
    (tmp_path / "sub" / "broken.png").write_bytes(b"nope")
    ds = load_dataset(f"folder:{tmp_path}", img_size=16)
    with pytest.raises(DataError, match="broken.png"):
        [ds[i] for i in range(len(ds))]


def test_missing_and_unknown_datasets_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="pass --download"):
        load_dataset("cifar10", root=str(tmp_path))
    with pytest.raises(DataError, match="no images"):
        load_dataset(f"folder:{tmp_path}")
    assert dataset_info("mnist").img_ch == 1


def test_grid_png(tmp_path):
    imgs = torch.linspace(-1, 1, 5 * 3 * 4 * 4).view(5, 3, 4, 4)
    u8 = to_uint8(imgs)
    assert u8.shape == (5, 4, 4, 3) and u8.min() == 0 and u8.max() == 255
    grid = make_grid(u8, nrow=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    save_grid(imgs, tmp_path / "g.png", nrow=3, scale=1)
    assert Image.open(tmp_path / "g.png").size == (3 * 6 + 2, 2 * 6 + 2)  # pad 2


def test_atomic_writes_get_normal_permissions_and_leave_nothing_on_error(tmp_path):
    import os

    from sdmc.utils import atomic_path, atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "hello")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert (tmp_path / "a.txt").read_text() == "hello" and len(list(tmp_path.iterdir())) == 1
