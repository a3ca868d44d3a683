"""Bad input gets one clear line naming the path or value and the fix, exit 2, and no metrics.json."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from neu_defects.core.errors import UserError
from neu_defects.workflows.evaluate import evaluate
from neu_defects.workflows.train import train

from .conftest import REPO, compose_cfg

FAST = ["trainer.max_epochs=1", "callbacks.progress_bar=null", "model.net.widths=[8,16]", "model.image_size=32"]


def run_cli(module, *overrides, cwd=REPO):
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_missing_root_is_one_line_and_exit_2(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("neu_defects.train", f"data.root={tmp_path / 'nowhere'}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"neu-defects: error: data root {tmp_path / 'nowhere'} does not exist")
    assert "NEU_DATA_DIR" in lines[0]
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_unknown_model_names_the_value_and_the_choices(tmp_path):
    result = run_cli("neu_defects.train", "model=nosuchnet", f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "Could not find 'model/nosuchnet'" in result.stderr
    assert "cnn" in result.stderr.split("Available options in 'model'")[1]


def _train_error(root, tmp_path, *extra):
    cfg = compose_cfg("train", [f"data.root={root}", *FAST, *extra], tmp_path / "run")
    with pytest.raises(UserError) as info:
        train(cfg)
    assert not (tmp_path / "run" / "metrics.json").exists()
    return str(info.value)


def test_empty_root(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "is empty" in _train_error(tmp_path / "empty", tmp_path)


def test_unrecognised_layout(tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    (root / "notes.txt").write_text("not images")
    (root / "photo.png").write_bytes(b"")
    message = _train_error(root, tmp_path)
    assert "cannot recognise the dataset layout" in message and "data.layout=" in message


def test_class_folder_without_images(fixture_root, tmp_path):
    root = tmp_path / "folders"
    shutil.copytree(fixture_root / "folders", root)
    (root / "empty_class").mkdir()
    message = _train_error(root, tmp_path)
    assert f"class folder {root / 'empty_class'} has no images" in message


def test_corrupt_image_names_the_file(fixture_root, tmp_path):
    root = tmp_path / "neu-det"
    shutil.copytree(fixture_root / "neu-det", root)
    victim = root / "IMAGES" / "scratches_3.jpg"
    victim.write_bytes(victim.read_bytes()[:200])
    message = _train_error(root, tmp_path)
    assert f"cannot decode image {victim}" in message and "corrupt or truncated" in message


@pytest.fixture(scope="module")
def small_checkpoint(fixture_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ckpt_run")
    train(compose_cfg("train", [f"data.root={fixture_root / 'neu-cls'}", *FAST], run_dir))
    return run_dir / "checkpoints" / "last.ckpt"


def test_resuming_from_a_checkpoint_of_another_model(fixture_root, small_checkpoint, tmp_path):
    message = _train_error(fixture_root / "neu-cls", tmp_path, f"ckpt_path={small_checkpoint}",
                           "model.net.widths=[8,16,32]")
    assert f"checkpoint {small_checkpoint} does not match the model" in message and "missing" in message


@pytest.mark.parametrize("kind", ["truncated", "foreign", "missing"])
def test_eval_rejects_bad_checkpoints(fixture_root, small_checkpoint, tmp_path, kind):
    path = tmp_path / f"{kind}.ckpt"
    if kind == "truncated":
        path.write_bytes(small_checkpoint.read_bytes()[:5000])
        expected = "cannot be read"
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
        expected = "was not written by neu-defects"
    else:
        expected = "does not exist"
    cfg = compose_cfg("eval", [f"ckpt_path={path}", f"data.root={fixture_root / 'neu-cls'}"], tmp_path / "run")
    with pytest.raises(UserError, match=expected):
        evaluate(cfg)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_eval_on_a_dataset_with_other_classes(fixture_root, small_checkpoint, tmp_path):
    cfg = compose_cfg("eval", [f"ckpt_path={small_checkpoint}", f"data.root={fixture_root / 'folders'}"],
                      tmp_path / "run")
    with pytest.raises(UserError, match="was trained on"):
        evaluate(cfg)
