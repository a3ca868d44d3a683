"""TFLite export: conversion and its precisions, one-line failures, and on NEU parity, int8 accuracy, the
record beside the model, nothing written on failure, and the torch-free runtime answering as predict does."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from neu_defects.core.checkpoint import load_module
from neu_defects.core.errors import UserError
from neu_defects.data import NEU_CLASSES
from neu_defects.deploy.tflite import TfliteBackend, convert, quantized, sidecar_path
from neu_defects.models.nets import DefectCNN
from neu_defects.workflows.export import export, export_target
from neu_defects.workflows.predict import predict
from neu_defects.workflows.train import train

from .conftest import REPO, compose_cfg

SPEC = {"in_chans": 1, "image_size": 32, "mean": [0.5], "std": [0.25]}


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    net = DefectCNN(num_classes=6, in_chans=1, widths=[8, 16], convs_per_stage=1, dropout=0.0)
    with torch.no_grad():  # trained-looking batch norm statistics, so folding them is exercised
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_float32_conversion_matches_pytorch_and_int8_takes_int8_pixels():
    net = tiny_cnn()
    images = np.random.default_rng(0).normal(size=(8, 1, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        expected = net(torch.from_numpy(images)).numpy()
    content = convert(net, SPEC)
    fp32 = TfliteBackend(content)
    assert fp32.input["dtype"] == np.float32 and list(fp32.input["shape"]) == [1, 1, 32, 32]
    assert np.abs(fp32.logits(images) - expected).max() < 1e-5

    # convert() quantises its own float32 graph so; here the graph is shared to spare two conversions.
    full = TfliteBackend(quantized(content, "int8", calibration=images))
    assert full.input["dtype"] == np.int8 and full.outputs[0]["dtype"] == np.int8
    dynamic = TfliteBackend(quantized(content, "dynamic_int8"))
    assert dynamic.input["dtype"] == np.float32
    for backend in (full, dynamic):
        # Calibrated on these very images, the quantised logits stay near the float ones.
        assert np.abs(backend.logits(images) - expected).max() < 0.1 * np.abs(expected).max()


class BoxesAfterNms(nn.Module):
    """The end of a detector: non-maximum suppression, whose output size depends on the data."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        boxes = torch.cat([x[0, 0, :4, :2], x[0, 0, :4, :2] + 1], dim=1)
        return boxes[torchvision.ops.nms(boxes, x[0, 0, :4, 3], 0.5)]


def test_an_operator_that_does_not_convert_is_named_in_one_line():
    with pytest.raises(UserError, match=r"operator torch\.ops\.torchvision\.nms\.default is not supported") as err:
        convert(BoxesAfterNms(), {"in_chans": 1, "image_size": 8}, source="the toy detector")
    assert "\n" not in str(err.value) and "format=onnx" in str(err.value)
    with pytest.raises(UserError, match="quantize=float16 is not a TFLite precision"):
        convert(tiny_cnn(), SPEC, "float16")
    with pytest.raises(UserError, match="needs calibration images"):
        convert(tiny_cnn(), SPEC, "int8", calibration=np.zeros((0, 1, 32, 32), np.float32))


@pytest.mark.real_data
def test_an_anomaly_autoencoder_exports_with_its_score_and_map_checked(neu_root, tmp_path):
    ckpt = REPO / "tests" / "data" / "legacy_ff76304_autoencoder_pixel.ckpt"
    report = export(compose_cfg("export", [f"ckpt_path={ckpt}", f"data.root={neu_root}", "format=tflite",
                                           "parity.images=16"], tmp_path))
    assert report["task"] == "anomaly" and report["parity_images"] == 16
    assert report["parity_max_abs_diff"] <= 1e-4
    record = json.loads(sidecar_path(tmp_path / "model.tflite").read_text())
    assert record["task"] == "anomaly" and record["input_spec"] == load_module(ckpt).input_spec
    # Both outputs came back: the image score and the (1, 1, 16, 16) anomaly map.
    backend = TfliteBackend((tmp_path / "model.tflite").read_bytes())
    assert [tuple(d["shape"]) for d in backend.outputs] == [(1,), (1, 1, 16, 16)]
    with pytest.raises(UserError, match="int8 TFLite export covers classifiers only"):
        export(compose_cfg("export", [f"ckpt_path={ckpt}", f"data.root={neu_root}", "format=tflite",
                                      "quantize=int8"], tmp_path / "int8"))


@pytest.mark.parametrize(("overrides", "expected"), [
    (["output=/x/m.tflite"], ("tflite", "/x/m.tflite")),
    (["format=tflite"], ("tflite", "RUN/model.tflite")),
    (["format=tflite", "quantize=dynamic_int8"], ("tflite", "RUN/model.tflite")),
    ([], ("onnx", "RUN/model.onnx")),
    (["output=/x/m.onnx", "quantize=int8"], ("onnx", "/x/m.onnx")),
    (["format=onnx", "output=/x/m.tflite"], "must end in .onnx for format=onnx"),
    (["output=/x/m.pt"], "must end in .onnx for format=onnx"),
    (["format=coreml"], "format=coreml is not supported"),
    (["output=/x/m.onnx", "quantize=dynamic_int8"], "quantize=dynamic_int8 is not supported for format=onnx"),
    (["output=/x/m.tflite", "quantize=int4"], "use quantize=dynamic_int8 or int8"),
])
def test_format_comes_from_format_or_the_output_suffix(overrides, expected, tmp_path):
    cfg = compose_cfg("export", ["ckpt_path=x.ckpt", *overrides], tmp_path)
    if isinstance(expected, str):
        with pytest.raises(UserError, match=expected):
            export_target(cfg)
    else:
        chosen, output = export_target(cfg)
        assert (chosen, str(output)) == (expected[0], expected[1].replace("RUN", str(tmp_path)))


# Real NEU data from here on: a small CNN trained briefly, so int8 and parity have something to lose.
TINY = ["model.net.widths=[16,32,64]", "model.image_size=32", "trainer.max_epochs=2", "callbacks.progress_bar=null",
        "callbacks.gradcam=null"]


@pytest.fixture(scope="module")
def trained(neu_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tflite_run")
    train(compose_cfg("train", [f"data.root={neu_root}", "data.split=70_15_15", *TINY], run_dir))
    return run_dir / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def exports(neu_root, trained, tmp_path_factory):
    """The checkpoint exported at each precision: {quantize: (model path, report)}."""
    out = tmp_path_factory.mktemp("tflite_out")
    result = {}
    for quantize in ("null", "dynamic_int8", "int8"):
        cfg = compose_cfg("export", [f"ckpt_path={trained}", f"data.root={neu_root}", f"quantize={quantize}",
                                     f"output={out / f'{quantize}.tflite'}"], out / quantize)
        result[quantize] = (out / f"{quantize}.tflite", export(cfg))
    return result


@pytest.mark.real_data
@pytest.mark.slow
def test_float32_export_matches_pytorch_and_carries_its_record(exports, trained):
    path, report = exports["null"]
    assert report["parity_images"] == 64 and report["parity_max_abs_diff"] <= 1e-4
    record = json.loads(sidecar_path(path).read_text())
    module = load_module(trained)
    assert record["class_names"] == list(NEU_CLASSES) and record["task"] == "classifier"
    assert record["input_spec"] == module.input_spec and record["quantized"] is None
    assert record["format"] == "tflite" and "bilinear" in record["preprocessing"]
    assert report["bytes"] == path.stat().st_size


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["dynamic_int8", "int8"])
def test_int8_exports_keep_accuracy_and_are_about_4x_smaller(exports, quantize):
    path, report = exports[quantize]
    assert report["test_images"] == 270
    assert abs(report["test_acc_tflite"] - report["test_acc_torch"]) <= 0.005
    assert report["test_acc_torch"] < 1.0  # an imperfect model, so equal accuracies mean something
    assert exports["null"][0].stat().st_size / path.stat().st_size > 3.0
    assert json.loads(sidecar_path(path).read_text())["quantized"] == quantize
    if quantize == "int8":
        assert report["calibration_images"] == 128


@pytest.mark.real_data
@pytest.mark.slow
def test_export_that_fails_its_parity_check_writes_nothing(neu_root, trained, tmp_path):
    cfg = compose_cfg("export", [f"ckpt_path={trained}", f"data.root={neu_root}", "format=tflite",
                                 "parity.tolerance=-1"], tmp_path)
    with pytest.raises(UserError, match="disagrees with PyTorch"):
        export(cfg)
    assert not list(tmp_path.glob("*.tflite*")) and not (tmp_path / "export.json").exists()


def read_rows(path) -> dict[str, list[str]]:
    with open(path, newline="") as handle:
        header, *rows = list(csv.reader(handle))
    return {"header": header, **{row[0]: row[1:] for row in rows}}


@pytest.mark.real_data
@pytest.mark.slow
def test_the_runtime_on_the_export_answers_as_predict_on_the_checkpoint(neu_root, trained, exports, tmp_path):
    pattern = str(neu_root / "IMAGES" / "*_1?.jpg")  # 60 images, 10 of each class
    result = subprocess.run([sys.executable, "-m", "neu_defects_runtime", str(exports["null"][0]), pattern,
                             "--output", str(tmp_path / "runtime.csv"), "--threads", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    predict(compose_cfg("predict", [f"ckpt_path={trained}", f"input='{pattern}'", f"output={tmp_path / 'p.csv'}",
                                    "progress=false"], tmp_path))
    ours, theirs = read_rows(tmp_path / "runtime.csv"), read_rows(tmp_path / "p.csv")
    assert ours.keys() == theirs.keys() and len(ours) == 61
    for path in ours.keys() - {"header"}:
        assert ours[path][0] == theirs[path][0]
        assert np.abs(np.array(ours[path][1:], float) - np.array(theirs[path][1:], float)).max() <= 2e-6
