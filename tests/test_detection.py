"""Detector pieces: anchors, anchor targets, metrics, the RPN and RoI heads (gradient checks),
and a tiny end-to-end Faster R-CNN training run."""
import numpy as np
import pytest

import convkit
from convkit.metrics import (average_precision_per_class, mean_average_precision,
                             proposal_recall, voc_ap)
from convkit.models import AnchorGenerator, assign_anchor_targets, sample_labels


# ------------------------------------------------------------------------------------ anchors
def test_anchor_generator_layout_by_hand():
    gen = AnchorGenerator(sizes=(8, 16), aspect_ratios=(0.5, 1.0), stride=8)
    assert gen.num_anchors == 4
    a = gen.grid_anchors((1, 2), dtype=np.float64)
    s = np.sqrt(2.0)
    # cell (0, 0) centred (4, 4); per cell: size 8 ratio 0.5, size 8 ratio 1, size 16 ...
    w, h = 8 * s, 8 / s                      # ratio = h / w = 0.5, area 64
    want0 = [[4 - w / 2, 4 - h / 2, 4 + w / 2, 4 + h / 2], [0, 0, 8, 8],
             [4 - 2 * w / 2, 4 - 2 * h / 2, 4 + 2 * w / 2, 4 + 2 * h / 2], [-4, -4, 12, 12]]
    want = np.array(want0 + [[x1 + 8, y1, x2 + 8, y2] for x1, y1, x2, y2 in want0])
    np.testing.assert_allclose(a, want, rtol=0, atol=1e-12)
    assert gen.grid_anchors((3, 5)).shape == (3 * 5 * 4, 4)
    assert AnchorGenerator().num_anchors == 9


def test_anchor_targets_on_hand_built_image(backend):
    # a 16x16 image, stride 8 -> 2x2 cells, sizes 8 and 16, square anchors:
    #   a0 [0,0,8,8]  a1 [-4,-4,12,12]  a2 [8,0,16,8]  a3 [4,-4,20,12]
    #   a4 [0,8,8,16] a5 [-4,4,12,20]   a6 [8,8,16,16] a7 [4,4,20,20]
    gen = AnchorGenerator(sizes=(8, 16), aspect_ratios=(1.0,), stride=8)
    anchors = gen.grid_anchors((2, 2), dtype=np.float64)
    np.testing.assert_array_equal(anchors, [[0, 0, 8, 8], [-4, -4, 12, 12], [8, 0, 16, 8],
                                            [4, -4, 20, 12], [0, 8, 8, 16], [-4, 4, 12, 20],
                                            [8, 8, 16, 16], [4, 4, 20, 20]])
    gt = np.array([[0, 0, 8, 8], [7, 7, 16, 16], [0, 10, 11, 16]], np.float64)
    # IoU by hand (rows a0..a7, columns g0 g1 g2):
    #   a0 1      1/144   0        -> 1.0   >= 0.7         positive (g0)
    #   a1 64/256 25/312  22/300   -> 0.25  < 0.3          negative
    #   a2 0      8/137   0        -> 0.058                negative
    #   a3 32/288 45/292  14/308   -> 0.154                negative
    #   a4 0      8/137   48/82    -> 0.585 best for g2    positive (g2) by the best-anchor rule
    #   a5 32/288 45/292  66/256   -> 0.258                negative
    #   a6 0      64/81   18/112   -> 0.790 >= 0.7         positive (g1)
    #   a7 16/304 81/256  42/280   -> 0.316 in [0.3, 0.7)  ignored
    with convkit.use_backend(backend):
        labels, matched = assign_anchor_targets(anchors, gt)
    np.testing.assert_array_equal(labels, [1, 0, 0, 0, 1, 0, 1, -1])
    np.testing.assert_array_equal(matched, [0, 0, 1, 1, 2, 2, 1, 1])
    with convkit.use_backend(backend):
        labels0, matched0 = assign_anchor_targets(anchors, np.zeros((0, 4)))
    np.testing.assert_array_equal(labels0, np.zeros(8))
    np.testing.assert_array_equal(matched0, np.full(8, -1))


def test_anchor_targets_tied_best_anchors_are_all_positive():
    anchors = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [0, 0, 30, 30]], np.float64)
    gt = np.array([[5, 0, 15, 10]], np.float64)   # IoU 1/3 with a0 and a1, 1/9 with a2
    iou = np.array([[1 / 3], [1 / 3], [1 / 9]])
    labels, _ = assign_anchor_targets(anchors, gt, iou=iou)
    np.testing.assert_array_equal(labels, [1, 1, 0])


def test_sampler_caps_positives_and_is_seeded():
    labels = np.array([1] * 10 + [0] * 20 + [-1] * 5)
    s1 = sample_labels(labels, batch_size=8, positive_fraction=0.5, rng=np.random.default_rng(3))
    s2 = sample_labels(labels, batch_size=8, positive_fraction=0.5, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(s1, s2)
    assert (s1 == 1).sum() == 4 and (s1 == 0).sum() == 4 and (s1 == -1).sum() == 27
    assert set(np.nonzero(s1 == 1)[0]) <= set(range(10))
    assert set(np.nonzero(s1 == 0)[0]) <= set(range(10, 30))
    # few positives: negatives fill the batch
    few = np.array([1, 0, 0, 0, 0, 0, -1])
    s = sample_labels(few, batch_size=4, positive_fraction=0.5, rng=np.random.default_rng(0))
    assert (s == 1).sum() == 1 and (s == 0).sum() == 3


# ------------------------------------------------------------------------------------ metrics
def test_voc_ap_hand_made():
    # class 0: 3 gt boxes (2 in image 0, 1 in image 1); ranked detections:
    #   .9 TP, .8 FP (no overlap), .7 TP, .6 FP (duplicate of the .9 one's box), .5 TP
    #   P/R: 1/(1/3), 1/2(1/3), 2/3(2/3), 1/2(2/3), 3/5(1)
    #   envelope: 1 up to R=1/3, 2/3 up to 2/3, 3/5 up to 1 -> AP = (1 + 2/3 + 3/5) / 3
    # class 1: one gt, one detection at IoU 0.4 -> AP 0;  class 2: no gt -> NaN, not averaged
    gt_boxes = [np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 0, 50, 10]], np.float32),
                np.array([[5, 5, 15, 15]], np.float32)]
    gt_labels = [np.array([0, 0, 1]), np.array([0])]
    pred_boxes = [np.array([[0, 0, 10, 10], [60, 60, 70, 70], [21, 20, 31, 30], [1, 0, 10, 10],
                            [40, 0, 47, 7], [0, 0, 3, 3]], np.float32),
                  np.array([[5, 5, 15, 16]], np.float32)]
    pred_scores = [np.array([0.9, 0.8, 0.7, 0.6, 0.95, 0.3]), np.array([0.5])]
    pred_labels = [np.array([0, 0, 0, 0, 1, 2]), np.array([0])]
    mAP, ap = mean_average_precision(pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels,
                                     num_classes=3)
    want0 = (1 + 2 / 3 + 3 / 5) / 3
    # [40,0,47,7] vs [40,0,50,10]: 49 / 100 -> below 0.5
    assert ap[0] == pytest.approx(want0, abs=1e-12)
    assert ap[1] == 0.0
    assert np.isnan(ap[2])
    assert mAP == pytest.approx(want0 / 2, abs=1e-12)
    # perfect detections -> 1; a list helper and per-class agree
    ap_perfect = average_precision_per_class(gt_boxes, [np.ones(3), np.ones(1)], gt_labels,
                                             gt_boxes, gt_labels, num_classes=2)
    np.testing.assert_array_equal(ap_perfect, [1.0, 1.0])
    assert voc_ap([0.5, 1.0], [1.0, 0.5]) == pytest.approx(0.75)


def test_proposal_recall_hand_made():
    gt = [np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32),
          np.array([[0, 0, 8, 8]], np.float32), np.zeros((0, 4), np.float32)]
    props = [np.array([[0, 0, 10, 12],          # IoU 100/120 = 0.83 with gt0
                       [20, 20, 40, 30],        # IoU 0.5 with gt1
                       [20, 20, 40, 39]]),      # IoU 0.95 with gt1, but third in rank
             np.array([[0, 0, 8, 4]]),          # IoU 0.5
             np.array([[0, 0, 5, 5]])]
    r = proposal_recall(props, gt, top_n=2, iou_thresholds=(0.5, 0.7))
    assert r[0.5] == pytest.approx(1.0) and r[0.7] == pytest.approx(1 / 3)
    r = proposal_recall(props, gt, top_n=3, iou_thresholds=(0.7,))
    assert r[0.7] == pytest.approx(2 / 3)
