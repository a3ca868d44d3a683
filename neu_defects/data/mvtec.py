"""``MVTecDataModule``: any folder in the MVTec AD layout, for one-class anomaly detection.

The folders decide the splits: ``train/good`` trains, ``test/`` tests. Validation is a share
(``val_fraction``) of ``train/good`` carved at random (seeded, duplicates together), so it holds
normal images only and the threshold is a quantile of their scores (``AnomalyModule``). Masks
(``ground_truth/<type>/<name>_mask.png``) are optional per defect type; ``data/index.py`` reads and
checks the layout, ``data/masks.py`` resizes masks to the model's input by nearest neighbour.
"""

from __future__ import annotations

import numpy as np

from neu_defects.core.errors import UserError
from neu_defects.data.index import MVTEC_NORMAL, DatasetIndex, build_index
from neu_defects.data.oneclass import OneClassDataModule


class MVTecDataModule(OneClassDataModule):
    def __init__(self, category: str | None = None, normal_classes=(MVTEC_NORMAL,), **kwargs):
        kwargs.setdefault("layout", "mvtec")
        super().__init__(normal_classes=normal_classes, **kwargs)
        self.category = category

    def prepare_index(self) -> DatasetIndex:
        if self.index is None:
            self.index = build_index(self.root, self.layout, self.category)
        if self.index.layout != "mvtec":
            raise UserError(f"data=mvtec reads MVTec AD folders, but {self.index.root} is in the "
                            f"{self.index.layout} layout: use data=neu_oneclass for it")
        return self.index

    def assign(self, labels: np.ndarray, hashes: list[str]) -> list[str | None]:
        """train/good -> train, less a seeded ``val_fraction`` of it for validation; test/* -> test."""
        if not 0 < self.val_fraction < 1:
            raise UserError(f"data.val_fraction={self.val_fraction} must lie strictly between 0 and 1")
        training = [i for i, s in enumerate(self.index.samples) if s.path.startswith("train/")]
        groups = sorted({hashes[i] for i in training})
        order = np.random.default_rng(self.seed).permutation(len(groups))
        n_val = max(1, round(self.val_fraction * len(groups)))
        if n_val >= len(groups):
            raise UserError(f"train/good of {self.index.root} holds {len(groups)} distinct images: too few to "
                            f"carve validation (data.val_fraction={self.val_fraction}) and still train")
        val_groups = {groups[k] for k in order[:n_val]}
        assignment: list[str | None] = ["test"] * len(self.index.samples)
        for i in training:
            assignment[i] = "val" if hashes[i] in val_groups else "train"
        return assignment
