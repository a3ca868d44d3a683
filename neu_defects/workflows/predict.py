"""``predict(cfg)``: a model's answers for image files as CSV (``python -m neu_defects.predict``).

PATH is a checkpoint or an exported ``.onnx``. Every image is preprocessed as training fed the model
(any size, gray or RGB, 8 or 16 bit). For a classifier the CSV has ``path``, ``pred`` (class name),
``confidence`` and ``p_<class>`` for every class; for a detector, one row per box scored at least
``min_score``: ``path,label,score,x1,y1,x2,y2`` in pixels of the original image, and with
``annotate=DIR`` each image with its boxes drawn; for an anomaly model, ``path,score,is_anomaly``
(score at least the threshold learned on validation), and with ``annotate=DIR`` each image under
its anomaly map. A folder is searched recursively for image files; a file that cannot be decoded
is listed and skipped.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from PIL import Image, ImageDraw
from rich.progress import track

from neu_defects.core.cli import log, quiet_libraries
from neu_defects.core.errors import UserError
from neu_defects.core.io import atomic_write
from neu_defects.data.detection import scaled
from neu_defects.data.io import decode_image, find_images, resize
from neu_defects.deploy.anomaly import open_anomaly
from neu_defects.deploy.backends import Preprocessor, model_task, open_backend, softmax
from neu_defects.deploy.detection import open_detector
from neu_defects.reporting.detection import annotate_image, detection_rows
from neu_defects.reporting.tables import write_csv
from neu_defects.saliency.render import overlay, save_png


def annotation_path(folder: str | Path, path: Path, files: list[Path]) -> Path:
    """Where ``annotate=folder`` draws ``path``: its place below the files' common folder, as a PNG,
    so two images of one name in different subfolders keep both drawings."""
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    return Path(folder) / path.parent.relative_to(root) / f"{path.stem}.png"


def detect_boxes(detector, preprocess: Preprocessor, array: np.ndarray, min_score: float) -> dict[str, np.ndarray]:
    """A detector's boxes scored at least ``min_score`` in one decoded (H, W, 3) image, in its own pixels."""
    found = detector.detect(preprocess.prepare(array))
    keep = found["scores"] >= min_score
    return {"boxes": scaled(found["boxes"][keep], (preprocess.size, preprocess.size), (array.shape[1], array.shape[0])),
            "scores": found["scores"][keep], "labels": found["labels"][keep]}


def predict_boxes(cfg: DictConfig, files: list[Path]) -> dict[str, Any]:
    """The detector's boxes for every file, in the file's own pixels."""
    if not 0 <= cfg.min_score <= 1:
        raise UserError(f"min_score={cfg.min_score}: pass a score between 0 and 1")
    detector = open_detector(cfg.ckpt_path, cfg.get("backend"))
    preprocess = Preprocessor(detector.spec)
    paths, detections, skipped = [], [], []
    for path in track(files, description=f"detecting in {len(files)} files", transient=True,
                      disable=not cfg.progress):
        try:
            array = decode_image(path, 3)
        except UserError as err:
            skipped.append((str(path), str(err)))
            continue
        detection = detect_boxes(detector, preprocess, array, cfg.min_score)
        paths.append(str(path))
        detections.append(detection)
        if cfg.annotate:
            save_png(annotate_image(array, detection, detector.class_names), annotation_path(cfg.annotate, path, files))
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


def anomaly_overlay(array: np.ndarray, amap: np.ndarray, score: float, flagged: bool) -> np.ndarray:
    """The image under its anomaly map (scaled to the map's own range), its score and verdict written on it."""
    spread = float(amap.max() - amap.min())
    pixels = overlay(array, (amap - amap.min()) / spread if spread > 0 else np.zeros_like(amap))
    canvas = Image.fromarray(pixels)
    ImageDraw.Draw(canvas).text((3, 3), f"{score:.4g} {'ANOMALY' if flagged else 'normal'}",
                                fill=(255, 0, 0) if flagged else (255, 255, 255))
    return np.asarray(canvas)


def predict_anomalies(cfg: DictConfig, files: list[Path]) -> dict[str, Any]:
    """Every file's anomaly score and verdict against the model's own threshold."""
    model = open_anomaly(cfg.ckpt_path, cfg.get("backend"))
    preprocess = Preprocessor(model.spec)
    rows, skipped = [], []
    for path in track(files, description=f"scoring {len(files)} files", transient=True, disable=not cfg.progress):
        try:
            array = decode_image(path, preprocess.channels)
        except UserError as err:
            skipped.append((str(path), str(err)))
            continue
        score, amap = model.score(preprocess.prepare(array))
        flagged = score >= model.threshold
        rows.append({"path": str(path), "score": score, "is_anomaly": int(flagged)})
        if cfg.annotate:
            resized = resize(array, preprocess.size)
            save_png(anomaly_overlay(resized, amap, score, flagged), annotation_path(cfg.annotate, path, files))
    for _, reason in skipped:
        log.warning("skipped %s", reason)
    if not rows:
        raise UserError(f"none of the {len(files)} files under input={cfg.input} could be read as an image; "
                        "nothing was written")
    output = write_csv(Path(cfg.output), pd.DataFrame(rows, columns=["path", "score", "is_anomaly"]))
    log.info("%d of %d images flagged (score >= %.4g, %s; %s backend) -> %s%s", sum(r["is_anomaly"] for r in rows),
             len(rows), model.threshold, model.threshold_policy, model.name, output,
             f"; {len(skipped)} unreadable files skipped (listed above)" if skipped else "")
    return {"rows": rows, "skipped": skipped, "output": output}


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Write the CSV; returns the rows written and the (path, reason) of every skipped file."""
    quiet_libraries()
    if cfg.batch_size < 1:
        raise UserError(f"batch_size={cfg.batch_size}: pass a positive number of images per batch")
    files = find_images(str(cfg.input))
    task = model_task(cfg.ckpt_path)
    if task == "detector":
        return predict_boxes(cfg, files)
    if task == "anomaly":
        return predict_anomalies(cfg, files)
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
