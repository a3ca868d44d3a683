"""The ONNX form of a classifier: conversion with its preprocessing recorded, int8 copies, sessions.

An exported model carries, in its metadata under ``neu_defects``, what a deployment needs to feed it
exactly as training did (the module's ``input_spec``: channels, size, normalisation) and what its
outputs mean (class names). The graph takes a float32 ``image`` batch (N, C, H, W, any N) and
returns ``logits``.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from neu_defects.core.errors import UserError
from neu_defects.core.io import atomic_write_bytes

METADATA_KEY = "neu_defects"
INPUT, OUTPUT = "image", "logits"
PREPROCESSING = ("decode to uint8 (16-bit by its range), gray or RGB as in_chans; resize to image_size x "
                 "image_size with Pillow's bilinear filter; (pixel / 255 - mean) / std; NCHW float32")


def onnx_record(module) -> dict[str, Any]:
    return {"task": module.task, "class_names": list(module.class_names), "input_spec": module.input_spec,
            "preprocessing": PREPROCESSING, **module.deployment_record()}


def to_onnx(module) -> onnx.ModelProto:
    """The module's net as an ONNX model with a dynamic batch dimension and the record in its metadata."""
    spec = module.input_spec
    net = module.net.eval()
    example = torch.zeros(2, spec["in_chans"], spec["image_size"], spec["image_size"])
    # The exporter prints its stages and warns about its own internals; neither helps a user.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (example,), input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
    return with_record(program.model_proto, module, f"{module.task}: {', '.join(module.class_names)}")


def with_record(model: onnx.ModelProto, module, description: str) -> onnx.ModelProto:
    """The exported ``model`` carrying ``module``'s record in its metadata, and a one-line description."""
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(onnx_record(module))
    model.doc_string = f"neu-defects {description}"
    return model


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write the model whole (weights inside the file, not beside it) or not at all."""
    return atomic_write_bytes(path, model.SerializeToString())


class CalibrationImages:
    """ONNX Runtime's calibration reader over (N, C, H, W) float32 images, in batches."""

    def __init__(self, images: np.ndarray, batch_size: int = 16):
        self.batches = iter([images[i:i + batch_size] for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT: batch}


def quantize_int8(model: onnx.ModelProto, calibration: np.ndarray) -> onnx.ModelProto:
    """A static int8 copy (QDQ, per-channel weights) calibrated on ``calibration`` images.

    Static quantisation with calibrated activations is what makes convolutions run in int8; dynamic
    quantisation would quantise only the weights of convolutions and leave them slower than fp32.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationImages, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="neu_int8_") as tmp:
        fp32, prepared, int8 = (Path(tmp) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(model, fp32)
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(str(prepared), str(int8), Reader(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        quantized = onnx.load(int8)
    del quantized.metadata_props[:]
    for entry in model.metadata_props:
        quantized.metadata_props.add().CopyFrom(entry)
    record = json.loads(model.metadata_props[0].value) if model.metadata_props else {}
    quantized.metadata_props[0].value = json.dumps({**record, "quantized": "int8"})
    return quantized


def ort_session(model: str | Path | bytes | onnx.ModelProto, threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime CPU session; ``threads=0`` lets ONNX Runtime use every core."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise UserError(f"ONNX model {source} does not exist: pass the output of python -m neu_defects.export")
    try:
        return ort.InferenceSession(str(source) if isinstance(source, Path) else source, options,
                                    providers=["CPUExecutionProvider"])
    except Exception as err:  # ONNX Runtime raises its own (Fail, InvalidGraph, ...) types
        raise UserError(f"ONNX model {source if not isinstance(source, bytes) else '(in memory)'} cannot be "
                        f"loaded ({str(err).splitlines()[0]}): export it again with python -m neu_defects.export") from err


def task_session(model, source: str | Path, task: str, threads: int = 0) -> tuple[ort.InferenceSession, dict[str, Any]]:
    """A session of an export of ``task`` and its record; an export of another task is refused."""
    session = ort_session(model, threads)
    record = read_record(session, source)
    if record.get("task") != task:
        raise UserError(f"ONNX model {source} holds a model of task {record.get('task')!r}, not {task!r}: "
                        f"pass the .onnx that neu_defects.export wrote for a {task} checkpoint")
    return session, record


def read_record(session: ort.InferenceSession, source: str | Path) -> dict[str, Any]:
    """The neu-defects record in an exported model's metadata."""
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise UserError(f"ONNX model {source} has no '{METADATA_KEY}' metadata, so its preprocessing and classes "
                        "are unknown: export it with python -m neu_defects.export")
    return json.loads(raw)
