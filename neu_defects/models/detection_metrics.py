"""Box metrics: torchmetrics' COCO mean average precision, and the per-class figures drawn from it.

``MeanAveragePrecision`` runs the COCO evaluation of a backend from PyPI (faster-coco-eval, else
pycocotools: ``pip install 'neu-defects[detection]'``). Its extended summary holds COCO's
precision array (IoU threshold x 101 recall points x class x area x max detections); the AP of a
class at IoU 0.5 is the mean of its row at IoU 0.5, all areas, 100 detections, which is how COCO
averages the ``map_50`` that the class APs average to.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import numpy as np
from torchmetrics.detection import MeanAveragePrecision

from neu_defects.core.errors import UserError

BACKENDS = ("faster_coco_eval", "pycocotools")
SUMMARY_KEYS = ("map_50", "map", "map_75", "mar_100")


def mean_average_precision() -> MeanAveragePrecision:
    for backend in BACKENDS:
        if importlib.util.find_spec(backend) is not None:
            return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=backend,
                                        class_metrics=True, extended_summary=True)
    raise UserError("box mAP needs a COCO evaluation backend: pip install 'neu-defects[detection]' "
                    "(faster-coco-eval)")


def pr_at_50(result: dict, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per class with ground truth: precision at COCO's 101 recall points, IoU 0.5, all areas, 100 detections."""
    precision = result["precision"].numpy()
    classes = result["classes"].numpy().reshape(-1)
    out = {}
    for k, class_id in enumerate(classes):
        row = precision[0, :, k, 0, -1]
        if (row >= 0).all():  # -1: COCO's mark for a class with no ground truth in this split
            out[class_names[int(class_id)]] = row
    return out


def summarize(result: dict, class_names: Sequence[str], prefix: str) -> dict[str, float]:
    """``{prefix}/map_50``, ``/map`` (IoU 0.5:0.95), ``/map_75``, ``/mar_100`` and ``/map_50/<class>``."""
    out = {f"{prefix}/{key}": float(result[key]) for key in SUMMARY_KEYS}
    out.update({f"{prefix}/map_50/{name}": float(row.mean()) for name, row in pr_at_50(result, class_names).items()})
    return out
