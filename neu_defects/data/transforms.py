"""Albumentations pipelines: configured augmentation, then the model's normalisation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import albumentations as A
from albumentations.pytorch import ToTensorV2


def build_transform(
    mean: Sequence[float], std: Sequence[float], augment: Mapping[str, A.BasicTransform | None] | None = None
) -> A.Compose:
    """Named augmentations (a ``None`` entry is switched off) followed by normalise + to-tensor."""
    steps = [t for t in (augment or {}).values() if t is not None]
    steps += [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps)
