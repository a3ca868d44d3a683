"""Running a trained anomaly model on image files: PyTorch from a checkpoint, or its ONNX export.

The ONNX graph is the whole net in eval mode, frozen backbone included: it takes one float32
``image`` (1, C, S, S), normalised as the model was fed, and returns ``score`` (1,) and
``anomaly_map`` (1, 1, S, S). The image threshold learned on validation, and the policy that chose
it, travel in the metadata record, so an export flags anomalies exactly as its checkpoint does.
It is exported at batch 1 with the dynamo exporter: anomalib's PatchCore searches its memory bank
in chunks of patches, a loop that export unrolls for the traced batch, and the TorchScript exporter
loses the channel count of the frozen features before the feature autoencoder's normalisation.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import track

from neu_defects.core.errors import UserError
from neu_defects.deploy.backends import open_in_backend
from neu_defects.models.nets.features import exact_features

OUTPUTS = ("score", "anomaly_map")


class TorchAnomaly:
    name = "torch"

    def __init__(self, module):
        self.net = exact_features(module.net.eval())
        self.class_names, self.spec = list(module.class_names), module.input_spec
        self.threshold, self.threshold_policy = float(module.threshold), module.threshold_policy

    def score(self, image: np.ndarray) -> tuple[float, np.ndarray]:
        """One (C, S, S) float32 image -> (its score, its (S, S) anomaly map)."""
        with torch.inference_mode():
            score, amap = self.net(torch.from_numpy(np.ascontiguousarray(image))[None])
        return float(score[0]), amap[0, 0].float().numpy()


def anomaly_to_onnx(module):
    """The anomaly net as an ONNX model of batch 1, with the record and its threshold in the metadata."""
    from neu_defects.deploy.onnx_io import INPUT, with_record

    spec = module.input_spec
    example = torch.zeros(1, spec["in_chans"], spec["image_size"], spec["image_size"])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module.net.eval(), (example,), input_names=[INPUT], output_names=list(OUTPUTS),
                                        dynamo=True, verbose=False)
        except Exception as err:  # torch.export and the exporter raise many types, each naming the op
            raise UserError(f"{type(module.net).__name__} cannot be exported to ONNX "
                            f"({str(err).splitlines()[0]}); export another anomaly model or predict with the "
                            "checkpoint (backend=torch)") from err
    return with_record(program.model_proto, module, f"anomaly model, normal: {', '.join(module.normal_classes)}")


class OnnxAnomaly:
    name = "onnx"

    def __init__(self, model, source: str | Path, threads: int = 0):
        from neu_defects.deploy.onnx_io import INPUT, task_session

        (self.session, record), self.input_name = task_session(model, source, "anomaly", threads), INPUT
        self.class_names, self.spec = list(record["class_names"]), record["input_spec"]
        self.threshold, self.threshold_policy = float(record["threshold"]), record["threshold_policy"]

    def score(self, image: np.ndarray) -> tuple[float, np.ndarray]:
        score, amap = self.session.run(list(OUTPUTS), {self.input_name: np.ascontiguousarray(image[None], np.float32)})
        return float(score.reshape(-1)[0]), amap[0, 0]


def open_anomaly(path: str | Path, backend: str | None = None) -> TorchAnomaly | OnnxAnomaly:
    """The anomaly model at ``path`` (checkpoint or ``.onnx``) in ``backend`` (see ``open_in_backend``)."""
    return open_in_backend(path, backend, "anomaly", TorchAnomaly, OnnxAnomaly, anomaly_to_onnx)


def anomaly_parity(reference, candidate, images: np.ndarray) -> dict[str, Any]:
    """The largest score and map differences of two backends over the same images."""
    worst = {"images": len(images), "max_score_diff": 0.0, "max_map_diff": 0.0}
    for image in track(images, description=f"parity on {len(images)} images", transient=True):
        (s_ref, m_ref), (s_cand, m_cand) = reference.score(image), candidate.score(image)
        worst["max_score_diff"] = max(worst["max_score_diff"], abs(s_ref - s_cand))
        worst["max_map_diff"] = max(worst["max_map_diff"], float(np.abs(m_ref - m_cand).max()))
    return worst
