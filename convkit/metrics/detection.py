"""Detection metrics: PASCAL VOC-style average precision and mAP, and proposal recall.

Everything runs on the host in float64 NumPy (device arrays are copied with
``convkit.to_numpy``); boxes are xyxy in pixels, IoU = intersection / union with
``area = (x2 - x1) * (y2 - y1)`` as in :func:`convkit.box_iou`.

AP follows the VOC 2010+ devkit: detections of one class from all images are ranked by score;
each is a true positive when its best-overlapping ground-truth box of that class (IoU >=
``iou_threshold``) has not been claimed by a higher-scored detection, else a false positive;
AP is the area under the precision-recall curve after making precision monotone
(non-increasing) from the right -- "all-point interpolation".
"""
from __future__ import annotations

import numpy as np

from ..functional import to_numpy

__all__ = ["box_iou_np", "voc_ap", "average_precision_per_class", "mean_average_precision",
           "mean_average_precision_coco", "COCO_IOU_THRESHOLDS", "proposal_recall"]

#: COCO's IoU thresholds 0.50, 0.55, ..., 0.95 (mAP@[.5:.95])
COCO_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def _host(a, cols=None):
    a = np.asarray(to_numpy(a))
    return a.reshape(-1, cols) if cols else a.reshape(-1)


def box_iou_np(a, b) -> np.ndarray:
    """IoU of xyxy boxes a (array[N, 4]) and b (array[M, 4]) as float64 array[N, M]
    (host NumPy; a pair with union 0 has IoU 0)."""
    a = _host(a, 4).astype(np.float64)
    b = _host(b, 4).astype(np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def voc_ap(recall, precision) -> float:
    """All-point interpolated AP from a ranked list's recall and precision (array[D] each):
    ``sum over recall steps of (r[i] - r[i-1]) * max(precision[j] for j >= i)``."""
    r = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
    p = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]          # precision envelope, non-increasing
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def _class_ap(dets, gts, iou_threshold):
    """dets: list over images of (boxes (Di, 4), scores (Di,)); gts: list of (Gi, 4).
    Returns (AP, number of gt boxes); AP is NaN when there are no gt boxes."""
    n_gt = sum(g.shape[0] for g in gts)
    img = np.concatenate([np.full(len(s), i) for i, (_, s) in enumerate(dets)] + [np.zeros(0)])
    if img.size == 0 or n_gt == 0:
        return (float("nan") if n_gt == 0 else 0.0), n_gt
    boxes = np.concatenate([b for b, _ in dets])
    scores = np.concatenate([s for _, s in dets])
    order = np.argsort(-scores, kind="stable")
    claimed = [np.zeros(g.shape[0], bool) for g in gts]
    ious = [box_iou_np(b, g) if g.shape[0] else None for (b, _), g in zip(dets, gts)]
    offsets = np.cumsum([0] + [len(s) for _, s in dets])
    tp = np.zeros(order.size)
    for rank, d in enumerate(order):
        i = int(img[d])
        if ious[i] is None:
            continue
        row = ious[i][d - offsets[i]]
        j = int(row.argmax())
        if row[j] >= iou_threshold and not claimed[i][j]:
            claimed[i][j] = True
            tp[rank] = 1
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, order.size + 1)
    return voc_ap(recall, precision), n_gt


def average_precision_per_class(pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels,
                                 num_classes, iou_threshold=0.5) -> np.ndarray:
    """VOC AP per class (float64 array[num_classes]; NaN for a class without gt boxes).

    Each argument is a list over images: pred_boxes array[Di, 4], pred_scores array[Di],
    pred_labels int array[Di] in [0, num_classes), gt_boxes array[Gi, 4], gt_labels array[Gi].
    """
    n = len(gt_boxes)
    if not (len(pred_boxes) == len(pred_scores) == len(pred_labels) == len(gt_labels) == n):
        raise ValueError(f"average_precision_per_class: every argument must list the same "
                         f"number of images, got {len(pred_boxes)}, {len(pred_scores)}, "
                         f"{len(pred_labels)}, {n}, {len(gt_labels)}")
    pb = [_host(b, 4) for b in pred_boxes]
    ps = [_host(s).astype(np.float64) for s in pred_scores]
    pl = [_host(v).astype(np.int64) for v in pred_labels]
    gb = [_host(b, 4) for b in gt_boxes]
    gl = [_host(v).astype(np.int64) for v in gt_labels]
    ap = np.full(num_classes, np.nan)
    for c in range(num_classes):
        dets = [(b[lab == c], s[lab == c]) for b, s, lab in zip(pb, ps, pl)]
        gts = [b[lab == c] for b, lab in zip(gb, gl)]
        ap[c] = _class_ap(dets, gts, iou_threshold)[0]
    return ap


def mean_average_precision(pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels,
                           num_classes, iou_threshold=0.5):
    """(mAP, per-class AP): the mean of :func:`average_precision_per_class` over the classes
    that have ground-truth boxes (NaN if none has)."""
    ap = average_precision_per_class(pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels,
                                     num_classes, iou_threshold)
    valid = ~np.isnan(ap)
    return (float(ap[valid].mean()) if valid.any() else float("nan")), ap


def mean_average_precision_coco(pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels,
                                num_classes, iou_thresholds=COCO_IOU_THRESHOLDS):
    """COCO-style mAP@[.5:.95]: :func:`mean_average_precision` (VOC all-point AP, where COCO's
    own evaluator samples precision at 101 recall points) averaged over ``iou_thresholds``.
    Returns (the average, array of the mAP at each threshold)."""
    per = np.array([mean_average_precision(pred_boxes, pred_scores, pred_labels, gt_boxes,
                                           gt_labels, num_classes, iou_threshold=t)[0]
                    for t in iou_thresholds])
    return float(per.mean()), per


def proposal_recall(proposals, gt_boxes, top_n=300, iou_thresholds=(0.5, 0.7)) -> dict:
    """Fraction of ground-truth boxes (over all images) that one of the first ``top_n``
    proposals of their image overlaps with IoU >= each threshold.

    proposals: list over images of array[Pi, 4] ranked best first; gt_boxes: list of
    array[Gi, 4].  Returns ``{threshold: recall}`` (NaN when there are no gt boxes).
    """
    if len(proposals) != len(gt_boxes):
        raise ValueError(f"proposal_recall: {len(proposals)} proposal lists for "
                         f"{len(gt_boxes)} images")
    best = []
    for p, g in zip(proposals, gt_boxes):
        g = _host(g, 4)
        if g.shape[0] == 0:
            continue
        p = _host(p, 4)[:top_n]
        best.append(box_iou_np(p, g).max(axis=0) if p.shape[0] else np.zeros(g.shape[0]))
    best = np.concatenate(best) if best else np.zeros(0)
    return {t: (float((best >= t).mean()) if best.size else float("nan"))
            for t in iou_thresholds}
