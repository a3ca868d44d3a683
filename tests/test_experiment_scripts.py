"""Scripts under experiments/ that records cite still run against the package as it is."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from .conftest import REPO

LR_BASELINE = REPO / "experiments" / "studies" / "data_efficiency_lite0_k10" / "lr_baseline.py"


@pytest.mark.slow
def test_lr_baseline_fits_the_k_per_class_subsets_of_the_package_splits(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 40)
    feats = rng.normal(0, 0.3, (len(labels), 8)) + np.eye(8)[labels] * 3  # one direction per class
    np.savez(tmp_path / "feats.npz", feats=feats, labels=labels, hashes=np.array([f"h{i}" for i in range(len(labels))]))
    result = subprocess.run([sys.executable, str(LR_BASELINE), "fit", str(tmp_path / "feats.npz"), "5"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("k=5 split=")]
    assert [line.split()[1] for line in lines] == ["split=70_15_15", "split=80_20"]
    for line in lines:
        accs = [float(a) for a in re.findall(r"\d\.\d{4}", line.split("|")[0])]
        assert len(accs) == 10 and min(accs) > 0.9
