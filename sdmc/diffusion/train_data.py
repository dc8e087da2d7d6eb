"""The training data: the dataset a config names, a distributed sampler that resumes mid-epoch, and the
loader with its seeded generator (the same images in the same order after a resume)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import DataError
from .train_config import TrainConfig

if TYPE_CHECKING:
    from .train import _Dist


# ---------------------------------------------------------------------------------------- data
class ResumableSampler(torch.utils.data.DistributedSampler):
    """``DistributedSampler`` whose current epoch can start ``skip`` indices in (exact resume)."""

    skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def _load_dataset(cfg: TrainConfig) -> torch.utils.data.Dataset:
    try:
        from ..data import load_dataset
    except ImportError as e:
        raise DataError(f"sdmc.data.load_dataset is not available ({e})") from None
    return load_dataset(cfg.dataset, root=cfg.data_root, img_size=cfg.model.img_size, train=True, download=cfg.download)


# ----------------------------------------------------------------------------------------- data
@dataclass
class _TrainData:
    """The rank's share of the dataset, in a fixed order per epoch that can start mid-epoch (exact resume)."""

    name: str
    size: int
    loader: torch.utils.data.DataLoader
    sampler: ResumableSampler
    generator: torch.Generator
    steps_per_epoch: int

    @classmethod
    def make(cls, cfg: TrainConfig, dataset, d: _Dist, per_rank: int, device: torch.device) -> _TrainData:
        if dataset is None:
            dataset = _load_dataset(cfg)
        n = len(dataset)
        sampler = ResumableSampler(
            dataset, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        steps_per_epoch = sampler.num_samples // per_rank
        if steps_per_epoch < 1:
            raise DataError(f"dataset {cfg.dataset!r} has {n} images, fewer than the global batch {cfg.batch_size}")
        generator = torch.Generator()  # keeps the DataLoader off the global RNG (exact resume)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=per_rank,
            sampler=sampler,
            drop_last=True,
            num_workers=cfg.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=cfg.num_workers > 0,
            generator=generator,
        )
        x_probe = dataset[0][0]
        want = (cfg.model.img_ch, cfg.model.img_size, cfg.model.img_size)
        if tuple(x_probe.shape) != want:
            raise DataError(
                f"dataset {cfg.dataset!r} gives images of shape {tuple(x_probe.shape)}, "
                f"the model expects {want} (img_ch, img_size, img_size)"
            )
        return cls(cfg.dataset, n, loader, sampler, generator, steps_per_epoch)

    def epoch(self, epoch: int, within: int, cfg: TrainConfig, d: _Dist, per_rank: int):
        """The batches of ``epoch`` from its ``within``-th on."""
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(cfg.seed + 7919 * d.rank + 104_729 * epoch)  # worker seeds: fixed per epoch
        self.sampler.skip = within * per_rank
        return self.loader
