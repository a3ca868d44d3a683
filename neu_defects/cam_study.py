"""``python -m neu_defects.cam_study ckpt_path=PATH``: which CAM method and layer localise defects best.

Every method x target layer x smoothing, scored against the NEU-DET boxes; see
``neu_defects.workflows.cam_study``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from neu_defects.core.cli import exit_on_user_error
from neu_defects.workflows.cam_study import run_study


@hydra.main(version_base="1.3", config_path="../conf", config_name="cam_study")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(run_study)(cfg)


if __name__ == "__main__":
    main()
