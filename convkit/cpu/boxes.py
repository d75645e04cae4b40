"""CPU NMS and pairwise IoU: Python wrappers around ``_boxes``.

The wrapper does the stable descending sort (NumPy's, so ties keep the lower index first) and
lays the sorted boxes out as separate coordinate arrays; the kernel does the greedy
suppression with a bitmap and stops once every box is decided.
"""
from __future__ import annotations

import numpy as np

from .._config import get_num_threads
from ..boxes import score_order
from . import _boxes

# Fewer boxes than this: one thread.  6000 RPN proposals take ~5 ms on one core; the block
# scheme forks once per 256 boxes, and on a busy 2-core machine those joins cost more than
# the second core saves (measured: 5.3 ms serial vs 8-60 ms with 2 threads under load).
_PARALLEL_MIN_BOXES = 16384


def _float_below(thr):
    """The largest float32 <= thr (so that, for a float32 IoU, iou > it <=> iou > thr)."""
    f = np.float32(thr)
    if f > thr:      # rounded up (NaN compares False and stays NaN)
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def nms(boxes, scores, iou_threshold):
    n = boxes.shape[0]
    order = score_order(scores)
    b = boxes[order]
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, i]) for i in range(4))
    area = (x2 - x1) * (y2 - y1)
    thr = float(iou_threshold)
    fast = boxes.dtype == np.float32 and bool(np.isfinite(b).all())
    suppressed = np.zeros(n, np.uint8)
    keep = np.empty(n, np.int64)
    nt = 1 if n < _PARALLEL_MIN_BOXES else get_num_threads()
    with np.errstate(invalid="ignore", over="ignore"):
        thr_f = _float_below(thr)
    nk = _boxes.nms(x1, y1, x2, y2, area, thr, thr_f, fast, suppressed, keep, nt)
    return order[keep[:nk]].astype(np.int64, copy=False)


def box_iou(boxes1, boxes2):
    out = np.empty((boxes1.shape[0], boxes2.shape[0]), boxes1.dtype)
    nt = 1 if out.size < (1 << 16) else get_num_threads()
    _boxes.box_iou(boxes1, boxes2, out, nt)
    return out
