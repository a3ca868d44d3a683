"""``export(cfg)``: a classifier or detector checkpoint to ONNX (``python -m neu_defects.export``).

The export checks itself before writing anything: ONNX Runtime's logits must match PyTorch's within
``parity.tolerance`` (max abs) on real test images of the checkpoint's split. A detector's graph
holds its post-processing; its boxes must match within ``parity.box_tolerance`` pixels, its
scores within ``parity.tolerance``, with equal labels and counts above ``parity.score_floor``. ``quantize=int8``
also writes a static int8 copy (``<output stem>.int8.onnx``), calibrated on training images, and
reports its test accuracy beside fp32's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from omegaconf import DictConfig

from neu_defects.core.cli import log, quiet_libraries
from neu_defects.core.errors import UserError
from neu_defects.core.io import write_json
from neu_defects.deploy.backends import (
    OnnxBackend,
    TorchBackend,
    accuracy,
    model_task,
    predict_logits,
    split_arrays,
)
from neu_defects.deploy.detection import OnnxDetector, TorchDetector, box_parity, detector_to_onnx
from neu_defects.deploy.onnx_io import quantize_int8, save_onnx, to_onnx
from neu_defects.workflows.builders import load_checkpoint_and_data

FORMATS = ("onnx",)
QUANTIZATIONS = (None, "int8")


def int8_copy_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.int8.onnx")


def export_detector(cfg: DictConfig, ckpt_path: Path, output: Path) -> dict[str, Any]:
    """A detector checkpoint to ONNX, post-processing in the graph, after a box parity check on test images."""
    if cfg.quantize is not None:
        raise UserError(f"quantize={cfg.quantize}: int8 export covers classifiers only; leave quantize out "
                        "for a detector")
    module, datamodule = load_checkpoint_and_data(cfg, task="detector")
    images, _ = split_arrays(datamodule, "test", cfg.parity.images)
    model = detector_to_onnx(module)
    torch_detector, onnx_detector = TorchDetector(module), OnnxDetector(model, output)
    parity = box_parity([torch_detector.detect(x) for x in images], [onnx_detector.detect(x) for x in images],
                        cfg.parity.score_floor)
    if (parity["count_mismatches"] or parity["label_mismatches"] or parity["max_box_diff"] > cfg.parity.box_tolerance
            or parity["max_score_diff"] > cfg.parity.tolerance):
        raise UserError(f"the ONNX export of {ckpt_path} disagrees with PyTorch on {len(images)} test images "
                        f"(detections scored >= {cfg.parity.score_floor}): {parity}; limits: boxes "
                        f"{cfg.parity.box_tolerance} px, scores {cfg.parity.tolerance}; nothing was written")
    save_onnx(model, output)
    report = {"checkpoint": str(ckpt_path), "output": str(output), "task": "detector", "parity": parity,
              "input_spec": module.input_spec, "class_names": module.class_names}
    log.info("exported detector %s -> %s; ONNX Runtime vs PyTorch on %d test images: boxes within %.2g px, "
             "scores within %.2g, labels and counts equal", ckpt_path, output, len(images),
             parity["max_box_diff"], parity["max_score_diff"])
    write_json(Path(cfg.paths.output_dir) / "export.json", report)
    return report


def export(cfg: DictConfig) -> dict[str, Any]:
    quiet_libraries()
    L.seed_everything(cfg.seed, verbose=False)
    if cfg.format not in FORMATS:
        raise UserError(f"format={cfg.format} is not supported: use format=onnx")
    if cfg.quantize not in QUANTIZATIONS:
        raise UserError(f"quantize={cfg.quantize} is not supported: use quantize=int8 or leave it out")
    output = Path(cfg.output)
    if output.suffix.lower() != ".onnx":
        raise UserError(f"output={output} must end in .onnx")
    ckpt_path = Path(cfg.ckpt_path)
    if model_task(ckpt_path) == "detector":
        return export_detector(cfg, ckpt_path, output)
    module, datamodule = load_checkpoint_and_data(cfg, task="classifier")
    images, labels = split_arrays(datamodule, "test", cfg.parity.images)

    model = to_onnx(module)
    torch_backend, onnx_backend = TorchBackend(module), OnnxBackend(model, output)
    difference = float(np.abs(predict_logits(torch_backend, images) - predict_logits(onnx_backend, images)).max())
    if not difference <= cfg.parity.tolerance:
        raise UserError(f"the ONNX export of {ckpt_path} disagrees with PyTorch: max |logit difference| "
                        f"{difference:.3g} > parity.tolerance={cfg.parity.tolerance} on {len(images)} test images; "
                        "nothing was written")
    save_onnx(model, output)
    report: dict[str, Any] = {"checkpoint": str(ckpt_path), "output": str(output), "parity_images": len(images),
                              "parity_max_abs_diff": difference, "input_spec": module.input_spec,
                              "class_names": module.class_names}
    log.info("exported %s -> %s; ONNX Runtime vs PyTorch on %d test images: max |logit difference| %.2g",
             ckpt_path, output, len(images), difference)

    if cfg.quantize == "int8":
        calibration, _ = split_arrays(datamodule, "train", cfg.calibration_images)
        quantized = quantize_int8(model, calibration)
        test_images, test_labels = split_arrays(datamodule, "test")
        fp32_acc = accuracy(onnx_backend, test_images, test_labels)
        int8_acc = accuracy(OnnxBackend(quantized, output), test_images, test_labels)
        int8_path = save_onnx(quantized, int8_copy_path(output))
        report.update(int8_output=str(int8_path), calibration_images=len(calibration), test_images=len(test_labels),
                      test_acc_fp32=fp32_acc, test_acc_int8=int8_acc)
        log.info("int8 copy %s (calibrated on %d training images): test accuracy %.4f, fp32 %.4f (change %+.2f points)",
                 int8_path, len(calibration), int8_acc, fp32_acc, 100 * (int8_acc - fp32_acc))
    write_json(Path(cfg.paths.output_dir) / "export.json", report)
    return report
