"""``ClassifierModule``: trains any classification net with cross-entropy and logs torchmetrics.

The net (a plain ``nn.Module``) owns the maths and its input normalisation; this module owns the
steps, the optimiser, the metrics and the test-set predictions that reports are drawn from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from neu_defects.models.frozen import to_channels_last
from neu_defects.models.metrics import classification_metrics, flatten
from neu_defects.models.optim import with_scheduler
from neu_defects.models.task import TaskModule


class ClassifierModule(TaskModule):
    task = "classifier"
    main_metric = "test/acc"

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        class_names: Sequence[str] = (),
        image_size: int = 64,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
    ):
        super().__init__()
        # NHWC weights and inputs: oneDNN's faster convolution layout on CPUs, decided per net family
        # by `python -m neu_defects.benchmark` (experiments/README.md, "Speed").
        self.channels_last = channels_last
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.class_names = list(class_names)
        self.image_size = image_size
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        num_classes = len(self.class_names)
        self.val_metrics = classification_metrics(num_classes)
        self.test_metrics = classification_metrics(num_classes)
        self.train_acc = self.val_metrics["acc"].clone()
        # Filled by train/eval entry points so a checkpoint can rebuild this module on its own.
        self.build_config: dict[str, Any] | None = None
        self.test_probs: list[torch.Tensor] = []
        self.test_targets: list[torch.Tensor] = []

    def net_input(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch in the memory format the net's weights are in."""
        return to_channels_last(x) if self.channels_last else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.net_input(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val/loss", self.criterion(logits, y), prog_bar=True, batch_size=len(y), sync_dist=True)
        self.val_metrics.update(logits.softmax(-1), y)

    def on_validation_epoch_end(self):
        values = flatten(self.val_metrics.compute(), "val", self.class_names)
        self.log("val/acc", values.pop("val/acc"), prog_bar=True)
        self.log_dict(values)
        self.val_metrics.reset()

    def on_test_epoch_start(self):
        self.test_probs, self.test_targets = [], []

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("test/loss", self.criterion(logits, y), batch_size=len(y), sync_dist=True)
        probs = logits.softmax(-1)
        self.test_metrics.update(probs, y)
        self.test_probs.append(probs.detach().cpu())
        self.test_targets.append(y.detach().cpu())

    def on_test_epoch_end(self):
        self.log_dict(flatten(self.test_metrics.compute(), "test", self.class_names))
        self.test_metrics.reset()
        size = len(self.trainer.test_dataloaders.dataset)
        self.test_probs, self.test_targets = ([self.gather_in_loader_order(t, size)]
                                              for t in (self.test_probs, self.test_targets))

    def test_predictions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, targets) of the last test run over the whole test set, in test-loader order."""
        return torch.cat(self.test_probs), torch.cat(self.test_targets)

    def configure_optimizers(self):
        return with_scheduler(self.build_optimizer(), self.scheduler_factory)
