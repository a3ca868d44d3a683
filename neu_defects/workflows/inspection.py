"""What the inspection page (``python -m neu_defects.app``) shows for one image, without the web page.

Three slots, each for a model of one task, any of them alone: ``ckpt_path`` a classifier
(class probabilities and the class activation map ``explain`` draws for it: the same method,
layer and overlay), ``anomaly_ckpt_path`` an anomaly model (its score against the threshold its
checkpoint learned, and its map drawn as ``predict annotate=`` draws it) and
``detector_ckpt_path`` a detector (its boxes drawn as ``predict annotate=`` draws them). Every
model gets the image decoded and preprocessed as its training run fed it.

The gallery beside the page lists the test split of the run that wrote the first checkpoint given
(its ``split.csv``); with a classifier, the images it gets wrong come first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from neu_defects.core.checkpoint import load_module
from neu_defects.core.cli import log
from neu_defects.core.errors import UserError
from neu_defects.data.index import build_index
from neu_defects.data.io import decode_image, resize
from neu_defects.data.splits import read_split_csv
from neu_defects.deploy.anomaly import open_anomaly
from neu_defects.deploy.backends import Preprocessor, TorchBackend, model_task, predict_logits, softmax
from neu_defects.deploy.detection import open_detector
from neu_defects.reporting.detection import annotate_image
from neu_defects.saliency.cam import CAMExplainer
from neu_defects.saliency.render import overlay
from neu_defects.saliency.settings import resolve_setting
from neu_defects.workflows.builders import default_split_file
from neu_defects.workflows.predict import anomaly_overlay, detect_boxes

# Each slot of the page's config and the task of the model it takes.
SLOTS = {"ckpt_path": "classifier", "anomaly_ckpt_path": "anomaly", "detector_ckpt_path": "detector"}


class Classifier:
    """A classifier checkpoint with the CAM ``explain`` uses for it by default: one pass gives both
    the probabilities and the map. A checkpoint, not an export: the map needs the net's gradients."""

    def __init__(self, path: str | Path):
        if Path(path).suffix.lower() == ".onnx":
            raise UserError(f"ckpt_path={path} is an ONNX export: the class activation map needs gradients, "
                            "pass the checkpoint it was exported from (<run>/checkpoints/best.ckpt)")
        self.module = load_module(path, task="classifier")
        self.class_names, spec = list(self.module.class_names), self.module.input_spec
        self.preprocess = Preprocessor(spec)
        setting = resolve_setting(self.module.net, spec["in_chans"], spec["image_size"])
        self.explainer = CAMExplainer.from_setting(self.module.net, setting, chunk_size=1)

    def __call__(self, array: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
        """({class: probability}, the map over the image at its own resolution) of a decoded image."""
        maps, logits = self.explainer(torch.from_numpy(self.preprocess.prepare(array))[None])
        probs = softmax(logits.float().numpy())[0]
        return dict(zip(self.class_names, map(float, probs), strict=True)), overlay(array, maps[0])

    def probabilities(self, arrays: list[np.ndarray]) -> np.ndarray:
        """(N, C) probabilities of decoded images, batched, without maps: for ranking a whole split."""
        batch = np.stack([self.preprocess.prepare(a) for a in arrays])
        return softmax(predict_logits(TorchBackend(self.module), batch))


@dataclass
class Inspection:
    """One image seen by every model given; a model not given leaves its fields None."""

    image: np.ndarray
    probabilities: dict[str, float] | None = None
    cam: np.ndarray | None = None
    anomaly_score: float | None = None
    threshold: float | None = None
    anomaly_map: np.ndarray | None = None
    flat_map: bool = False  # one value everywhere: the model scores the image as a whole
    found: list[str] | None = None  # the detector's boxes as "<class> <score>", best first
    boxes: np.ndarray | None = None
    seconds: float = 0.0

    @property
    def anomalous(self) -> bool | None:
        return None if self.anomaly_score is None else self.anomaly_score >= self.threshold

    def verdict(self) -> str:
        """The anomaly model's answer in words: score, threshold and what they say."""
        if self.anomaly_score is None:
            return ""
        relation = ">=" if self.anomalous else "<"
        flat = " (its map is flat: the model scores the image as a whole)" if self.flat_map else ""
        return (f"**{'anomalous' if self.anomalous else 'normal'}**: score {self.anomaly_score:.4g} {relation} "
                f"threshold {self.threshold:.4g}{flat}")

    def summary(self, name: str) -> str:
        """One line per model for the page's status: what each said about ``name``."""
        height, width = self.image.shape[:2]
        lines = [f"**{name}** ({width} x {height} px), answered in {self.seconds * 1000:.0f} ms"]
        if self.probabilities is not None:
            top = max(self.probabilities, key=self.probabilities.get)
            lines.append(f"classifier: **{top}** ({self.probabilities[top]:.2f})")
        if self.anomaly_score is not None:
            lines.append(f"anomaly model: {self.verdict()}")
        if self.found is not None:
            lines.append(f"detector: {len(self.found)} box(es)" + (f": {', '.join(self.found)}" if self.found else ""))
        return "  \n".join(lines)


class Inspector:
    """Opened models, any of them None; ``inspect(path)`` runs each given on one image file.
    ``paths`` names where each came from, by slot, for the page to say."""

    def __init__(self, classifier: Classifier | None = None, anomaly=None, detector=None, min_score: float = 0.3,
                 paths: dict[str, str] | None = None):
        if not 0 <= min_score <= 1:
            raise UserError(f"min_score={min_score}: pass a score between 0 and 1")
        self.classifier, self.anomaly, self.detector = classifier, anomaly, detector
        self.min_score, self.paths = min_score, paths or {}
        self.anomaly_preprocess = Preprocessor(anomaly.spec) if anomaly else None
        self.detector_preprocess = Preprocessor(detector.spec) if detector else None

    @classmethod
    def open(cls, paths: dict[str, str | None], min_score: float = 0.3) -> Inspector:
        """The models of the slots given (``SLOTS``), each checked to be of its slot's task first."""
        given = {slot: str(paths[slot]) for slot in SLOTS if paths.get(slot) not in (None, "")}
        if not given:
            raise UserError("no model to serve: pass at least one of "
                            + ", ".join(f"{slot}=<{task} run>/checkpoints/best.ckpt" for slot, task in SLOTS.items()))
        for slot, path in given.items():
            check_slot(slot, path)
        return cls(Classifier(given["ckpt_path"]) if "ckpt_path" in given else None,
                   open_anomaly(given["anomaly_ckpt_path"]) if "anomaly_ckpt_path" in given else None,
                   open_detector(given["detector_ckpt_path"]) if "detector_ckpt_path" in given else None,
                   min_score, given)

    def inspect(self, path: str | Path) -> Inspection:
        """Every model's answer for one image file; a file that is not a readable image raises UserError."""
        # Each model gets the file decoded as its training did: gray or RGB per its input_spec.
        return self.answer(lambda channels: decode_image(path, channels))

    def warm_up(self) -> None:
        """Answer for a gray frame once, so that the first real image does not pay the models' one-off
        costs (ONNX Runtime's first run, the trace that finds the map's reference layer)."""
        self.answer(lambda channels: np.full((64, 64, channels), 128, np.uint8))

    def answer(self, read) -> Inspection:
        """Every model's answer for the image ``read(channels)`` gives, 1 (gray) or 3 (RGB) channels."""
        start = time.perf_counter()
        decoded: dict[int, np.ndarray] = {}

        def image(channels: int) -> np.ndarray:
            if channels not in decoded:
                decoded[channels] = read(channels)
            return decoded[channels]

        result = Inspection(image=image(3))
        if self.classifier is not None:
            result.probabilities, result.cam = self.classifier(image(self.classifier.preprocess.channels))
        if self.anomaly is not None:
            preprocess = self.anomaly_preprocess
            array = image(preprocess.channels)
            result.anomaly_score, amap = self.anomaly.score(preprocess.prepare(array))
            result.threshold, result.flat_map = self.anomaly.threshold, bool(amap.max() == amap.min())
            result.anomaly_map = anomaly_overlay(resize(array, preprocess.size), amap, result.anomaly_score,
                                                 result.anomalous)
        if self.detector is not None:
            detection = detect_boxes(self.detector, self.detector_preprocess, image(3), self.min_score)
            result.boxes = annotate_image(image(3), detection, self.detector.class_names)
            best_first = np.argsort(-detection["scores"], kind="stable")
            result.found = [f"{self.detector.class_names[int(detection['labels'][k])]} {detection['scores'][k]:.2f}"
                            for k in best_first]
        result.seconds = time.perf_counter() - start
        return result


def check_slot(slot: str, path: str) -> None:
    """Refuse a missing file, or a model of another task than the slot's, naming the slot it belongs in."""
    if not Path(path).is_file():
        raise UserError(f"{slot}={path} does not exist: pass {slot}=<{SLOTS[slot]} run>/checkpoints/best.ckpt")
    task = model_task(path)
    if task != SLOTS[slot]:
        right = next((s for s, t in SLOTS.items() if t == task), None)
        fix = f"pass it as {right}={path}" if right else f"pass a {SLOTS[slot]} checkpoint"
        raise UserError(f"{slot}={path} holds a model of task {task!r}, not {SLOTS[slot]!r}: {fix}")


@dataclass
class GalleryItem:
    path: Path
    caption: str
    misclassified: bool = False


def run_data(split_file: Path, data_root: str | None) -> dict:
    """Where the split's images live: ``data_root`` if given, else the data config of the run that
    wrote the split (``.hydra/config.yaml``), else the default root ($NEU_DATA_DIR)."""
    config_file = split_file.parent / ".hydra" / "config.yaml"
    data: DictConfig | dict = {}
    if config_file.is_file():
        data = OmegaConf.load(config_file).get("data") or {}
    return {"root": data_root or data.get("root"), "layout": data.get("layout") or "auto",
            "category": data.get("category")}


def split_gallery(ckpt_path: str | Path | None, classifier: Classifier | None,
                  data_root: str | None = None) -> tuple[list[GalleryItem], str]:
    """The test images of the split.csv of ``ckpt_path``'s run with a caption each, misclassified first
    when there is a classifier, and a note saying what the list is (or why it is empty)."""
    split_file = default_split_file(Path(ckpt_path)) if ckpt_path else None
    if split_file is None:
        return [], ("No `split.csv` beside the checkpoint's run directory, so no test images to browse: "
                    "drop an image instead.")
    try:
        return listed(split_file, classifier, data_root)
    except UserError as err:
        log.warning("no gallery: %s", err)
        return [], f"The test split of `{split_file}` cannot be listed: {err}"


def listed(split_file: Path, classifier: Classifier | None, data_root: str | None) -> tuple[list[GalleryItem], str]:
    """``split_gallery``'s list and note; data that does not match the split raises UserError."""
    index = build_index(**run_data(split_file, data_root))
    assignment = read_split_csv(split_file, index)
    samples = [s for s, split in zip(index.samples, assignment, strict=True) if split == "test"]
    truths = [index.class_names[s.label] for s in samples]
    paths = [index.abspath(s) for s in samples]
    if classifier is None:
        items = [GalleryItem(p, f"{t}\n{p.name}") for p, t in zip(paths, truths, strict=True)]
        return items, f"{len(items)} test images of `{split_file}`."
    arrays = [decode_image(p, classifier.preprocess.channels) for p in paths]
    probs = classifier.probabilities(arrays) if arrays else np.zeros((0, 1))
    items = []
    for path, truth, p in zip(paths, truths, probs, strict=True):
        pred = classifier.class_names[int(p.argmax())]
        # The thumbnail shows the first line: the classes; the file's name follows.
        caption = f"{'✓' if pred == truth else '✗'} {truth} → {pred}\n{path.name} ({p.max():.2f})"
        items.append(GalleryItem(path, caption, pred != truth))
    # A stable sort: misclassified first, each group in the split's order.
    items.sort(key=lambda item: not item.misclassified)
    wrong = sum(item.misclassified for item in items)
    return items, (f"{len(items)} test images of `{split_file}`, the {wrong} misclassified first "
                   "(caption: true → predicted class).")
