"""Training and evaluation end to end: outputs of a run, an accuracy floor on NEU, train -> eval parity."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from neu_defects.data import NEU_CLASSES
from neu_defects.workflows.evaluate import evaluate
from neu_defects.workflows.train import train

from .conftest import FIXTURE_CLASSES, REPO, compose_cfg

FAST = ["trainer.max_epochs=2", "callbacks.progress_bar=null", "model.net.widths=[8,16]", "model.image_size=32"]


def expected_keys(class_names, boxes=False):
    """The classification keys; with boxes (NEU-DET) also the Grad-CAM localisation keys."""
    keys = {"test/acc", "test/precision_macro", "test/recall_macro", "test/f1_macro", "test/auroc_macro",
            "fit/seconds", *(f"test/f1/{c}" for c in class_names)}
    if boxes:
        for name in ("cam_pointing_game", "cam_energy_in_box", "cam_iou", "cam_chance"):
            keys |= {f"test/{name}", *(f"test/{name}/{c}" for c in class_names)}
    return keys


@pytest.fixture(scope="module")
def fixture_run(fixture_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fixture_run")
    cfg = compose_cfg("train", [f"data.root={fixture_root / 'neu-det'}", *FAST], run_dir)
    metrics, objects = train(cfg)
    return run_dir, metrics, objects


def test_a_run_writes_every_output(fixture_run):
    run_dir, metrics, _ = fixture_run
    written = json.loads((run_dir / "metrics.json").read_text())
    assert set(written) == expected_keys(FIXTURE_CLASSES, boxes=True)
    assert all(0.0 <= written[k] <= 1.0 for k in written if k.startswith("test/"))
    assert written["fit/seconds"] > 0
    for name in ("classification_report.txt", "split.csv", "plots/confusion_matrix.png",
                 "plots/training_curves.png", "plots/roc_ovr.png", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt", "csv/metrics.csv"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert "precision" in (run_dir / "classification_report.txt").read_text()
    assert metrics["test/acc"] == written["test/acc"] and "val/acc" in metrics


def test_checkpoint_records_how_to_rebuild_the_model(fixture_run):
    from neu_defects.core.checkpoint import load_module

    run_dir, _, objects = fixture_run
    module = load_module(run_dir / "checkpoints" / "best.ckpt")
    assert module.class_names == list(FIXTURE_CLASSES)
    assert module.input_spec == objects["model"].input_spec
    assert module.input_spec["image_size"] == 32


@pytest.mark.slow
def test_cli_honours_run_dir_and_overrides(fixture_root, tmp_path):
    run_dir = tmp_path / "cli_run"
    result = subprocess.run(
        [sys.executable, "-m", "neu_defects.train", f"data.root={fixture_root / 'neu-cls'}", "data.split=80_20",
         *FAST, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    console = result.stdout + result.stderr
    assert "Tip:" not in console and "LeafSpec" not in console, "advertising or deprecation noise on the console"
    assert set(json.loads((run_dir / "metrics.json").read_text())) == expected_keys(FIXTURE_CLASSES)
    splits = [line.split(",")[2] for line in (run_dir / "split.csv").read_text().splitlines()[1:]]
    assert splits.count("test") == 12  # 20% of 10 images in each of 6 classes


@pytest.mark.real_data
@pytest.mark.slow
def test_cnn_on_real_neu_reaches_floor_and_eval_reproduces_it(neu_root, tmp_path):
    """A short real run (6 of the seed project's 20 epochs) must clear 0.95; eval must give the same numbers."""
    run_dir = tmp_path / "real"
    cfg = compose_cfg("train", ["experiment=seed000_cnn", f"data.root={neu_root}", "trainer.max_epochs=6",
                                "callbacks.progress_bar=null"], run_dir)
    metrics, _ = train(cfg)
    assert metrics["test/acc"] >= 0.95, metrics
    assert set(json.loads((run_dir / "metrics.json").read_text())) == expected_keys(NEU_CLASSES, boxes=True)

    eval_dir = tmp_path / "eval"
    eval_cfg = compose_cfg("eval", [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", f"data.root={neu_root}",
                                    "callbacks.progress_bar=null"], eval_dir)
    eval_metrics, _ = evaluate(eval_cfg)
    trained = json.loads((run_dir / "metrics.json").read_text())
    # eval runs no Grad-CAM callback, so it reproduces the classification metrics.
    assert eval_metrics == {k: v for k, v in trained.items() if k in expected_keys(NEU_CLASSES) - {"fit/seconds"}}
    assert (eval_dir / "split.csv").read_text() == (run_dir / "split.csv").read_text()
    assert (eval_dir / "plots" / "confusion_matrix.png").is_file()
