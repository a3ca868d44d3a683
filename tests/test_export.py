"""ONNX export and predict on real NEU images: parity, metadata, the int8 copy, predict against eval."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from neu_defects.core.errors import UserError
from neu_defects.data import NEU_CLASSES
from neu_defects.deploy.backends import OnnxBackend
from neu_defects.workflows.evaluate import evaluate
from neu_defects.workflows.export import export
from neu_defects.workflows.predict import predict
from neu_defects.workflows.train import train

from .conftest import REPO, compose_cfg

# Every test here uses a CNN trained on NEU by the module's fixture.
pytestmark = [pytest.mark.real_data, pytest.mark.slow]
TINY = ["model.net.widths=[8,16,32]", "model.image_size=32", "trainer.max_epochs=2", "callbacks.progress_bar=null",
        "callbacks.gradcam=null"]


@pytest.fixture(scope="module")
def trained(neu_root, tmp_path_factory):
    """A small CNN trained briefly on NEU-DET (70/15/15): far from perfect, so disagreements would show."""
    run_dir = tmp_path_factory.mktemp("export_run")
    train(compose_cfg("train", [f"data.root={neu_root}", "data.split=70_15_15", *TINY], run_dir))
    return run_dir, run_dir / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def exported(neu_root, trained, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("export_out")
    cfg = compose_cfg("export", [f"ckpt_path={trained[1]}", f"data.root={neu_root}", "quantize=int8",
                                 f"output={out_dir / 'model.onnx'}"], out_dir)
    return out_dir, export(cfg)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_export_matches_pytorch_on_real_test_images(exported):
    out_dir, report = exported
    assert report["parity_images"] == 64
    assert report["parity_max_abs_diff"] <= 1e-4
    assert json.loads((out_dir / "export.json").read_text())["parity_max_abs_diff"] == report["parity_max_abs_diff"]


def test_onnx_metadata_records_preprocessing_and_classes(exported, trained):
    from neu_defects.core.checkpoint import load_module

    out_dir, _ = exported
    model = onnx.load(out_dir / "model.onnx")
    record = json.loads({p.key: p.value for p in model.metadata_props}["neu_defects"])
    assert record["class_names"] == list(NEU_CLASSES)
    assert record["input_spec"] == load_module(trained[1]).input_spec == {
        "in_chans": 1, "mean": [0.5], "std": [0.25], "image_size": 32}
    assert "bilinear" in record["preprocessing"]
    # Weights live inside the file and the batch dimension is free.
    assert not list(out_dir.glob("*.data"))
    backend = OnnxBackend(out_dir / "model.onnx", out_dir / "model.onnx")
    for n in (1, 5):
        assert backend.logits(np.zeros((n, 1, 32, 32), np.float32)).shape == (n, 6)


def test_int8_copy_is_quantized_and_keeps_accuracy(exported):
    out_dir, report = exported
    model = onnx.load(out_dir / "model.int8.onnx")
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    assert json.loads(model.metadata_props[0].value)["quantized"] == "int8"
    assert report["test_images"] == 270
    assert abs(report["test_acc_int8"] - report["test_acc_fp32"]) <= 0.02


def test_export_that_fails_its_parity_check_writes_nothing(neu_root, trained, tmp_path):
    cfg = compose_cfg("export", [f"ckpt_path={trained[1]}", f"data.root={neu_root}", "parity.tolerance=-1"], tmp_path)
    with pytest.raises(UserError, match="disagrees with PyTorch"):
        export(cfg)
    assert not list(tmp_path.glob("*.onnx*")) and not (tmp_path / "export.json").exists()


@pytest.fixture(scope="module")
def evaluated(neu_root, trained, tmp_path_factory):
    """eval of the checkpoint: its metrics, per-image probabilities and the test files in loader order."""
    eval_metrics, objects = evaluate(compose_cfg("eval", [f"ckpt_path={trained[1]}", f"data.root={neu_root}",
                                                          "callbacks.progress_bar=null"], tmp_path_factory.mktemp("eval")))
    eval_probs, targets = objects["model"].test_predictions()
    datamodule = objects["datamodule"]
    files = [datamodule.index.abspath(datamodule.index.samples[i]) for i in datamodule.dataset_indices["test"]]
    return eval_metrics, eval_probs, targets, files


@pytest.mark.parametrize("source", ["checkpoint", "onnx"])
def test_predict_matches_eval_on_the_test_split(trained, exported, evaluated, tmp_path, source):
    eval_metrics, eval_probs, targets, files = evaluated
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for f in files:
        (inputs / f.name).symlink_to(f)

    model = trained[1] if source == "checkpoint" else exported[0] / "model.onnx"
    out = predict(compose_cfg("predict", [f"ckpt_path={model}", f"input={inputs}", f"output={tmp_path / 'p.csv'}",
                                          "progress=false"], tmp_path))
    rows = {row["path"].split("/")[-1]: row for row in read_csv(out["output"])}
    assert list(read_csv(out["output"])[0]) == ["path", "pred", "confidence", *(f"p_{c}" for c in NEU_CLASSES)]
    probs = np.array([[float(rows[f.name][f"p_{c}"]) for c in NEU_CLASSES] for f in files])
    assert np.abs(probs - eval_probs.numpy()).max() < 2e-5
    preds = [NEU_CLASSES.index(rows[f.name]["pred"]) for f in files]
    assert np.mean(np.array(preds) == targets.numpy()) == pytest.approx(eval_metrics["test/acc"], abs=1e-6)
    assert eval_metrics["test/acc"] < 1.0  # an imperfect model, so matching accuracies mean something


def test_predict_reads_16bit_and_rgb_alike_and_skips_unreadable_files(neu_root, trained, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    original = neu_root / "IMAGES" / "scratches_12.jpg"
    shutil.copy(original, inputs / "gray.jpg")
    pixels = np.asarray(Image.open(original).convert("L"))
    Image.fromarray(pixels.astype(np.uint16) * 257).save(inputs / "sixteen_bit.png")
    Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(inputs / "rgb.png")
    (inputs / "truncated.jpg").write_bytes(original.read_bytes()[:300])
    (inputs / "not_an_image.png").write_text("hello")

    result = subprocess.run([sys.executable, "-m", "neu_defects.predict", f"ckpt_path={trained[1]}",
                             f"input={inputs}", f"output={tmp_path / 'p.csv'}", "progress=false",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row["path"].split("/")[-1]: row for row in read_csv(tmp_path / "p.csv")}
    assert set(rows) == {"gray.jpg", "sixteen_bit.png", "rgb.png"}
    assert Image.open(inputs / "sixteen_bit.png").mode.startswith("I")
    for name in ("sixteen_bit.png", "rgb.png"):
        assert {k: v for k, v in rows[name].items() if k != "path"} == \
               {k: v for k, v in rows["gray.jpg"].items() if k != "path"}
    log = result.stdout + result.stderr
    for bad in ("truncated.jpg", "not_an_image.png"):
        assert f"skipped cannot decode image {inputs / bad}" in log


def test_predict_errors_are_one_line(trained, exported, tmp_path):
    onnx_path = exported[0] / "model.onnx"
    stripped = onnx.load(onnx_path)
    del stripped.metadata_props[:]
    onnx.save(stripped, tmp_path / "foreign.onnx")
    (tmp_path / "bad.png").write_text("no")
    cases = [([f"ckpt_path={onnx_path}", "backend=torch", f"input={tmp_path}"], "runs with backend=onnx only"),
             ([f"ckpt_path={tmp_path / 'foreign.onnx'}", f"input={tmp_path}"], "has no 'neu_defects' metadata"),
             ([f"ckpt_path={trained[1]}", f"input={tmp_path / 'bad.png'}"], "none of the 1 files"),
             ([f"ckpt_path={trained[1]}", f"input={tmp_path / 'nothing_*.png'}"], "matches no files")]
    for overrides, expected in cases:
        with pytest.raises(UserError, match=expected):
            predict(compose_cfg("predict", [*overrides, f"output={tmp_path / 'p.csv'}"], tmp_path))
        assert not (tmp_path / "p.csv").exists()
