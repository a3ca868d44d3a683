"""Reading neu-defects checkpoints safely and rebuilding the module that wrote them.

Checkpoints are loaded with ``weights_only=True``: a file can carry tensors and plain data, never
code to execute. The ``neu_defects`` record a module writes into its checkpoint holds the resolved
model config, so a checkpoint alone rebuilds its model.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from neu_defects.core.errors import UserError
from neu_defects.core.io import atomic_write_bytes

RECORD = "neu_defects"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: pass ckpt_path=<run dir>/checkpoints/best.ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise UserError(
            f"checkpoint {path} cannot be read ({str(err).splitlines()[0]}): it is truncated, foreign or "
            "not a PyTorch file; use a checkpoint written by neu-defects"
        ) from err
    if not isinstance(checkpoint, dict) or RECORD not in checkpoint or "state_dict" not in checkpoint:
        raise UserError(f"checkpoint {path} was not written by neu-defects (it has no '{RECORD}' record): "
                        "use a checkpoint from a run's checkpoints/ folder")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file beside their path, then renamed over it.

    Lightning's own save stages the file in the system temp folder and moves it; when that folder
    is on another file system than the run (tmpfs, a local disk beside network storage) the move
    is a copy, and a kill during it leaves a torn ``last.ckpt``. A rename in the same folder is
    atomic: a killed run leaves the previous checkpoint or the new one, whole.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())


def check_state_dict(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str | Path) -> None:
    """Raise a UserError naming the first mismatching keys and shapes, if any."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    # An empty tensor is a buffer sized when fitted (e.g. a Gaussian's mean): it takes the stored shape.
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state_dict and state_dict[k].shape != v.shape and v.numel() > 0]
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(items[:3])}{' …' if len(items) > 3 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)) if items]
        raise UserError(f"checkpoint {source} does not match the model ({'; '.join(parts)}): "
                        "use a checkpoint of the same model config")


def load_module(path: str | Path, task: str | None = None):
    """Rebuild the LightningModule recorded in a neu-defects checkpoint and load its weights.

    ``task`` ("classifier" or "anomaly"), when given, is what the caller can use.
    """
    checkpoint = read_checkpoint(path)
    record = checkpoint[RECORD]
    if task is not None and record.get("task") != task:
        raise UserError(f"checkpoint {path} holds a model of task {record.get('task')!r}, not {task!r}: "
                        f"pass a {task} checkpoint")
    if not record.get("config"):
        raise UserError(f"checkpoint {path} has no model config: it was saved outside neu_defects.train")
    module = instantiate(record["config"])
    check_state_dict(module, checkpoint["state_dict"], path)
    module.load_state_dict(checkpoint["state_dict"])
    module.restore_record(record)
    module.build_config = record["config"]
    return module.eval()
