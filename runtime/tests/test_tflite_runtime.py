"""TFLite models in the runtime: the record read from the sidecar, float32 and full-integer (int8 I/O) graphs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import BIASES, CLASSES, SPEC, WEIGHTS, expected_probabilities, uniform_image
from tflite_fixture import INPUT_SCALE, INPUT_ZERO, OUTPUT_SCALE, OUTPUT_ZERO, toy_tflite

from neu_defects_runtime.cli import main
from neu_defects_runtime.models import open_model, sidecar_path

LEVELS = {"dark.png": 20, "grey.png": 128, "bright.png": 235}


def export(path: Path, full_integer: bool) -> Path:
    path.write_bytes(toy_tflite(SPEC["image_size"], WEIGHTS, BIASES, full_integer))
    record = {"task": "classifier", "class_names": CLASSES, "input_spec": SPEC, "format": "tflite",
              "quantized": "int8" if full_integer else None}
    sidecar_path(path).write_text(json.dumps(record))
    return path


def answers(model: Path, tmp_path: Path) -> dict[str, np.ndarray]:
    for name, level in LEVELS.items():
        uniform_image(tmp_path / "in" / name, level)
    assert main([str(model), str(tmp_path / "in"), "--output", str(tmp_path / "p.csv"), "--threads", "1"]) == 0
    with open(tmp_path / "p.csv", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    assert header == ["path", "pred", "confidence", *(f"p_{c}" for c in CLASSES)]
    return {Path(r[0]).name: np.array(r[3:], dtype=float) for r in rows}


def test_a_float32_model_answers_as_computed_by_hand(tmp_path):
    model = open_model(export(tmp_path / "toy.tflite", full_integer=False), threads=1)
    assert model.record["input_spec"] == SPEC and model.input["dtype"] == np.float32
    for name, probs in answers(tmp_path / "toy.tflite", tmp_path).items():
        assert np.abs(probs - expected_probabilities(LEVELS[name])).max() < 2e-6


def quantised_by_hand(level: int) -> np.ndarray:
    """The int8 graph's answer: the pixel and the logits each rounded to their int8 grid."""
    normalised = (level / 255 - 0.5) / 0.25
    pixel = (np.clip(np.rint(normalised / INPUT_SCALE) + INPUT_ZERO, -128, 127) - INPUT_ZERO) * INPUT_SCALE
    logits = WEIGHTS * pixel + BIASES
    logits = (np.clip(np.rint(logits / OUTPUT_SCALE) + OUTPUT_ZERO, -128, 127) - OUTPUT_ZERO) * OUTPUT_SCALE
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def test_a_full_integer_model_is_fed_int8_pixels_and_its_int8_logits_are_read_back(tmp_path):
    model = open_model(export(tmp_path / "toy_int8.tflite", full_integer=True), threads=1)
    assert model.input["dtype"] == np.int8 and model.outputs[0]["dtype"] == np.int8
    got = answers(tmp_path / "toy_int8.tflite", tmp_path)
    for name, probs in got.items():
        assert np.abs(probs - quantised_by_hand(LEVELS[name])).max() < 2e-6
        # Close to the float answer, yet not equal to it: the rounding did happen.
        assert 0 < np.abs(probs - expected_probabilities(LEVELS[name])).max() < 0.05


def test_a_broken_record_or_model_is_one_line(tmp_path, capsys):
    model = export(tmp_path / "toy.tflite", full_integer=False)
    uniform_image(tmp_path / "x.png", 10)
    sidecar_path(model).write_text(json.dumps({"task": "classifier", "class_names": CLASSES}))
    assert main([str(model), str(tmp_path / "x.png"), "-o", str(tmp_path / "p.csv")]) == 2
    assert "lacks input_spec" in capsys.readouterr().err
    sidecar_path(model).write_text("{not json")
    assert main([str(model), str(tmp_path / "x.png"), "-o", str(tmp_path / "p.csv")]) == 2
    assert "cannot read the record" in capsys.readouterr().err
    export(model, full_integer=False)
    model.write_bytes(b"TFL3 but not a model")
    assert main([str(model), str(tmp_path / "x.png"), "-o", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be loaded" in err[0]
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("threads", ["0", "2"])
def test_threads_do_not_change_the_answer(tmp_path, threads):
    model = export(tmp_path / "toy.tflite", full_integer=False)
    uniform_image(tmp_path / "x.png", 200)
    assert main([str(model), str(tmp_path / "x.png"), "-o", str(tmp_path / "p.csv"), "--threads", threads]) == 0
    with open(tmp_path / "p.csv", newline="") as handle:
        row = list(csv.reader(handle))[1]
    assert np.abs(np.array(row[3:], dtype=float) - expected_probabilities(200)).max() < 2e-6
