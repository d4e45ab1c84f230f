"""Metric functions against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pgsam_node.training.metrics import case_metrics, detection, dice, hd95, iou, surface_distances


def test_dice_and_iou_hand_computed():
    a = np.zeros((1, 4, 4), bool)
    b = np.zeros((1, 4, 4), bool)
    a[0, 0, :3] = True  # 3 voxels
    b[0, 0, 1:] = True  # 3 voxels, overlap 2
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert iou(a, b) == pytest.approx(2 / 4)
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0
    empty = np.zeros_like(a)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(a, empty) == 0.0 and iou(a, empty) == 0.0


def test_hd95_hand_computed_with_anisotropic_spacing():
    # Two single voxels 3 slices apart along z with 2 mm slices: distance 6 mm.
    a = np.zeros((5, 3, 3), bool)
    b = np.zeros((5, 3, 3), bool)
    a[0, 1, 1] = True
    b[3, 1, 1] = True
    assert hd95(a, b, (2.0, 0.5, 0.5)) == pytest.approx(6.0)
    # Along x with 0.5 mm columns: 2 columns apart = 1 mm.
    c = np.zeros((5, 3, 3), bool)
    c[0, 1, 2] = True
    d = np.zeros((5, 3, 3), bool)
    d[0, 1, 0] = True
    assert hd95(c, d, (2.0, 0.5, 0.5)) == pytest.approx(1.0)
    assert hd95(a, a, (1, 1, 1)) == 0.0
    assert hd95(np.zeros_like(a), np.zeros_like(a), (1, 1, 1)) == 0.0
    assert math.isinf(hd95(a, np.zeros_like(a), (1, 1, 1)))


def test_hd95_ignores_a_small_outlier_fraction():
    # A 10x10x10 cube vs the same cube: 0; add one far voxel to the prediction: the 95th
    # percentile of the pooled surface distances stays 0 because the outlier is < 5 %.
    ref = np.zeros((12, 40, 40), bool)
    ref[1:11, 1:11, 1:11] = True
    pred = ref.copy()
    pred[5, 35, 35] = True
    d = surface_distances(pred, ref, (1.0, 1.0, 1.0))
    assert d.max() == pytest.approx(np.sqrt(25**2 + 25**2))  # outlier (5,35,35) to corner (5,10,10)
    assert hd95(pred, ref, (1.0, 1.0, 1.0)) == 0.0


def test_detection_counts():
    ref = np.zeros((3, 20, 20), bool)
    ref[1, 2:5, 2:5] = True  # lesion A (9 voxels)
    ref[1, 12:16, 12:16] = True  # lesion B (16 voxels)
    pred = np.zeros_like(ref)
    pred[1, 2:5, 2:4] = True  # covers 6/9 of A
    pred[1, 18:20, 0:2] = True  # a false positive
    det = detection(pred, ref)
    assert (det.ref_lesions, det.detected, det.pred_components, det.false_positives) == (2, 1, 2, 1)
    m = case_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert m["lesion_detected"] is False
    assert m["ref_voxels"] == 25 and m["pred_voxels"] == 10
    assert m["dice"] == pytest.approx(2 * 6 / 35)
    assert case_metrics(ref, ref, (1, 1, 1))["hd95_mm"] == 0.0
    assert case_metrics(np.zeros_like(ref), ref, (1, 1, 1))["hd95_mm"] is None
