"""Pixel AUROC and AUPRO on cases small enough to compute by hand; masks from boxes."""

from __future__ import annotations

import numpy as np
import pytest

from neu_defects.data.masks import UNKNOWN, box_mask
from neu_defects.models.pixel_metrics import pixel_aupro, pixel_auroc, pro_curve

# Two anomalous regions: R1 = pixels (0, 0) and (0, 1); R2 = pixel (1, 3). Five normal pixels.
MASK = np.array([[[1, 1, 0, 0],
                  [0, 0, 0, 1]]], dtype=np.uint8)
MAP = np.array([[[0.9, 0.55, 0.5, 0.1],
                 [0.2, 0.3, 0.6, 0.8]]])


def test_pixel_auroc_by_hand():
    # Anomalous 0.9 and 0.8 beat all five normals, 0.55 beats four of them (not 0.6): 14 of 15 pairs.
    assert pixel_auroc(MAP, MASK) == pytest.approx(14 / 15)


def test_pro_curve_and_aupro_by_hand():
    fpr, pro = pro_curve(MAP, MASK)
    # Thresholds 0.9, 0.8, 0.6, 0.55: R1 half found, then R2 (0.75), a normal pixel (FPR 0.2), R1
    # whole (1.0); below, only normal pixels join (points on the line PRO = 1, which may be dropped).
    points = set(zip(np.round(fpr, 6), np.round(pro, 6), strict=True))
    assert {(0.0, 0.25), (0.0, 0.75), (0.2, 0.75), (0.2, 1.0), (1.0, 1.0)} <= points
    assert all(p == 1.0 for f, p in points if f > 0.2)
    # Up to FPR 0.3: 0.75 over [0, 0.2], 1.0 over [0.2, 0.3]; (0.15 + 0.1) / 0.3.
    assert pixel_aupro(MAP, MASK) == pytest.approx(0.25 / 0.3)
    # A limit between two points takes the curve's value there: 0.75 over [0, 0.1].
    assert pixel_aupro(MAP, MASK, fpr_limit=0.1) == pytest.approx(0.75)


def test_regions_are_eight_connected_and_weighed_equally():
    # A diagonal pair is one region; one large and one small region count alike in PRO.
    mask = np.zeros((1, 6, 6), dtype=np.uint8)
    mask[0, 0, 0] = mask[0, 1, 1] = 1          # one region (diagonal neighbours)
    mask[0, 4:6, 3:6] = 1                      # a second region of 6 pixels
    amap = np.zeros((1, 6, 6))
    amap[0, 0, 0] = amap[0, 1, 1] = 1.0        # the small region found whole, nothing else
    fpr, pro = pro_curve(amap, mask)
    assert pro[fpr == 0].max() == pytest.approx(0.5)


def test_unknown_masks_are_left_out():
    unknown = np.full((1, 2, 4), UNKNOWN, dtype=np.uint8)
    junk = np.random.default_rng(0).random((1, 2, 4))
    maps, masks = np.concatenate([MAP, junk]), np.concatenate([MASK, unknown])
    assert pixel_auroc(maps, masks) == pytest.approx(14 / 15)
    assert pixel_aupro(maps, masks) == pytest.approx(0.25 / 0.3)


def test_undefined_without_both_kinds_of_pixel():
    normal_only = np.zeros((2, 4, 4), dtype=np.uint8)
    assert np.isnan(pixel_auroc(np.random.rand(2, 4, 4), normal_only))
    assert np.isnan(pixel_aupro(np.random.rand(2, 4, 4), normal_only))


def test_box_mask_marks_pixels_whose_centres_lie_in_the_box():
    # A 200 x 100 image at 4 x 4: pixel centres at x = 25, 75, 125, 175 and y = 12.5, 37.5, 62.5, 87.5.
    mask = box_mask([(20.0, 30.0, 80.0, 70.0)], (200, 100), 4)
    expected = np.zeros((4, 4), dtype=np.uint8)
    expected[1:3, 0:2] = 1
    np.testing.assert_array_equal(mask, expected)
    assert box_mask([], (200, 100), 4).sum() == 0
