"""``train(cfg)``: fit a model, test its best checkpoint, write the run's reports.

It returns ``(metrics, objects)``: the test and last validation metrics, and the model, data
module and trainer, for tests and scripts to look into.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, open_dict

from neu_defects.core.checkpoint import check_state_dict, read_checkpoint
from neu_defects.core.cli import headline, log, quiet_libraries
from neu_defects.core.errors import Interrupted
from neu_defects.core.io import write_json
from neu_defects.reporting.anomaly import write_anomaly_outputs
from neu_defects.reporting.classification import plot_training_curves, write_classification_outputs
from neu_defects.reporting.detection import write_detection_outputs
from neu_defects.reporting.tracking import log_to_trackers, prepare_trackers
from neu_defects.workflows.builders import (
    build_model_and_data,
    build_trainer,
    resolve_ckpt_path,
    test_metrics,
)


def write_test_reports(model, datamodule, run_dir: Path) -> None:
    """The task's own report files for the test split just run."""
    if model.task == "anomaly":
        write_anomaly_outputs(run_dir, model, datamodule)
    elif model.task == "detector":
        write_detection_outputs(run_dir, model, datamodule)
    else:
        probs, targets = model.test_predictions()
        write_classification_outputs(run_dir, probs, targets, datamodule.index.class_names)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    quiet_libraries()
    run_dir = Path(cfg.paths.output_dir)
    prepare_trackers(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model, datamodule = build_model_and_data(cfg)
    index = datamodule.index
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
    if ckpt_path:
        check_state_dict(model, read_checkpoint(ckpt_path)["state_dict"], ckpt_path)

    datamodule.setup("fit")
    if getattr(datamodule, "normal_only_validation", False) and cfg.get("monitor"):
        # No validation metric ranks the epochs of a model that sees no anomaly before testing.
        log.info("validation holds normal images only: %s cannot be measured, best.ckpt is the last epoch",
                 cfg.monitor)
        with open_dict(cfg):
            cfg.monitor = None
    trainer = build_trainer(cfg)

    log.info("fitting %s on %s (%s) -> %s", cfg.model.net._target_, index.root, index.layout, run_dir)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - start
    if trainer.interrupted:
        raise Interrupted(f"training was interrupted; resume with hydra.run.dir={run_dir} ckpt_path=last")

    # Read before testing: trainer.test starts the logged metrics afresh.
    val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    has_best = trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_path
    trainer.test(model, datamodule=datamodule, ckpt_path="best" if has_best else None)
    metrics = {**test_metrics(trainer), "fit/seconds": round(fit_seconds, 2), **model.record_entries()}

    # Under DDP every process gets here with the same synced metrics; one writes the reports.
    if trainer.is_global_zero:
        write_test_reports(model, datamodule, run_dir)
        csv_logs = run_dir / "csv" / "metrics.csv"
        if csv_logs.is_file():
            plot_training_curves(run_dir / "plots" / "training_curves.png", csv_logs)
        write_json(run_dir / "metrics.json", metrics)
        log_to_trackers(trainer, cfg, run_dir, metrics)
    log.info("%s, fit %.1f s; outputs in %s", headline(metrics, model.main_metric), fit_seconds, run_dir)
    return {**metrics, **val_metrics}, {"model": model, "datamodule": datamodule, "trainer": trainer}
