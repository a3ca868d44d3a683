"""Torch datasets over cached arrays, with augmentation that is a pure function of (seed, epoch, index).

Seeding each sample's augmentation from (seed, epoch, index) instead of a running generator makes
an epoch's batches identical whether the run used worker processes or was resumed mid-way.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class ArrayDataset(Dataset):
    """(image tensor, label) pairs from an (N, H, W, C) uint8 array and an albumentations pipeline."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: A.Compose, seed: int | None = None):
        self.images, self.labels, self.transform = images, labels, transform
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.seed is not None:
            self.transform.set_random_seed(int(np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1)[0]))
        return self.transform(image=self.images[i])["image"], int(self.labels[i])


class EpochShuffleSampler(Sampler[int]):
    """A random order per epoch drawn from (seed, epoch), so a resumed run replays the same batches.

    Lightning calls ``set_epoch`` before every epoch; the dataset is told the epoch too, for its
    augmentation seeds.
    """

    def __init__(self, dataset: ArrayDataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = self.dataset.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))
        return iter(torch.randperm(len(self.dataset), generator=generator).tolist())

    def __len__(self) -> int:
        return len(self.dataset)
