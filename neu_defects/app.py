"""``python -m neu_defects.app ckpt_path=PATH [anomaly_ckpt_path=PATH] [detector_ckpt_path=PATH]``: the inspection page.

A local web page (Gradio) that shows what each model given says about an image; see
``neu_defects.workflows.app``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from neu_defects.core.cli import exit_on_user_error
from neu_defects.workflows.app import serve


@hydra.main(version_base="1.3", config_path="../conf", config_name="app")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(serve)(cfg)


if __name__ == "__main__":
    main()
