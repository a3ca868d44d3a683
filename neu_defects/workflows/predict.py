"""``predict(cfg)``: class probabilities of image files as CSV (``python -m neu_defects.predict``).

PATH is a checkpoint or an exported ``.onnx``. Every image is preprocessed as training fed the model
(any size, gray or RGB, 8 or 16 bit); the CSV has ``path``, ``pred`` (class name), ``confidence``
and ``p_<class>`` for every class. A folder is searched recursively for image files; a file that
cannot be decoded is listed and skipped.
"""

from __future__ import annotations

import csv
from typing import Any

import numpy as np
from omegaconf import DictConfig
from rich.progress import track

from neu_defects.core.cli import log, quiet_libraries
from neu_defects.core.errors import UserError
from neu_defects.core.io import atomic_write
from neu_defects.data.io import find_images
from neu_defects.deploy.backends import Preprocessor, open_backend, softmax


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Write the CSV; returns the rows written and the (path, reason) of every skipped file."""
    quiet_libraries()
    if cfg.batch_size < 1:
        raise UserError(f"batch_size={cfg.batch_size}: pass a positive number of images per batch")
    files = find_images(str(cfg.input))
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
