"""``python -m neu_defects.export ckpt_path=PATH [output=model.onnx|model.tflite] [quantize=...]``: a
classifier, detector or anomaly model to ONNX, or a classifier or anomaly model to TFLite.

Nothing is written unless the exported model matches PyTorch on real test images. See
``neu_defects.workflows.export``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from neu_defects.core.cli import exit_on_user_error
from neu_defects.workflows.export import export


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(export)(cfg)


if __name__ == "__main__":
    main()
