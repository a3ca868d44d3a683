"""Clocks for the benchmark: training steps (Lightning's loop and a plain one), data batches, latency.

Rates are images per second of single steps after warm-up, with the process's CPU time beside the
wall clock, so a figure says how much of a change is the machine's load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose
from lightning import Callback
from omegaconf import DictConfig

from neu_defects.workflows.builders import build_trainer


def now() -> tuple[float, float]:
    """(wall, process CPU) seconds. CPU time is what the process itself spent: other jobs sharing
    the cores slow the wall clock but hardly change it."""
    return time.perf_counter(), time.process_time()


class StepClock(Callback):
    """The clocks at the end of every training batch, and the batch's size."""

    def __init__(self):
        self.ends: list[tuple[float, float]] = []
        self.sizes: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.ends.append(now())
        self.sizes.append(len(batch[1]))


def step_rates(ends: list[tuple[float, float]], sizes: list[int], warmup: int) -> list[tuple[float, float]]:
    """(images per wall second, images per CPU second) of every batch after the first ``warmup``."""
    return [(size / (b[0] - a[0]), size / (b[1] - a[1]))
            for a, b, size in zip(ends[warmup:-1], ends[warmup + 1:], sizes[warmup + 1:], strict=True)]


def median_rate(steps: list[tuple[float, float]]) -> tuple[float, float]:
    """The median step's images per wall and per CPU second. On this shared VM single steps swing by
    +-15% (the host's load, not ours); the median of many steps ignores those swings where a total
    over a round, or the best of two rounds, does not."""
    return tuple(float(np.median([step[k] for step in steps])) for k in (0, 1))


def lightning_round(cfg: DictConfig, model, datamodule, steps: int, warmup: int) -> list[tuple[float, float]]:
    clock = StepClock()
    # One epoch of `steps` batches. Validation, which would run after the last timed batch, is
    # skipped: it costs time outside the measurement and the plain loop has none.
    trainer = build_trainer(cfg, [clock], max_epochs=1, limit_train_batches=steps, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    return step_rates(clock.ends, clock.sizes, warmup)


def plain_round(model, datamodule, steps: int, warmup: int) -> list[tuple[float, float]]:
    """The loop a researcher would write by hand: the same module, loss, optimiser and loader."""
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(0)
    optimizer = model.build_optimizer()
    model.train()
    ends, sizes = [], []
    for step, (x, y) in enumerate(loader):
        if step == steps:
            break
        loss = model.criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ends.append(now())
        sizes.append(len(y))
    return step_rates(ends, sizes, warmup)


def data_round(datamodule, steps: int, warmup: int) -> list[tuple[float, float]]:
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(1)
    ends, sizes = [], []
    for step, (_, y) in enumerate(loader):
        if step == steps:
            break
        ends.append(now())
        sizes.append(len(y))
    return step_rates(ends, sizes, warmup)


def latency_ms(run: Callable[[], Any], warmup: int, runs: int) -> dict[str, float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(1000 * (time.perf_counter() - start))
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90))}


def train_config(overrides: list[str], bench: DictConfig, run_dir: Path) -> DictConfig:
    extra = [f"seed={bench.seed}", f"paths.output_dir={run_dir}", "callbacks.progress_bar=null"]
    return compose(config_name="train", overrides=[*overrides, *extra,
                                                   *([f"data.root={bench.data_root}"] if bench.data_root else [])])
