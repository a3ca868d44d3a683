"""Exported models in their interpreters: a TFLite model in LiteRT, an ONNX model in ONNX Runtime.

Every export of ``python -m neu_defects.export`` carries a record (``task``, ``class_names``,
``input_spec``): an ONNX model in its metadata under ``neu_defects``, a TFLite model in a sidecar
``<model>.json`` beside it. Both backends answer alike: a classifier's ``logits`` for a
(N, C, S, S) float32 batch, a detector's ``detect`` for one (C, S, S) image, whose boxes are in the
S x S frame. The interpreters are imported when a model of their kind is opened, so the runtime
installs with either extra alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from neu_defects_runtime.errors import InputError

METADATA_KEY = "neu_defects"
INPUT = "image"
DETECTION_OUTPUTS = ("boxes", "scores", "labels")
TASKS = ("classifier", "detector")


def sidecar_path(model: str | Path) -> Path:
    """Where a TFLite model's record lives: ``model.tflite`` -> ``model.tflite.json``."""
    model = Path(model)
    return model.with_name(model.name + ".json")


def check_record(record: Any, source: Path) -> dict[str, Any]:
    missing = [k for k in ("class_names", "input_spec") if not isinstance(record, dict) or k not in record]
    if missing:
        raise InputError(f"the record of {source} lacks {', '.join(missing)}: export the model again with "
                         "python -m neu_defects.export")
    task = record.get("task", "classifier")
    if task not in TASKS:
        raise InputError(f"{source} is a {task} export; this runtime runs {' and '.join(TASKS)} exports")
    return {**record, "task": task}


def usable_cores() -> int:
    """The cores this process may run on: under taskset or a container's CPU set, fewer than the
    machine has, and more threads than cores makes the interpreters spin against each other."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_threads(threads: int) -> int:
    """``0`` means every usable core; a negative count is a mistake."""
    if threads < 0:
        raise InputError(f"--threads {threads}: pass a positive number of threads, or 0 for every core")
    return threads or usable_cores()


def missing_extra(kind: str, extra: str, err: ImportError) -> InputError:
    return InputError(f"running a {kind} model needs {err.name}: pip install 'neu-defects-runtime[{extra}]'")


class OnnxModel:
    backend = "onnx"

    def __init__(self, path: Path, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise missing_extra("ONNX", "onnx", err) from err
        options = ort.SessionOptions()
        options.intra_op_num_threads = resolve_threads(threads)
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ONNX Runtime raises its own (Fail, InvalidGraph, ...) types
            raise InputError(f"ONNX model {path} cannot be loaded ({str(err).splitlines()[0]}): export it again "
                             "with python -m neu_defects.export") from err
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise InputError(f"ONNX model {path} has no '{METADATA_KEY}' metadata, so its preprocessing and classes "
                             "are unknown: export it with python -m neu_defects.export")
        self.record = check_record(json.loads(raw), path)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {INPUT: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def detect(self, image: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.session.run(list(DETECTION_OUTPUTS), {INPUT: np.ascontiguousarray(image[None], np.float32)})
        return dict(zip(DETECTION_OUTPUTS, outputs, strict=True))


def quantize(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """A float input into an integer tensor's scale (a full-integer model takes int8 pixels)."""
    scale, zero_point = detail["quantization"]
    if detail["dtype"] == np.float32 or not scale:
        return values.astype(detail["dtype"], copy=False)
    info = np.iinfo(detail["dtype"])
    return np.clip(np.rint(values / scale) + zero_point, info.min, info.max).astype(detail["dtype"])


def dequantize(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if values.dtype == np.float32 or not scale:
        return values.astype(np.float32, copy=False)
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


class TfliteModel:
    """A batch-1 TFLite graph (NCHW float32 or int8 input): a batch runs image by image."""

    backend = "tflite"

    def __init__(self, path: Path, threads: int = 0):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise missing_extra("TFLite", "tflite", err) from err
        sidecar = sidecar_path(path)
        if not sidecar.is_file():
            raise InputError(f"TFLite model {path} has no record beside it ({sidecar.name} is missing), so its "
                             "preprocessing and classes are unknown: copy the .json that python -m "
                             "neu_defects.export wrote with it")
        try:
            record = json.loads(sidecar.read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read the record {sidecar} ({err}): copy it again from the export") from err
        self.record = check_record(record, sidecar)
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=resolve_threads(threads))
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise InputError(f"TFLite model {path} cannot be loaded ({str(err).splitlines()[0]}): export it "
                             "again with python -m neu_defects.export") from err
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()

    def run(self, image: np.ndarray) -> list[np.ndarray]:
        self.interpreter.set_tensor(self.input["index"], quantize(image[None], self.input))
        self.interpreter.invoke()
        return [dequantize(self.interpreter.get_tensor(d["index"]), d) for d in self.outputs]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return np.concatenate([self.run(np.asarray(x, dtype=np.float32))[0] for x in batch])

    def detect(self, image: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(DETECTION_OUTPUTS, self.run(np.asarray(image, dtype=np.float32)), strict=True))


BACKENDS = {".tflite": TfliteModel, ".onnx": OnnxModel}


def open_model(path: str | Path, threads: int = 0) -> TfliteModel | OnnxModel:
    """The exported model at ``path`` (``.tflite`` or ``.onnx``) with its record."""
    path = Path(path)
    kind = BACKENDS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"model {path} is neither .tflite nor .onnx: pass a model that python -m "
                         "neu_defects.export wrote")
    if not path.is_file():
        raise InputError(f"model {path} does not exist: copy the export (and, for .tflite, its .json) here")
    return kind(path, threads)
