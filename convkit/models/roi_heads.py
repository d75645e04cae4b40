"""Faster R-CNN's second stage: RoI align / RoI pool over the feature map, a box head of fully
connected layers, softmax classification over (background + classes), class-specific box
regression, and per-class NMS (Girshick 2015; Ren et al. 2015).

Label convention inside this module: 0 is background and ``c + 1`` is dataset class ``c``;
detections are reported with the dataset's 0-based labels.
"""
from __future__ import annotations

import numpy as np

from .. import boxes as B
from .. import functional as F
from .._registry import get_backend
from ..nn import (Flatten, Linear, Module, ReLU, Sequential, no_grad, softmax_cross_entropy,
                  smooth_l1_loss)
from ..nn.init import make_rng
from .anchors import host_box_iou, sample_labels

__all__ = ["RoIHeads", "fast_rcnn_loss", "ROI_OPS"]


def fast_rcnn_loss(class_logits, box_deltas, labels, reg_targets, beta=1.0):
    """Classification and class-specific box losses of the RoI head, with their gradients.

    class_logits (array[R, K+1]), box_deltas (array[R, 4(K+1)]: ``(dx, dy, dw, dh)`` of class j
    in columns 4j..4j+3), labels (int array[R]: 0 background, j >= 1 a class), reg_targets
    (array[R, 4]: the encoded gt box, used where label >= 1).
    ``L_cls = mean_R CE(softmax(logits), label)``;
    ``L_box = sum over foreground rows of smoothL1_beta(deltas[4*label : 4*label+4] - target) / R``.
    Returns (loss_cls, loss_box, grad_logits, grad_deltas).
    """
    xp = np if isinstance(class_logits, np.ndarray) else get_backend().xp
    R = class_logits.shape[0]
    loss_cls, g_logits = softmax_cross_entropy(class_logits, labels, reduction="mean")
    fg = xp.nonzero(labels > 0)[0]
    g_deltas = xp.zeros_like(box_deltas)
    if fg.shape[0] == 0 or R == 0:
        return loss_cls, xp.zeros((), box_deltas.dtype), g_logits, g_deltas
    cols = 4 * labels[fg][:, None] + xp.arange(4)[None, :]            # (F, 4)
    pred = box_deltas[fg[:, None], cols]
    l_box, g_box = smooth_l1_loss(pred, reg_targets[fg].astype(pred.dtype, copy=False),
                                  beta=beta, reduction="none")
    inv = box_deltas.dtype.type(1.0 / R)
    g_deltas[fg[:, None], cols] = g_box * inv
    return loss_cls, l_box.sum() * inv, g_logits, g_deltas


#: the RoI aggregators RoIHeads (and FasterRCNN, ``convkit demo detect --roi-op``) accept
ROI_OPS = ("align", "pool", "avg_pool", "max_align")


class RoIHeads(Module):
    """RoI feature extraction + box head + losses + post-processing.

    in_channels, spatial_scale (= 1 / backbone stride): the feature map.  num_classes: object
    classes, not counting background.  roi_op, the lecture's four RoI aggregators: ``"align"``
    (:func:`convkit.roi_align_forward`, ``aligned=True``, ``sampling_ratio``: bilinear samples,
    mean), ``"max_align"`` (:func:`convkit.roi_max_align_forward`, the same samples, max),
    ``"pool"`` (:func:`convkit.roi_pool_forward`: quantised bins, max) or ``"avg_pool"``
    (:func:`convkit.roi_avg_pool_forward`: the same bins, mean).
    Box head: Flatten -> Linear(C*oh*ow, representation) -> ReLU -> Linear -> ReLU, then sibling
    Linear layers for the K+1 class logits and the 4(K+1) class-specific deltas.

    Training samples per image: proposals plus the gt boxes; IoU >= fg_iou with a gt box is
    foreground (that box's class), below bg_iou background; ``batch_size_per_image`` sampled, at
    most ``positive_fraction`` foreground; box targets encoded with ``box_weights``.
    Inference: softmax scores, class-specific decode, clip, score > ``score_thresh``, drop boxes
    under ``min_size``, per-class NMS (:func:`convkit.batched_nms`) at ``nms_thresh``, keep the
    ``detections_per_img`` best.
    """

    _pending = ("_caches", "_pool_caches")   # loss gradients; RoI-op inputs

    def __init__(self, in_channels, num_classes, spatial_scale, roi_op="align", output_size=7,
                 sampling_ratio=2, representation=128, fg_iou=0.5, bg_iou=0.5,
                 batch_size_per_image=64, positive_fraction=0.25,
                 box_weights=(10.0, 10.0, 5.0, 5.0), beta=1.0, score_thresh=0.05,
                 nms_thresh=0.5, detections_per_img=100, min_size=1e-2, dtype=np.float32,
                 seed=0):
        super().__init__()
        if roi_op not in ROI_OPS:
            raise ValueError(f"RoIHeads: roi_op must be one of {', '.join(map(repr, ROI_OPS))}, "
                             f"got {roi_op!r}")
        rng = make_rng(seed)
        self.num_classes, self.roi_op = int(num_classes), roi_op
        self.output_size = (output_size, output_size) if np.isscalar(output_size) \
            else tuple(output_size)
        self.spatial_scale, self.sampling_ratio = float(spatial_scale), int(sampling_ratio)
        self.fg_iou, self.bg_iou = float(fg_iou), float(bg_iou)
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.box_weights, self.beta = tuple(float(w) for w in box_weights), float(beta)
        self.score_thresh, self.nms_thresh = float(score_thresh), float(nms_thresh)
        self.detections_per_img, self.min_size = int(detections_per_img), float(min_size)
        oh, ow = self.output_size
        k1 = self.num_classes + 1
        self.box_head = Sequential(Flatten(),
                                   Linear(in_channels * oh * ow, representation, dtype=dtype,
                                          seed=rng), ReLU(),
                                   Linear(representation, representation, dtype=dtype, seed=rng),
                                   ReLU())
        self.cls_score = Linear(representation, k1, dtype=dtype, seed=rng)
        self.bbox_pred = Linear(representation, 4 * k1, dtype=dtype, seed=rng)
        # the paper's initialisation of the two output layers
        for m, std in ((self.cls_score, 0.01), (self.bbox_pred, 0.001)):
            w = m.params["weight"]
            w[...] = self.backend.asarray((rng.standard_normal(w.shape) * std).astype(w.dtype))
        self.sampler_rng = np.random.default_rng(rng.integers(2 ** 63))
        self._pool_caches = []

    # ------------------------------------------------------------------ RoI features
    def pool(self, features, rois):
        """RoI features array[R, C, oh, ow] for rois array[R, 5] (batch index, xyxy pixels)."""
        argmax = None
        if self.roi_op == "align":
            y = F.roi_align_forward(features, rois, self.output_size, self.spatial_scale,
                                    self.sampling_ratio, aligned=True)
        elif self.roi_op == "max_align":
            y, argmax = F.roi_max_align_forward(features, rois, self.output_size,
                                                self.spatial_scale, self.sampling_ratio,
                                                aligned=True)
        elif self.roi_op == "avg_pool":
            y = F.roi_avg_pool_forward(features, rois, self.output_size, self.spatial_scale)
        else:
            y, argmax = F.roi_pool_forward(features, rois, self.output_size, self.spatial_scale)
        self._push((rois, features.shape, argmax), self._pool_caches)
        return y

    def pool_backward(self, grad_y):
        rois, shape, argmax = self._pop(self._pool_caches)
        if self.roi_op == "align":
            return F.roi_align_backward(grad_y, rois, shape, self.output_size,
                                        self.spatial_scale, self.sampling_ratio, aligned=True)
        if self.roi_op == "max_align":
            return F.roi_max_align_backward(grad_y, argmax, rois, shape, self.output_size,
                                            self.spatial_scale, self.sampling_ratio,
                                            aligned=True)
        if self.roi_op == "avg_pool":
            return F.roi_avg_pool_backward(grad_y, rois, shape, self.output_size,
                                           self.spatial_scale)
        return F.roi_pool_backward(grad_y, argmax, shape, rois)

    def head(self, roi_features):
        """(class_logits array[R, K+1], box_deltas array[R, 4(K+1)])."""
        h = self.box_head.forward(roi_features)
        return self.cls_score.forward(h), self.bbox_pred.forward(h)

    def head_backward(self, g_logits, g_deltas):
        gh = self.cls_score.backward(g_logits) + self.bbox_pred.backward(g_deltas)
        return self.box_head.backward(gh)

    # ------------------------------------------------------------------ training samples
    def sample(self, proposals, gt_boxes, gt_labels):
        """rois (array[R, 5]), labels (int64 array[R]), box targets (array[R, 4]) for the
        per-image proposal boxes and gt boxes / 0-based gt labels (see the class docstring)."""
        be = self.backend
        rois, labels, targets = [], [], []
        for i, (p, g, gl) in enumerate(zip(proposals, gt_boxes, gt_labels)):
            p = np.asarray(be.to_numpy(p), np.float64).reshape(-1, 4)
            g = np.asarray(be.to_numpy(g), np.float64).reshape(-1, 4)
            gl = np.asarray(be.to_numpy(gl), np.int64).reshape(-1)
            cand = np.concatenate([p, g])
            if g.shape[0]:
                iou = host_box_iou(cand, g)
                matched, best = iou.argmax(axis=1), iou.max(axis=1)
                lab = np.where(best >= self.fg_iou, gl[matched] + 1, -1)
                lab[best < self.bg_iou] = 0
            else:
                matched, lab = np.zeros(cand.shape[0], np.int64), np.zeros(cand.shape[0], np.int64)
            lab = sample_labels(lab, self.batch_size_per_image, self.positive_fraction,
                                self.sampler_rng)
            keep = np.nonzero(lab >= 0)[0]
            t = np.zeros((keep.size, 4))
            fg = lab[keep] > 0
            if fg.any():
                t[fg] = B.encode_boxes(g[matched[keep][fg]], cand[keep][fg], self.box_weights)
            rois.append(np.concatenate([np.full((keep.size, 1), i), cand[keep]], axis=1))
            labels.append(lab[keep])
            targets.append(t)
        dt = self.cls_score.params["weight"].dtype
        return (be.asarray(np.concatenate(rois).astype(dt)),
                be.asarray(np.concatenate(labels).astype(np.int64)),
                be.asarray(np.concatenate(targets).astype(dt)))

    # ------------------------------------------------------------------ forward / backward
    def forward(self, features, proposals, image_size, gt_boxes=None, gt_labels=None):
        """proposals: list of per-image boxes array[Pi, 4].  With gt boxes and labels: returns
        the losses ``roi_classifier`` and ``roi_box`` (gradients kept for :meth:`backward`);
        otherwise the detections: a list of dicts with ``boxes`` (array[D, 4]), ``scores``
        (array[D]), ``labels`` (int64 array[D], 0-based classes)."""
        xp = self.xp
        if gt_boxes is not None:
            rois, labels, targets = self.sample(proposals, gt_boxes, gt_labels)
            logits, deltas = self.head(self.pool(features, rois))
            l_cls, l_box, g_logits, g_deltas = fast_rcnn_loss(logits, deltas, labels, targets,
                                                              self.beta)
            self._push((g_logits, g_deltas))
            return {"roi_classifier": l_cls, "roi_box": l_box}
        dt = features.dtype
        parts = [xp.concatenate([xp.full((p.shape[0], 1), i, dt), p.astype(dt, copy=False)],
                                axis=1) for i, p in enumerate(proposals)]
        rois = xp.concatenate(parts) if parts else xp.zeros((0, 5), dt)
        with no_grad():                      # detections are not differentiated
            logits, deltas = self.head(self.pool(features, rois))
        return self.postprocess(logits, deltas, proposals, image_size)

    def backward(self, scale=1.0):
        """Back-propagate the summed RoI-head losses (times ``scale``) through the box head and
        the RoI op; returns the gradient w.r.t. the features."""
        g_logits, g_deltas = self._pop()
        if scale != 1.0:
            g_logits, g_deltas = g_logits * scale, g_deltas * scale
        return self.pool_backward(self.head_backward(g_logits, g_deltas))

    def postprocess(self, logits, deltas, proposals, image_size):
        xp = self.xp
        k = self.num_classes
        z = logits - logits.max(axis=1, keepdims=True)
        probs = xp.exp(z)
        probs /= probs.sum(axis=1, keepdims=True)
        out, start = [], 0
        for p in proposals:
            n = p.shape[0]
            sl = slice(start, start + n)
            start += n
            boxes = B.decode_boxes(deltas[sl], p.astype(deltas.dtype, copy=False),
                                   self.box_weights)
            boxes = B.clip_boxes(boxes.reshape(n, k + 1, 4), image_size)[:, 1:]
            scores = probs[sl, 1:]
            labels = xp.broadcast_to(xp.arange(k, dtype=xp.int64)[None], (n, k))
            boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
            keep = xp.nonzero(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = B.remove_small_boxes(boxes, self.min_size)
            boxes = xp.ascontiguousarray(boxes[keep])
            scores = xp.ascontiguousarray(scores[keep])
            labels = xp.ascontiguousarray(labels[keep])
            keep = F.batched_nms(boxes, scores, labels, self.nms_thresh)
            keep = keep[:self.detections_per_img]
            out.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return out
