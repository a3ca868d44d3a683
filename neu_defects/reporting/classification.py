"""Reports of a test run: metrics.json, classification report and plots, written whole."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score, roc_curve

from neu_defects.core.figures import save_figure
from neu_defects.core.io import atomic_write, write_text


def text_report(probs: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str]) -> str:
    preds = probs.argmax(-1).numpy()
    labels = list(range(len(class_names)))
    report = classification_report(targets.numpy(), preds, labels=labels, target_names=list(class_names),
                                   digits=4, zero_division=0)
    cm = confusion_matrix(targets.numpy(), preds, labels=labels)
    width = max(len(c) for c in class_names)
    rows = [" " * (width + 2) + " ".join(f"{i:>5d}" for i in labels)]
    rows += [f"{c:>{width}} {i}" + " ".join(f"{v:>5d}" for v in cm[i]) for i, c in enumerate(class_names)]
    return f"{report}\nconfusion matrix (rows: true class, columns: predicted class index)\n" + "\n".join(rows) + "\n"


def confusion_counts(probs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> np.ndarray:
    """(true, predicted) counts."""
    return confusion_matrix(targets.numpy(), probs.argmax(-1).numpy(), labels=list(range(num_classes)))


def write_confusion_csv(path, cm: np.ndarray, class_names: Sequence[str]) -> Path:
    """The confusion matrix as CSV: a row per true class, a column per predicted class."""

    def write(handle):
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *class_names])
        writer.writerows([name, *map(int, row)] for name, row in zip(class_names, cm, strict=True))

    return atomic_write(path, write)


def read_confusion_csv(path) -> tuple[np.ndarray, list[str]]:
    with Path(path).open(newline="") as handle:
        rows = list(csv.reader(handle))
    return np.array([[int(v) for v in row[1:]] for row in rows[1:]], dtype=np.int64), rows[0][1:]


def plot_counts(path, cm: np.ndarray, names: Sequence[str], title: str, xlabel: str = "predicted",
                ylabel: str = "true", size: tuple[float, float] = (6.5, 5.5)) -> Path:
    """A matrix of counts, annotated cell by cell: rows ``ylabel``, columns ``xlabel``."""
    fig, ax = plt.subplots(figsize=size)
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for i, j in np.ndindex(cm.shape):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def plot_confusion_counts(path, cm: np.ndarray, class_names: Sequence[str], title: str = "") -> Path:
    acc = np.trace(cm) / max(cm.sum(), 1)
    return plot_counts(path, cm, class_names, f"{title or 'confusion matrix'}: accuracy {acc:.4f} on {cm.sum()} images")


def plot_roc_ovr(path, probs: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str]) -> Path:
    fig, ax = plt.subplots(figsize=(6, 5.5))
    y, p = targets.numpy(), probs.numpy()
    for k, name in enumerate(class_names):
        positive = y == k
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, p[:, k])
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(positive, p[:, k]):.4f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("one-vs-rest ROC, test split")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def read_metrics_csv(path: str | Path) -> dict[str, dict[int, float]]:
    """Lightning CSVLogger's metrics.csv -> {metric: {epoch: value}} (last value per epoch)."""
    series: dict[str, dict[int, float]] = {}
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            for key, value in row.items():
                if key not in ("epoch", "step") and value not in ("", None):
                    series.setdefault(key, {})[epoch] = float(value)
    return series


def plot_training_curves(path, metrics_csv: str | Path) -> Path:
    """Train / val curves per epoch of whichever of loss, accuracy and image AUROC the run logged."""
    series = read_metrics_csv(metrics_csv)
    kinds = [k for k in ("loss", "acc", "image_auroc") if f"train/{k}" in series or f"val/{k}" in series]
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(5.5 * max(len(kinds), 1), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=False):
        for stage in ("train", "val"):
            values = series.get(f"{stage}/{kind}", {})
            if values:
                epochs = sorted(values)
                ax.plot([e + 1 for e in epochs], [values[e] for e in epochs], marker="o", ms=3, label=stage)
        ax.set_xlabel("epoch")
        ax.set_ylabel(kind)
        ax.set_title(f"{kind} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def write_classification_outputs(run_dir: str | Path, probs: torch.Tensor, targets: torch.Tensor,
                                 class_names: Sequence[str]) -> None:
    """classification_report.txt, plots/confusion_matrix.png and plots/roc_ovr.png for a test run."""
    run_dir = Path(run_dir)
    write_text(run_dir / "classification_report.txt", text_report(probs, targets, class_names))
    cm = confusion_counts(probs, targets, len(class_names))
    write_confusion_csv(run_dir / "confusion_matrix.csv", cm, class_names)
    plot_confusion_counts(run_dir / "plots" / "confusion_matrix.png", cm, class_names)
    plot_roc_ovr(run_dir / "plots" / "roc_ovr.png", probs, targets, class_names)

