"""Every notebook runs headless on the real NEU data, against small real runs made here.

The notebooks read their inputs from environment variables (their parameters cell), so each one is
pointed at artefacts this module makes with the command-line entry points: a two-job CNN sweep
(1 epoch, 64 px) for 02, one of its checkpoints for 03, and a one-class Gaussian run at 64 px for 04.
The printed checks the notebooks make (recomputed test metrics against the written ones) are asserted.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import REPO

NOTEBOOKS = REPO / "notebooks"
QUIET = ["callbacks.progress_bar=null", "callbacks.gradcam=null"]

pytestmark = [pytest.mark.real_data, pytest.mark.slow]


def train_cli(*overrides):
    result = subprocess.run([sys.executable, "-m", "neu_defects.train", *overrides, *QUIET], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def artefacts(neu_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("notebook_inputs")
    sweep, anomaly = root / "sweep", root / "anomaly"
    train_cli("-m", f"data.root={neu_root}", "model=cnn", "seed=0,1", "model.image_size=64", "trainer.max_epochs=1",
              f"hydra.sweep.dir={sweep}")
    train_cli(f"data.root={neu_root}", "model=feature_gaussian", "model.image_size=64",
              "data.normal_classes=[pitted_surface]", f"hydra.run.dir={anomaly}")
    return {"sweep": sweep, "checkpoint": sweep / "0" / "checkpoints" / "best.ckpt", "anomaly": anomaly}


def execute(name: str, cwd: Path) -> str:
    """Run a notebook in a fresh python3 kernel; return all its text output."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    texts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts += [output.get("data", {}).get(kind, "") for kind in ("text/plain", "text/markdown")]
    return "\n".join(texts)


def test_notebooks_are_stored_without_outputs():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["01_data_exploration.ipynb", "02_model_comparison.ipynb", "03_gradcam_explorer.ipynb",
                     "04_anomaly_detection.ipynb"]
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), name
        assert "parameters" in code[0].metadata.get("tags", []), name


def test_data_exploration(neu_root, tmp_path, monkeypatch):
    monkeypatch.setenv("NEU_DATA_DIR", str(neu_root))
    monkeypatch.setenv("NB_SAMPLES_PER_CLASS", "2")
    text = execute("01_data_exploration.ipynb", tmp_path)
    assert "1800 images in the neu-det layout" in text
    assert "1 group(s) of identical images" in text and "patches_101.jpg = IMAGES/patches_105.jpg" in text
    assert "boxes per image" in text


def test_model_comparison(artefacts, neu_root, tmp_path, monkeypatch):
    monkeypatch.setenv("NEU_DATA_DIR", str(neu_root))
    monkeypatch.setenv("NB_SWEEP_DIR", str(artefacts["sweep"]))
    monkeypatch.setenv("NB_MISCLASSIFIED_SHOWN", "4")
    text = execute("02_model_comparison.ipynb", tmp_path)
    assert "2 finished job(s) of 2; main metric test/acc" in text
    parity = re.findall(r"test/acc recomputed ([\d.]+), written ([\d.]+)", text)
    assert len(parity) == 2
    for recomputed, written in parity:
        assert float(recomputed) == pytest.approx(float(written), abs=1e-4)
    assert (artefacts["sweep"] / "summary_grouped.md").is_file()


def test_gradcam_explorer(artefacts, neu_root, tmp_path, monkeypatch):
    monkeypatch.setenv("NEU_DATA_DIR", str(neu_root))
    monkeypatch.setenv("NB_CKPT_PATH", str(artefacts["checkpoint"]))
    monkeypatch.setenv("NB_METHODS", "gradcam,eigencam")
    monkeypatch.setenv("NB_LOCALISATION_IMAGES", "24")
    text = execute("03_gradcam_explorer.ipynb", tmp_path)
    assert "default CAM setting: gradcam on features.2+features.3" in text
    rows = dict(re.findall(r"\| (gradcam|eigencam) \| ([\d.]+) \|", text))
    assert set(rows) == {"gradcam", "eigencam"} and all(0 <= float(v) <= 1 for v in rows.values())


def test_anomaly_detection(artefacts, neu_root, tmp_path, monkeypatch):
    monkeypatch.setenv("NEU_DATA_DIR", str(neu_root))
    monkeypatch.setenv("NB_ANOMALY_RUN", str(artefacts["anomaly"]))
    text = execute("04_anomaly_detection.ipynb", tmp_path)
    written = json.loads((artefacts["anomaly"] / "metrics.json").read_text())["test/image_auroc"]
    recomputed = float(re.search(r"test image AUROC recomputed ([\d.]+)", text).group(1))
    assert recomputed == pytest.approx(written, abs=1e-4)
    assert "| stored (F1-best on validation) |" in text and "| recall ≥ 0.95 on validation |" in text
