"""The TFLite (LiteRT) form of a model: conversion with litert-torch, int8 variants, the interpreter.

A ``.tflite`` export is a batch-1 graph taking the float32 NCHW input that training fed the net (a
full-integer model takes it quantised to int8, the interpreter's input scale says how) and
returning logits. Its record, the ONNX export's (task, class names, ``input_spec``, preprocessing)
plus ``format`` and ``quantized``, sits beside it as ``<model>.tflite.json``, which a person or the
runtime reads without parsing the flatbuffer; the two files travel together.

Precisions (``quantize=``): ``None`` float32; ``dynamic_int8``, int8 weights with activations
quantised on the fly; ``int8``, full integer (int8 input, weights, activations and output) with
ranges calibrated on training images. Both quantise the converted float32 graph with
ai-edge-quantizer (per-channel int8 weights).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neu_defects.core.errors import UserError
from neu_defects.core.io import atomic_write_bytes, write_json
from neu_defects.deploy.onnx_io import onnx_record

QUANTIZATIONS = (None, "dynamic_int8", "int8")
INSTALL_HINT = "pip install -e '.[tflite]'"


def sidecar_path(model: str | Path) -> Path:
    """``model.tflite`` -> ``model.tflite.json`` (the runtime looks for the record there)."""
    model = Path(model)
    return model.with_name(model.name + ".json")


def tflite_record(module, quantize: str | None) -> dict[str, Any]:
    return {**onnx_record(module), "format": "tflite", "quantized": quantize}


def _litert():
    try:
        import litert_torch
    except ImportError as err:
        raise UserError(f"format=tflite needs litert-torch ({err.name} is missing): {INSTALL_HINT}") from err
    # Its progress lines go to the console on every conversion; the export reports its own outcome.
    litert_torch.config.show_progress = False
    return litert_torch


OP_PATTERNS = (r"(torchvision::\w+|aten::\w+(?:\.\w+)?|torch\.ops\.[\w.]+)", r"'(tfl\.\w+|stablehlo\.\w+)'",
               r"\b(tfl\.\w+|stablehlo\.\w+)\b")
# torch.export names the call whose output size depends on the data ("Caused by: (file:line in name)").
DATA_DEPENDENT = re.compile(r"Caused by: \((\S+) in (\w+)\)")


def unconverted_op(err: BaseException) -> str:
    """The operator a failed conversion names, else the first line of its message."""
    text = f"{type(err).__name__}: {err}"
    found = DATA_DEPENDENT.search(text)
    if found:
        return f"{found.group(2)} ({found.group(1)}), whose output size depends on the data,"
    for pattern in OP_PATTERNS:
        found = re.search(pattern, text)
        if found:
            return found.group(1)
    return text.splitlines()[0][:200]


@contextlib.contextmanager
def quiet():
    """Conversion and quantisation print, warn and log (on the root logger) their own internals; none
    of it helps a user, who gets the export's own one-line outcome."""
    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        root.setLevel(max(level, logging.WARNING))
        try:
            yield
        finally:
            root.setLevel(level)


def convert(net: torch.nn.Module, spec: dict[str, Any], quantize: str | None = None,
            calibration: np.ndarray | None = None, source: str = "the model") -> bytes:
    """The net as a batch-1 TFLite flatbuffer at ``quantize`` precision (``int8`` needs ``calibration``)."""
    if quantize not in QUANTIZATIONS:
        raise UserError(f"quantize={quantize} is not a TFLite precision: use dynamic_int8, int8 or leave it out")
    if quantize == "int8" and (calibration is None or not len(calibration)):
        raise UserError("quantize=int8 needs calibration images: set calibration_images to a positive count")
    litert_torch = _litert()
    example = (torch.zeros(1, spec["in_chans"], spec["image_size"], spec["image_size"]),)
    try:
        with quiet():
            content = litert_torch.convert(net.eval(), example).model_content()
    except Exception as err:  # torch.export, the lowering and the MLIR converter each raise their own types
        raise UserError(f"{source} does not convert to TFLite: operator {unconverted_op(err)} is not supported "
                        "by litert-torch; export it with format=onnx instead") from err
    return content if quantize is None else quantized(content, quantize, calibration)


def quantized(content: bytes, quantize: str, calibration: np.ndarray | None = None) -> bytes:
    """An int8 copy of a float32 flatbuffer, by ai-edge-quantizer (a dependency of litert-torch).

    Quantising the converted graph rather than the PyTorch one covers every net that converts:
    litert-torch's PyTorch 2 export quantisation stopped at the CNN's in-place ReLUs (static) and
    gave 17% accuracy (dynamic) on the same checkpoint. Calibration keeps each tensor's
    extreme values over all images; the quantizer's default, a moving average of per-image
    extremes, clips logits to a fraction of their range and cost the NEU CNN 11 points of accuracy.
    """
    from ai_edge_quantizer import recipe

    plan = recipe.dynamic_wi8_afp32() if quantize == "dynamic_int8" else recipe.static_wi8_ai8()
    try:
        return _quantize(content, plan, calibration if quantize == "int8" else None)
    except Exception as err:  # the quantizer raises plain ValueErrors and its own types
        raise UserError(f"the TFLite model does not quantize to {quantize}: {unconverted_op(err)}; export it "
                        "in float32 (leave quantize out) or with format=onnx quantize=int8") from err


def _quantize(content: bytes, plan, calibration: np.ndarray | None) -> bytes:
    from ai_edge_quantizer import calibrator, quantizer, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    with quiet():
        qsvs = None
        if calibration is not None:
            manager = recipe_manager.RecipeManager()
            manager.load_quantization_recipe(plan)
            signature, name = _signature_input(content)
            extremes = calibrator.Calibrator(content, num_threads=1, qsv_update_func=qsv_utils.min_max_update)
            extremes.calibrate({signature: [{name: np.ascontiguousarray(x[None], np.float32)} for x in calibration]},
                               manager)
            qsvs = extremes.get_model_qsvs()
        result = quantizer.Quantizer(content, plan).quantize(qsvs, enable_progress_report=False)
    return bytes(result.quantized_model)


def _signature_input(content: bytes) -> tuple[str, str]:
    """The (signature, input name) a calibration sample is keyed by."""
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_content=content).get_signature_list()
    signature = next(iter(signatures))
    return signature, signatures[signature]["inputs"][0]


class TfliteBackend:
    """A TFLite flatbuffer in the LiteRT interpreter, answering ``logits(batch)`` as the other backends do."""

    name = "tflite"

    def __init__(self, content: bytes, threads: int = 1):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise UserError(f"running a TFLite model needs ai-edge-litert ({err.name} is missing): "
                            f"{INSTALL_HINT}") from err
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.interpreter = Interpreter(model_content=content, num_threads=threads or cores)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()

    def run(self, image: np.ndarray) -> list[np.ndarray]:
        """One (C, H, W) float32 image -> the graph's outputs, dequantised to float32."""
        x = image[None].astype(np.float32)
        scale, zero = self.input["quantization"]
        if self.input["dtype"] != np.float32:
            info = np.iinfo(self.input["dtype"])
            x = np.clip(np.rint(x / scale) + zero, info.min, info.max).astype(self.input["dtype"])
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        outputs = []
        for detail in self.outputs:
            y = self.interpreter.get_tensor(detail["index"])
            if y.dtype != np.float32:
                scale, zero = detail["quantization"]
                y = (y.astype(np.float32) - zero) * np.float32(scale)
            outputs.append(y)
        return outputs

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return np.concatenate([self.run(x)[0] for x in batch])


def save_tflite(content: bytes, record: dict[str, Any], path: str | Path) -> Path:
    """The record beside the model, each file whole; the model last, so a model never lacks its record."""
    path = Path(path)
    sidecar = write_json(sidecar_path(path), record)
    try:
        return atomic_write_bytes(path, content)
    except BaseException:
        sidecar.unlink(missing_ok=True)
        raise

