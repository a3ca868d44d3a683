"""What ``configure_optimizers`` returns, shared by every LightningModule here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def with_scheduler(optimizer: torch.optim.Optimizer, scheduler_factory: Callable[..., Any] | None):
    """The optimizer alone, or with its epoch-wise scheduler built from a config partial."""
    if scheduler_factory is None:
        return optimizer
    return {"optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler_factory(optimizer=optimizer), "interval": "epoch"}}
