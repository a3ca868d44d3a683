"""``TaskModule``: what every LightningModule here shares with the entry points.

A task module has a ``net`` exposing ``in_chans``, ``mean`` and ``std``, an ``image_size``, its
``class_names``, and the resolved config it was built from (``build_config``, set by the entry
points); it writes them into its checkpoints so the checkpoint alone rebuilds it.
"""

from __future__ import annotations

from typing import Any

from lightning import LightningModule

from neu_defects.checkpoint import RECORD


class TaskModule(LightningModule):
    task = ""

    @property
    def input_spec(self) -> dict[str, Any]:
        """What the data pipeline must feed this model."""
        return {"in_chans": self.net.in_chans, "mean": list(self.net.mean), "std": list(self.net.std),
                "image_size": self.image_size}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RECORD] = {"task": self.task, "config": self.build_config,
                              "class_names": self.class_names, "input_spec": self.input_spec}
