"""Boxes from class activation maps: weak supervision, a classifier trained on image labels only.

``cam_to_boxes`` thresholds a map at a fraction of its maximum and boxes each 8-connected region,
in the map's grid: continuous ``(x1, y1, x2, y2)``, a region covering pixel columns ``i..j`` spans
``[i, j + 1]`` (the convention of the index's boxes, ``neu_defects.data.annotations``). Its score
is the region's peak over the map's peak, so the strongest region scores 1.

``image_detections`` turns an image's maps and the classifier's probabilities into a detection
in the original image's pixels, as torchmetrics' ``MeanAveragePrecision`` takes it (and as the
detector's are scored): a box's score is its class probability times its region's score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage

from neu_defects.core.errors import UserError

CamBox = tuple[float, float, float, float, float]
Detection = dict[str, torch.Tensor]
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 < threshold <= 1.0:
        raise UserError(f"CAM box threshold {threshold} is not a fraction of the map's maximum: "
                        "use 0 < t <= 1")
    return threshold


def cam_to_boxes(cam_map: np.ndarray, threshold: float, min_area_fraction: float = 0.0) -> list[CamBox]:
    """``(x1, y1, x2, y2, score)`` per region of ``{map >= threshold * max}``, strongest first.

    Regions of fewer than ``min_area_fraction`` of the map's pixels are dropped. A map without a
    positive maximum, or a flat one, gives no boxes: it says nothing about where the evidence is,
    and a whole-image box would score the boxes' size prior (NEU's boxes cover 40 % of an image),
    not the map. (CAM maps are min-max scaled, so a flat map arrives here as all zeros.)
    """
    threshold = check_threshold(threshold)
    cam_map = np.nan_to_num(np.asarray(cam_map, dtype=np.float64), nan=0.0)
    if cam_map.ndim != 2:
        raise UserError(f"a CAM map is (H, W); got shape {cam_map.shape}")
    peak = float(cam_map.max()) if cam_map.size else 0.0
    if peak <= 0 or float(cam_map.min()) >= peak:
        return []
    regions, count = ndimage.label(cam_map >= threshold * peak, structure=EIGHT_CONNECTED)
    if count == 0:
        return []
    ids = np.arange(1, count + 1)
    areas = np.bincount(regions.ravel(), minlength=count + 1)[1:]
    peaks = np.asarray(ndimage.maximum(cam_map, regions, ids), dtype=np.float64).reshape(-1)
    min_pixels = float(min_area_fraction) * cam_map.size
    boxes = []
    for (rows, cols), area, region_peak in zip(ndimage.find_objects(regions), areas, peaks, strict=True):
        if area < min_pixels:
            continue
        boxes.append((float(cols.start), float(rows.start), float(cols.stop), float(rows.stop),
                      float(region_peak / peak)))
    return sorted(boxes, key=lambda b: -b[4])


def empty_detection() -> Detection:
    return {"boxes": torch.zeros((0, 4), dtype=torch.float32), "scores": torch.zeros(0, dtype=torch.float32),
            "labels": torch.zeros(0, dtype=torch.int64)}


Probabilities = Sequence[float] | np.ndarray | torch.Tensor


def image_detections(class_maps: Mapping[int, np.ndarray], probs: Probabilities, original: tuple[int, int],
                     threshold: float, min_area_fraction: float = 0.0) -> Detection:
    """``{"boxes": (N, 4) in the original (width, height) frame, "scores", "labels"}`` of one image,
    from the map of each class in ``class_maps`` (class id -> (H, W) map at any grid size); a box
    scores its class probability times its region's score."""
    probs = np.asarray(torch.as_tensor(probs, dtype=torch.float32).reshape(-1))
    boxes, scores, labels = [], [], []
    for label, cam_map in class_maps.items():
        height, width = np.shape(cam_map)
        sx, sy = original[0] / width, original[1] / height
        for x1, y1, x2, y2, score in cam_to_boxes(cam_map, threshold, min_area_fraction):
            boxes.append((x1 * sx, y1 * sy, x2 * sx, y2 * sy))
            scores.append(float(probs[int(label)]) * score)
            labels.append(int(label))
    if not boxes:
        return empty_detection()
    return {"boxes": torch.tensor(boxes, dtype=torch.float32),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def cam_detections(cam_map: np.ndarray, probs: Probabilities, original: tuple[int, int], threshold: float,
                   min_area_fraction: float = 0.0) -> Detection:
    """The detection of one image from the map of the classifier's predicted class (its argmax)."""
    predicted = int(torch.as_tensor(probs).reshape(-1).argmax())
    return image_detections({predicted: cam_map}, probs, original, threshold, min_area_fraction)


def extra_classes(probs: np.ndarray | torch.Tensor, floor: float | None) -> list[list[int]]:
    """Per image of (N, K) probabilities: the classes but the predicted one at least ``floor`` probable."""
    if floor is None:
        return [[] for _ in range(len(probs))]
    probs = np.asarray(torch.as_tensor(probs, dtype=torch.float32))
    predicted = probs.argmax(-1)
    return [[int(k) for k in np.flatnonzero(p >= float(floor)) if k != top]
            for p, top in zip(probs, predicted, strict=True)]


def ground_truth(boxes: Sequence[Sequence[float]], labels: Sequence[int]) -> Detection:
    """An image's annotated boxes (original pixels) and classes, as ``MeanAveragePrecision`` takes them."""
    return {"boxes": torch.tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.tensor(np.asarray(labels, dtype=np.int64).reshape(-1))}
