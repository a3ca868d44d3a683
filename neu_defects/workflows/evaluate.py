"""``evaluate(cfg)``: test a checkpoint and write the same reports as training.

The model, classifier or anomaly detector, is rebuilt from the checkpoint alone; ``task=`` makes
sure it is the kind expected. The split is, in order: ``data.split_file``, the ``split.csv`` of
the run that wrote the checkpoint, else made anew from the data config's seed.
``corruption=<name> severity=<1..5>`` tests on images corrupted as a worse camera would deliver
them (``neu_defects.data.corruptions``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from neu_defects.core.cli import headline, instantiate_dict, log, quiet_libraries
from neu_defects.core.io import write_json
from neu_defects.workflows.builders import load_checkpoint_and_data, test_metrics
from neu_defects.workflows.train import write_test_reports


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    quiet_libraries()
    run_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model, datamodule = load_checkpoint_and_data(cfg, task=cfg.get("task"))
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=instantiate_dict(cfg.get("callbacks")))
    trainer.test(model, datamodule=datamodule)
    metrics = {**test_metrics(trainer), **model.record_entries()}
    write_test_reports(model, datamodule, run_dir)
    write_json(run_dir / "metrics.json", metrics)
    log.info("%s; outputs in %s", headline(metrics, model.main_metric), run_dir)
    return metrics, {"model": model, "datamodule": datamodule, "trainer": trainer}
