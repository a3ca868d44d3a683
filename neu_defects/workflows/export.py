"""``export(cfg)``: a classifier, detector or anomaly checkpoint to ONNX or TFLite (``python -m neu_defects.export``).

The export checks itself before writing anything: ONNX Runtime's logits must match PyTorch's within
``parity.tolerance`` (max abs) on real test images of the checkpoint's split. A detector's graph
holds its post-processing; its boxes must match within ``parity.box_tolerance`` pixels, its
scores within ``parity.tolerance``, with equal labels and counts above ``parity.score_floor``. ``quantize=int8``
also writes a static int8 copy (``<output stem>.int8.onnx``), calibrated on training images, and
reports its test accuracy beside fp32's. An anomaly model's graph (batch 1) returns its score and
map, both checked within ``parity.tolerance``; its threshold travels in the record.

The format is ``format=`` or else the output's suffix (``.onnx``, ``.tflite``). A TFLite export
(``neu_defects.deploy.tflite``) is one precision per file, ``quantize=`` null (float32),
``dynamic_int8`` or ``int8`` (full integer, calibrated on training images); float32 must match
PyTorch's outputs within ``parity.tolerance`` in the LiteRT interpreter, an int8 model must keep
PyTorch's test accuracy within ``parity.int8_max_drop`` points. Its record is written beside it.
Anomaly nets export in float32 (their score and map checked alike); a detector does not convert.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from rich.progress import track

from neu_defects.core.checkpoint import load_module
from neu_defects.core.cli import log, quiet_libraries
from neu_defects.core.errors import UserError
from neu_defects.core.io import write_json
from neu_defects.deploy.anomaly import OnnxAnomaly, TorchAnomaly, anomaly_parity, anomaly_to_onnx
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
from neu_defects.deploy.tflite import QUANTIZATIONS as TFLITE_QUANTIZATIONS
from neu_defects.deploy.tflite import TfliteBackend, convert, save_tflite, tflite_record
from neu_defects.workflows.builders import load_checkpoint_and_data

SUFFIXES = {".onnx": "onnx", ".tflite": "tflite"}
QUANTIZATIONS = {"onnx": (None, "int8"), "tflite": TFLITE_QUANTIZATIONS}


def export_target(cfg: DictConfig) -> tuple[str, Path]:
    """(format, output path): ``format=`` if given, else the output's suffix; the output, else model.<format>."""
    chosen = cfg.format or (SUFFIXES.get(Path(cfg.output).suffix.lower()) if cfg.output else None) or "onnx"
    if chosen not in QUANTIZATIONS:
        raise UserError(f"format={chosen} is not supported: use format=onnx or format=tflite")
    output = Path(cfg.output) if cfg.output else Path(cfg.paths.output_dir) / f"model.{chosen}"
    if SUFFIXES.get(output.suffix.lower()) != chosen:
        raise UserError(f"output={output} must end in .{chosen} for format={chosen}")
    if cfg.quantize not in QUANTIZATIONS[chosen]:
        names = " or ".join(q for q in QUANTIZATIONS[chosen] if q)
        raise UserError(f"quantize={cfg.quantize} is not supported for format={chosen}: use quantize={names} "
                        "or leave it out")
    return chosen, output


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
    parity = box_parity([torch_detector.detect(x) for x in track(images, "parity: PyTorch", transient=True)],
                        [onnx_detector.detect(x) for x in track(images, "parity: ONNX Runtime", transient=True)],
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


def export_anomaly(cfg: DictConfig, ckpt_path: Path, output: Path) -> dict[str, Any]:
    """An anomaly checkpoint to ONNX (batch 1, threshold in its record), after score and map parity."""
    if cfg.quantize is not None:
        raise UserError(f"quantize={cfg.quantize}: int8 ONNX export covers classifiers only; leave quantize out "
                        "for an anomaly model")
    module, datamodule = load_checkpoint_and_data(cfg, task="anomaly")
    images, _ = split_arrays(datamodule, "test", cfg.parity.images)
    model = anomaly_to_onnx(module)
    parity = anomaly_parity(TorchAnomaly(module), OnnxAnomaly(model, output), images)
    if not max(parity["max_score_diff"], parity["max_map_diff"]) <= cfg.parity.tolerance:
        raise UserError(f"the ONNX export of {ckpt_path} disagrees with PyTorch on {len(images)} test images: "
                        f"{parity} > parity.tolerance={cfg.parity.tolerance}; nothing was written")
    save_onnx(model, output)
    report = {"checkpoint": str(ckpt_path), "output": str(output), "task": "anomaly", "parity": parity,
              "input_spec": module.input_spec, **module.deployment_record()}
    log.info("exported anomaly model %s -> %s; ONNX Runtime vs PyTorch on %d test images: scores within %.2g, "
             "maps within %.2g; threshold %.4g (%s)", ckpt_path, output, len(images), parity["max_score_diff"],
             parity["max_map_diff"], float(module.threshold), module.threshold_policy)
    write_json(Path(cfg.paths.output_dir) / "export.json", report)
    return report


def net_outputs(net, image: np.ndarray) -> list[np.ndarray]:
    """A net's eval output(s) for one (C, H, W) image: logits, or an anomaly net's (score, map)."""
    with torch.inference_mode():
        out = net.eval()(torch.from_numpy(np.ascontiguousarray(image))[None])
    return [t.float().numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]


def output_difference(net, backend: TfliteBackend, images: np.ndarray) -> float:
    worst = 0.0
    for image in track(images, description=f"parity on {len(images)} images", transient=True):
        for ref, got in zip(net_outputs(net, image), backend.run(image), strict=True):
            worst = max(worst, float(np.abs(ref - got.reshape(ref.shape)).max()))
    return worst


def export_tflite(cfg: DictConfig, ckpt_path: Path, output: Path) -> dict[str, Any]:
    """A classifier or anomaly checkpoint to one TFLite file and its record, after parity in LiteRT.

    A detector is converted only to name what stops it: its graph ends in NMS, whose output size
    depends on the data, which torch.export cannot trace.
    """
    task = model_task(ckpt_path)
    source = f"the {task} {ckpt_path}"
    if task == "detector":
        module = load_module(ckpt_path, task=task)
        convert(module.net, module.input_spec, source=source)
        raise UserError(f"{source} converts to TFLite, but its boxes are not checked against PyTorch yet: "
                        "use format=onnx")
    if task == "anomaly" and cfg.quantize is not None:
        raise UserError(f"quantize={cfg.quantize}: int8 TFLite export covers classifiers only; leave quantize out "
                        "for an anomaly model")
    module, datamodule = load_checkpoint_and_data(cfg, task=task)
    report: dict[str, Any] = {"checkpoint": str(ckpt_path), "output": str(output), "format": "tflite",
                              "task": task, "quantized": cfg.quantize, "input_spec": module.input_spec,
                              "class_names": module.class_names}
    if cfg.quantize is None:
        images, _ = split_arrays(datamodule, "test", cfg.parity.images)
        content = convert(module.net, module.input_spec, source=source)
        difference = output_difference(module.net, TfliteBackend(content), images)
        if not difference <= cfg.parity.tolerance:
            raise UserError(f"the TFLite export of {ckpt_path} disagrees with PyTorch: max |output difference| "
                            f"{difference:.3g} > parity.tolerance={cfg.parity.tolerance} on {len(images)} test "
                            "images; nothing was written")
        report.update(parity_images=len(images), parity_max_abs_diff=difference)
        summary = f"LiteRT vs PyTorch on {len(images)} test images: max |output difference| {difference:.2g}"
    else:
        calibration, _ = split_arrays(datamodule, "train", cfg.calibration_images)
        content = convert(module.net, module.input_spec, cfg.quantize, calibration, source=source)
        test_images, test_labels = split_arrays(datamodule, "test")
        torch_acc = accuracy(TorchBackend(module), test_images, test_labels)
        tflite_acc = accuracy(TfliteBackend(content), test_images, test_labels)
        change = 100 * (tflite_acc - torch_acc)
        if not -change <= cfg.parity.int8_max_drop:
            raise UserError(f"the TFLite {cfg.quantize} export of {ckpt_path} loses {-change:.2f} points of test "
                            f"accuracy ({tflite_acc:.4f} vs PyTorch {torch_acc:.4f} on {len(test_labels)} images) > "
                            f"parity.int8_max_drop={cfg.parity.int8_max_drop}; nothing was written")
        report.update(calibration_images=len(calibration) if cfg.quantize == "int8" else 0,
                      test_images=len(test_labels), test_acc_torch=torch_acc, test_acc_tflite=tflite_acc)
        summary = (f"test accuracy {tflite_acc:.4f} vs PyTorch {torch_acc:.4f} ({change:+.2f} points) on "
                   f"{len(test_labels)} images")
    save_tflite(content, tflite_record(module, cfg.quantize), output)
    report["bytes"] = len(content)
    log.info("exported %s -> %s (TFLite %s, %.1f kB); %s", ckpt_path, output, cfg.quantize or "float32",
             len(content) / 1e3, summary)
    write_json(Path(cfg.paths.output_dir) / "export.json", report)
    return report


def export(cfg: DictConfig) -> dict[str, Any]:
    quiet_libraries()
    L.seed_everything(cfg.seed, verbose=False)
    chosen, output = export_target(cfg)
    ckpt_path = Path(cfg.ckpt_path)
    if chosen == "tflite":
        return export_tflite(cfg, ckpt_path, output)
    task = model_task(ckpt_path)
    if task == "detector":
        return export_detector(cfg, ckpt_path, output)
    if task == "anomaly":
        return export_anomaly(cfg, ckpt_path, output)
    module, datamodule = load_checkpoint_and_data(cfg, task="classifier")
    images, labels = split_arrays(datamodule, "test", cfg.parity.images)

    model = to_onnx(module)
    torch_backend, onnx_backend = TorchBackend(module), OnnxBackend(model, output)
    difference = float(np.abs(predict_logits(torch_backend, images, progress="parity: PyTorch")
                              - predict_logits(onnx_backend, images, progress="parity: ONNX Runtime")).max())
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
