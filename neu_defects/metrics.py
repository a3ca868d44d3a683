"""The torchmetrics collection every classifier stage logs."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


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
