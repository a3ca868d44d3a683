"""``AnomalyModule``: trains a one-class anomaly net on normal images and scores images at test time.

The net owns the maths (see ``nets/autoencoder.py``, ``nets/feature_gaussian.py``); this module
owns the loop around it:

- gradient-trained nets (``net.trainable``) minimise ``net.training_loss``;
- nets that are fitted rather than trained gather training batches with ``net.update`` and solve
  in ``net.finalize`` before validation; fitting is done after one epoch;
- on validation the image threshold is set where F1 is best and stored as a buffer, so it travels
  in the checkpoint. When validation lacks normal or anomalous images it falls back, with a
  warning, to the 99th percentile of the normal scores (or the largest score seen).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from torch import nn

from neu_defects.models.optim import with_scheduler
from neu_defects.models.task import TaskModule

log = logging.getLogger(__name__)


def f1_threshold(scores: np.ndarray, targets: np.ndarray) -> float:
    """The score threshold that maximises F1 of 'anomaly = score >= threshold'."""
    precision, recall, thresholds = precision_recall_curve(targets, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.clip(precision[:-1] + recall[:-1], 1e-12, None)
    return float(thresholds[int(np.argmax(f1))])


def fallback_threshold(scores: np.ndarray, targets: np.ndarray) -> float:
    normal = scores[targets == 0]
    return float(np.quantile(normal, 0.99)) if len(normal) else float(scores.max())


def binary_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float) -> dict[str, float]:
    pred = scores >= threshold
    tp = float((pred & (targets == 1)).sum())
    precision = tp / max(pred.sum(), 1)
    recall = tp / max((targets == 1).sum(), 1)
    both = 0 < targets.sum() < len(targets)
    return {
        "image_auroc": float(roc_auc_score(targets, scores)) if both else float("nan"),
        "image_aupr": float(average_precision_score(targets, scores)) if both else float("nan"),
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "precision": precision,
        "recall": recall,
    }


class AnomalyModule(TaskModule):
    task = "anomaly"

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        class_names: Sequence[str] = (),
        normal_classes: Sequence[str] = (),
        image_size: int = 64,
    ):
        super().__init__()
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.class_names, self.normal_classes = list(class_names), list(normal_classes)
        self.image_size = image_size
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self.build_config: dict[str, Any] | None = None
        self._scores: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self.test_scores = self.test_targets = np.zeros(0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x)

    def on_train_epoch_start(self):
        if hasattr(self.net, "reset"):
            self.net.reset()

    def training_step(self, batch, batch_idx):
        x, _ = batch
        if hasattr(self.net, "update"):
            self.net.update(x)
        if not self.net.trainable:
            return None
        loss = self.net.training_loss(x)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def on_validation_epoch_start(self):
        if self.trainer.state.fn == TrainerFn.FITTING and hasattr(self.net, "finalize"):
            self.net.finalize()
        self._scores, self._targets = [], []

    def on_test_epoch_start(self):
        self._scores, self._targets = [], []

    def _collect(self, batch):
        x, y = batch
        score, _ = self(x)
        self._scores.append(score.detach().cpu())
        self._targets.append(y.detach().cpu())

    def validation_step(self, batch, batch_idx):
        self._collect(batch)

    def test_step(self, batch, batch_idx):
        self._collect(batch)

    def _gathered(self) -> tuple[np.ndarray, np.ndarray]:
        return torch.cat(self._scores).double().numpy(), torch.cat(self._targets).numpy()

    def on_validation_epoch_end(self):
        scores, targets = self._gathered()
        if 0 < targets.sum() < len(targets):
            threshold = f1_threshold(scores, targets)
        else:
            threshold = fallback_threshold(scores, targets)
            log.warning("validation holds only %s images: threshold falls back to %s = %.4g",
                        "anomalous" if targets.all() else "normal",
                        "the 99th percentile of normal scores" if not targets.all() else "the largest score",
                        threshold)
        self.threshold.fill_(threshold)
        values = binary_metrics(scores, targets, threshold)
        self.log_dict({f"val/{k}": v for k, v in values.items() if not np.isnan(v)}, prog_bar=True)
        if not self.net.trainable:
            self.trainer.should_stop = True

    def on_test_epoch_end(self):
        scores, targets = self._gathered()
        self.test_scores, self.test_targets = scores, targets
        values = binary_metrics(scores, targets, float(self.threshold))
        self.log_dict({f"test/{k}": v for k, v in values.items()})

    def configure_optimizers(self):
        if not self.net.trainable:
            return None
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        return with_scheduler(optimizer, self.scheduler_factory)
