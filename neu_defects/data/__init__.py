"""Data: files on disk -> index -> split -> decoded cache -> augmented tensors."""

from neu_defects.data.datamodule import NEUDataModule
from neu_defects.data.index import NEU_CLASSES, DatasetIndex, Sample, build_index

__all__ = ["NEU_CLASSES", "DatasetIndex", "NEUDataModule", "Sample", "build_index"]
