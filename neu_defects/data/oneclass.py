"""``OneClassDataModule``: NEU as an anomaly-detection problem.

NEU has no defect-free class, so some classes are declared normal (the surface a line sees every
day) and every other class is an anomaly. Splits are the classification splits (stratified by
class, duplicates kept together); training keeps the normal images only, validation and test keep
both, with target 0 = normal, 1 = anomaly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from neu_defects.core.errors import UserError
from neu_defects.data.datamodule import NEUDataModule


class OneClassDataModule(NEUDataModule):
    def __init__(self, normal_classes: Sequence[str] = (), **kwargs):
        super().__init__(**kwargs)
        self.normal_classes = list(normal_classes or [])

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
        anomalous = ~np.isin(labels[idx], self.normal_ids())
        if name == "train":
            idx = idx[~anomalous]
            return idx, np.zeros(len(idx), dtype=np.int64)
        return idx, anomalous.astype(np.int64)
