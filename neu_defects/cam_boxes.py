"""``python -m neu_defects.cam_boxes ckpt_path=PATH``: boxes from a classifier's CAMs, scored by COCO mAP.

Weak supervision (image labels only) beside the detector, on the same test split with the same
metric; see ``neu_defects.workflows.cam_boxes``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from neu_defects.core.cli import run_task
from neu_defects.workflows.cam_boxes import cam_boxes


@hydra.main(version_base="1.3", config_path="../conf", config_name="cam_boxes")
def main(cfg: DictConfig) -> None:
    run_task(cam_boxes, cfg)


if __name__ == "__main__":
    main()
