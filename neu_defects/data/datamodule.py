"""``NEUDataModule``: the NEU splits as Lightning dataloaders.

It owns the flow index -> split -> decoded cache -> augmented tensors. The model decides the
input it wants (channels, normalisation, size); the data module serves exactly that.

Study options: ``samples_per_class`` keeps k training images per class (``splits.limit_per_class``);
``min_epoch_samples`` passes a smaller training set several times per epoch; ``corruption`` (set by
``eval``) corrupts every decoded image before resizing (``corruptions.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import albumentations as A
import numpy as np
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from neu_defects.data.cache import load_images
from neu_defects.data.dataset import ArrayDataset, EpochShuffleSampler
from neu_defects.data.download import DEFAULT_URL
from neu_defects.data.index import DatasetIndex, build_index
from neu_defects.data.splits import SPLITS, assign_splits, limit_per_class, read_split_csv, write_split_csv
from neu_defects.data.transforms import build_transform

log = logging.getLogger(__name__)


class NEUDataModule(LightningDataModule):
    # How a loader batches items (None: torch's default stacking).
    collate_fn: Callable | None = None

    def __init__(
        self,
        root: str | None = None,
        layout: str = "auto",
        download: bool = False,
        download_url: str = DEFAULT_URL,
        split: str | int = "70_15_15",
        val_fraction: float = 0.1,
        fold: int | None = None,
        folds: int = 5,
        split_file: str | None = None,
        samples_per_class: int | str | None = None,
        min_epoch_samples: int = 0,
        seed: int = 0,
        image_size: int = 64,
        in_chans: int = 1,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        augment: Mapping[str, A.BasicTransform | None] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        output_dir: str | None = None,
        corruption: Callable[[np.ndarray, str], np.ndarray] | None = None,
    ):
        super().__init__()
        self.root, self.layout = root, layout
        self.download, self.download_url = download, download_url
        self.split, self.val_fraction, self.fold, self.folds = split, val_fraction, fold, folds
        self.split_file, self.seed = split_file, seed
        self.samples_per_class, self.min_epoch_samples = samples_per_class, min_epoch_samples
        self.corruption = corruption
        self.image_size, self.in_chans, self.mean, self.std = image_size, in_chans, tuple(mean), tuple(std)
        self.augment = augment
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.output_dir = num_workers, output_dir
        self.index: DatasetIndex | None = None
        self.assignment: list[str | None] = []
        self.datasets: dict[str, ArrayDataset] = {}
        # Index positions (into self.index.samples) of each split's dataset, in loader order.
        self.dataset_indices: dict[str, np.ndarray] = {}

    @property
    def class_names(self) -> list[str]:
        self.prepare_index()
        return self.index.class_names

    def prepare_index(self) -> DatasetIndex:
        if self.index is None:
            self.index = build_index(self.root, self.layout, download=self.download, download_url=self.download_url)
        return self.index

    def split_indices(self, name: str) -> np.ndarray:
        return np.array([i for i, s in enumerate(self.assignment) if s == name], dtype=np.int64)

    def members(self, name: str, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index positions of a split's samples and their targets (here: the class labels)."""
        idx = self.split_indices(name)
        return idx, labels[idx]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        index = self.prepare_index()
        images, hashes = load_images(index, self.in_chans, self.image_size, self.corruption)
        labels = np.array([s.label for s in index.samples], dtype=np.int64)
        self.assignment = read_split_csv(self.split_file, index) if self.split_file else self.assign(labels, hashes)
        self.assignment = limit_per_class(self.assignment, labels, self.samples_per_class, seed=self.seed,
                                          class_names=index.class_names)
        if self.output_dir:
            write_split_csv(Path(self.output_dir) / "split.csv", index, self.assignment)
        for name in SPLITS:
            idx, targets = self.members(name, labels)
            self.datasets[name] = self.make_dataset(name, images[idx], idx, targets)
            self.dataset_indices[name] = idx
        counts = {name: len(ds) for name, ds in self.datasets.items()}
        how = "from " + str(self.split_file) if self.split_file else (
            f"fold {self.fold} of {self.folds}" if self.fold is not None else self.split)
        if self.samples_per_class not in (None, "all"):
            how += f", {self.samples_per_class} training images per class"
        log.info("split %s: %s", how, counts)

    def assign(self, labels: np.ndarray, hashes: list[str]) -> list[str | None]:
        """Each indexed image's split, when no split file is given: stratified, duplicates together."""
        return assign_splits(labels, hashes, split=self.split, seed=self.seed, val_fraction=self.val_fraction,
                             fold=self.fold, folds=self.folds)

    def make_dataset(self, name: str, images: np.ndarray, positions: np.ndarray, targets: np.ndarray) -> Dataset:
        """The dataset of split ``name``: its decoded images, their index positions and targets."""
        train = name == "train"
        transform = build_transform(self.mean, self.std, self.augment if train else None)
        return ArrayDataset(images, targets, transform, self.seed if train else None)

    def _loader(self, name: str) -> DataLoader:
        dataset = self.datasets[name]
        train = name == "train"
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=EpochShuffleSampler(dataset, self.seed, self.min_epoch_samples) if train else None,
            num_workers=self.num_workers,
            persistent_workers=False,
            drop_last=False,
            collate_fn=self.collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
