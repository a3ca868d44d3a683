"""``python -m neu_defects.train [overrides]``: fit a model, test its best checkpoint, write reports.

``train(cfg)`` is a plain function (tests call it); ``main`` only wraps it for Hydra and returns
the metric a sweeper optimises.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from neu_defects.anomaly_reports import write_anomaly_outputs
from neu_defects.checkpoint import check_state_dict, read_checkpoint
from neu_defects.cli import headline, instantiate_dict, log, quiet_libraries, run_task
from neu_defects.data import build_index
from neu_defects.errors import Interrupted, UserError
from neu_defects.io_utils import write_json
from neu_defects.reports import plot_training_curves, write_classification_outputs


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    if ckpt_path in (None, "", "null"):
        return None
    path = run_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        raise UserError(f"ckpt_path={ckpt_path} names no checkpoint ({path} does not exist); "
                        "to resume, pass the run's hydra.run.dir with ckpt_path=last, or a checkpoint path")
    return str(path)


def build_model(cfg: DictConfig, class_names: list[str]):
    """Instantiate the model config for these classes; the resolved config travels in checkpoints."""
    with open_dict(cfg):
        cfg.model.class_names = list(class_names)
        if "num_classes" in cfg.model.net:
            cfg.model.net.num_classes = len(class_names)
        cfg.model.image_size = int(cfg.data.image_size)
    model = instantiate(cfg.model)
    model.build_config = OmegaConf.to_container(cfg.model, resolve=True)
    return model


def test_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/") and k != "test/loss"}


def write_test_reports(model, datamodule, run_dir: Path) -> None:
    """The task's own report files for the test split just run."""
    if model.task == "anomaly":
        write_anomaly_outputs(run_dir, model, datamodule)
    else:
        probs, targets = model.test_predictions()
        write_classification_outputs(run_dir, probs, targets, datamodule.index.class_names)


def build_model_and_data(cfg: DictConfig):
    """The model of a train config and the data module that feeds it what it wants."""
    index = build_index(cfg.data.root, cfg.data.layout)
    model = build_model(cfg, index.class_names)
    spec = model.input_spec
    datamodule = instantiate(cfg.data, in_chans=spec["in_chans"], mean=spec["mean"], std=spec["std"])
    datamodule.index = index
    return model, datamodule


def build_trainer(cfg: DictConfig, extra_callbacks: list | None = None, **overrides) -> L.Trainer:
    """The trainer of a train config with its named callbacks and loggers."""
    callbacks = [*instantiate_dict(cfg.get("callbacks")), *(extra_callbacks or [])]
    loggers = instantiate_dict(cfg.get("logger"))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    quiet_libraries()
    run_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model, datamodule = build_model_and_data(cfg)
    index = datamodule.index
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
    if ckpt_path:
        check_state_dict(model, read_checkpoint(ckpt_path)["state_dict"], ckpt_path)

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
    metrics = {**test_metrics(trainer), "fit/seconds": round(fit_seconds, 2)}

    # Under DDP every process gets here with the same synced metrics; one writes the reports.
    if trainer.is_global_zero:
        write_test_reports(model, datamodule, run_dir)
        csv_logs = run_dir / "csv" / "metrics.csv"
        if csv_logs.is_file():
            plot_training_curves(run_dir / "plots" / "training_curves.png", csv_logs)
        write_json(run_dir / "metrics.json", metrics)
    log.info("%s, fit %.1f s; outputs in %s", headline(metrics), fit_seconds, run_dir)
    return {**metrics, **val_metrics}, {"model": model, "datamodule": datamodule, "trainer": trainer}


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
