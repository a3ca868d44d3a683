"""Finished runs read back for analysis (the notebooks, scripts): config, metrics, split, predictions.

A run directory is what ``neu_defects.train`` wrote (``.hydra/``, ``metrics.json``, ``split.csv``,
``checkpoints/best.ckpt``); a sweep directory holds one per job. The images of a split are decoded
and normalised exactly as the model's ``input_spec`` asks, so predictions here equal the test run's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from neu_defects.core.checkpoint import load_module
from neu_defects.core.errors import UserError
from neu_defects.data.index import DatasetIndex
from neu_defects.data.io import decode_image, resize
from neu_defects.data.splits import read_split_csv
from neu_defects.data.transforms import build_transform
from neu_defects.reporting.sweep import job_status


@dataclass
class Run:
    dir: Path
    config: DictConfig
    overrides: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = "ok"

    @property
    def name(self) -> str:
        """The overrides that tell this job from the others of its sweep, or its directory name."""
        return " ".join(self.overrides) or self.dir.name

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoints" / "best.ckpt"


def read_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise UserError(f"{run_dir} is not a run directory (no .hydra/config.yaml): pass a directory "
                        "written by neu_defects.train")
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return Run(run_dir, OmegaConf.load(config_file), overrides, metrics, job_status(run_dir))


def sweep_runs(sweep_dir: str | Path, only_ok: bool = True) -> list[Run]:
    """The jobs of a sweep in job order, with the overrides all jobs share removed from their names."""
    sweep_dir = Path(sweep_dir)
    job_dirs = sorted((p.parent.parent for p in sweep_dir.glob("*/.hydra/config.yaml")),
                      key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    if not job_dirs:
        raise UserError(f"{sweep_dir} holds no job directories: pass a multirun directory")
    runs = [read_run(d) for d in job_dirs]
    shared = set.intersection(*(set(r.overrides) for r in runs)) if len(runs) > 1 else set()
    for run in runs:
        run.overrides = [o for o in run.overrides if o not in shared]
    return [r for r in runs if r.status == "ok"] if only_ok else runs


def newest(pattern: str, root: str | Path = ".") -> Path | None:
    """The most recently modified path matching ``pattern`` under ``root`` (a default for notebooks)."""
    matches = sorted(Path(root).glob(pattern), key=lambda p: p.stat().st_mtime)
    return matches[-1] if matches else None


def run_split_positions(run: Run, index: DatasetIndex, split: str = "test") -> np.ndarray:
    """Positions into ``index.samples`` of the images the run put in ``split``, in index order."""
    assignment = read_split_csv(run.dir / "split.csv", index)
    return np.array([i for i, name in enumerate(assignment) if name == split], dtype=int)


def read_images(index: DatasetIndex, positions, in_chans: int, size: int) -> np.ndarray:
    """(N, size, size, in_chans) uint8 images of the given index positions."""
    return np.stack([resize(decode_image(index.abspath(index.samples[i]), in_chans), size) for i in positions])


def model_input(module, images: np.ndarray) -> torch.Tensor:
    """uint8 images -> the normalised batch the module was trained on."""
    spec = module.input_spec
    transform = build_transform(spec["mean"], spec["std"])
    return torch.stack([transform(image=image)["image"] for image in images])


@torch.no_grad()
def predict(module, images: np.ndarray, batch_size: int = 64) -> Any:
    """Class probabilities (N, C) of a classifier, or (scores (N,), maps (N, H, W)) of an anomaly model."""
    module.eval()
    outputs = [module(model_input(module, images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    if module.task == "anomaly":
        return (torch.cat([s for s, _ in outputs]).double().numpy(),
                torch.cat([m for _, m in outputs])[:, 0].float().numpy())
    return torch.cat(outputs).float().softmax(-1).numpy()


def split_predictions(run: Run, index: DatasetIndex, split: str = "test") -> dict[str, Any]:
    """The run's best checkpoint on its own split: module, positions, images and predictions."""
    module = load_module(run.checkpoint)
    positions = run_split_positions(run, index, split)
    spec = module.input_spec
    images = read_images(index, positions, spec["in_chans"], spec["image_size"])
    labels = np.array([index.samples[i].label for i in positions])
    return {"module": module, "positions": positions, "images": images, "labels": labels,
            "predictions": predict(module, images)}
