"""``cam_boxes(cfg)``: CAMs of a classifier as scored boxes (``python -m neu_defects.cam_boxes``).

Weak supervision beside full: a classifier trained on image labels only explains each validation
and test image (the map of its predicted class, with the best CAM setting of its net family
unless the config names one); each map is thresholded at a fraction of its maximum and every
region boxed (``neu_defects.saliency.boxes``), scored by class probability x region peak. The
threshold is the one of ``thresholds`` with the best validation mAP@0.5, and the test split is
scored at it with the COCO mAP the detector is scored with (``models.detection_metrics``), on the
training run's split, against the index's boxes with their own classes, in original pixels.

Writes ``metrics.json`` (``test/map_50``, ``test/map``, ``test/map_75``, ``test/mar_100``,
``test/map_50/<class>``, the same at ``val/``, and ``cam_boxes/*``: threshold and CAM setting),
``thresholds.md`` / ``thresholds.csv`` (the curve on both splits; the test column is for the
record only), ``cam_boxes.csv`` (every test box) and ``plots/cam_boxes.png``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from rich.progress import track

from neu_defects.core.cli import headline, log, quiet_libraries
from neu_defects.core.errors import UserError
from neu_defects.core.io import write_json, write_text
from neu_defects.data.io import decode_image, original_size
from neu_defects.models.detection_metrics import mean_average_precision, summarize
from neu_defects.reporting.tables import markdown_table, write_csv
from neu_defects.saliency.boxes import (
    Detection,
    check_threshold,
    extra_classes,
    ground_truth,
    image_detections,
)
from neu_defects.saliency.cam import CAMExplainer
from neu_defects.saliency.render import Tile, render_tiles
from neu_defects.saliency.settings import resolve_setting
from neu_defects.workflows.builders import load_checkpoint_and_data

SPLITS = ("val", "test")
CURVE_KEYS = ("map_50", "map", "boxes_per_image")
PANEL = 160


@dataclass
class SplitCams:
    """A split's maps (predicted class, plus ``extra`` classes over the floor), probabilities and truth."""

    positions: np.ndarray
    paths: list[str]
    originals: list[tuple[int, int]]
    targets: list[Detection]
    labels: np.ndarray
    maps: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))
    probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    extra: list[dict[int, np.ndarray]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.positions)

    def class_maps(self, i: int) -> dict[int, np.ndarray]:
        return {int(self.probs[i].argmax()): self.maps[i], **self.extra[i]}

    def detections(self, threshold: float, min_area_fraction: float) -> list[Detection]:
        return [image_detections(self.class_maps(i), self.probs[i], self.originals[i], threshold,
                                 min_area_fraction) for i in range(len(self))]


def explain_split(explainer: CAMExplainer, datamodule, split: str, batch_size: int,
                  class_floor: float | None) -> SplitCams:
    """CAMs of the predicted class (and of the classes over ``class_floor``) for every image of ``split``."""
    index, dataset = datamodule.index, datamodule.datasets[split]
    positions = np.asarray(datamodule.dataset_indices[split])
    if not len(positions):
        raise UserError(f"the {split} split of this run is empty: the threshold is chosen on validation "
                        "images, so the run needs both a validation and a test split")
    samples = [index.samples[int(i)] for i in positions]
    cams = SplitCams(positions, [s.path for s in samples], [original_size(index.abspath(s)) for s in samples],
                     [ground_truth(s.boxes, s.box_labels) for s in samples],
                     np.array([s.label for s in samples]))
    device = next(explainer.net.parameters()).device
    maps, probs, extra = [], [], []
    for first in track(range(0, len(dataset), batch_size), description=f"CAMs of the {split} images",
                       transient=True):
        items = range(first, min(first + batch_size, len(dataset)))
        x = torch.stack([dataset[i][0] for i in items]).to(device)
        batch_maps, logits = explainer(x)
        batch_probs = logits.float().softmax(-1).cpu()
        wanted = extra_classes(batch_probs, class_floor)
        pairs = [(j, k) for j, classes in enumerate(wanted) for k in classes]
        batch_extra: list[dict[int, np.ndarray]] = [{} for _ in wanted]
        if pairs:
            extra_maps, _ = explainer(x[[j for j, _ in pairs]], [k for _, k in pairs])
            for (j, k), cam_map in zip(pairs, extra_maps, strict=True):
                batch_extra[j][k] = cam_map
        maps.append(batch_maps)
        probs.append(batch_probs.numpy())
        extra += batch_extra
    cams.maps, cams.probs, cams.extra = np.concatenate(maps), np.concatenate(probs), extra
    return cams


def score(cams: SplitCams, threshold: float, min_area_fraction: float, names: list[str],
          prefix: str) -> tuple[dict[str, float], list[Detection]]:
    """COCO mAP summary (``models.detection_metrics.summarize``) of a split's CAM boxes at one threshold."""
    detections = cams.detections(threshold, min_area_fraction)
    metric = mean_average_precision()
    metric.update(detections, cams.targets)
    summary = summarize(metric.compute(), names, prefix)
    summary[f"{prefix}/boxes_per_image"] = float(np.mean([len(d["boxes"]) for d in detections]))
    return summary, detections


def threshold_curve(splits: dict[str, SplitCams], thresholds: list[float], min_area_fraction: float,
                    names: list[str]) -> tuple[list[dict[str, Any]], dict[float, dict[str, Any]]]:
    """A row per threshold (val and test mAP@0.5, mAP, boxes per image), and every summary and detection."""
    rows, scored = [], {}
    for threshold in thresholds:
        row: dict[str, Any] = {"threshold": threshold}
        scored[threshold] = {}
        for split, cams in splits.items():
            summary, detections = score(cams, threshold, min_area_fraction, names, split)
            scored[threshold][split] = (summary, detections)
            row.update({f"{split}/{k}": summary[f"{split}/{k}"] for k in CURVE_KEYS})
        log.info("threshold %.2f: val mAP@0.5 %.4f, test mAP@0.5 %.4f", threshold, row["val/map_50"],
                 row["test/map_50"])
        rows.append(row)
    return rows, scored


def choose_threshold(rows: list[dict[str, Any]]) -> float:
    """The threshold of the best validation mAP@0.5; ties go to the first listed. Never test."""
    return rows[int(np.argmax([r["val/map_50"] for r in rows]))]["threshold"]


def cam_boxes(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    quiet_libraries()
    run_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    thresholds = list(dict.fromkeys(check_threshold(t) for t in cfg.thresholds))
    if not thresholds:
        raise UserError("thresholds=[] is empty: list the fractions of a map's maximum to choose from, "
                        "e.g. thresholds=[0.3,0.5]")
    floor = cfg.get("class_floor")
    model, datamodule = load_checkpoint_and_data(cfg, task="classifier", needs_boxes=True)
    net, spec, names = model.net, model.input_spec, model.class_names
    setting = resolve_setting(net, spec["in_chans"], spec["image_size"], cfg.method, cfg.target_layer,
                              cfg.aug_smooth, cfg.eigen_smooth)
    explainer = CAMExplainer.from_setting(net, setting, cfg.batch_size)
    label = cfg.get("label") or Path(cfg.ckpt_path).resolve().parent.parent.name
    log.info("CAM boxes of %s (%s at %d px): %s; thresholds %s", label, type(net).__name__,
             spec["image_size"], explainer.describe(), thresholds)
    splits = {split: explain_split(explainer, datamodule, split, cfg.batch_size, floor) for split in SPLITS}
    rows, scored = threshold_curve(splits, thresholds, cfg.min_area_fraction, names)
    chosen = choose_threshold(rows)
    test_summary, test_detections = scored[chosen]["test"]
    val_summary, _ = scored[chosen]["val"]
    accuracy = {f"cam_boxes/{split}_acc": float((cams.probs.argmax(-1) == cams.labels).mean())
                for split, cams in splits.items()}
    metrics = {**test_summary, **val_summary, "cam_boxes/threshold": chosen,
               "cam_boxes/method": setting.method, "cam_boxes/layer": setting.layer,
               "cam_boxes/aug_smooth": setting.aug_smooth, "cam_boxes/eigen_smooth": setting.eigen_smooth,
               "cam_boxes/min_area_fraction": cfg.min_area_fraction, "cam_boxes/class_floor": floor,
               **accuracy}
    write_json(run_dir / "metrics.json", metrics)
    context = {"label": label, "net": type(net).__name__, "image_size": spec["image_size"],
               "ckpt": str(cfg.ckpt_path), "setting": explainer.describe(), "chosen": chosen,
               "images": {split: len(cams) for split, cams in splits.items()}}
    write_curve(run_dir, rows, context)
    write_boxes(run_dir / "cam_boxes.csv", splits["test"], test_detections, names)
    plot_examples(run_dir / "plots" / "cam_boxes.png", datamodule, splits["test"], test_detections, names,
                  spec["in_chans"], f"{label}: {explainer.describe()}, CAM boxes (white) at threshold "
                  f"{chosen:g} vs ground truth (green); test mAP@0.5 {test_summary['test/map_50']:.3f}",
                  cfg.get("figure_images", 8))
    log.info("threshold %g (val mAP@0.5 %.4f): %s; outputs in %s", chosen, val_summary["val/map_50"],
             headline(metrics, "test/map_50"), run_dir)
    return metrics, {"setting": setting, "curve": rows, "detections": test_detections, "splits": splits,
                     "model": model, "datamodule": datamodule}


def write_curve(run_dir: Path, rows: list[dict[str, Any]], context: dict[str, Any]) -> None:
    columns = ["threshold", *[f"{s}/{k}" for s in SPLITS for k in CURVE_KEYS]]
    write_csv(run_dir / "thresholds.csv", pd.DataFrame(rows).reindex(columns=columns))
    body = [[f"{r['threshold']:g}" + (" (chosen)" if r["threshold"] == context["chosen"] else ""),
             *[f"{r[c]:.4f}" if "map" in c else f"{r[c]:.2f}" for c in columns[1:]]] for r in rows]
    header = ["threshold", "val mAP@0.5", "val mAP", "val boxes/image", "test mAP@0.5", "test mAP",
              "test boxes/image"]
    images = ", ".join(f"{n} {split}" for split, n in context["images"].items())
    intro = (f"{context['net']} at {context['image_size']} px, checkpoint `{context['ckpt']}`; "
             f"{context['setting']}; {images} images. The threshold (a fraction of each map's maximum) is "
             "chosen by validation mAP@0.5; the test columns are for the record, not for choosing.")
    write_text(run_dir / "thresholds.md", f"# CAM boxes: {context['label']}\n\n{intro}\n\n"
               + markdown_table(pd.DataFrame(body, columns=header)))


def write_boxes(path: Path, cams: SplitCams, detections: list[Detection], names: list[str]) -> None:
    """Every test box in the original image's pixels, best first within an image."""
    rows = [{"path": image, "label": names[int(k)], "score": float(s), "x1": float(b[0]), "y1": float(b[1]),
             "x2": float(b[2]), "y2": float(b[3])}
            for image, d in zip(cams.paths, detections, strict=True)
            for b, s, k in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist(), strict=True)]
    write_csv(path, pd.DataFrame(rows, columns=["path", "label", "score", "x1", "y1", "x2", "y2"]))


def example_items(labels: np.ndarray, count: int) -> list[int]:
    """``count`` split items taking classes in turn (each class's items in split order)."""
    queues = [list(np.flatnonzero(labels == k)) for k in np.unique(labels)]
    chosen: list[int] = []
    while len(chosen) < count and any(queues):
        chosen += [int(q.pop(0)) for q in queues if q][:count - len(chosen)]
    return chosen


def plot_examples(path: Path, datamodule, cams: SplitCams, detections: list[Detection], names: list[str],
                  in_chans: int, title: str, count: int = 8) -> None:
    """Images beside their map overlay, with the ground truth (white) and the CAM boxes (red) on the overlay."""
    tiles = []
    for i in example_items(cams.labels, count):
        sample = datamodule.index.samples[int(cams.positions[i])]
        image = decode_image(datamodule.index.abspath(sample), in_chans)
        pred = int(cams.probs[i].argmax())
        found = detections[i]
        best = f", best {float(found['scores'].max()):.2f}" if len(found["scores"]) else ""
        caption = (f"{Path(cams.paths[i]).name}: true {names[int(cams.labels[i])]}\n"
                   f"pred {names[pred]} ({cams.probs[i, pred]:.2f}), {len(found['boxes'])} box(es){best}")
        tiles.append(Tile(image, cams.maps[i], caption, [tuple(b) for b in cams.targets[i]["boxes"].tolist()],
                          [tuple(b) for b in found["boxes"].tolist()]))
    render_tiles(tiles, path, title, columns=4, empty_note="no test images", panel=PANEL)
