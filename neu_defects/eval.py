"""``python -m neu_defects.eval ckpt_path=PATH``: test a checkpoint and write the same reports as train.

The model, classifier or anomaly detector, is rebuilt from the checkpoint alone; ``task=`` makes
sure it is the kind expected. The split is, in order: ``data.split_file``, the
``split.csv`` of the run that wrote the checkpoint, else made anew from the data config's seed.

``corruption=<name> severity=<1..5>`` tests on images corrupted as a worse camera would deliver
them (``neu_defects.data.corruptions``); ``experiment=robustness`` sweeps every corruption and
severity and writes the study's table and figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from neu_defects.checkpoint import load_module
from neu_defects.cli import headline, instantiate_dict, log, quiet_libraries, run_task
from neu_defects.data import build_index
from neu_defects.data.corruptions import build_corruption
from neu_defects.errors import UserError
from neu_defects.io_utils import write_json
from neu_defects.train import test_metrics, write_test_reports


def default_split_file(ckpt_path: Path) -> Path | None:
    """The split.csv two levels up from <run>/checkpoints/<name>.ckpt, if that run wrote one."""
    candidate = ckpt_path.resolve().parent.parent / "split.csv"
    return candidate if candidate.is_file() else None


def checkpoint_datamodule(cfg: DictConfig, model, ckpt_path: Path):
    """The unaugmented data module, fed as ``model`` wants, on the split its training run used."""
    index = build_index(cfg.data.root, cfg.data.layout)
    if index.class_names != model.class_names:
        raise UserError(f"the data at {index.root} has classes {index.class_names}, but checkpoint {ckpt_path} "
                        f"was trained on {model.class_names}: point data.root at the dataset it was trained on")
    with open_dict(cfg):
        if not cfg.data.split_file and (split_file := default_split_file(ckpt_path)):
            log.info("using the training run's split %s", split_file)
            cfg.data.split_file = str(split_file)
        cfg.data.image_size = model.image_size
    spec = model.input_spec
    task_data = ({"_target_": "neu_defects.data.oneclass.OneClassDataModule", "normal_classes": model.normal_classes}
                 if model.task == "anomaly" else {})
    corruption = build_corruption(cfg.get("corruption"), cfg.get("severity"), cfg.seed)
    if corruption is not None:
        log.info("testing on corrupted images: %s", corruption)
    datamodule = instantiate(cfg.data, in_chans=spec["in_chans"], mean=spec["mean"], std=spec["std"], augment=None,
                             corruption=corruption, **task_data)
    datamodule.index = index
    return datamodule


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    quiet_libraries()
    run_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    ckpt_path = Path(cfg.ckpt_path)
    model = load_module(ckpt_path, task=cfg.get("task"))
    datamodule = checkpoint_datamodule(cfg, model, ckpt_path)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=instantiate_dict(cfg.get("callbacks")))
    trainer.test(model, datamodule=datamodule)
    metrics = test_metrics(trainer)
    write_test_reports(model, datamodule, run_dir)
    write_json(run_dir / "metrics.json", metrics)
    log.info("%s; outputs in %s", headline(metrics), run_dir)
    return metrics, {"model": model, "datamodule": datamodule, "trainer": trainer}


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    run_task(evaluate, cfg)


if __name__ == "__main__":
    main()
