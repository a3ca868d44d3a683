"""One image's answer as CSV rows, in the columns ``python -m neu_defects.predict`` writes.

A classifier: ``path,pred,confidence,p_<class>...`` with 6 decimals. A detector: one row per box
scored at least ``min_score``, ``path,label,score,x1,y1,x2,y2`` in pixels of the original image
(score to 4 decimals, corners to 2), boxes by score descending.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neu_defects_runtime.preprocess import Preprocessor, decode_image

DETECTION_COLUMNS = ["path", "label", "score", "x1", "y1", "x2", "y2"]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def columns(record: dict) -> list[str]:
    if record["task"] == "detector":
        return DETECTION_COLUMNS
    return ["path", "pred", "confidence", *(f"p_{name}" for name in record["class_names"])]


def number(value: float) -> str:
    """A float as pandas writes it (shortest repr), for the detector's rounded columns."""
    return repr(float(value))


class Answerer:
    """Image path -> its CSV rows (without the header), for the model's task."""

    def __init__(self, model, min_score: float = 0.3):
        self.model, self.record = model, model.record
        self.names = list(self.record["class_names"])
        self.preprocess = Preprocessor(self.record["input_spec"])
        self.min_score = min_score

    def __call__(self, path: Path) -> list[list[str]]:
        if self.record["task"] == "detector":
            return self.boxes(path)
        probs = softmax(self.model.logits(self.preprocess(path)[None]))[0]
        k = int(probs.argmax())
        return [[str(path), self.names[k], *(f"{v:.6f}" for v in (probs[k], *probs))]]

    def boxes(self, path: Path) -> list[list[str]]:
        # A detector sees RGB, whatever the file holds; its boxes come back in the model's square frame.
        array = decode_image(path, 3)
        found = self.model.detect(self.preprocess.prepare(array))
        keep = np.asarray(found["scores"]) >= self.min_score
        size = self.preprocess.size
        factors = np.array([array.shape[1] / size, array.shape[0] / size] * 2, dtype=np.float64)
        boxes = (np.asarray(found["boxes"], np.float64).reshape(-1, 4)[keep] * factors).astype(np.float32)
        scores = np.asarray(found["scores"], np.float64)[keep]
        labels = np.asarray(found["labels"]).reshape(-1)[keep]
        rows = []
        for k in np.argsort(-scores, kind="stable"):
            corners = np.round(boxes[k].astype(np.float64), 2)
            rows.append([str(path), self.names[int(labels[k])], number(np.round(scores[k], 4)),
                         *(number(c) for c in corners)])
        return rows
