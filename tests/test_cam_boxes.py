"""CAM boxes: a thresholded map's regions as boxes, detections in original pixels, the workflow on NEU."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from neu_defects.core.errors import UserError
from neu_defects.saliency.boxes import (
    cam_detections,
    cam_to_boxes,
    extra_classes,
    ground_truth,
    image_detections,
)
from neu_defects.workflows.cam_boxes import SplitCams, choose_threshold, example_items, score

from .conftest import compose_cfg
from .test_gradcam import train_run

NAMES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]


def two_blobs() -> np.ndarray:
    """A 10 x 12 map: a strong 3 x 3 blob (peak 1.0) and a weaker 3 x 4 one (peak 0.5)."""
    cam_map = np.zeros((10, 12), dtype=np.float32)
    cam_map[1:4, 2:5] = 0.8
    cam_map[2, 3] = 1.0
    cam_map[6:9, 7:11] = 0.5
    return cam_map


def test_two_blobs_give_two_boxes_in_continuous_grid_coordinates():
    boxes = cam_to_boxes(two_blobs(), threshold=0.3)
    # Columns 2..4 span [2, 5]; rows 1..3 span [1, 4]. Strongest first, scored by peak / map max.
    assert boxes == [(2.0, 1.0, 5.0, 4.0, 1.0), (7.0, 6.0, 11.0, 9.0, 0.5)]


def test_threshold_is_a_fraction_of_the_maximum():
    cam_map = two_blobs()
    assert [b[:4] for b in cam_to_boxes(cam_map, 0.5)] == [(2.0, 1.0, 5.0, 4.0), (7.0, 6.0, 11.0, 9.0)]
    assert cam_to_boxes(cam_map, 0.6) == [(2.0, 1.0, 5.0, 4.0, 1.0)]
    # Above 0.8 only the peak pixel of the strong blob is left.
    assert cam_to_boxes(cam_map, 0.9) == [(3.0, 2.0, 4.0, 3.0, 1.0)]
    # Scaling the map changes nothing: the threshold and the scores are relative to its maximum.
    assert cam_to_boxes(cam_map * 7, 0.3) == cam_to_boxes(cam_map, 0.3)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(UserError, match="fraction"):
            cam_to_boxes(cam_map, bad)


def test_regions_are_eight_connected():
    cam_map = np.zeros((6, 6))
    cam_map[1, 1] = cam_map[2, 2] = cam_map[3, 3] = 1.0
    assert cam_to_boxes(cam_map, 0.5) == [(1.0, 1.0, 4.0, 4.0, 1.0)]


def test_min_area_drops_small_regions():
    cam_map = two_blobs()  # 120 pixels: regions of 9 and 12
    assert len(cam_to_boxes(cam_map, 0.3, min_area_fraction=8.5 / 120)) == 2
    assert cam_to_boxes(cam_map, 0.3, min_area_fraction=10 / 120) == [(7.0, 6.0, 11.0, 9.0, 0.5)]
    assert cam_to_boxes(cam_map, 0.3, min_area_fraction=13 / 120) == []


def test_flat_zero_and_negative_maps_give_no_boxes():
    for cam_map in (np.zeros((8, 8)), np.full((8, 8), 0.5), -np.ones((8, 8)), np.full((8, 8), np.nan)):
        assert cam_to_boxes(cam_map, 0.5) == []
    detection = cam_detections(np.zeros((8, 8)), [0.2, 0.8], (200, 200), 0.5)
    assert detection["boxes"].shape == (0, 4) and detection["scores"].shape == (0,)
    assert detection["labels"].dtype == torch.int64


def test_detection_is_in_original_pixels_with_the_predicted_class():
    cam_map = np.zeros((8, 8), dtype=np.float32)
    cam_map[4:6, 2:4] = 1.0
    cam_map[0, 6] = 0.5
    detection = cam_detections(cam_map, torch.tensor([0.1, 0.7, 0.2]), (200, 100), threshold=0.4)
    # Grid (2, 4, 4, 6) and (6, 0, 7, 1) -> x by 200 / 8, y by 100 / 8.
    assert detection["boxes"].tolist() == [[50.0, 50.0, 100.0, 75.0], [150.0, 0.0, 175.0, 12.5]]
    assert detection["labels"].tolist() == [1, 1]
    assert detection["scores"].tolist() == pytest.approx([0.7, 0.35])


def test_boxes_for_other_classes_over_the_floor_use_their_own_maps():
    probs = np.array([[0.05, 0.6, 0.35], [0.9, 0.06, 0.04]])
    assert extra_classes(probs, None) == [[], []]
    assert extra_classes(probs, 0.3) == [[2], []]
    strong, weak = np.zeros((4, 4)), np.zeros((4, 4))
    strong[0, 0], weak[3, 3] = 1.0, 1.0
    detection = image_detections({1: strong, 2: weak}, probs[0], (40, 40), 0.5)
    assert detection["labels"].tolist() == [1, 2]
    assert detection["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 40.0]]
    assert detection["scores"].tolist() == pytest.approx([0.6, 0.35])


def split_of(maps: list[np.ndarray], probs: list[list[float]], boxes: list[list], labels: list[list[int]]):
    n = len(maps)
    return SplitCams(np.arange(n), [f"IMAGES/x_{i}.jpg" for i in range(n)], [(200, 200)] * n,
                     [ground_truth(b, k) for b, k in zip(boxes, labels, strict=True)],
                     np.array([int(np.argmax(p)) for p in probs]), np.float32(maps), np.float32(probs),
                     [{} for _ in range(n)])


def test_a_map_that_matches_the_box_scores_full_map():
    cam_map = np.zeros((20, 20), dtype=np.float32)
    cam_map[2:6, 4:10] = 1.0  # grid (4, 2, 10, 6) = original (40, 20, 100, 60)
    probs = [0.0, 0.9, 0.1, 0.0, 0.0, 0.0]
    summary, _ = score(split_of([cam_map], [probs], [[(40, 20, 100, 60)]], [[1]]), 0.5, 0.0, NAMES, "val")
    assert summary["val/map_50"] == pytest.approx(1.0) and summary["val/map"] == pytest.approx(1.0)
    assert summary["val/map_50/inclusion"] == pytest.approx(1.0) and summary["val/boxes_per_image"] == 1
    # The same map for a box of another class than the image's prediction finds nothing.
    summary, _ = score(split_of([cam_map], [probs], [[(40, 20, 100, 60)]], [[2]]), 0.5, 0.0, NAMES, "val")
    assert summary["val/map_50"] == pytest.approx(0.0)


def test_threshold_is_the_first_best_on_validation():
    rows = [{"threshold": t, "val/map_50": v, "test/map_50": 1 - v}
            for t, v in ((0.2, 0.1), (0.3, 0.4), (0.4, 0.4))]
    assert choose_threshold(rows) == 0.3


def test_figure_takes_classes_in_turn():
    assert example_items(np.array([0, 0, 0, 1, 2, 2]), 5) == [0, 3, 4, 1, 5]
    assert example_items(np.array([1, 1]), 8) == [0, 1]


@pytest.mark.real_data
@pytest.mark.slow
def test_cam_boxes_on_a_quickly_trained_cnn(neu_root, tmp_path):
    from neu_defects.workflows.cam_boxes import cam_boxes

    run_dir, _ = train_run(tmp_path, [f"data.root={neu_root}", "+trainer.limit_train_batches=8",
                                      "callbacks.gradcam=null"])
    out = tmp_path / "cam_boxes"
    thresholds = [0.1, 0.3, 0.5]
    overrides = [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", f"data.root={neu_root}",
                 f"thresholds=[{','.join(map(str, thresholds))}]"]
    cfg = compose_cfg("cam_boxes", overrides, out)
    metrics, objects = cam_boxes(cfg)

    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    for key in ("test/map_50", "test/map", "test/map_75", "test/mar_100",
                *[f"test/map_50/{c}" for c in NAMES]):
        assert 0 <= written[key] <= 1, key
    assert written["cam_boxes/method"] == "gradcam" and written["cam_boxes/layer"] == "features.2+features.3"

    with open(out / "thresholds.csv", newline="") as handle:
        curve = list(csv.DictReader(handle))
    assert [float(r["threshold"]) for r in curve] == thresholds
    val = [float(r["val/map_50"]) for r in curve]
    assert written["cam_boxes/threshold"] == thresholds[int(np.argmax(val))]
    chosen = curve[thresholds.index(written["cam_boxes/threshold"])]
    assert float(chosen["test/map_50"]) == pytest.approx(written["test/map_50"])
    scores = ("val/map_50", "val/map", "test/map_50", "test/map")
    assert all(0 <= float(r[k]) <= 1 for r in curve for k in scores)
    assert "(chosen)" in (out / "thresholds.md").read_text()

    with open(out / "cam_boxes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(len(d["boxes"]) for d in objects["detections"]) > 0
    assert {r["label"] for r in rows} <= set(NAMES)
    for r in rows:
        x1, y1, x2, y2 = (float(r[k]) for k in ("x1", "y1", "x2", "y2"))
        assert 0 <= x1 < x2 <= 200 and 0 <= y1 < y2 <= 200
        assert 0 < float(r["score"]) <= 1
    # Boxes in the original 200 px frame, not the 64 px input: some reach past 64.
    assert max(float(r["x2"]) for r in rows) > 64
    assert (out / "plots" / "cam_boxes.png").stat().st_size > 1000
