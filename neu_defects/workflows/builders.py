"""Configs and checkpoints into objects: index -> model -> data module -> trainer, and checkpoint ->
model + the data module of its own split. Every workflow builds through here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from neu_defects.core.checkpoint import load_module
from neu_defects.core.cli import instantiate_dict, log
from neu_defects.core.errors import UserError
from neu_defects.data import DatasetIndex, build_index
from neu_defects.data.corruptions import build_corruption
from neu_defects.data.download import DEFAULT_URL


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """A checkpoint to resume from: a path, or ``last`` for the run directory's last.ckpt."""
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
    model = instantiate(cfg.model)
    model.build_config = OmegaConf.to_container(cfg.model, resolve=True)
    return model


def build_datamodule(data_cfg: DictConfig, model, index: DatasetIndex, **overrides: Any):
    """The data module of ``data_cfg`` on ``index``, serving the input ``model`` was built for."""
    spec = model.input_spec
    datamodule = instantiate(data_cfg, in_chans=spec["in_chans"], mean=spec["mean"], std=spec["std"],
                             image_size=spec["image_size"], **overrides)
    # Set, not passed: instantiate would read the index dataclass as config.
    datamodule.index = index
    return datamodule


def data_index(data_cfg: DictConfig) -> DatasetIndex:
    """The index of the data a data config names (``category``: one MVTec AD category; ``download``:
    fetch NEU-DET on first use)."""
    return build_index(data_cfg.root, data_cfg.layout, data_cfg.get("category"), data_cfg.get("download", False),
                       data_cfg.get("download_url", DEFAULT_URL))


def build_model_and_data(cfg: DictConfig):
    """The model of a train config and the data module that feeds it what it wants."""
    index = data_index(cfg.data)
    model = build_model(cfg, index.class_names)
    return model, build_datamodule(cfg.data, model, index)


def build_trainer(cfg: DictConfig, extra_callbacks: list | None = None, **overrides) -> L.Trainer:
    """The trainer of a config with its named callbacks and loggers."""
    callbacks = [*instantiate_dict(cfg.get("callbacks")), *(extra_callbacks or [])]
    loggers = instantiate_dict(cfg.get("logger"))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)


def default_split_file(ckpt_path: Path) -> Path | None:
    """The split.csv two levels up from <run>/checkpoints/<name>.ckpt, if that run wrote one."""
    candidate = ckpt_path.resolve().parent.parent / "split.csv"
    return candidate if candidate.is_file() else None


# The data module a checkpoint of each task is tested on, beside the data config's settings; a data
# config that already builds that kind of module (data=mvtec for an anomaly model) keeps its own.
TASK_DATA = {
    "anomaly": ("neu_defects.data.oneclass.OneClassDataModule",
                lambda model: {"normal_classes": model.normal_classes}),
    "detector": ("neu_defects.data.detection.DetectionDataModule", lambda model: {}),
}


def task_data(data_cfg: DictConfig, model) -> dict[str, Any]:
    """The overrides that make ``data_cfg`` build the data module of ``model``'s task."""
    if model.task not in TASK_DATA:
        return {}
    target, settings = TASK_DATA[model.task]
    if issubclass(get_class(data_cfg._target_), get_class(target)):
        return settings(model)
    return {"_target_": target, **settings(model)}


def checkpoint_datamodule(cfg: DictConfig, model, ckpt_path: Path, needs_boxes: bool = False):
    """The unaugmented data module, fed as ``model`` wants, on the split its training run used:
    ``data.split_file``, else the training run's split.csv, else made anew from the data config."""
    index = data_index(cfg.data)
    if index.class_names != model.class_names:
        raise UserError(f"the data at {index.root} has classes {index.class_names}, but checkpoint {ckpt_path} "
                        f"was trained on {model.class_names}: point data.root at the dataset it was trained on")
    if needs_boxes and not index.has_boxes:
        raise UserError(f"the data at {index.root} ({index.layout}) has no boxes: localisation needs "
                        "NEU-DET with its ANNOTATIONS/ folder")
    with open_dict(cfg):
        if not cfg.data.split_file and (split_file := default_split_file(ckpt_path)):
            log.info("using the training run's split %s", split_file)
            cfg.data.split_file = str(split_file)
    corruption = build_corruption(cfg.get("corruption"), cfg.get("severity"), cfg.seed)
    if corruption is not None:
        log.info("testing on corrupted images: %s", corruption)
    return build_datamodule(cfg.data, model, index, augment=None, corruption=corruption,
                            **task_data(cfg.data, model))


def load_checkpoint_and_data(cfg: DictConfig, task: str | None = None, needs_boxes: bool = False):
    """The module of ``cfg.ckpt_path`` and the data module of its split, set up for testing."""
    ckpt_path = Path(cfg.ckpt_path)
    model = load_module(ckpt_path, task=task)
    datamodule = checkpoint_datamodule(cfg, model, ckpt_path, needs_boxes)
    datamodule.setup("test")
    return model, datamodule


def test_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/") and k != "test/loss"}
