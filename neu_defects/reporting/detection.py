"""Reports of a detection test run: the box CSV, PR curves, a box confusion matrix, best / worst images.

Boxes of ``module.test_detections`` and ``module.test_targets`` are in the model's input frame; the
CSV maps them to the original images' pixels, the image grid draws them on the model's inputs.

The confusion matrix and the per-image F1 share one matching: detections with a score of at least
``score_threshold``, taken by score (highest first), each take the unmatched ground-truth box of
highest IoU with them, of any class, if that IoU is at least ``iou_threshold``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.ops import box_iou

from neu_defects.core.figures import save_figure
from neu_defects.models.detection_metrics import pr_at_50
from neu_defects.reporting.classification import plot_counts
from neu_defects.reporting.tables import write_csv
from neu_defects.saliency.render import save_png, to_rgb

COLUMNS = ["path", "label", "score", "x1", "y1", "x2", "y2"]
RECALL_POINTS = np.linspace(0, 1, 101)
BACKGROUND = "background"
GT_COLOUR, PRED_COLOUR = (0, 200, 0), (230, 0, 0)

Boxes = Mapping[str, torch.Tensor | np.ndarray]


def _boxes(item: Boxes) -> torch.Tensor:
    return torch.as_tensor(np.asarray(item["boxes"], dtype=np.float32)).reshape(-1, 4)


def _labels(item: Boxes) -> list[int]:
    return [int(v) for v in np.asarray(item["labels"]).reshape(-1)]


def _scores(item: Boxes) -> np.ndarray:
    return np.asarray(item["scores"], dtype=np.float64).reshape(-1)


def detection_rows(paths: Sequence[str], detections: Sequence[Boxes], class_names: Sequence[str]) -> pd.DataFrame:
    """One row per box (``COLUMNS``), images in the given order, each image's boxes by score descending.

    ``detections`` are already in the original images' pixels: the frame the CSV is read in.
    """
    frames = []
    for path, detection in zip(paths, detections, strict=True):
        scores = _scores(detection)
        order = np.argsort(-scores, kind="stable")
        if not len(order):
            continue
        boxes = np.round(np.asarray(detection["boxes"], dtype=np.float64).reshape(-1, 4)[order], 2)
        frames.append(pd.DataFrame({
            "path": [path] * len(order),
            "label": [class_names[k] for k in np.asarray(detection["labels"]).reshape(-1)[order]],
            "score": np.round(scores[order], 4),
            **{name: boxes[:, j] for j, name in enumerate(COLUMNS[3:])},
        }))
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    return rows[COLUMNS]


def match(detection: Boxes, target: Boxes, iou_threshold: float = 0.5,
          score_threshold: float = 0.3) -> tuple[list[int], list[tuple[int, int]]]:
    """The kept detections (score order) and the (detection, ground truth) pairs matched."""
    scores = _scores(detection)
    kept = [int(i) for i in np.argsort(-scores, kind="stable") if scores[i] >= score_threshold]
    gt = _boxes(target)
    iou = box_iou(_boxes(detection)[kept], gt)
    free = torch.ones(len(gt), dtype=torch.bool)
    pairs = []
    for row, d in enumerate(kept):
        if not free.any():
            break
        candidates = torch.where(free, iou[row], torch.tensor(-1.0))
        g = int(candidates.argmax())
        if candidates[g] >= iou_threshold:
            free[g] = False
            pairs.append((d, g))
    return kept, pairs


def detection_confusion(detections: Sequence[Boxes], targets: Sequence[Boxes], num_classes: int,
                        iou_threshold: float = 0.5, score_threshold: float = 0.3) -> np.ndarray:
    """(K+1) x (K+1) counts, rows the true class, columns the predicted one, index K background.

    A matched pair counts at (true, predicted), a missed ground-truth box at (true, background), a
    detection that matched nothing at (background, predicted).
    """
    cm = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for detection, target in zip(detections, targets, strict=True):
        kept, pairs = match(detection, target, iou_threshold, score_threshold)
        predicted, true = _labels(detection), _labels(target)
        for d, g in pairs:
            cm[true[g], predicted[d]] += 1
        for g in set(range(len(true))) - {g for _, g in pairs}:
            cm[true[g], num_classes] += 1
        for d in set(kept) - {d for d, _ in pairs}:
            cm[num_classes, predicted[d]] += 1
    return cm


def image_f1(detection: Boxes, target: Boxes, iou_threshold: float = 0.5, score_threshold: float = 0.3) -> float:
    """F1 of one image's detections above ``score_threshold``, a matched pair correct when its classes agree.

    An image without ground truth left without detection scores 1: nothing to find, nothing claimed.
    """
    kept, pairs = match(detection, target, iou_threshold, score_threshold)
    predicted, true = _labels(detection), _labels(target)
    if not kept and not true:
        return 1.0
    correct = sum(predicted[d] == true[g] for d, g in pairs)
    return 2 * correct / (len(kept) + len(true))


def best_and_worst(f1: Sequence[float], per_group: int = 6) -> tuple[list[int], list[int]]:
    """The ``per_group`` best and worst images by F1, ties by index: disjoint, best or worst first."""
    best = sorted(range(len(f1)), key=lambda i: (-f1[i], i))[:per_group]
    chosen = set(best)
    worst = [i for i in sorted(range(len(f1)), key=lambda i: (f1[i], i)) if i not in chosen][:per_group]
    return best, worst


def plot_pr_curves(path, result: dict, class_names: Sequence[str]) -> Path:
    curves = pr_at_50(result, class_names)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for name, precision in curves.items():
        ax.plot(RECALL_POINTS, precision, label=f"{name} (AP {precision.mean():.4f})")
    mean = np.mean([p.mean() for p in curves.values()]) if curves else float("nan")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"precision-recall at IoU 0.5, test split: mAP@0.5 {mean:.4f}")
    if curves:
        ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def confusion_table(cm: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    names = [*class_names, BACKGROUND]
    table = pd.DataFrame(cm, columns=names)
    table.insert(0, "true \\ predicted", names)
    return table


def plot_detection_confusion(path, cm: np.ndarray, class_names: Sequence[str], iou_threshold: float,
                             score_threshold: float) -> Path:
    title = (f"boxes at IoU >= {iou_threshold:g}, score >= {score_threshold:g}: {cm[:-1].sum()} ground truth, "
             f"{cm[:, :-1].sum()} detections")
    return plot_counts(path, cm, [*class_names, BACKGROUND], title, size=(7, 6),
                       xlabel="predicted class (background: a ground-truth box no detection matched)",
                       ylabel="true class (background: a detection that matched no box)")


def _draw_boxes(draw: ImageDraw.ImageDraw, origin: tuple[int, int], scale: float, boxes: torch.Tensor,
                colour: tuple[int, int, int], tags: Sequence[str] = ()) -> None:
    font = ImageFont.load_default(size=11)
    for k, (x1, y1, x2, y2) in enumerate((boxes * scale).tolist()):
        left, top = origin[0] + x1, origin[1] + y1
        draw.rectangle((left, top, origin[0] + x2 - 1, origin[1] + y2 - 1), outline=colour, width=2)
        if k < len(tags):
            # Filled behind the text: a tag on the steel texture is unreadable otherwise.
            text_top = max(top - 13, origin[1])
            draw.rectangle(draw.textbbox((left, text_top), tags[k], font=font), fill=colour)
            draw.text((left, text_top), tags[k], fill="white", font=font)


def _shown(detection: Boxes, score_threshold: float) -> tuple[torch.Tensor, list[int], np.ndarray]:
    scores = _scores(detection)
    keep = np.flatnonzero(scores >= score_threshold)
    return _boxes(detection)[keep], [_labels(detection)[k] for k in keep], scores[keep]


def render_detections(path, images: np.ndarray, picks: Sequence[tuple[str, Sequence[int]]],
                      detections: Sequence[Boxes], targets: Sequence[Boxes], captions: Sequence[str],
                      class_names: Sequence[str], score_threshold: float = 0.3, panel: int = 320,
                      columns: int = 3) -> np.ndarray:
    """A PNG of image panels (``panel`` px), one section per (heading, image indices) of ``picks``.

    Drawn with Pillow, as the CAM grids (``saliency.render``): fast, and boxes land on exact pixels.
    """
    font, heading_font = ImageFont.load_default(size=12), ImageFont.load_default(size=14)
    pad, line = 8, 15
    tile_h = panel + 2 * line + 4
    heights = [line + pad + max(1, -(-len(idx) // columns)) * (tile_h + pad) for _, idx in picks]
    canvas = Image.new("RGB", (pad + columns * (panel + pad), 2 * line + sum(heights)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad // 2), f"green: ground truth, red: detections with score >= {score_threshold:g}",
              fill="black", font=heading_font)
    y = 2 * line
    for (heading, indices), height in zip(picks, heights, strict=True):
        draw.text((pad, y), heading if indices else f"{heading}: no image", fill="black", font=heading_font)
        for k, i in enumerate(indices):
            x0, y0 = pad + (k % columns) * (panel + pad), y + line + pad + (k // columns) * (tile_h + pad)
            draw.multiline_text((x0, y0), captions[i], fill="black", font=font, spacing=3)
            rgb = to_rgb(images[i])
            top = y0 + 2 * line + 4
            canvas.paste(Image.fromarray(rgb).resize((panel, panel), Image.Resampling.BILINEAR), (x0, top))
            scale = panel / rgb.shape[1]
            _draw_boxes(draw, (x0, top), scale, _boxes(targets[i]), GT_COLOUR)
            boxes, labels, scores = _shown(detections[i], score_threshold)
            tags = [f"{class_names[c]} {s:.2f}" for c, s in zip(labels, scores, strict=True)]
            _draw_boxes(draw, (x0, top), scale, boxes, PRED_COLOUR, tags)
        y += height
    pixels = np.asarray(canvas)
    save_png(pixels, path)
    return pixels


def annotate_image(image: np.ndarray, detection: Boxes, class_names: Sequence[str], min_side: int = 320) -> np.ndarray:
    """An (H, W, C) uint8 image with its detections drawn (boxes in its pixels), enlarged to ``min_side`` if smaller."""
    rgb = to_rgb(image)
    scale = max(1.0, min_side / min(rgb.shape[:2]))
    canvas = Image.fromarray(rgb).resize((round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)),
                                         Image.Resampling.BILINEAR)
    tags = [f"{class_names[c]} {s:.2f}" for c, s in zip(_labels(detection), _scores(detection), strict=True)]
    _draw_boxes(ImageDraw.Draw(canvas), (0, 0), scale, _boxes(detection), PRED_COLOUR, tags)
    return np.asarray(canvas)


def original_detections(datamodule, detections: Sequence[Boxes]) -> list[dict[str, np.ndarray]]:
    """The test detections with their boxes in the original images' pixels."""
    return [{"boxes": datamodule.to_original("test", i, _boxes(d).numpy()), "scores": _scores(d),
             "labels": np.asarray(d["labels"]).reshape(-1)} for i, d in enumerate(detections)]


def write_detection_outputs(run_dir: str | Path, module, datamodule, score_threshold: float = 0.3,
                            iou_threshold: float = 0.5, per_group: int = 6) -> None:
    """detections.csv, detection_confusion.csv, plots/pr_curves.png, plots/detection_confusion.png and
    detections/best_and_worst.png for a test run."""
    run_dir = Path(run_dir)
    index, class_names = datamodule.index, datamodule.index.class_names
    samples = [index.samples[p] for p in datamodule.dataset_indices["test"]]
    detections, targets = module.test_detections, module.test_targets
    paths = [s.path for s in samples]
    write_csv(run_dir / "detections.csv",
              detection_rows(paths, original_detections(datamodule, detections), class_names))
    plot_pr_curves(run_dir / "plots" / "pr_curves.png", module.test_result, class_names)
    cm = detection_confusion(detections, targets, len(class_names), iou_threshold, score_threshold)
    write_csv(run_dir / "detection_confusion.csv", confusion_table(cm, class_names))
    plot_detection_confusion(run_dir / "plots" / "detection_confusion.png", cm, class_names, iou_threshold,
                             score_threshold)
    f1 = [image_f1(d, t, iou_threshold, score_threshold) for d, t in zip(detections, targets, strict=True)]
    best, worst = best_and_worst(f1, per_group)
    captions = [f"{Path(s.path).name} ({class_names[s.label]})\nF1 {v:.2f}" for s, v in zip(samples, f1, strict=True)]
    render_detections(run_dir / "detections" / "best_and_worst.png", datamodule.datasets["test"].images,
                      [(f"best {len(best)} by image F1 (IoU >= {iou_threshold:g}, same class)", best),
                       (f"worst {len(worst)}", worst)],
                      detections, targets, captions, class_names, score_threshold)
