"""``AnomalyModule``: trains a one-class anomaly net on normal images and scores images at test time.

The net (an ``AnomalyNet``, see ``nets/base.py``) owns the maths; this module owns the loop around it:

- gradient-trained nets (``net.trainable``) minimise ``net.training_loss``; nets that are fitted
  rather than trained gather training batches with ``net.update`` and solve in ``net.finalize``
  before validation, and fitting is done after one epoch;
- on validation the image threshold is set where F1 is best and stored as a buffer, so it travels
  in the checkpoint. When validation lacks normal or anomalous images it falls back, with a
  warning, to the 99th percentile of the normal scores (or the largest score seen);
- metrics are torchmetrics (``models/metrics.py``), synced across processes under DDP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning.pytorch.trainer.states import TrainerFn

from neu_defects.models.metrics import anomaly_metrics, f1_threshold, fallback_threshold, threshold_metrics
from neu_defects.models.nets.base import AnomalyNet
from neu_defects.models.optim import with_scheduler
from neu_defects.models.task import TaskModule

log = logging.getLogger(__name__)


class AnomalyModule(TaskModule):
    task = "anomaly"
    main_metric = "test/image_auroc"

    def __init__(
        self,
        net: AnomalyNet,
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
        self.val_metrics, self.test_metrics = anomaly_metrics(), anomaly_metrics()
        self.build_config: dict[str, Any] | None = None
        self._scores: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self.test_scores = self.test_targets = torch.zeros(0).numpy()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x)

    def on_train_epoch_start(self):
        self.net.reset()

    def training_step(self, batch, batch_idx):
        x, _ = batch
        self.net.update(x)
        if not self.net.trainable:
            return None
        loss = self.net.training_loss(x)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def on_validation_epoch_start(self):
        if self.trainer.state.fn == TrainerFn.FITTING:
            self.net.finalize()
        self._scores, self._targets = [], []

    def on_test_epoch_start(self):
        self._scores, self._targets = [], []

    def _collect(self, batch, metrics):
        x, y = batch
        score, _ = self(x)
        metrics.update(score.detach().float(), y)
        self._scores.append(score.detach().double().cpu())
        self._targets.append(y.detach().cpu())

    def validation_step(self, batch, batch_idx):
        self._collect(batch, self.val_metrics)

    def test_step(self, batch, batch_idx):
        self._collect(batch, self.test_metrics)

    def _epoch_end(self, metrics, loader) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Every process's scores and targets in loader order, and the ranking metrics of them all."""
        size = len(loader.dataset)
        scores, targets = (self.gather_in_loader_order(t, size) for t in (self._scores, self._targets))
        # AUROC and average precision need both kinds of image; with one, they are undefined.
        values = metrics.compute() if 0 < int(targets.sum()) < len(targets) else {}
        metrics.reset()
        return scores, targets, values

    def on_validation_epoch_end(self):
        scores, targets, values = self._epoch_end(self.val_metrics, self.trainer.val_dataloaders)
        if values:
            threshold = f1_threshold(*values.pop("pr_curve"))
        else:
            threshold = fallback_threshold(scores, targets)
            log.warning("validation holds only %s images: threshold falls back to %s = %.4g",
                        "anomalous" if targets.all() else "normal",
                        "the 99th percentile of normal scores" if not targets.all() else "the largest score",
                        threshold)
        self.threshold.fill_(threshold)
        logged = {**{k: float(v) for k, v in values.items()}, **threshold_metrics(scores, targets, threshold)}
        self.log_dict({f"val/{k}": v for k, v in logged.items()}, prog_bar=True)
        if not self.net.trainable:
            self.trainer.should_stop = True

    def on_test_epoch_end(self):
        scores, targets, values = self._epoch_end(self.test_metrics, self.trainer.test_dataloaders)
        values.pop("pr_curve", None)
        nan = float("nan")
        logged = {"image_auroc": float(values.get("image_auroc", nan)), "image_aupr": float(values.get("image_aupr", nan)),
                  **threshold_metrics(scores, targets, float(self.threshold))}
        self.log_dict({f"test/{k}": v for k, v in logged.items()})
        self.test_scores, self.test_targets = scores.numpy(), targets.numpy()

    def configure_optimizers(self):
        if not self.net.trainable:
            return None
        return with_scheduler(self.build_optimizer(), self.scheduler_factory)
