"""Reference (NumPy) non-maximum suppression and pairwise box IoU.

Semantics are torchvision's ``nms`` / ``box_iou`` with convkit's two firmer rules: the score
order is a *stable* descending sort (ties keep the lower index first, on every backend), and a
pair whose union is 0 has IoU 0 (torchvision's CPU NMS computes 0/0 there).  Boxes are xyxy;
area = (x2 - x1) * (y2 - y1), no ``+ 1``.  The boundary guarantees non-empty, C-contiguous
float arrays of one dtype.
"""
from __future__ import annotations

import numpy as np

from ..boxes import score_order


def _iou_one_to_many(box, boxes, area, areas):
    """IoU of one box (4,) with boxes (M, 4), given their areas; union 0 -> 0."""
    w = np.maximum(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0)
    h = np.maximum(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0)
    inter = w * h
    union = area + areas - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union == 0, 0, inter / union)


def nms(boxes, scores, iou_threshold):
    """Greedy NMS.  boxes (array[N, 4]) xyxy, scores (array[N]) -> int64 array[J]: the kept
    indices by decreasing score.  Going down the (stable) score order, a box is kept unless
    a box kept before it overlaps it with IoU > iou_threshold (equal is kept)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    # stable, so equal scores keep index order; -scores (not a reversed ascending sort, which
    # would put the higher index first among ties)
    order = score_order(scores)
    # compared in float64, as torchvision's kernels compare a float IoU with a double threshold
    thr = np.float64(iou_threshold)
    suppressed = np.zeros(boxes.shape[0], bool)
    keep = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        rest = rest[~suppressed[rest]]
        if rest.size:
            iou = _iou_one_to_many(boxes[i], boxes[rest], areas[i], areas[rest])
            suppressed[rest[iou > thr]] = True
    return np.asarray(keep, dtype=np.int64)


def box_iou(boxes1, boxes2):
    """Pairwise IoU: boxes1 (array[N, 4]), boxes2 (array[M, 4]) xyxy -> array[N, M] of their
    dtype.  inter = clamp(min(x2) - max(x1), 0) * clamp(min(y2) - max(y1), 0);
    union = area1 + area2 - inter; a union of 0 gives 0."""
    a1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    a2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = np.maximum(rb - lt, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = a1[:, None] + a2[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union == 0, 0, inter / union).astype(boxes1.dtype, copy=False)
