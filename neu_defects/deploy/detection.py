"""Running a trained detector on image files: PyTorch from a checkpoint, or its ONNX export.

The ONNX graph is the whole detector, post-processing included (torchvision's box decoding,
score threshold, per-class NMS, top-k): it takes one float32 ``image`` (1, 3, S, S) in [0, 1] and
returns ``boxes`` (N, 4) in that S x S frame, ``scores`` (N,) and ``labels`` (N,) as class ids.
It is exported with the TorchScript exporter, which traces torchvision's detection ops to ONNX
(NonMaxSuppression, TopK); the dynamo exporter does not yet handle their data-dependent shapes.
Both backends take the same preprocessed image and return the same dict, and the caller maps
boxes back to the original image's pixels.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neu_defects.deploy.backends import open_in_backend

OUTPUTS = ("boxes", "scores", "labels")
OPSET = 17
Detection = dict[str, np.ndarray]


class TorchDetector:
    name = "torch"

    def __init__(self, module):
        self.net = module.net.eval()
        self.class_names, self.spec = list(module.class_names), module.input_spec

    def detect(self, image: np.ndarray) -> Detection:
        """One (3, S, S) float32 image -> its detections in the S x S frame."""
        with torch.inference_mode():
            out = self.net(torch.from_numpy(np.ascontiguousarray(image))[None])[0]
        return {k: out[k].numpy() for k in OUTPUTS}


def detector_to_onnx(module):
    """The detector as an ONNX model of batch 1, with the neu-defects record in its metadata."""
    import onnx

    from neu_defects.deploy.onnx_io import INPUT, with_record

    size = module.input_spec["image_size"]
    buffer = io.BytesIO()
    # The exporter warns about its own tracing of torchvision's internals; none of it helps a user.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module.net.eval(), (torch.zeros(1, 3, size, size),), buffer, input_names=[INPUT],
                          output_names=list(OUTPUTS), opset_version=OPSET, dynamo=False)
    return with_record(onnx.load_from_string(buffer.getvalue()), module, f"detector: {', '.join(module.class_names)}")


class OnnxDetector:
    name = "onnx"

    def __init__(self, model, source: str | Path, threads: int = 0):
        from neu_defects.deploy.onnx_io import INPUT, task_session

        (self.session, record), self.input_name = task_session(model, source, "detector", threads), INPUT
        self.class_names, self.spec = list(record["class_names"]), record["input_spec"]

    def detect(self, image: np.ndarray) -> Detection:
        outputs = self.session.run(list(OUTPUTS), {self.input_name: np.ascontiguousarray(image[None], np.float32)})
        return dict(zip(OUTPUTS, outputs, strict=True))


def open_detector(path: str | Path, backend: str | None = None) -> TorchDetector | OnnxDetector:
    """The detector at ``path`` (checkpoint or ``.onnx``) in ``backend`` (see ``open_in_backend``)."""
    return open_in_backend(path, backend, "detector", TorchDetector, OnnxDetector, detector_to_onnx)


def _pair(ref: Detection, cand: Detection) -> tuple[int, float]:
    """Greedy, in the reference's score order: each reference box takes the unused candidate of its
    label whose corners differ least. Returns (reference boxes left without one, worst corner difference)."""
    used = np.zeros(len(cand["labels"]), dtype=bool)
    unpaired, worst = 0, 0.0
    for k in np.argsort(-ref["scores"]):
        free = np.flatnonzero(~used & (cand["labels"] == ref["labels"][k]))
        if not len(free):
            unpaired += 1
            continue
        diffs = np.abs(cand["boxes"][free] - ref["boxes"][k]).max(axis=1)
        used[free[diffs.argmin()]] = True
        worst = max(worst, float(diffs.min()))
    return unpaired, worst


def box_parity(reference: list[Detection], candidate: list[Detection], score_floor: float) -> dict[str, Any]:
    """How far two backends' detections of the same images differ, above ``score_floor``.

    Per image, the counts above the floor must agree; then each reference box is paired with the
    candidate box of the same label nearest to it (so two boxes of tied scores may come in either
    order), and the worst corner and score differences are kept. A reference box with no candidate
    of its label counts as a label mismatch.
    """
    worst = {"images": len(reference), "count_mismatches": 0, "label_mismatches": 0,
             "max_box_diff": 0.0, "max_score_diff": 0.0}
    for ref, cand in zip(reference, candidate, strict=True):
        ref, cand = ({k: d[k][d["scores"] >= score_floor] for k in OUTPUTS} for d in (ref, cand))
        if len(ref["scores"]) != len(cand["scores"]):
            worst["count_mismatches"] += 1
            continue
        unpaired, box_diff = _pair(ref, cand)
        worst["label_mismatches"] += unpaired
        worst["max_box_diff"] = max(worst["max_box_diff"], box_diff)
        if len(ref["scores"]):
            score_diff = np.abs(np.sort(ref["scores"]) - np.sort(cand["scores"])).max()
            worst["max_score_diff"] = max(worst["max_score_diff"], float(score_diff))
    return worst
