"""Reports of an anomaly test run: score histogram, ROC and input / reconstruction / map grids, with
the ground truth's outline (mask or boxes) where the data has it."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from neu_defects.core.figures import save_figure


def plot_score_histogram(path, scores: np.ndarray, targets: np.ndarray, threshold: float, policy: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.histogram_bin_edges(scores, bins=40)
    ax.hist(scores[targets == 0], bins=bins, alpha=0.6, label=f"normal ({(targets == 0).sum()})")
    ax.hist(scores[targets == 1], bins=bins, alpha=0.6, label=f"anomaly ({(targets == 1).sum()})")
    ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.4g} ({policy}, on validation)")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("test images")
    ax.legend()
    return save_figure(fig, path)


def plot_roc(path, scores: np.ndarray, targets: np.ndarray) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    fpr, tpr, _ = roc_curve(targets, scores)
    ax.plot(fpr, tpr, label=f"AUROC {roc_auc_score(targets, scores):.4f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("image-level ROC, test split")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def _pick(scores: np.ndarray, targets: np.ndarray, per_group: int) -> list[tuple[str, int]]:
    """The highest- and lowest-scored normals and anomalies: the cases worth looking at."""
    picks = []
    for kind, label in (("normal", 0), ("anomaly", 1)):
        idx = np.flatnonzero(targets == label)
        order = idx[np.argsort(scores[idx])]
        picks += [(f"{kind}, lowest", int(i)) for i in order[:per_group]]
        picks += [(f"{kind}, highest", int(i)) for i in order[::-1][:per_group]]
    return picks


@torch.no_grad()
def plot_anomaly_grid(path, module, datamodule, per_group: int = 2) -> Path:
    dataset = datamodule.datasets["test"]
    positions = datamodule.dataset_indices["test"]
    names = datamodule.index.class_names
    picks = _pick(module.test_scores, module.test_targets, per_group)
    net = module.net.eval()
    cols = 3 if net.reconstruction(dataset[0][0][None]) is not None else 2
    fig, axes = plt.subplots(len(picks), cols, figsize=(2.4 * cols, 2.4 * len(picks)), squeeze=False)
    for row, (title, i) in enumerate(picks):
        x = dataset[i][0][None]
        score, amap = net(x)
        image = datamodule.index.samples[positions[i]]
        panels = [("input", dataset.images[i][..., 0], "gray")]
        recon = net.reconstruction(x)
        if recon is not None:
            panels.append(("reconstruction", recon[0, 0].numpy(), "gray"))
        panels.append(("anomaly map", amap[0, 0].numpy(), "inferno"))
        # The ground truth's outline on every panel, where the data has masks (boxes on NEU-DET).
        mask = dataset.masks[i] if hasattr(dataset, "masks") else None
        for col, (name, array, cmap) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(array, cmap=cmap)
            if mask is not None and (mask == 1).any():
                ax.contour(mask == 1, levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_axis_off()
            ax.set_title(name if col else f"{title}\n{names[image.label]} {float(score[0]):.3g}", fontsize=8)
    fig.suptitle(f"threshold {float(module.threshold):.4g}", fontsize=9)
    return save_figure(fig, path)


def write_anomaly_outputs(run_dir: str | Path, module, datamodule) -> None:
    run_dir = Path(run_dir)
    scores, targets = module.test_scores, module.test_targets
    plot_score_histogram(run_dir / "plots" / "score_histogram.png", scores, targets, float(module.threshold),
                         module.threshold_policy)
    if 0 < targets.sum() < len(targets):
        plot_roc(run_dir / "plots" / "roc.png", scores, targets)
    plot_anomaly_grid(run_dir / "anomaly_maps" / "best_and_worst.png", module, datamodule)
