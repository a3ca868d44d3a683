"""``StepSeedCallback``: each training step's randomness is a function of (seed, epoch, batch) alone.

The data already draws its order and augmentation from (seed, epoch, index). What remains is the
global generators (dropout masks, anything a module draws), which run on from wherever earlier
code left them: Lightning does not store them in checkpoints, and it creates the training
iterator, which draws from the torch generator, at a different point of the first epoch of a
run than of later epochs. A run resumed from ``last.ckpt`` would then draw other masks than the
uninterrupted run. Reseeding them at every training batch, once the batch is loaded, makes a
resumed run replay exactly what the uninterrupted run did.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer


def step_seed(seed: int, epoch: int, batch_idx: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, batch_idx, 0x5EED]).generate_state(1)[0])


class StepSeedCallback(Callback):
    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = seed

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        value = step_seed(self.seed, trainer.current_epoch, batch_idx)
        torch.manual_seed(value)
        np.random.seed(value)
        random.seed(value)
