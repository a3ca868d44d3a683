"""Saving matplotlib figures whole, with the file-only Agg backend.

Runs write figures on machines without a display (CI, a cluster's compute nodes); selecting Agg
before pyplot is first imported keeps matplotlib from probing for a GUI toolkit.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from neu_defects.core.io import atomic_write  # noqa: E402


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Write the figure (format from the suffix) and close it."""
    path = Path(path)
    try:
        return atomic_write(path, lambda h: fig.savefig(h, format=path.suffix.lstrip(".") or "png", dpi=120,
                                                        bbox_inches="tight"), binary=True)
    finally:
        plt.close(fig)
