"""NMS and box IoU on the GPU (``kernels/boxes.cu``)."""
from __future__ import annotations

import cupy
import numpy as np

from convkit.boxes import score_order

from ._kernels import grid_for, launch, on_device

STEM = "boxes"
_I = np.int64
_NMS_SHARED_WORDS = 4096     # NMS_SHARED_WORDS in boxes.cu (tests set 0 to use global memory)


def box_iou(boxes1, boxes2):
    """(N,4), (M,4) xyxy -> (N,M) IoU; area = (x2-x1)*(y2-y1); union 0 -> 0."""
    with on_device("box_iou", boxes1=boxes1, boxes2=boxes2):
        N, M = boxes1.shape[0], boxes2.shape[0]
        out = cupy.empty((N, M), dtype=boxes1.dtype)
        grid, block = grid_for(N * M)
        launch(STEM, "box_iou", boxes1.dtype, grid, block, (boxes1, boxes2, _I(N), _I(M), out))
        return out


def nms(boxes, scores, iou_threshold):
    """-> int64 indices of the kept boxes by decreasing score.

    The order is a *stable* descending sort of the scores, so equal scores keep the lower
    index first (the contract on every backend; torchvision leaves ties unspecified).  A box is
    suppressed when its IoU with a kept, higher-ranked box is > iou_threshold.  The mask
    kernel compares every box with the later ones in blocks of 64 (one bit each); one block
    then walks the boxes in order with the suppressed set in shared memory (one barrier per
    64 boxes), so only the kept count travels to the host.
    """
    with on_device("nms", boxes=boxes, scores=scores):
        N = boxes.shape[0]
        dt = boxes.dtype
        # stable ascending sort of -score == stable descending sort of score (ties: lower index)
        order = score_order(scores)
        sorted_boxes = cupy.ascontiguousarray(boxes[order])
        nblocks = (N + 63) // 64
        mask = cupy.empty(N * nblocks, dtype=np.uint64)
        grid, block = grid_for(N * nblocks)
        thr = np.float64(iou_threshold)    # the kernel compares in double (see boxes.cu)
        launch(STEM, "nms_mask", dt, grid, block,
               (sorted_boxes, _I(N), _I(nblocks), thr, mask))
        shared = nblocks <= _NMS_SHARED_WORDS
        removed = cupy.empty(1 if shared else nblocks, dtype=np.uint64)
        keep = cupy.empty(N, dtype=np.int64)
        nkeep = cupy.empty(1, dtype=np.int64)
        threads = min(1024, 32 * -(-nblocks // 32))     # one thread per later word, or fewer
        launch(STEM, "nms_reduce", dt, (1,), (threads,),
               (mask, _I(N), _I(nblocks), _I(shared), removed, keep, nkeep))
        n = int(cupy.asnumpy(nkeep)[0])        # the one device -> host copy: the output's length
        return order[keep[:n]].astype(np.int64, copy=False)
