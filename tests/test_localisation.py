"""Localisation scores on hand-made maps over real NEU-DET boxes, and the box scaling they rest on."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from neu_defects.data import build_index
from neu_defects.data.io import original_size
from neu_defects.saliency.localisation import (
    LocalisationTally,
    box_mask,
    energy_in_box,
    localisation_scores,
    pointing_game,
    scale_boxes,
    threshold_iou,
)

SIZE = 64


@pytest.fixture(scope="module")
def index(neu_root):
    return build_index(neu_root)


def first_sample(index, cls: str):
    label = index.class_names.index(cls)
    return next(s for s in index.samples if s.label == label and s.boxes)


def peak_map(row: int, col: int) -> np.ndarray:
    """A smooth bump centred on one pixel, as a CAM would be."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return np.exp(-((yy - row) ** 2 + (xx - col) ** 2) / 8.0).astype(np.float32)


def test_box_scaling_follows_the_resize():
    # Boxes are the index's 0-based continuous (x1, y1, x2, y2): a VOC 1..200 box is 0..200.
    assert scale_boxes([(0, 0, 200, 200)], (200, 200), (64, 64)) == [(0.0, 0.0, 64.0, 64.0)]
    assert box_mask([(0, 0, 200, 200)], (200, 200), (64, 64)).all()
    quarter = box_mask([(0, 0, 100, 100)], (200, 200), (64, 64))
    assert quarter[:32, :32].all() and quarter.sum() == 32 * 32
    # The union of overlapping boxes is counted once.
    assert box_mask([(0, 0, 100, 100), (50, 50, 100, 100)], (200, 200), (64, 64)).sum() == 32 * 32


@pytest.mark.real_data
@pytest.mark.parametrize("cls", ["inclusion", "scratches", "patches"])
def test_hand_made_maps_on_real_boxes(index, cls):
    sample = first_sample(index, cls)
    original = original_size(index.abspath(sample))
    assert original == (200, 200)
    mask = box_mask(sample.boxes, original, (SIZE, SIZE))
    coverage = mask.mean()
    assert 0 < coverage < 1
    # The pixels deepest inside the boxes and farthest from them.
    inside = np.unravel_index(distance_transform_edt(mask).argmax(), mask.shape)
    outside = np.unravel_index(distance_transform_edt(~mask).argmax(), mask.shape)

    spike_in = np.zeros((SIZE, SIZE), np.float32)
    spike_in[inside] = 1
    assert localisation_scores(spike_in, mask) == {"pointing_game": 1.0, "energy_in_box": 1.0,
                                                    "iou": pytest.approx(1 / mask.sum())}
    spike_out = np.zeros((SIZE, SIZE), np.float32)
    spike_out[outside] = 1
    assert localisation_scores(spike_out, mask) == {"pointing_game": 0.0, "energy_in_box": 0.0, "iou": 0.0}

    assert pointing_game(peak_map(*inside), mask) == 1.0
    assert pointing_game(peak_map(*outside), mask) == 0.0
    assert energy_in_box(peak_map(*inside), mask) > energy_in_box(peak_map(*outside), mask)

    # Chance: a flat map scores the box's share of the image on every score.
    for flat in (np.full((SIZE, SIZE), 0.3, np.float32), np.zeros((SIZE, SIZE), np.float32)):
        for score in localisation_scores(flat, mask).values():
            assert score == pytest.approx(coverage)


def test_iou_of_the_thresholded_map():
    mask = box_mask([(1, 1, 100, 100)], (200, 200), (64, 64))
    cam_map = np.zeros((64, 64), np.float32)
    cam_map[:32, :32] = 1.0
    cam_map[32:, 32:] = 0.4
    assert threshold_iou(cam_map, mask, 0.5) == 1.0
    assert threshold_iou(cam_map, mask, 0.3) == pytest.approx(0.5)


@pytest.mark.real_data
def test_tally_reports_overall_per_class_and_chance(index):
    tally = LocalisationTally(index.class_names)
    for cls in ("inclusion", "scratches"):
        sample = first_sample(index, cls)
        mask = box_mask(sample.boxes, original_size(index.abspath(sample)), (SIZE, SIZE))
        inside = np.argwhere(mask)[0]
        tally.add(peak_map(*inside), mask, sample.label)
    summary = tally.summary("cam")
    assert summary["cam_pointing_game"] == 1.0
    assert summary["cam_pointing_game/inclusion"] == summary["cam_pointing_game/scratches"] == 1.0
    assert "cam_pointing_game/crazing" not in summary
    assert 0 < summary["cam_chance/inclusion"] < 1
    assert summary["cam_chance"] == pytest.approx((summary["cam_chance/inclusion"] + summary["cam_chance/scratches"]) / 2)
