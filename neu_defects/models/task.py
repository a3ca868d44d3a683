"""``TaskModule``: what every LightningModule here shares with the entry points.

A task module has a ``net`` exposing ``in_chans``, ``mean`` and ``std``, an ``image_size``, its
``class_names``, the optimiser partial of its config (``optimizer_factory``), and the resolved
config it was built from (``build_config``, set by the entry points); it writes them into its
checkpoints so the checkpoint alone rebuilds it.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning import LightningModule

from neu_defects.core.checkpoint import RECORD


class TaskModule(LightningModule):
    task = ""
    # The test metric that a run's closing line and a sweep's figure lead with.
    main_metric = ""

    @property
    def input_spec(self) -> dict[str, Any]:
        """What the data pipeline must feed this model."""
        return {"in_chans": self.net.in_chans, "mean": list(self.net.mean), "std": list(self.net.std),
                "image_size": self.image_size}

    def deployment_record(self) -> dict[str, Any]:
        """What an exported model needs beside its input spec and class names to answer as this one does."""
        return {}

    def record_entries(self) -> dict[str, Any]:
        """Plain facts of the trained model that are not tensors, for its checkpoint and ``metrics.json``."""
        return {}

    def restore_record(self, record: dict[str, Any]) -> None:
        """Take back what ``record_entries`` wrote, from a checkpoint's record."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RECORD] = {"task": self.task, "config": self.build_config,
                              "class_names": self.class_names, "input_spec": self.input_spec,
                              **self.record_entries()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.restore_record(checkpoint.get(RECORD, {}))

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The config's optimiser (``self.optimizer_factory``, a partial) over every trainable parameter."""
        return self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])

    def gather_in_loader_order(self, chunks: list[torch.Tensor], size: int) -> torch.Tensor:
        """Per-batch outputs of an eval loop over ``size`` items, from every process, in loader order.

        Each process ran every world_size-th item (Lightning's unshuffled DistributedSampler, padded
        to equal shares): the gathered shares are interleaved back and the padding dropped.
        """
        local = torch.cat(chunks)
        if self.trainer.world_size == 1:
            return local
        return self.all_gather(local).transpose(0, 1).flatten(0, 1)[:size].cpu()
