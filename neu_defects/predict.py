"""``python -m neu_defects.predict ckpt_path=PATH input=IMAGE_OR_DIR_OR_GLOB output=preds.csv [backend=onnx|torch]``.

PATH is a checkpoint or an exported ``.onnx``; see ``neu_defects.workflows.predict``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from neu_defects.core.cli import exit_on_user_error
from neu_defects.workflows.predict import predict


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(predict)(cfg)


if __name__ == "__main__":
    main()
