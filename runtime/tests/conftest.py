"""Tiny exports built with onnx's helper API (no torch), and images whose right answers are known.

The classifier averages its one normalised channel and scores class k by ``WEIGHTS[k] * mean +
BIASES[k]``, so a uniform image of gray level v has logits computable by hand: dark images go to
class 0, bright ones to class 5. The detector returns fixed boxes in its input frame, so the
scaling to the original image's pixels can be checked exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
SPEC = {"in_chans": 1, "image_size": 16, "mean": [0.5], "std": [0.25]}
WEIGHTS = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5], dtype=np.float32)
BIASES = np.array([0.1, 0.0, 0.2, 0.0, -0.1, 0.0], dtype=np.float32)
DETECTOR_SPEC = {"in_chans": 3, "image_size": 32, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
BOXES = np.array([[1, 2, 9, 10], [16, 8, 30, 31], [0, 0, 4, 4]], dtype=np.float32)
SCORES = np.array([0.5, 0.9, 0.2], dtype=np.float32)
LABELS = np.array([2, 5, 0], dtype=np.int64)


def save(model: onnx.ModelProto, path: Path, record: dict | None) -> Path:
    if record is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = "neu_defects", json.dumps(record)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def classifier_model() -> onnx.ModelProto:
    size = SPEC["image_size"]
    nodes = [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["mean", "weights"], ["scaled"]),
             helper.make_node("Add", ["scaled", "biases"], ["logits"])]
    graph = helper.make_graph(
        nodes, "toy_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(CLASSES)])],
        initializer=[numpy_helper.from_array(WEIGHTS[None], "weights"), numpy_helper.from_array(BIASES, "biases")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def detector_model() -> onnx.ModelProto:
    size = DETECTOR_SPEC["image_size"]
    nodes = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))
             for name, value in (("boxes", BOXES), ("scores", SCORES), ("labels", LABELS))]
    graph = helper.make_graph(
        nodes, "toy_detector", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [len(BOXES), 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [len(BOXES)]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, [len(BOXES)])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def expected_probabilities(level: int) -> np.ndarray:
    """By hand: a uniform image of ``level`` normalises to (level / 255 - 0.5) / 0.25 everywhere."""
    logits = WEIGHTS * ((level / 255 - 0.5) / 0.25) + BIASES
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def uniform_image(path: Path, level: int, size: tuple[int, int] = (40, 30), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, level if mode == "L" else (level,) * 3).save(path)
    return path


@pytest.fixture
def classifier(tmp_path) -> Path:
    return save(classifier_model(), tmp_path / "classifier.onnx",
                {"task": "classifier", "class_names": CLASSES, "input_spec": SPEC})


@pytest.fixture
def detector(tmp_path) -> Path:
    return save(detector_model(), tmp_path / "detector.onnx",
                {"task": "detector", "class_names": CLASSES, "input_spec": DETECTOR_SPEC})


@pytest.fixture
def unlabelled(tmp_path) -> Path:
    return save(classifier_model(), tmp_path / "foreign.onnx", None)
