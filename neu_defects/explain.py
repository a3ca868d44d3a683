"""``python -m neu_defects.explain ckpt_path=PATH input=IMAGE_OR_DIR_OR_GLOB [method=…]``: CAMs for any images.

See ``neu_defects.workflows.explain`` for what the run directory gets.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from neu_defects.core.cli import exit_on_user_error
from neu_defects.workflows.explain import explain


@hydra.main(version_base="1.3", config_path="../conf", config_name="explain")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(explain)(cfg)


if __name__ == "__main__":
    main()
