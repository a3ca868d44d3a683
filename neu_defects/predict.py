"""``python -m neu_defects.predict ckpt_path=PATH input=IMAGE_OR_DIR_OR_GLOB output=preds.csv [backend=onnx|torch]``.

PATH is a checkpoint or an exported ``.onnx``. Every image is preprocessed as training fed the model
(any size, gray or RGB, 8 or 16 bit); the CSV has ``path``, ``pred`` (class name), ``confidence``
and ``p_<class>`` for every class. A folder is searched recursively for image files; a file that
cannot be decoded is listed and skipped.
"""

from __future__ import annotations

import csv
import glob
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig
from rich.progress import track

from neu_defects.cli import exit_on_user_error, log, quiet_libraries
from neu_defects.data.io import IMAGE_EXTENSIONS
from neu_defects.errors import UserError
from neu_defects.inference import Preprocessor, open_backend, softmax
from neu_defects.io_utils import atomic_write


def resolve_inputs(spec: str) -> list[Path]:
    """An image file, a folder (searched recursively for image extensions) or a glob, sorted."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise UserError(f"input={spec} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return files
    files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    if not files:
        raise UserError(f"input={spec} is no file or folder and matches no files as a glob: "
                        "pass an image, a folder of images or a quoted pattern such as 'photos/*.png'")
    return files


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Write the CSV; returns the rows written and the (path, reason) of every skipped file."""
    quiet_libraries()
    if cfg.batch_size < 1:
        raise UserError(f"batch_size={cfg.batch_size}: pass a positive number of images per batch")
    files = resolve_inputs(str(cfg.input))
    backend = open_backend(cfg.ckpt_path, cfg.get("backend"))
    preprocess = Preprocessor(backend.spec)
    names = backend.class_names
    rows, skipped = [], []
    chunks = [files[i:i + cfg.batch_size] for i in range(0, len(files), cfg.batch_size)]
    for chunk in track(chunks, description=f"predicting {len(files)} files", transient=True,
                       disable=not cfg.progress):
        arrays, kept = [], []
        for path in chunk:
            try:
                arrays.append(preprocess(path))
                kept.append(path)
            except UserError as err:
                skipped.append((str(path), str(err)))
        if not kept:
            continue
        probs = softmax(backend.logits(np.stack(arrays)))
        for path, p in zip(kept, probs, strict=True):
            k = int(p.argmax())
            rows.append({"path": str(path), "pred": names[k], "confidence": float(p[k]),
                         **{f"p_{name}": float(v) for name, v in zip(names, p, strict=True)}})
    for _, reason in skipped:
        log.warning("skipped %s", reason)
    if not rows:
        raise UserError(f"none of the {len(files)} files under input={cfg.input} could be read as an image; "
                        "nothing was written")

    columns = ["path", "pred", "confidence", *(f"p_{name}" for name in names)]

    def write(handle) -> None:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row["path"], row["pred"], *(f"{row[c]:.6f}" for c in columns[2:])])

    output = atomic_write(cfg.output, write)
    log.info("%d predictions (%s backend) -> %s%s", len(rows), backend.name, output,
             f"; {len(skipped)} unreadable files skipped (listed above)" if skipped else "")
    return {"rows": rows, "skipped": skipped, "output": output}


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(predict)(cfg)


if __name__ == "__main__":
    main()
