"""Detection reports: the box matching behind the confusion matrix and image F1, the box CSV, and the
files a test run writes, on hand-made boxes and a fake module / data module (no data, no training)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from neu_defects.data.index import DatasetIndex, Sample
from neu_defects.models.detection_metrics import mean_average_precision
from neu_defects.reporting.detection import (
    COLUMNS,
    PRED_COLOUR,
    best_and_worst,
    detection_confusion,
    detection_rows,
    image_f1,
    write_detection_outputs,
)

CLASSES = ["crazing", "inclusion", "patches"]
SIZE = 64  # the model's input frame of the fake data module


def det(boxes, scores, labels) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.int64)}


def gt(boxes, labels) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


# Four test images: a hit; a class confusion plus a false positive; a hit plus a miss whose detection
# is below the score threshold; a miss with no detection at all.
DETECTIONS = [
    det([[4, 4, 20, 20]], [0.9], [0]),
    det([[40, 40, 60, 60], [10, 10, 40, 40]], [0.5, 0.8], [1, 2]),
    det([[33, 33, 60, 60], [0, 0, 30, 30]], [0.2, 0.95], [0, 2]),
    det([], [], []),
]
TARGETS = [
    gt([[4, 4, 20, 20]], [0]),
    gt([[10, 10, 40, 40]], [1]),
    gt([[0, 0, 30, 30], [32, 32, 60, 60]], [2, 0]),
    gt([[5, 5, 25, 25]], [1]),
]
# Rows true, columns predicted, index 3 background.
EXPECTED_CONFUSION = np.array([[1, 0, 0, 1],
                               [0, 0, 1, 1],
                               [0, 0, 1, 0],
                               [0, 1, 0, 0]])


def test_confusion_counts_hits_confusions_misses_and_false_positives():
    assert detection_confusion(DETECTIONS, TARGETS, 3).tolist() == EXPECTED_CONFUSION.tolist()


def test_confusion_score_threshold_decides_which_detections_count():
    # At 0.1 image 2's crazing detection (score 0.2, IoU 0.93) finds its box: the miss becomes a hit.
    expected = EXPECTED_CONFUSION.copy()
    expected[0, 0], expected[0, 3] = 2, 0
    assert detection_confusion(DETECTIONS, TARGETS, 3, score_threshold=0.1).tolist() == expected.tolist()
    # A false positive above the threshold counts as (background, predicted); below it, not at all.
    false_positive = [det([[0, 0, 10, 10]], [0.4], [2])]
    assert detection_confusion(false_positive, [gt([], [])], 3)[3].tolist() == [0, 0, 1, 0]
    assert detection_confusion(false_positive, [gt([], [])], 3, score_threshold=0.5).sum() == 0


def test_matching_is_greedy_by_score_and_takes_the_highest_iou_box():
    # The higher-scored detection takes the box though its class is wrong; the other is a false positive.
    confusion = detection_confusion([det([[0, 0, 10, 10], [0, 0, 10, 10]], [0.6, 0.9], [0, 1])],
                                    [gt([[0, 0, 10, 10]], [0])], 2)
    assert confusion.tolist() == [[0, 1, 0], [0, 0, 0], [1, 0, 0]]
    # One detection over two boxes (IoU 0.6 and 0.8) matches the closer one; the other box is missed.
    confusion = detection_confusion([det([[0, 0, 10, 10]], [0.9], [0])],
                                    [gt([[0, 0, 10, 6], [0, 0, 10, 8]], [0, 1])], 2)
    assert confusion.tolist() == [[0, 0, 1], [1, 0, 0], [0, 0, 0]]
    # Below IoU 0.5 nothing matches: a miss and a false positive.
    confusion = detection_confusion([det([[0, 0, 10, 10]], [0.9], [0])], [gt([[5, 0, 15, 10]], [0])], 1)
    assert confusion.tolist() == [[0, 1], [1, 0]]


def test_image_f1():
    perfect = image_f1(det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [0, 1]),
                       gt([[20, 20, 30, 30], [0, 0, 10, 10]], [1, 0]))
    # Two boxes, two detections on them, one of the wrong class: 2 * 1 / (2 + 2).
    half = image_f1(det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [0, 2]),
                    gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1]))
    none = image_f1(det([[40, 40, 50, 50]], [0.9], [0]), gt([[0, 0, 10, 10]], [0]))
    assert (perfect, half, none) == (1.0, 0.5, 0.0)
    assert image_f1(det([], [], []), gt([], [])) == 1.0
    # A detection below the score threshold is not claimed: an empty image stays perfect.
    assert image_f1(det([[0, 0, 10, 10]], [0.1], [0]), gt([], [])) == 1.0
    assert image_f1(det([[0, 0, 10, 10]], [0.4], [0]), gt([], [])) == 0.0
    assert [image_f1(d, t) for d, t in zip(DETECTIONS, TARGETS, strict=True)] == pytest.approx([1, 0, 2 / 3, 0])


def test_best_and_worst_are_disjoint_ranked_and_tie_broken_by_index():
    assert best_and_worst([1.0, 0.0, 2 / 3, 0.0], per_group=2) == ([0, 2], [1, 3])
    assert best_and_worst([0.5, 1.0, 0.5], per_group=2) == ([1, 0], [2])
    assert best_and_worst([], per_group=6) == ([], [])


def test_detection_rows_keep_image_order_and_sort_each_image_by_score():
    detections = [{"boxes": np.array([[1.234, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.456]]),
                   "scores": np.array([0.2, 0.87654]), "labels": np.array([1, 0])},
                  {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, dtype=np.int64)},
                  det([[0, 0, 1, 1]], [0.5], [2])]
    rows = detection_rows(["b.jpg", "c.jpg", "a.jpg"], detections, CLASSES)
    assert list(rows.columns) == COLUMNS == ["path", "label", "score", "x1", "y1", "x2", "y2"]
    assert rows["path"].tolist() == ["b.jpg", "b.jpg", "a.jpg"]
    assert rows["label"].tolist() == ["crazing", "inclusion", "patches"]
    assert rows["score"].tolist() == [0.8765, 0.2, 0.5]
    assert rows.iloc[0, 3:].tolist() == [5.0, 6.0, 7.0, 8.46]
    assert rows.iloc[1, 3:].tolist() == [1.23, 2.0, 3.0, 4.0]
    empty = detection_rows(["a.jpg"], detections[1:2], CLASSES)
    assert list(empty.columns) == COLUMNS and empty.empty


def fake_run(tmp_path):
    paths = ["IMAGES/crazing_1.jpg", "IMAGES/inclusion_1.jpg", "IMAGES/patches_1.jpg", "IMAGES/inclusion_2.jpg"]
    image_labels = [0, 1, 2, 1]
    # Index positions in a different order from the loader's, as a real split's are.
    positions = [3, 0, 2, 1]
    samples = [None] * 4
    for k, p in enumerate(positions):
        samples[p] = Sample(paths[k], image_labels[k], tuple(map(tuple, TARGETS[k]["boxes"].tolist())),
                            tuple(TARGETS[k]["labels"].tolist()))
    index = DatasetIndex(root=tmp_path / "data", layout="neu-det", class_names=list(CLASSES), samples=samples)
    metric = mean_average_precision()
    metric.update(DETECTIONS, TARGETS)
    module = SimpleNamespace(test_detections=DETECTIONS, test_targets=TARGETS, class_names=list(CLASSES),
                             test_result=metric.compute())
    rng = np.random.default_rng(0)
    datamodule = SimpleNamespace(
        index=index, dataset_indices={"test": np.array(positions)},
        datasets={"test": SimpleNamespace(images=rng.integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8))},
        # Each item its own factor, so a box mapped with another item's would show.
        to_original=lambda name, i, boxes: (np.asarray(boxes, dtype=np.float32) * (2 + i)).astype(np.float32))
    return module, datamodule, paths


def test_write_detection_outputs_end_to_end(tmp_path):
    module, datamodule, paths = fake_run(tmp_path)
    run_dir = tmp_path / "run"
    write_detection_outputs(run_dir, module, datamodule)

    rows = pd.read_csv(run_dir / "detections.csv")
    assert list(rows.columns) == COLUMNS
    assert rows["path"].tolist() == [paths[0], paths[1], paths[1], paths[2], paths[2]]
    assert rows["label"].tolist() == ["crazing", "patches", "inclusion", "patches", "crazing"]
    assert rows["score"].tolist() == pytest.approx([0.9, 0.8, 0.5, 0.95, 0.2])
    assert rows[["x1", "y1", "x2", "y2"]].values.tolist() == [
        [8, 8, 40, 40],  # item 0, x2
        [30, 30, 120, 120], [120, 120, 180, 180],  # item 1, x3
        [0, 0, 120, 120], [132, 132, 240, 240],  # item 2, x4
    ]

    confusion = pd.read_csv(run_dir / "detection_confusion.csv")
    assert list(confusion.columns) == ["true \\ predicted", *CLASSES, "background"]
    assert confusion["true \\ predicted"].tolist() == [*CLASSES, "background"]
    assert confusion.iloc[:, 1:].values.tolist() == EXPECTED_CONFUSION.tolist()

    for name in ("pr_curves.png", "detection_confusion.png"):
        with Image.open(run_dir / "plots" / name) as image:
            assert image.format == "PNG" and image.width > 400 and image.height > 300
    with Image.open(run_dir / "detections" / "best_and_worst.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    # Three 320-px panels a row with 8-px gaps; the four images all rank among the best six.
    assert pixels.shape[1] == 8 + 3 * (320 + 8)
    assert pixels.shape[0] > 2 * 320
    # The best image is item 0, drawn at (8, 87) (title 30, heading 15 + 8, caption 34), 5x up:
    # its red box [4, 4, 20, 20] has its 2-px left edge at x 28-29 and its right one at x 106-107.
    row = pixels[87 + 60, 8:8 + 320]
    red = np.flatnonzero((row == PRED_COLOUR).all(axis=1)) + 8
    assert red.tolist() == [28, 29, 106, 107]
    assert not list(run_dir.glob("**/.*.tmp"))
