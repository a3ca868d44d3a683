"""``EpochSeedCallback``: each training epoch's randomness is a function of (seed, epoch) alone.

The data already draws its order and augmentation from (seed, epoch, index). What remains is the
global generators (dropout masks, anything a module draws), which run on from wherever the last
epoch left them; Lightning does not store them in checkpoints, so a run resumed from
``last.ckpt`` would continue from a different state. Reseeding them at every epoch start makes a
resumed run replay exactly what the uninterrupted run did.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 0x5EED]).generate_state(1)[0])


class EpochSeedCallback(Callback):
    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = seed

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        value = epoch_seed(self.seed, trainer.current_epoch)
        torch.manual_seed(value)
        np.random.seed(value)
        random.seed(value)
