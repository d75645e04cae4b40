"""The Region Proposal Network (Ren et al. 2015): a small conv head over the backbone's feature
map, and the machinery that turns its outputs into proposals and losses.

Channel layout of the head's outputs, for ``k`` anchors per cell (anchor order as in
:mod:`convkit.models.anchors`):

* objectness ``cls`` (array[N, 2k, Hf, Wf]): channel ``2a`` is the *object* logit and channel
  ``2a + 1`` the *background* logit of anchor ``a``; the two are a softmax pair, so
  ``p(object) = softmax([cls[2a], cls[2a+1]])[0]`` (the paper's 2k-score form).
* deltas ``reg`` (array[N, 4k, Hf, Wf]): channels ``4a .. 4a + 3`` are ``(dx, dy, dw, dh)`` of
  anchor ``a`` (Faster R-CNN's box parametrisation, :func:`convkit.boxes.encode_boxes`).

:func:`flatten_rpn_outputs` reorders them to per-anchor rows (array[N, Hf*Wf*k, 2] and
array[N, Hf*Wf*k, 4]) whose row ``(y * Wf + x) * k + a`` matches the anchor list.
"""
from __future__ import annotations

import contextlib

import numpy as np

from .. import boxes as B
from .. import functional as F
from .._registry import get_backend
from ..nn import Conv2d, Module, ReLU, no_grad, sigmoid, softmax_cross_entropy, smooth_l1_loss
from ..nn.init import make_rng
from .anchors import AnchorGenerator, assign_anchor_targets, sample_labels

__all__ = ["RPNHead", "RegionProposalNetwork", "flatten_rpn_outputs", "unflatten_rpn_grads",
           "rpn_loss"]


def flatten_rpn_outputs(cls, reg):
    """(array[N, 2k, H, W], array[N, 4k, H, W]) -> (array[N, H*W*k, 2], array[N, H*W*k, 4])."""
    n, c2, h, w = cls.shape
    k = c2 // 2
    cls_f = cls.reshape(n, k, 2, h, w).transpose(0, 3, 4, 1, 2).reshape(n, h * w * k, 2)
    reg_f = reg.reshape(n, k, 4, h, w).transpose(0, 3, 4, 1, 2).reshape(n, h * w * k, 4)
    return cls_f, reg_f


def unflatten_rpn_grads(g_cls, g_reg, feature_hw):
    """Inverse reordering of :func:`flatten_rpn_outputs`, for the gradients."""
    n, a, _ = g_cls.shape
    h, w = feature_hw
    k = a // (h * w)
    xp = _xp_of(g_cls)
    gc = xp.ascontiguousarray(g_cls.reshape(n, h, w, k, 2).transpose(0, 3, 4, 1, 2)
                              .reshape(n, 2 * k, h, w))
    gr = xp.ascontiguousarray(g_reg.reshape(n, h, w, k, 4).transpose(0, 3, 4, 1, 2)
                              .reshape(n, 4 * k, h, w))
    return gc, gr


def _xp_of(a):
    return np if isinstance(a, np.ndarray) else get_backend().xp


def rpn_loss(cls_flat, reg_flat, labels, reg_targets, beta=1.0 / 9):
    """Objectness and box losses of an RPN, with their gradients.

    cls_flat (array[N, A, 2]: object, background logits), reg_flat (array[N, A, 4]);
    labels (int array[N, A]: 1 object, 0 background, -1 not sampled); reg_targets (array[N, A, 4],
    used where label == 1).  Both losses are normalised by the number of sampled anchors
    S = #(labels >= 0), as torchvision does:
    ``L_cls = sum_sampled CE(softmax(cls), 1 - label) / S`` (class 0 of the pair = object),
    ``L_reg = sum_positive smoothL1_beta(reg - target) / S``.
    Returns (loss_cls, loss_reg, grad_cls_flat, grad_reg_flat); losses are 0-d arrays.
    """
    xp = _xp_of(cls_flat)
    n, a, _ = cls_flat.shape
    lab = labels.reshape(-1)
    sampled = int((lab >= 0).sum())
    denom = max(sampled, 1)
    # pair index 0 = object, 1 = background; unsampled anchors are ignored
    target = xp.where(lab == 1, 0, xp.where(lab == 0, 1, -100)).astype(xp.int64)
    loss_cls, g_cls = softmax_cross_entropy(cls_flat.reshape(-1, 2), target, reduction="sum",
                                            ignore_index=-100)
    pos = (lab == 1)[:, None].astype(reg_flat.dtype)
    r = reg_flat.reshape(-1, 4)
    t = reg_targets.reshape(-1, 4).astype(r.dtype, copy=False)
    l_reg, g_reg = smooth_l1_loss(r, t, beta=beta, reduction="none")
    loss_reg = (l_reg * pos).sum()
    g_reg = g_reg * pos
    scale = r.dtype.type(1.0 / denom)
    return (loss_cls * scale, loss_reg * scale, (g_cls * scale).reshape(n, a, 2),
            (g_reg * scale).reshape(n, a, 4))


class RPNHead(Module):
    """3x3 conv + ReLU, then two sibling 1x1 convs: 2k objectness logits and 4k deltas (layout
    in the module docstring).  The 1x1 convs start from N(0, 0.01^2) weights, as in the paper.

    forward(x (array[N, C, H, W])) -> (cls array[N, 2k, H, W], reg array[N, 4k, H, W]);
    backward(grad_cls, grad_reg) -> grad_x.
    """

    def __init__(self, in_channels, num_anchors=9, mid_channels=None, dtype=np.float32,
                 seed=None):
        super().__init__()
        rng = make_rng(seed)
        mid = in_channels if mid_channels is None else mid_channels
        self.num_anchors = int(num_anchors)
        self.conv = Conv2d(in_channels, mid, 3, padding=1, dtype=dtype, seed=rng)
        self.relu = ReLU()
        self.cls_logits = Conv2d(mid, 2 * self.num_anchors, 1, dtype=dtype, seed=rng)
        self.bbox_pred = Conv2d(mid, 4 * self.num_anchors, 1, dtype=dtype, seed=rng)
        for m in (self.cls_logits, self.bbox_pred):
            w = m.params["weight"]
            w[...] = self.backend.asarray((rng.standard_normal(w.shape) * 0.01).astype(w.dtype))

    def forward(self, x):
        h = self.relu.forward(self.conv.forward(x))
        return self.cls_logits.forward(h), self.bbox_pred.forward(h)

    def backward(self, grad_cls, grad_reg):
        gh = self.cls_logits.backward(grad_cls) + self.bbox_pred.backward(grad_reg)
        return self.conv.backward(self.relu.backward(gh))


class RegionProposalNetwork(Module):
    """Anchors + :class:`RPNHead` + proposal selection + training targets and losses.

    Proposals, per image: p(object) from the softmax pair; the ``pre_nms_top_n`` best anchors;
    decode their deltas; clip to the image; drop boxes narrower or lower than ``min_size``;
    NMS at ``nms_thresh`` (:func:`convkit.nms`); keep the ``post_nms_top_n`` best.  The top-n
    values are (training, testing) pairs.

    Training targets: :func:`assign_anchor_targets` (IoU >= fg_iou positive, < bg_iou negative,
    plus the best anchor of each box), then :func:`sample_labels` (``batch_size_per_image``
    anchors, at most ``positive_fraction`` positive) with a ``numpy.random.Generator`` seeded by
    ``seed``; box targets :func:`convkit.boxes.encode_boxes` with unit weights.
    """

    _transient = ("_anchor_cache",)       # rebuilt on demand: not pickled

    def __init__(self, in_channels, anchor_generator=None, mid_channels=None,
                 pre_nms_top_n=(1000, 1000), post_nms_top_n=(300, 300), nms_thresh=0.7,
                 min_size=1.0, fg_iou=0.7, bg_iou=0.3, batch_size_per_image=256,
                 positive_fraction=0.5, beta=1.0 / 9, dtype=np.float32, seed=0):
        super().__init__()
        rng = make_rng(seed)
        self.anchor_generator = anchor_generator or AnchorGenerator()
        self.head = RPNHead(in_channels, self.anchor_generator.num_anchors, mid_channels,
                            dtype=dtype, seed=rng)
        self.pre_nms_top_n, self.post_nms_top_n = tuple(pre_nms_top_n), tuple(post_nms_top_n)
        self.nms_thresh, self.min_size = float(nms_thresh), float(min_size)
        self.fg_iou, self.bg_iou = float(fg_iou), float(bg_iou)
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.beta = float(beta)
        self.sampler_rng = np.random.default_rng(rng.integers(2 ** 63))
        self._anchor_cache = {}

    # ------------------------------------------------------------------ anchors, targets
    def anchors(self, feature_hw, dtype):
        """Backend array[Hf*Wf*k, 4] of anchors (cached per feature size and dtype)."""
        key = (self.backend.name, tuple(int(v) for v in feature_hw), np.dtype(dtype).str)
        if key not in self._anchor_cache:
            self._anchor_cache[key] = self.backend.asarray(
                self.anchor_generator.grid_anchors(feature_hw, dtype))
        return self._anchor_cache[key]

    def targets(self, anchors, gt_boxes):
        """Sampled labels (int64 array[N, A]) and box targets (array[N, A, 4]) for a list of
        per-image gt boxes (array[Gi, 4] each), as backend arrays."""
        anchors_np = np.asarray(self.backend.to_numpy(anchors), np.float64)
        labels, targets = [], []
        for g in gt_boxes:
            g = np.asarray(self.backend.to_numpy(g), np.float64).reshape(-1, 4)
            lab, matched = assign_anchor_targets(anchors_np, g, self.fg_iou, self.bg_iou)
            lab = sample_labels(lab, self.batch_size_per_image, self.positive_fraction,
                                self.sampler_rng)
            t = np.zeros_like(anchors_np)
            pos = lab == 1
            if pos.any():
                t[pos] = B.encode_boxes(g[matched[pos]], anchors_np[pos])
            labels.append(lab)
            targets.append(t)
        dt = anchors.dtype
        return (self.backend.asarray(np.stack(labels)),
                self.backend.asarray(np.stack(targets).astype(dt)))

    # ------------------------------------------------------------------ proposals
    def proposals(self, cls_flat, reg_flat, anchors, image_size):
        """Per image: (boxes array[P, 4], object probabilities array[P]), best first."""
        xp = self.xp
        mode = 0 if self.training else 1
        pre_n, post_n = self.pre_nms_top_n[mode], self.post_nms_top_n[mode]
        # p(object) = sigmoid(l_obj - l_bg): the softmax of the pair, computed stably
        logit = cls_flat[..., 0] - cls_flat[..., 1]
        out = []
        for i in range(cls_flat.shape[0]):
            s = logit[i]
            order = xp.argsort(-s, kind="stable")[:pre_n]
            b = B.decode_boxes(xp.ascontiguousarray(reg_flat[i][order]), anchors[order])
            b = B.clip_boxes(b, image_size)
            keep = B.remove_small_boxes(b, self.min_size)
            b, s_i = xp.ascontiguousarray(b[keep]), xp.ascontiguousarray(s[order][keep])
            keep = F.nms(b, s_i, self.nms_thresh)[:post_n]
            out.append((b[keep], sigmoid(s_i[keep]).astype(b.dtype, copy=False)))
        return out

    # ------------------------------------------------------------------ forward / backward
    def forward(self, features, image_size, gt_boxes=None):
        """features (array[N, C, Hf, Wf]) -> (list of (boxes, scores) proposals per image,
        dict of losses).  With ``gt_boxes`` (a list of array[Gi, 4]) it also computes the
        losses ``rpn_objectness``, ``rpn_box`` and keeps their gradients for :meth:`backward`;
        without, nothing is differentiated and the head keeps no caches."""
        with contextlib.nullcontext() if gt_boxes is not None else no_grad():
            cls, reg = self.head.forward(features)
        cls_f, reg_f = flatten_rpn_outputs(cls, reg)
        hw = features.shape[2:]
        anchors = self.anchors(hw, features.dtype)
        props = self.proposals(cls_f, reg_f, anchors, image_size)
        losses = {}
        if gt_boxes is not None:
            labels, targets = self.targets(anchors, gt_boxes)
            l_cls, l_reg, g_cls, g_reg = rpn_loss(cls_f, reg_f, labels, targets, self.beta)
            losses = {"rpn_objectness": l_cls, "rpn_box": l_reg}
            self._push((g_cls, g_reg, hw))
        return props, losses

    def backward(self, scale=1.0):
        """Back-propagate the summed RPN losses (times ``scale``) into the head; returns the
        gradient w.r.t. the features.  Each forward with ``gt_boxes`` keeps its loss gradients;
        backward consumes the latest (RuntimeError when none is pending)."""
        g_cls, g_reg, hw = self._pop()
        gc, gr = unflatten_rpn_grads(g_cls, g_reg, hw)
        if scale != 1.0:
            gc, gr = gc * scale, gr * scale
        return self.head.backward(gc, gr)
