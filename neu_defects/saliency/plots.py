"""Figures of how well saliency maps localise the annotated defects."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from neu_defects.core.figures import save_figure
from neu_defects.saliency.localisation import SCORES


def plot_localisation(path: str | Path, summary: dict[str, float], class_names: Sequence[str], title: str,
                      prefix: str = "cam") -> Path:
    """Grouped bars per class (and overall) for each score, with the chance level marked."""
    groups = ["overall", *[c for c in class_names if f"{prefix}_chance/{c}" in summary]]

    def value(key: str, group: str) -> float:
        return summary[f"{prefix}_{key}" if group == "overall" else f"{prefix}_{key}/{group}"]

    fig, ax = plt.subplots(figsize=(1.4 * len(groups) + 2, 4.2))
    x = np.arange(len(groups))
    width = 0.26
    for i, key in enumerate(SCORES):
        ax.bar(x + (i - 1) * width, [value(key, g) for g in groups], width, label=key.replace("_", " "))
    for j, group in enumerate(groups):
        ax.hlines(value("chance", group), j - 1.5 * width, j + 1.5 * width, colors="k", linestyles="--",
                  label="chance (box coverage)" if j == 0 else None)
    ax.set_xticks(x, groups, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right", ncols=2)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
