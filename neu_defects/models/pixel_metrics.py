"""Pixel-level scores of anomaly maps against ground-truth masks: pixel AUROC and AUPRO.

- Pixel AUROC: every pixel of every scored image is one sample (anomalous = mask 1).
- AUPRO (Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021): at each threshold,
  the per-region overlap (PRO) is the mean, over the connected anomalous regions of all images
  (8-connected), of the share of the region's pixels above the threshold; it is plotted against
  the false-positive rate of the normal pixels, integrated up to ``fpr_limit`` (0.3) and divided
  by it, so a perfect map scores 1.

PRO is a weighted true-positive rate: give each anomalous pixel the weight 1 / (its region's
size x the number of regions) and the weighted share above a threshold is the mean overlap. So
the whole PRO curve is one weighted ROC curve, exact at every threshold, with no threshold grid.

Images whose mask is UNKNOWN (an anomaly with no mask) are left out of both.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score, roc_curve

from neu_defects.data.masks import UNKNOWN

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def scored_pixels(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) maps and masks of the images whose mask is known."""
    maps, masks = np.asarray(maps), np.asarray(masks)
    if maps.shape != masks.shape:
        raise ValueError(f"anomaly maps {maps.shape} and masks {masks.shape} differ in shape")
    known = ~(masks == UNKNOWN).any(axis=(1, 2))
    return maps[known], masks[known]


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """AUROC of every known pixel's score; NaN when the pixels are all of one kind."""
    maps, masks = scored_pixels(maps, masks)
    labels = masks.ravel()
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, maps.ravel()))


def pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate of normal pixels, mean per-region overlap) at every threshold, ascending."""
    maps, masks = scored_pixels(maps, masks)
    weights = np.zeros(masks.shape, dtype=np.float64)
    regions = 0
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask == 1, structure=_EIGHT_CONNECTED)
        if count:
            sizes = np.bincount(labelled.ravel())
            weights[i] = np.where(labelled > 0, 1.0 / sizes[labelled], 0.0)
            regions += count
    normal = masks == 0
    if regions == 0 or not normal.any():
        return np.zeros(0), np.zeros(0)
    # Normal pixels weigh 1 each: the weighted FPR is the plain one.
    weights[normal] = 1.0
    fpr, pro, _ = roc_curve((masks == 1).ravel(), maps.ravel(), sample_weight=weights.ravel())
    return fpr, pro


def pixel_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve up to ``fpr_limit``, divided by ``fpr_limit``; NaN without regions."""
    fpr, pro = pro_curve(maps, masks)
    if fpr.size == 0:
        return float("nan")
    # The curve up to the limit, closed by its value interpolated at the limit.
    inside = fpr <= fpr_limit
    x = np.append(fpr[inside], fpr_limit)
    y = np.append(pro[inside], np.interp(fpr_limit, fpr, pro))
    return float(np.trapezoid(y, x) / fpr_limit)
