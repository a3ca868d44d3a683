"""What every Hydra entry point shares: one-line user errors and building objects from config."""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from neu_defects.errors import UserError

log = logging.getLogger("neu_defects")


def quiet_libraries() -> None:
    """Silence the update check and the warnings that carry no action for a user of this tool."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    # Frozen backbones are in eval mode and fitted (not trained) nets return no loss, on purpose.
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
    warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    # The ONNX exporter and quantiser log every optimisation pass at INFO.
    for name in ("onnxscript", "onnx_ir", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.WARNING)


def exit_on_user_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a UserError into one line on stderr and exit status 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UserError, InstantiationException) as err:
            # Hydra wraps what a constructor raises; a UserError inside is still the user's to fix.
            cause = err if isinstance(err, UserError) else err.__cause__
            if not isinstance(cause, UserError):
                raise
            print(f"neu-defects: error: {cause}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def headline(metrics: dict[str, float]) -> str:
    """The first two metrics of a run, for its closing log line."""
    return ", ".join(f"{k} {v:.4f}" for k, v in list(metrics.items())[:2])


def instantiate_dict(cfg: DictConfig | None, **kwargs) -> list[Any]:
    """Build each named entry of a dict config (callbacks, loggers); ``null`` entries are off."""
    if not cfg:
        return []
    return [instantiate(entry, **kwargs) for entry in cfg.values() if entry is not None and "_target_" in entry]
