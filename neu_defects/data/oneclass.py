"""``OneClassDataModule``: NEU as an anomaly-detection problem.

NEU has no defect-free class, so some classes are declared normal (the surface a line sees every
day) and every other class is an anomaly. Splits are the classification splits (stratified by
class, duplicates kept together); training keeps the normal images only, validation and test keep
both, with target 0 = normal, 1 = anomaly. Training targets say which normal class an image is
(its position in ``normal_classes``): nets that model each normal class apart read them.

Validation and test items carry a mask too (``data/masks.py``) when the data has mask files or
boxes, so anomaly maps are scored pixel by pixel; ``mask_source`` says which (``masks``, ``boxes``
or None).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from neu_defects.core.errors import UserError
from neu_defects.data.datamodule import NEUDataModule
from neu_defects.data.dataset import MaskedArrayDataset
from neu_defects.data.masks import UNKNOWN, load_masks, mask_source
from neu_defects.data.transforms import build_transform

log = logging.getLogger(__name__)


class OneClassDataModule(NEUDataModule):
    def __init__(self, normal_classes: Sequence[str] = (), **kwargs):
        super().__init__(**kwargs)
        self.normal_classes = list(normal_classes or [])

    @property
    def mask_source(self) -> str | None:
        return mask_source(self.prepare_index())

    @property
    def normal_only_validation(self) -> bool:
        """Whether the validation split holds normal images only (MVTec AD's case), once set up."""
        return "val" in self.datasets and not self.datasets["val"].labels.any()

    def normal_ids(self) -> list[int]:
        names = self.class_names
        unknown = [c for c in self.normal_classes if c not in names]
        if unknown:
            raise UserError(f"data.normal_classes names {unknown}, which are not classes of {self.index.root}: "
                            f"choose from {names}")
        if not self.normal_classes:
            raise UserError(f"data.normal_classes is empty: name at least one normal class of {names}")
        if set(self.normal_classes) == set(names):
            raise UserError(f"data.normal_classes={self.normal_classes} makes every class normal: leave at least "
                            "one class out as the anomaly")
        return [names.index(c) for c in self.normal_classes]

    def members(self, name: str, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = self.split_indices(name)
        normal = self.normal_ids()
        anomalous = ~np.isin(labels[idx], normal)
        if name == "train":
            idx = idx[~anomalous]
            return idx, np.array([normal.index(label) for label in labels[idx]], dtype=np.int64)
        return idx, anomalous.astype(np.int64)

    def make_dataset(self, name: str, images: np.ndarray, positions: np.ndarray, targets: np.ndarray) -> Dataset:
        if name == "train" or self.mask_source is None:
            return super().make_dataset(name, images, positions, targets)
        masks = load_masks(self.index, positions, targets, self.image_size)
        unmasked = [self.index.samples[p].path for p, m in zip(positions, masks, strict=True) if m[0, 0] == UNKNOWN]
        if unmasked:
            log.info("%d anomalous %s images have no mask (e.g. %s): they count for image metrics only",
                     len(unmasked), name, unmasked[0])
        return MaskedArrayDataset(images, targets, build_transform(self.mean, self.std), masks)
