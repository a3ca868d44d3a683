"""``python -m neu_defects.train [overrides]``: fit a model, test its best checkpoint, write reports.

A multirun (``-m``) runs one job per combination; ``main`` returns the metric a sweeper optimises.
The work is ``neu_defects.workflows.train.train``, a plain function that tests call directly.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from neu_defects.core.cli import log, run_task
from neu_defects.workflows.train import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    result = run_task(train, cfg)
    if result is None:
        return None
    metrics, _ = result
    name = cfg.get("optimized_metric")
    if name and name not in metrics:
        log.warning("optimized_metric=%s is not among this run's metrics (%s): a sweeper gets None",
                    name, ", ".join(sorted(metrics)))
    return metrics.get(name)


if __name__ == "__main__":
    main()
