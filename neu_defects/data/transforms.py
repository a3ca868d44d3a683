"""Albumentations pipelines: configured augmentation, then the model's normalisation.

``CameraNoise`` is the one augmentation of our own: Gaussian noise at a random SNR, shaped as the
camera's noise would reach the model (see ``neu_defects.data.corruptions``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import numpy as np
from albumentations.pytorch import ToTensorV2
from PIL import Image

from neu_defects.core.errors import UserError
from neu_defects.data.corruptions import noise_std


class CameraNoise(A.ImageOnlyTransform):
    """Gaussian noise at an SNR drawn uniformly from ``snr_db`` (dB; signal power: mean of squares).

    The cached images are already resized to the model's input, but a camera adds its noise at
    the sensor's resolution: the noise is drawn at ``source_size`` x ``source_size`` (NEU: 200)
    and resized like the image was, so after a 200 -> 64 reduction it is as averaged out as the
    noise of a corrupted test image (``corruption=gaussian_noise``), and after 200 -> 224 as
    smooth. ``source_size: null`` draws it at the image's own size.
    """

    def __init__(self, snr_db: Sequence[float] = (15.0, 40.0), source_size: int | None = 200, p: float = 0.5):
        super().__init__(p=p)
        low, high = (float(v) for v in snr_db)
        if not low <= high:
            raise UserError(f"data.augment.noise.snr_db={list(snr_db)}: give [low, high] in dB with low <= high")
        self.snr_db, self.source_size = (low, high), source_size

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        image = data["image"]
        snr = self.random_generator.uniform(*self.snr_db)
        h, w = image.shape[:2]
        size = (self.source_size, self.source_size) if self.source_size else (h, w)
        noise = self.random_generator.normal(0.0, noise_std(image, snr), size).astype(np.float32)
        if size != (h, w):
            # The same anti-aliased bilinear filter the cache resized the image with.
            noise = np.asarray(Image.fromarray(noise, mode="F").resize((w, h), Image.Resampling.BILINEAR))
        return {"noise": noise}

    def apply(self, img: np.ndarray, noise: np.ndarray, **params: Any) -> np.ndarray:
        noisy = img.astype(np.float32) + (noise[..., None] if img.ndim == 3 else noise)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("snr_db", "source_size")


def build_transform(
    mean: Sequence[float], std: Sequence[float], augment: Mapping[str, A.BasicTransform | None] | None = None
) -> A.Compose:
    """Named augmentations (a ``None`` entry is switched off) followed by normalise + to-tensor."""
    steps = [t for t in (augment or {}).values() if t is not None]
    steps += [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps)
