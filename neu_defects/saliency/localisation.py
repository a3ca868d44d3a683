"""How well a saliency map localises annotated defects: pointing game, energy in box, IoU.

Boxes are the index's ``(x1, y1, x2, y2)``, 0-based continuous coordinates in the original image's
pixel frame (``neu_defects.data.annotations``: a VOC box ``xmin..xmax`` is ``[xmin - 1, xmax]``);
``box_mask`` rasterises the union of an image's boxes onto the map grid (the resized model input). Every score is defined so
that a uniform map scores the box coverage (the share of the image inside boxes): that is the
chance level, and it is also what a point drawn uniformly at random scores in the pointing game.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from neu_defects.data.annotations import Box

SCORES = ("pointing_game", "energy_in_box", "iou")


def scale_boxes(boxes: Sequence[Box], original: tuple[int, int], size: tuple[int, int]) -> list[Box]:
    """Boxes in the original (width, height) frame -> the same boxes in a (width, height) frame."""
    sx, sy = size[0] / original[0], size[1] / original[1]
    return [(x0 * sx, y0 * sy, x1 * sx, y1 * sy) for x0, y0, x1, y1 in boxes]


def box_mask(boxes: Sequence[Box], original: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of the pixels whose centre lies in the union of the boxes."""
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    cy, cx = np.arange(height) + 0.5, np.arange(width) + 0.5
    for x0, y0, x1, y1 in scale_boxes(boxes, original, (width, height)):
        rows = (cy >= y0) & (cy <= y1)
        cols = (cx >= x0) & (cx <= x1)
        mask |= rows[:, None] & cols[None, :]
    return mask


def _nonnegative(cam_map: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(cam_map, dtype=np.float64), 0, None)


def pointing_game(cam_map: np.ndarray, mask: np.ndarray) -> float:
    """1 if the map's maximum lies in a box, 0 if not; ties score the share of maxima inside
    (the expected hit when the tie is broken at random), so a flat map scores the coverage."""
    cam_map = np.asarray(cam_map, dtype=np.float64)
    peaks = cam_map >= cam_map.max()
    return float((peaks & mask).sum() / peaks.sum())


def energy_in_box(cam_map: np.ndarray, mask: np.ndarray) -> float:
    """Share of the (non-negative) map mass inside the boxes; an all-zero map counts as flat."""
    cam_map = _nonnegative(cam_map)
    total = cam_map.sum()
    return float(cam_map[mask].sum() / total) if total > 0 else float(mask.mean())


def threshold_iou(cam_map: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of {map >= threshold * max} with the union of boxes."""
    cam_map = _nonnegative(cam_map)
    peak = cam_map.max()
    region = cam_map >= threshold * peak if peak > 0 else np.ones_like(mask)
    union = (region | mask).sum()
    return float((region & mask).sum() / union) if union else 0.0


def localisation_scores(cam_map: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    return {"pointing_game": pointing_game(cam_map, mask), "energy_in_box": energy_in_box(cam_map, mask),
            "iou": threshold_iou(cam_map, mask, threshold)}


@dataclass
class LocalisationTally:
    """Per-image scores collected over a split, summarised overall (mean over images) and per class."""

    class_names: Sequence[str]
    threshold: float = 0.5
    labels: list[int] = field(default_factory=list)
    coverage: list[float] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in SCORES})

    def add(self, cam_map: np.ndarray, mask: np.ndarray, label: int) -> None:
        for key, value in localisation_scores(cam_map, mask, self.threshold).items():
            self.scores[key].append(value)
        self.labels.append(int(label))
        self.coverage.append(float(mask.mean()))

    def __len__(self) -> int:
        return len(self.labels)

    def summary(self, prefix: str = "cam") -> dict[str, float]:
        """``{cam_pointing_game: .., cam_pointing_game/<class>: .., …, cam_chance: .., cam_chance/<class>: ..}``;
        classes without annotated images are left out."""
        labels = np.asarray(self.labels)
        columns = {**{k: np.asarray(v) for k, v in self.scores.items()}, "chance": np.asarray(self.coverage)}
        out = {}
        for key, values in columns.items():
            out[f"{prefix}_{key}"] = float(values.mean())
            for k, name in enumerate(self.class_names):
                if (labels == k).any():
                    out[f"{prefix}_{key}/{name}"] = float(values[labels == k].mean())
        return out
