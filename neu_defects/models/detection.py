"""``DetectorModule``: trains a ``DefectDetector`` on boxes and scores it by COCO mAP.

The net owns the maths (the torchvision detector, its losses and post-processing); this module
owns the steps, the optimiser, the metrics and the test detections the reports are drawn from.
Boxes here are in the model's input frame (the square ``image_size`` images the data module
serves); the data module maps them back to the original images' pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from neu_defects.models.detection_metrics import mean_average_precision, summarize
from neu_defects.models.task import TaskModule

Detections = list[dict[str, torch.Tensor]]


class DetectorModule(TaskModule):
    task = "detector"
    main_metric = "test/map_50"

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        class_names: Sequence[str] = (),
        image_size: int = 320,
    ):
        super().__init__()
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.class_names = list(class_names)
        self.image_size = image_size
        self.val_map = mean_average_precision()
        self.test_map = mean_average_precision()
        self.build_config: dict[str, Any] | None = None
        self.test_detections: Detections = []
        self.test_targets: Detections = []
        self.test_result: dict[str, Any] = {}

    @property
    def input_spec(self) -> dict[str, Any]:
        # The detector normalises inside (its transform): the data serves [0, 1] RGB.
        return {"in_chans": 3, "mean": [0.0] * 3, "std": [1.0] * 3, "image_size": self.image_size}

    def forward(self, images: torch.Tensor) -> Detections:
        return self.net(images)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        losses = self.net(images, targets)
        loss = sum(losses.values())
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, on_step=False, on_epoch=True,
                      batch_size=len(images))
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        self.val_map.update(self(images), targets)

    def on_validation_epoch_end(self):
        values = summarize(self.val_map.compute(), self.class_names, "val")
        self.log("val/map_50", values.pop("val/map_50"), prog_bar=True)
        self.log_dict(values)
        self.val_map.reset()

    def on_test_epoch_start(self):
        self.test_detections, self.test_targets = [], []

    def test_step(self, batch, batch_idx):
        images, targets = batch
        detections = self(images)
        self.test_map.update(detections, targets)
        self.test_detections += [{k: v.detach().cpu() for k, v in d.items()} for d in detections]
        self.test_targets += [{k: v.cpu() for k, v in t.items()} for t in targets]

    def on_test_epoch_end(self):
        self.test_result = self.test_map.compute()
        self.log_dict(summarize(self.test_result, self.class_names, "test"))
        self.test_map.reset()

    def configure_optimizers(self):
        optimizer = self.build_optimizer()
        if self.scheduler_factory is None:
            return optimizer
        # Per step, over the whole run (OneCycleLR's warm-up, then its anneal): a detector's head
        # starts from random weights and diverges under the full rate at step 0.
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
