"""Running a trained classifier on image files, outside the training loop.

Preprocessing is training's own, driven by the model's ``input_spec``: ``decode_image`` and
``resize`` as the RAM cache applies them, then the unaugmented transform of validation and test.
Two backends answer ``logits(batch)`` alike: the PyTorch net rebuilt from a checkpoint, and an
exported ONNX model in ONNX Runtime, whose metadata carries the same spec.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import track

from neu_defects.core.checkpoint import RECORD, load_module, read_checkpoint
from neu_defects.core.errors import UserError
from neu_defects.data.io import decode_image, resize
from neu_defects.data.transforms import build_transform

BACKENDS = ("torch", "onnx")


class Preprocessor:
    """Image file -> (C, H, W) float32 array, exactly as the model was fed in training."""

    def __init__(self, spec: dict[str, Any]):
        self.channels, self.size = int(spec["in_chans"]), int(spec["image_size"])
        self.transform = build_transform(spec["mean"], spec["std"])

    def __call__(self, path: str | Path) -> np.ndarray:
        return self.prepare(decode_image(path, self.channels))

    def prepare(self, array: np.ndarray) -> np.ndarray:
        """A decoded (H, W, C) uint8 image -> the model's input."""
        return self.transform(image=resize(array, self.size))["image"].numpy()


class TorchBackend:
    name = "torch"

    def __init__(self, module):
        self.net = module.net.eval()
        self.class_names, self.spec = list(module.class_names), module.input_spec

    def logits(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.net(torch.from_numpy(batch)).float().numpy()


class OnnxBackend:
    name = "onnx"

    def __init__(self, model, source: str | Path, threads: int = 0):
        # Imported here: the torch backend runs without the [export] extra installed.
        from neu_defects.deploy.onnx_io import INPUT, ort_session, read_record

        self.session, self.input_name = ort_session(model, threads), INPUT
        record = read_record(self.session, source)
        self.class_names, self.spec = list(record["class_names"]), record["input_spec"]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def model_task(path: str | Path) -> str:
    """The task ("classifier", "anomaly", "detector") of a checkpoint or an exported ``.onnx``."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        import onnx

        from neu_defects.deploy.onnx_io import METADATA_KEY

        if not path.is_file():
            raise UserError(f"ONNX model {path} does not exist: pass the output of python -m neu_defects.export")
        try:
            meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception as err:  # protobuf's DecodeError and onnx's own types for a foreign file
            raise UserError(f"{path} cannot be read as ONNX ({str(err).splitlines()[0]}): "
                            "export it again with python -m neu_defects.export") from err
        if METADATA_KEY not in meta:
            raise UserError(f"ONNX model {path} has no '{METADATA_KEY}' metadata: export it with "
                            "python -m neu_defects.export")
        return json.loads(meta[METADATA_KEY]).get("task", "classifier")
    return read_checkpoint(path)[RECORD].get("task", "classifier")


def choose_backend(path: Path, backend: str | None) -> str:
    """``torch`` or ``onnx``: the one asked for, else the file's own (an ``.onnx`` runs only in ONNX Runtime)."""
    if backend not in (None, *BACKENDS):
        raise UserError(f"backend={backend} is not a backend: use one of {', '.join(BACKENDS)}")
    if path.suffix.lower() == ".onnx":
        if backend == "torch":
            raise UserError(f"{path} is an ONNX model, which runs with backend=onnx only: pass the checkpoint "
                            "it was exported from for backend=torch")
        return "onnx"
    return backend or "torch"


def open_in_backend(path: str | Path, backend: str | None, task: str, torch_kind, onnx_kind, to_onnx):
    """The ``task`` model at ``path`` (a checkpoint or an exported ``.onnx``) in ``backend`` (default: the
    file's own): ``torch_kind(module)`` or ``onnx_kind(model, source)``. A checkpoint asked for
    ``backend=onnx`` is converted in memory by ``to_onnx(module)``, as ``neu_defects.export`` would."""
    path = Path(path)
    chosen = choose_backend(path, backend)
    if path.suffix.lower() == ".onnx":
        return onnx_kind(path, path)
    module = load_module(path, task=task)
    return onnx_kind(to_onnx(module), path) if chosen == "onnx" else torch_kind(module)


def open_backend(path: str | Path, backend: str | None = None) -> TorchBackend | OnnxBackend:
    """A classifier at ``path`` (checkpoint or ``.onnx``) in ``backend`` (see ``open_in_backend``)."""
    from neu_defects.deploy.onnx_io import to_onnx

    return open_in_backend(path, backend, "classifier", TorchBackend, OnnxBackend, to_onnx)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def split_arrays(datamodule, name: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A split's (unaugmented) model inputs (N, C, H, W) float32 and labels, in loader order."""
    dataset = datamodule.datasets[name]
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count == 0:
        raise UserError(f"the {name} split is empty: export needs real {name} images; check data.split")
    # An anomaly split's items carry a mask after the label: only the image and label are wanted here.
    items = [dataset[i][:2] for i in range(count)]
    return np.stack([x.numpy() for x, _ in items]), np.array([y for _, y in items])


def predict_logits(backend, images: np.ndarray, batch_size: int = 64, progress: str | None = None) -> np.ndarray:
    """Logits of ``images`` in batches; ``progress`` names a transient progress bar over them."""
    starts = range(0, len(images), batch_size)
    if progress:
        starts = track(starts, description=progress, transient=True)
    return np.concatenate([backend.logits(images[i:i + batch_size]) for i in starts])


def accuracy(backend, images: np.ndarray, labels: np.ndarray) -> float:
    return float((predict_logits(backend, images).argmax(1) == labels).mean())
