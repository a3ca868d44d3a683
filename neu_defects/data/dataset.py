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

    def seeded_index(self, i: int) -> int:
        """Seed item ``i``'s augmentation from (seed, epoch, i); return the image it reads.

        i >= len: a repeat within the epoch (see EpochShuffleSampler): same image, its own augmentation.
        """
        if self.seed is not None:
            self.transform.set_random_seed(int(np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1)[0]))
        return i % len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        i = self.seeded_index(i)
        return self.transform(image=self.images[i])["image"], int(self.labels[i])


class MaskedArrayDataset(ArrayDataset):
    """(image tensor, label, mask) triples: ``ArrayDataset`` with an (N, H, W) uint8 mask per image
    (``data/masks.py``: 1 anomalous, 0 normal, UNKNOWN where the image has no mask). Unaugmented:
    masks serve evaluation only, so they need not move with the pixels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: A.Compose, masks: np.ndarray):
        super().__init__(images, labels, transform)
        self.masks = masks

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        x, y = super().__getitem__(i)
        return x, y, torch.from_numpy(self.masks[i])


def epoch_passes(size: int, min_samples: int = 0) -> int:
    """How many passes over ``size`` samples make an epoch of at least ``min_samples``."""
    return max(1, -(-int(min_samples or 0) // max(1, size)))


class EpochShuffleSampler(Sampler[int]):
    """A random order per epoch drawn from (seed, epoch), so a resumed run replays the same batches.

    Lightning calls ``set_epoch`` before every epoch; the dataset is told the epoch too, for its
    augmentation seeds.

    ``min_samples``: a training set smaller than this is passed over several times per epoch (each
    pass in its own order), so that a run on a few images per class still takes enough optimiser
    steps per epoch. Pass r yields ``index + r * len(dataset)``; the dataset reads the index modulo
    its length and seeds the augmentation from the full one, so every repeat is a fresh view.
    """

    def __init__(self, dataset: ArrayDataset, seed: int, min_samples: int = 0):
        self.dataset, self.seed, self.epoch = dataset, seed, 0
        self.passes = epoch_passes(len(dataset), min_samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = self.dataset.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))
        n = len(self.dataset)
        return iter(torch.cat([torch.randperm(n, generator=generator) + r * n for r in range(self.passes)]).tolist())

    def __len__(self) -> int:
        return len(self.dataset) * self.passes
