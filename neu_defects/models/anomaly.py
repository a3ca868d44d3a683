"""``AnomalyModule``: trains a one-class anomaly net on normal images and scores images at test time.

The net (an ``AnomalyNet``, see ``nets/base.py``) owns the maths; this module owns the loop around it:

- adversarial nets (``net.adversarial``, GANomaly) take one optimiser per ``net.parameter_groups``
  entry and run ``net.adversarial_step`` under manual optimisation;
- gradient-trained nets (``net.trainable``) minimise ``net.training_loss``; nets that are fitted
  rather than trained gather training batches with ``net.update`` and solve in ``net.finalize``
  before validation, and fitting is done after one epoch;
- on validation the image threshold is set and stored as a buffer, so it travels in the
  checkpoint. Its policy (``threshold_policy``, in the checkpoint and ``metrics.json``): F1-best
  when validation holds both kinds; a quantile of the normal scores when it holds normals only
  (``threshold.fpr`` of them flagged, MVTec's case); the largest score, with a warning, when it
  holds anomalies only, so a threshold never flags every image unseen;
- at test, wherever the data module serves masks (``data/masks.py``), the anomaly maps are scored
  pixel by pixel (``models/pixel_metrics.py``): ``pixel_auroc`` and ``pixel_aupro`` against mask
  files, ``box_pixel_auroc`` against defect boxes;
- metrics are torchmetrics (``models/metrics.py``), synced across processes under DDP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.trainer.states import TrainerFn

from neu_defects.models.metrics import anomaly_metrics, f1_threshold, normal_quantile, threshold_metrics
from neu_defects.models.nets.base import AnomalyNet
from neu_defects.models.optim import with_scheduler
from neu_defects.models.pixel_metrics import pixel_aupro, pixel_auroc
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
        threshold: Mapping[str, float] | None = None,
    ):
        super().__init__()
        self.net = net
        # Adversarial nets step their optimisers in turn within one batch.
        self.automatic_optimization = not getattr(net, "adversarial", False)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.class_names, self.normal_classes = list(class_names), list(normal_classes)
        self.image_size = image_size
        # The threshold itself is the buffer below; this is how it is chosen.
        self.threshold_fpr = float((threshold or {}).get("fpr", 0.01))
        if not 0 < self.threshold_fpr < 1:
            raise ValueError(f"model.threshold.fpr={self.threshold_fpr}: give the share of normal images to "
                             "flag, strictly between 0 and 1")
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self.threshold_policy = "unset"
        self.val_metrics, self.test_metrics = anomaly_metrics(), anomaly_metrics()
        self.build_config: dict[str, Any] | None = None
        self._scores: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._maps: list[torch.Tensor] = []
        self._masks: list[torch.Tensor] = []
        self.test_scores = self.test_targets = torch.zeros(0).numpy()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x)

    def on_train_epoch_start(self):
        self.net.reset()

    def training_step(self, batch, batch_idx):
        x, modes = batch[0], batch[1]
        self.net.update(x, modes)
        if not self.net.trainable:
            return None
        if not self.automatic_optimization:
            return self._adversarial_step(x)
        loss = self.net.training_loss(x)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def on_validation_epoch_start(self):
        if self.trainer.state.fn == TrainerFn.FITTING:
            self.net.finalize()
        self._scores, self._targets = [], []

    def on_test_epoch_start(self):
        self._scores, self._targets, self._maps, self._masks = [], [], [], []

    def _collect(self, batch, metrics) -> torch.Tensor:
        """Score a batch into ``metrics`` and the epoch's lists; returns the anomaly maps."""
        x, y = batch[0], batch[1]
        score, amap = self(x)
        metrics.update(score.detach().float(), y)
        self._scores.append(score.detach().double().cpu())
        self._targets.append(y.detach().cpu())
        return amap

    def validation_step(self, batch, batch_idx):
        self._collect(batch, self.val_metrics)

    def test_step(self, batch, batch_idx):
        amap = self._collect(batch, self.test_metrics)
        if len(batch) == 3:  # the data module serves masks
            self._maps.append(amap.detach()[:, 0].float().cpu())
            self._masks.append(batch[2].cpu())

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
            threshold, self.threshold_policy = f1_threshold(*values.pop("pr_curve")), "f1"
        elif not targets.all():
            threshold = normal_quantile(scores[targets == 0], self.threshold_fpr)
            self.threshold_policy = f"normal_quantile(fpr={self.threshold_fpr:g})"
            log.info("validation holds normal images only: the threshold flags %.3g of them (model.threshold.fpr), "
                     "score >= %.4g", self.threshold_fpr, threshold)
        else:
            threshold, self.threshold_policy = float(scores.max()), "max_score"
            log.warning("validation holds anomalous images only: the threshold is their largest score, %.4g; "
                        "add normal images to validation for a threshold that means something", threshold)
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
                  **threshold_metrics(scores, targets, float(self.threshold)), "threshold": float(self.threshold),
                  **self._pixel_metrics()}
        self.log_dict({f"test/{k}": v for k, v in logged.items()})
        self.test_scores, self.test_targets = scores.numpy(), targets.numpy()

    def _pixel_metrics(self) -> dict[str, float]:
        """Pixel scores of the test maps against the data module's masks (none without masks)."""
        if not self._maps:
            return {}
        if self.trainer.world_size > 1:
            log.warning("pixel metrics are computed on one process's share of the test split under DDP")
        maps, masks = torch.cat(self._maps).numpy(), torch.cat(self._masks).numpy()
        self._maps, self._masks = [], []
        if getattr(self.trainer.datamodule, "mask_source", None) == "boxes":
            return {"box_pixel_auroc": pixel_auroc(maps, masks)}
        return {"pixel_auroc": pixel_auroc(maps, masks), "pixel_aupro": pixel_aupro(maps, masks)}

    def deployment_record(self) -> dict[str, Any]:
        return {"threshold": float(self.threshold), "threshold_policy": self.threshold_policy,
                "normal_classes": list(self.normal_classes)}

    def record_entries(self) -> dict[str, Any]:
        return {"threshold_policy": self.threshold_policy, **self.net.record_entries()}

    def restore_record(self, record: dict[str, Any]) -> None:
        # Checkpoints from before policies were recorded chose by F1 or the 99th normal percentile.
        self.threshold_policy = record.get("threshold_policy", "unrecorded")

    def _adversarial_step(self, x: torch.Tensor) -> None:
        optimizers = dict(zip(self.net.parameter_groups(), self.optimizers(), strict=True))

        def step(name: str, loss: torch.Tensor, retain_graph: bool) -> None:
            optimizers[name].zero_grad()
            self.manual_backward(loss, retain_graph=retain_graph)
            optimizers[name].step()

        losses = self.net.adversarial_step(x, step)
        self.log_dict({f"train/{name}_loss": loss for name, loss in losses.items()}, on_step=False, on_epoch=True,
                      prog_bar=True, batch_size=len(x))

    def configure_optimizers(self):
        if not self.net.trainable:
            return None
        if not self.automatic_optimization:
            return [self.optimizer_factory(params=list(group)) for group in self.net.parameter_groups().values()]
        return with_scheduler(self.build_optimizer(), self.scheduler_factory)
