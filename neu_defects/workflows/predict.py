"""``predict(cfg)``: a model's answers for image files as CSV (``python -m neu_defects.predict``).

PATH is a checkpoint or an exported ``.onnx``. Every image is preprocessed as training fed the model
(any size, gray or RGB, 8 or 16 bit). For a classifier the CSV has ``path``, ``pred`` (class name),
``confidence`` and ``p_<class>`` for every class; for a detector, one row per box scored at least
``min_score``: ``path,label,score,x1,y1,x2,y2`` in pixels of the original image, and with
``annotate=DIR`` each image with its boxes drawn. A folder is searched recursively for image
files; a file that cannot be decoded is listed and skipped.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from rich.progress import track

from neu_defects.core.cli import log, quiet_libraries
from neu_defects.core.errors import UserError
from neu_defects.core.io import atomic_write
from neu_defects.data.detection import scaled
from neu_defects.data.io import decode_image, find_images
from neu_defects.deploy.backends import Preprocessor, model_task, open_backend, softmax
from neu_defects.deploy.detection import open_detector
from neu_defects.reporting.detection import annotate_image, detection_rows
from neu_defects.reporting.tables import write_csv
from neu_defects.saliency.render import save_png


def predict_boxes(cfg: DictConfig, files: list[Path]) -> dict[str, Any]:
    """The detector's boxes for every file, in the file's own pixels."""
    if not 0 <= cfg.min_score <= 1:
        raise UserError(f"min_score={cfg.min_score}: pass a score between 0 and 1")
    detector = open_detector(cfg.ckpt_path, cfg.get("backend"))
    preprocess = Preprocessor(detector.spec)
    frame = (preprocess.size, preprocess.size)
    paths, detections, skipped = [], [], []
    for path in track(files, description=f"detecting in {len(files)} files", transient=True,
                      disable=not cfg.progress):
        try:
            array = decode_image(path, 3)
        except UserError as err:
            skipped.append((str(path), str(err)))
            continue
        found = detector.detect(preprocess.prepare(array))
        keep = found["scores"] >= cfg.min_score
        detection = {"boxes": scaled(found["boxes"][keep], frame, (array.shape[1], array.shape[0])),
                     "scores": found["scores"][keep], "labels": found["labels"][keep]}
        paths.append(str(path))
        detections.append(detection)
        if cfg.annotate:
            target = Path(cfg.annotate) / f"{Path(path).stem}.png"
            save_png(annotate_image(array, detection, detector.class_names), target)
    for _, reason in skipped:
        log.warning("skipped %s", reason)
    if not paths:
        raise UserError(f"none of the {len(files)} files under input={cfg.input} could be read as an image; "
                        "nothing was written")
    rows = detection_rows(paths, detections, detector.class_names)
    output = write_csv(Path(cfg.output), rows)
    log.info("%d boxes scored >= %g in %d images (%s backend) -> %s%s", len(rows), cfg.min_score, len(paths),
             detector.name, output, f"; {len(skipped)} unreadable files skipped (listed above)" if skipped else "")
    return {"rows": rows, "skipped": skipped, "output": output}


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Write the CSV; returns the rows written and the (path, reason) of every skipped file."""
    quiet_libraries()
    if cfg.batch_size < 1:
        raise UserError(f"batch_size={cfg.batch_size}: pass a positive number of images per batch")
    files = find_images(str(cfg.input))
    if model_task(cfg.ckpt_path) == "detector":
        return predict_boxes(cfg, files)
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
