"""``python -m neu_defects.export ckpt_path=PATH [output=model.onnx] [quantize=int8]``: a classifier to ONNX.

The export checks itself before writing anything: ONNX Runtime's logits must match PyTorch's within
``parity.tolerance`` (max abs) on real test images of the checkpoint's split. ``quantize=int8``
also writes a static int8 copy (``<output stem>.int8.onnx``), calibrated on training images, and
reports its test accuracy beside fp32's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
from omegaconf import DictConfig

from neu_defects.checkpoint import load_module
from neu_defects.cli import exit_on_user_error, log, quiet_libraries
from neu_defects.errors import UserError
from neu_defects.eval import checkpoint_datamodule
from neu_defects.inference import OnnxBackend, TorchBackend
from neu_defects.io_utils import write_json
from neu_defects.onnx_io import quantize_int8, save_onnx, to_onnx

FORMATS = ("onnx",)
QUANTIZATIONS = (None, "int8")


def split_arrays(datamodule, name: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A split's (unaugmented) model inputs (N, C, H, W) float32 and labels, in loader order."""
    dataset = datamodule.datasets[name]
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count == 0:
        raise UserError(f"the {name} split is empty: export needs real {name} images; check data.split")
    items = [dataset[i] for i in range(count)]
    return np.stack([x.numpy() for x, _ in items]), np.array([y for _, y in items])


def predict_logits(backend, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.concatenate([backend.logits(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def accuracy(backend, images: np.ndarray, labels: np.ndarray) -> float:
    return float((predict_logits(backend, images).argmax(1) == labels).mean())


def int8_copy_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.int8.onnx")


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
    module = load_module(ckpt_path, task="classifier")
    datamodule = checkpoint_datamodule(cfg, module, ckpt_path)
    datamodule.setup("test")
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(export)(cfg)


if __name__ == "__main__":
    main()
