"""``SummaryCallback``: the Hydra callback that writes a multirun's summary, and its study, when it ends."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from neu_defects.core.cli import log
from neu_defects.core.errors import UserError
from neu_defects.reporting.studies import write_study
from neu_defects.reporting.sweep import write_summary


class SummaryCallback(Callback):
    """Hydra callback: write the summary when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            write_summary(config.hydra.sweep.dir)
            if config.get("study"):
                write_study(config.hydra.sweep.dir, config.study.name)
        except UserError as err:
            # A sweep whose jobs never started has nothing to summarise; say so, do not mask its end.
            log.warning("no sweep summary: %s", err)
