"""Anchors for a Region Proposal Network, and how anchors are matched to ground-truth boxes.

Anchor order (used by the RPN head's channel layout and everything downstream): for a feature
map of ``Hf x Wf`` cells and ``k`` anchors per cell, anchor ``i = (y * Wf + x) * k + a``, where
``a = s * len(aspect_ratios) + r`` runs over sizes (outer) and aspect ratios (inner).  Anchor
``a`` at cell ``(y, x)`` is centred on ``((x + 0.5) * stride, (y + 0.5) * stride)`` -- the centre
of the ``stride x stride`` block of input pixels the cell summarises -- with area ``size**2`` and
``height / width = ratio``.

Target assignment follows the Faster R-CNN paper (Ren et al. 2015, section 3.1.2): an anchor is
positive if its IoU with some box is >= 0.7, or if it has the highest IoU of all anchors with
some box (so every box gets at least one anchor); negative if its best IoU is < 0.3 and it is
not positive; ignored otherwise.  Training uses a random sample of 256 labelled anchors per
image with at most half of them positive.  Unlike the paper (and like torchvision), anchors that
cross the image border take part in training: on small images most anchors near an object at
the border cross it, and the proposals are clipped to the image anyway.
"""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from .._registry import get_backend

__all__ = ["AnchorGenerator", "assign_anchor_targets", "sample_labels", "host_box_iou"]


class AnchorGenerator:
    """``k = len(sizes) * len(aspect_ratios)`` anchors per feature-map cell.

    sizes: anchor side lengths in input pixels (area = size**2).  aspect_ratios: height/width.
    stride: input pixels per feature cell.  Default 3 sizes x 3 ratios = 9 anchors.
    """

    def __init__(self, sizes=(16, 32, 64), aspect_ratios=(0.5, 1.0, 2.0), stride=16):
        sizes = tuple(float(s) for s in sizes)
        ratios = tuple(float(r) for r in aspect_ratios)
        if not sizes or not ratios or min(sizes) <= 0 or min(ratios) <= 0:
            raise ValueError(f"AnchorGenerator: sizes and aspect_ratios must be non-empty and "
                             f"positive, got {sizes}, {ratios}")
        if not stride > 0:
            raise ValueError(f"AnchorGenerator: stride must be positive, got {stride}")
        self.sizes, self.aspect_ratios, self.stride = sizes, ratios, float(stride)

    @property
    def num_anchors(self) -> int:
        """k, anchors per feature-map cell."""
        return len(self.sizes) * len(self.aspect_ratios)

    def base_anchors(self) -> np.ndarray:
        """float64 array[k, 4]: the k anchors centred on (0, 0), xyxy, in the order above."""
        out = []
        for s in self.sizes:
            for r in self.aspect_ratios:
                w, h = s / math.sqrt(r), s * math.sqrt(r)
                out.append((-w / 2, -h / 2, w / 2, h / 2))
        return np.asarray(out, np.float64)

    def grid_anchors(self, feature_hw, dtype=np.float32) -> np.ndarray:
        """NumPy array[Hf * Wf * k, 4] xyxy anchors for a ``(Hf, Wf)`` feature map."""
        hf, wf = (int(v) for v in feature_hw)
        cx = (np.arange(wf, dtype=np.float64) + 0.5) * self.stride
        cy = (np.arange(hf, dtype=np.float64) + 0.5) * self.stride
        cyy, cxx = np.meshgrid(cy, cx, indexing="ij")                    # (Hf, Wf)
        shifts = np.stack([cxx, cyy, cxx, cyy], axis=-1).reshape(-1, 1, 4)
        return (shifts + self.base_anchors()[None]).reshape(-1, 4).astype(dtype)

    __call__ = grid_anchors


def host_box_iou(a, b) -> np.ndarray:
    """IoU of xyxy boxes a (array[N, 4]) and b (array[M, 4]) through the active backend's
    ``box_iou``, returned as a float64 NumPy array[N, M]."""
    be = get_backend()
    a = np.asarray(F.to_numpy(a), np.float64).reshape(-1, 4)
    b = np.asarray(F.to_numpy(b), np.float64).reshape(-1, 4)
    return np.asarray(F.to_numpy(F.box_iou(be.asarray(a), be.asarray(b))), np.float64)


def assign_anchor_targets(anchors, gt_boxes, fg_iou=0.7, bg_iou=0.3, iou=None):
    """Label anchors for RPN training (Faster R-CNN's rule, see the module docstring).

    anchors: array[A, 4] xyxy; gt_boxes: array[G, 4] xyxy (G may be 0).
    ``iou`` (array[A, G]) may be given to skip computing it.
    Returns (labels int64 array[A] with 1 = object, 0 = background, -1 = ignored;
    matched int64 array[A]: index of the anchor's highest-IoU box, -1 when G = 0).
    An anchor that is the best for a box is positive even below ``fg_iou`` (if its IoU > 0);
    ties for "best" all count, as in the paper's reference code.
    """
    A = int(np.asarray(F.to_numpy(anchors)).shape[0])
    G = int(np.asarray(F.to_numpy(gt_boxes)).reshape(-1, 4).shape[0])
    if G == 0:
        return np.zeros(A, np.int64), np.full(A, -1, np.int64)
    if iou is None:
        iou = host_box_iou(anchors, gt_boxes)
    iou = np.asarray(iou, np.float64)
    matched = iou.argmax(axis=1).astype(np.int64)
    best = iou.max(axis=1)
    labels = np.full(A, -1, np.int64)
    labels[best < bg_iou] = 0
    best_per_gt = iou.max(axis=0)                                       # (G,)
    is_best = (iou == best_per_gt[None]) & (best_per_gt[None] > 0)
    labels[is_best.any(axis=1)] = 1
    labels[best >= fg_iou] = 1
    return labels, matched


def sample_labels(labels, batch_size=256, positive_fraction=0.5, rng=None):
    """Keep a random subset of the labelled entries: at most ``batch_size * positive_fraction``
    positives (label >= 1), negatives (label 0) filling the rest of ``batch_size``.  The others
    become -1.  ``rng``: a ``numpy.random.Generator`` (the caller seeds it).  Returns a new
    int64 array."""
    rng = np.random.default_rng(0) if rng is None else rng
    labels = np.asarray(labels, np.int64)
    pos = np.nonzero(labels >= 1)[0]
    neg = np.nonzero(labels == 0)[0]
    n_pos = min(pos.size, int(batch_size * positive_fraction))
    n_neg = min(neg.size, batch_size - n_pos)
    out = np.full_like(labels, -1)
    keep_pos = rng.permutation(pos)[:n_pos]
    keep_neg = rng.permutation(neg)[:n_neg]
    out[keep_pos] = labels[keep_pos]
    out[keep_neg] = 0
    return out
