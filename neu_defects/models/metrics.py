"""The torchmetrics every stage logs: the classifier's collection and the anomaly detector's."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryPrecisionRecallCurve,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.functional.classification import binary_f1_score, binary_precision, binary_recall


def classification_metrics(num_classes: int) -> MetricCollection:
    """Accuracy, macro precision / recall / F1, per-class F1 and one-vs-rest macro ROC AUC."""
    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "precision_macro": MulticlassPrecision(num_classes, average="macro"),
        "recall_macro": MulticlassRecall(num_classes, average="macro"),
        "f1_macro": MulticlassF1Score(num_classes, average="macro"),
        "auroc_macro": MulticlassAUROC(num_classes, average="macro"),
        "f1": MulticlassF1Score(num_classes, average=None),
    })


def flatten(values: dict, prefix: str, class_names: list[str]) -> dict[str, float]:
    """``{"acc": t, "f1": [..]}`` -> ``{"test/acc": .., "test/f1/crazing": ..}`` with plain floats."""
    out = {}
    for name, value in values.items():
        if value.ndim == 0:
            out[f"{prefix}/{name}"] = float(value)
        else:
            out.update({f"{prefix}/{name}/{c}": float(v) for c, v in zip(class_names, value, strict=True)})
    return out


def anomaly_metrics() -> MetricCollection:
    """Image AUROC, average precision and the precision-recall curve of raw anomaly scores
    (target 1 = anomaly), synced across processes like the classifier's.

    ``normalization=None``: by default torchmetrics passes scores outside [0, 1] through a sigmoid,
    which saturates in float32 above about 17, and Mahalanobis distances are about 50. Every score
    would tie at 1.0 and the AUROC fall to 0.5 (tests/test_anomaly.py).
    """
    return MetricCollection({
        "image_auroc": BinaryAUROC(normalization=None),
        "image_aupr": BinaryAveragePrecision(normalization=None),
        "pr_curve": BinaryPrecisionRecallCurve(normalization=None),
    })


def f1_threshold(precision: Tensor, recall: Tensor, thresholds: Tensor) -> float:
    """The score threshold of a precision-recall curve where F1 of 'anomaly = score >= threshold' is best."""
    precision, recall = precision[:-1], recall[:-1]  # the curve's last point has no threshold
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return float(thresholds[int(f1.argmax())])


def normal_quantile(normal_scores: Tensor, fpr: float) -> float:
    """The threshold that flags a share ``fpr`` of these normal scores: their (1 - fpr) quantile."""
    return float(torch.quantile(normal_scores.double(), 1.0 - fpr))


def threshold_metrics(scores: Tensor, targets: Tensor, threshold: float) -> dict[str, float]:
    """F1, precision and recall of 'anomaly = score >= threshold'."""
    # Hard predictions: torchmetrics reads integers as labels and applies no sigmoid to them.
    predicted = (scores >= threshold).long()
    return {"f1": float(binary_f1_score(predicted, targets)),
            "precision": float(binary_precision(predicted, targets)),
            "recall": float(binary_recall(predicted, targets))}
