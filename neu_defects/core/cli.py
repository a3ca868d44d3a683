"""What every Hydra entry point shares: one-line user errors and building objects from config."""

from __future__ import annotations

import functools
import gc
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

from neu_defects.core.errors import Interrupted, UserError
from neu_defects.core.io import write_text

log = logging.getLogger("neu_defects")

# Written into a multirun job's directory when the job fails; the sweep summary reads its first line.
ERROR_FILE = "error.txt"


def _not_an_advert(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip:")


def quiet_libraries() -> None:
    """Silence the update check and the warnings that carry no action for a user of this tool."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    # Lightning advertises its cloud products on every fit; the same function object is added once.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_an_advert)
    # Lightning 2.6 still tests isinstance(spec, LeafSpec), which torch 2.14 deprecates on each call.
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    # Frozen backbones are in eval mode and fitted (not trained) nets return no loss, on purpose.
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
    warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    # An evaluation pipeline has no spatial step for the boxes to follow: they pass unchanged, as meant.
    warnings.filterwarnings("ignore", message=".*Got processor for bboxes, but no transform to process it.*")
    # The ONNX exporter and quantiser log every optimisation pass at INFO; the COCO evaluation its
    # summary table at every validation.
    for name in ("onnxscript", "onnx_ir", "onnxruntime", "faster_coco_eval"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Trackers: MLflow narrates creating its SQLite store (the variable counts when MLflow is imported
    # later, the level when it already is), Lightning warns that it creates a new experiment (every
    # sweep's is new), wandb prints a banner; the run logs one line of its own about where it went.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.loggers.mlflow").setLevel(logging.ERROR)
    os.environ.setdefault("WANDB_SILENT", "true")


def user_error(err: BaseException) -> UserError | None:
    """The UserError behind ``err``: Hydra wraps what a constructor raises, it is still the user's to fix."""
    cause = err if isinstance(err, UserError) else err.__cause__ if isinstance(err, InstantiationException) else None
    return cause if isinstance(cause, UserError) else None


def exit_on_user_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a UserError into one line on stderr and exit status 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UserError, InstantiationException) as err:
            cause = user_error(err)
            if cause is None:
                raise
            print(f"neu-defects: error: {cause}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def run_task(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run a Hydra task function; in a multirun, a failing job must not end the sweep.

    A single run keeps ``exit_on_user_error``. A multirun job that raises writes its error to
    ``<job dir>/error.txt`` (one line, then the traceback) and returns None: Hydra's launchers
    stop the whole sweep at the first exception, which would lose the jobs still to come and the
    summary of those done. The sweeper sees None as a failed trial. An interrupted job (Ctrl-C)
    is recorded too, but re-raised: the user asked the sweep to stop.
    """
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return exit_on_user_error(fn)(cfg)
    error_file = Path(hydra_cfg.runtime.output_dir) / ERROR_FILE
    error_file.unlink(missing_ok=True)
    try:
        return fn(cfg)
    except Exception as err:
        cause = user_error(err)
        line = str(cause) if cause else f"{type(err).__name__}: {err}".splitlines()[0]
        log.error("job %s failed: %s", hydra_cfg.job.num, line)
        write_text(error_file, f"{line}\n\n{traceback.format_exc()}")
        if isinstance(cause, Interrupted):
            raise
        return None
    finally:
        # A finished job's trainer and module form reference cycles, and what they hold outside
        # Python's heap (ONNX Runtime sessions, for one) does not count towards the collector's
        # thresholds: free it before the next job allocates its own.
        gc.collect()


def headline(metrics: dict[str, float], main: str) -> str:
    """A run's closing figures: its task's main metric first, then the other overall test metrics."""
    overall = [k for k in metrics if k.startswith("test/") and k.count("/") == 1 and k != main]
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in [main, *overall][:4] if k in metrics)


def instantiate_dict(cfg: DictConfig | None, **kwargs) -> list[Any]:
    """Build each named entry of a dict config (callbacks, loggers); ``null`` entries are off."""
    if not cfg:
        return []
    return [instantiate(entry, **kwargs) for entry in cfg.values() if entry is not None and "_target_" in entry]
