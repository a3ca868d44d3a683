"""``python -m neu_defects.eval ckpt_path=PATH [task=classifier|anomaly] [corruption=NAME severity=1..5]``.

Tests a checkpoint on the split of the run that wrote it and writes the same reports as training;
``study=robustness`` sweeps every corruption and severity. See ``neu_defects.workflows.evaluate``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from neu_defects.core.cli import run_task
from neu_defects.workflows.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    run_task(evaluate, cfg)


if __name__ == "__main__":
    main()
