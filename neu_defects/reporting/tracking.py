"""Experiment trackers (``logger=mlflow``, ``logger=wandb``): what a run leaves there besides its directory.

Lightning streams the per-epoch metrics to a tracker like to any logger. This module does the
rest: before training it names the tracked run (a single run goes to the experiment named after
the task, a multirun's jobs share one experiment named after the sweep directory, each run named
and tagged by its overrides); after testing it gives the tracker the resolved config as
parameters, ``metrics.json`` as the final metrics, and the reports and best checkpoint as files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import MLFlowLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from neu_defects.core.cli import log
from neu_defects.core.errors import UserError

# What a tracker receives of the run directory, when the run wrote it (a folder goes whole).
TRACKED_FILES = ("metrics.json", "classification_report.txt", "plots", "checkpoints/best.ckpt")
# The runs table of MLflow's SQL stores holds names of at most this many characters.
MAX_RUN_NAME = 250


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def names_the_logger(key: str) -> bool:
    return key == "logger" or key.startswith("logger.")


def run_identity(cfg: DictConfig) -> tuple[str, str, list[str]]:
    """The experiment, run name and overrides of this run.

    Overrides of the logger itself say where a run is tracked, not what it is: they are left out.
    Without Hydra (``train(cfg)`` from a script) the run is named after its directory.
    """
    run_dir = Path(cfg.paths.output_dir)
    if not HydraConfig.initialized():
        return cfg.task_name, run_dir.name, []
    hydra = HydraConfig.get()
    overrides = [o for o in hydra.overrides.task if not names_the_logger(o.lstrip("+~").split("=")[0])]
    experiment = str(hydra.sweep.dir) if hydra.mode == RunMode.MULTIRUN else cfg.task_name
    return experiment, clip(" ".join(overrides), MAX_RUN_NAME) or run_dir.name, overrides


def check_tracking_uri(uri: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri)
    except MlflowException as err:
        reason = str(err).split(". ")[0]
        raise UserError(f"logger.mlflow.tracking_uri={uri} is not a store MLflow opens ({reason}): give "
                        "sqlite:///PATH/mlflow.db or a tracking server's http://HOST:PORT") from None


def prepare_trackers(cfg: DictConfig) -> None:
    """Check that each tracker the config names can be used, and fill in the experiment, run name and
    tags its config leaves null: they must be known before the tracker creates the run."""
    trackers = {name: entry for name, entry in (cfg.get("logger") or {}).items()
                if name in ("mlflow", "wandb") and entry is not None}
    for name in trackers:
        if importlib.util.find_spec(name) is None:
            raise UserError(f"logger={name} needs the {name} package: pip install -e '.[{name}]'")
    if not trackers:
        return
    experiment, run_name, overrides = run_identity(cfg)
    with open_dict(cfg):
        if (mlflow := trackers.get("mlflow")) is not None:
            check_tracking_uri(mlflow.tracking_uri)
            mlflow.experiment_name = mlflow.experiment_name or experiment
            mlflow.run_name = mlflow.run_name or run_name
            mlflow.tags = {"overrides": " ".join(overrides), "run_dir": str(Path(cfg.paths.output_dir).resolve()),
                           **(mlflow.tags or {})}
        if (wandb := trackers.get("wandb")) is not None:
            wandb.group = wandb.group or experiment
            wandb.name = wandb.name or run_name
    if "wandb" in trackers:
        import wandb

        # Lightning hands wandb.init a setting wandb 0.31 deprecates; its warning respects
        # WANDB_SILENT only once wandb is set up.
        wandb.setup()


def flat_params(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"model.optimizer.lr": 0.002, ...}``; lists stay whole values."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    return {k: v for key, child in node.items() for k, v in flat_params(child, f"{prefix}{key}.").items()}


def log_to_mlflow(logger: MLFlowLogger, params: dict[str, Any], files: list[Path], run_dir: Path) -> None:
    from mlflow.entities import Param
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

    client, run_id = logger.experiment, logger.run_id
    # Lightning's log_hyperparams cuts values at 250 characters; MLflow itself accepts more.
    entries = [Param(key, clip(str(value), MAX_PARAM_VAL_LENGTH)) for key, value in params.items()]
    for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=entries[start:start + MAX_PARAMS_TAGS_PER_BATCH])
    for path in files:
        where = path.relative_to(run_dir)
        if path.is_dir():
            client.log_artifacts(run_id, str(path), where.as_posix())
        else:
            client.log_artifact(run_id, str(path), None if where.parent == Path(".") else where.parent.as_posix())
    run = client.get_run(run_id)
    log.info("mlflow: run %r of experiment %r in %s", run.info.run_name,
             client.get_experiment(run.info.experiment_id).name, client.tracking_uri)


def log_to_wandb(logger: WandbLogger, params: dict[str, Any], files: list[Path], run_dir: Path) -> None:
    run = logger.experiment
    logger.log_hyperparams(params)
    for path in files:
        run.save(str(path / "*" if path.is_dir() else path), base_path=str(run_dir), policy="now")
    # The run ends here, not at exit: the next job of a multirun, in this process, must not reuse it.
    offline_dir = Path(run.dir).parent
    offline = run.settings.mode == "offline"
    run.finish()
    if offline:
        log.info("wandb: offline run in %s; upload it with `wandb sync %s`", offline_dir, offline_dir)


def log_to_trackers(trainer: L.Trainer, cfg: DictConfig, run_dir: Path, metrics: dict[str, float]) -> None:
    """Give the MLflow and W&B loggers of ``trainer`` the resolved config as parameters, ``metrics``
    (what metrics.json holds) as the final metrics, and the run's reports and best checkpoint."""
    trackers = [lg for lg in trainer.loggers if isinstance(lg, (MLFlowLogger, WandbLogger))]
    if not trackers:
        return
    params = flat_params(OmegaConf.to_container(cfg, resolve=True))
    files = [run_dir / name for name in TRACKED_FILES if (run_dir / name).exists()]
    for logger in trackers:
        # At the step of the test metrics Lightning logged: these, logged after them, are the latest.
        logger.log_metrics(metrics, step=trainer.global_step)
        if isinstance(logger, MLFlowLogger):
            log_to_mlflow(logger, params, files, run_dir)
        else:
            log_to_wandb(logger, params, files, run_dir)
