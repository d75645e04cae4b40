"""Faster R-CNN (Ren et al. 2015) built from convkit.nn layers, trained end to end with explicit
backward passes.

Pieces (each in its own module, re-exported here):

* :mod:`.anchors` -- :class:`AnchorGenerator`, the paper's anchor labelling, the sampler;
* :mod:`.rpn` -- :class:`RPNHead` (channel layout documented there),
  :class:`RegionProposalNetwork`, :func:`rpn_loss`;
* :mod:`.roi_heads` -- :class:`RoIHeads` (RoI align or RoI pool, box head, class-specific
  regression, per-class NMS), :func:`fast_rcnn_loss`;
* here -- :func:`small_backbone` and :class:`FasterRCNN`.

Training step (approximate joint training: proposals are treated as constants, gradients of the
four losses flow from the RoI head through RoI align / pool into the backbone, and from the RPN
head into the backbone)::

    losses = model.loss(images, gt_boxes, gt_labels)     # dict of 0-d arrays
    model.zero_grad(); model.backward(); opt.step()

Inference: ``model.eval(); dets = model.forward(images)`` -> per image
``{"boxes", "scores", "labels"}``; ``model.last_proposals`` holds the RPN's proposals.
"""
from __future__ import annotations

import numpy as np

from ..functional import to_numpy
from ..nn import Conv2d, MaxPool2d, Module, Normalize, ReLU, Sequential, ToFloat, no_grad
from ..nn.init import make_rng
from .anchors import AnchorGenerator, assign_anchor_targets, host_box_iou, sample_labels
from .roi_heads import RoIHeads, fast_rcnn_loss
from .rpn import (RegionProposalNetwork, RPNHead, flatten_rpn_outputs, rpn_loss,
                  unflatten_rpn_grads)

__all__ = ["AnchorGenerator", "assign_anchor_targets", "sample_labels", "host_box_iou",
           "RPNHead", "RegionProposalNetwork", "rpn_loss", "flatten_rpn_outputs",
           "unflatten_rpn_grads", "RoIHeads", "fast_rcnn_loss", "small_backbone", "FasterRCNN"]


def small_backbone(width=16, dtype=np.float32, seed=0):
    """A VGG-style feature extractor of stride 4: (Sequential, out_channels, stride).

    conv3x3(3, w) ReLU maxpool2 | conv3x3(w, 2w) ReLU conv3x3(2w, 2w) ReLU maxpool2 |
    conv3x3(2w, 4w) ReLU conv3x3(4w, 4w, dilation 2) ReLU.  Receptive field 38 pixels (46 after
    the RPN's 3x3 conv), enough for objects up to ~40 pixels at stride 4.
    """
    rng = make_rng(seed)
    w = int(width)
    net = Sequential(
        Conv2d(3, w, 3, padding=1, needs_input_grad=False, dtype=dtype, seed=rng), ReLU(),
        MaxPool2d(2),
        Conv2d(w, 2 * w, 3, padding=1, dtype=dtype, seed=rng), ReLU(),
        Conv2d(2 * w, 2 * w, 3, padding=1, dtype=dtype, seed=rng), ReLU(),
        MaxPool2d(2),
        Conv2d(2 * w, 4 * w, 3, padding=1, dtype=dtype, seed=rng), ReLU(),
        Conv2d(4 * w, 4 * w, 3, padding=2, dilation=2, dtype=dtype, seed=rng), ReLU(),
    )
    return net, 4 * w, 4


class FasterRCNN(Module):
    """Backbone + :class:`RegionProposalNetwork` + :class:`RoIHeads`.

    num_classes: object classes (no background).  backbone: a Module mapping float images
    (N, 3, H, W) to features (N, C, H/stride, W/stride), given with ``backbone_channels`` and
    ``stride``; default :func:`small_backbone` (``width``).  Images given to :meth:`forward` and
    :meth:`loss` are uint8 (N, 3, H, W) (or floats on the 0..255 scale; checked, see
    :meth:`check_images`); the model scales them to [0, 1] and normalises with mean 0.5, std
    0.25 (:class:`convkit.nn.ToFloat`, :class:`convkit.nn.Normalize`).  roi_op: ``"align"``,
    ``"pool"``, ``"avg_pool"`` or ``"max_align"`` (see :class:`RoIHeads`).  ``rpn_kwargs`` / ``roi_kwargs`` go to :class:`RegionProposalNetwork` /
    :class:`RoIHeads`.
    """

    _transient = ("last_proposals",)      # inspection only: not pickled

    def __init__(self, num_classes, backbone=None, backbone_channels=None, stride=None,
                 anchor_sizes=(16, 32, 64), aspect_ratios=(0.5, 1.0, 2.0), roi_op="align",
                 width=16, rpn_kwargs=None, roi_kwargs=None, dtype=np.float32, seed=0):
        super().__init__()
        rng = make_rng(seed)
        if backbone is None:
            backbone, backbone_channels, stride = small_backbone(width, dtype, rng)
        elif backbone_channels is None or stride is None:
            raise ValueError("FasterRCNN: a custom backbone needs backbone_channels and stride")
        self.num_classes, self.stride, self.dtype = int(num_classes), int(stride), np.dtype(dtype)
        self.transform = Sequential(ToFloat(dtype), Normalize((0.5,) * 3, (0.25,) * 3, dtype))
        self.backbone = backbone
        self.rpn = RegionProposalNetwork(
            backbone_channels, AnchorGenerator(anchor_sizes, aspect_ratios, stride),
            dtype=dtype, seed=rng, **(rpn_kwargs or {}))
        self.roi_heads = RoIHeads(backbone_channels, num_classes, 1.0 / stride, roi_op=roi_op,
                                  dtype=dtype, seed=rng, **(roi_kwargs or {}))
        self.last_proposals = None

    def _set_dtype(self, dt):
        self.dtype = dt

    def check_images(self, images):
        """The input contract of :meth:`loss` and :meth:`forward`: images (N, 3, H, W), uint8
        (0..255) or floats on the same 0..255 scale.  Raises ValueError / TypeError for an HWC
        image or an NHWC batch, a missing batch dimension, a wrong channel count, non-numeric
        data, and floats that all lie in [0, 1] (an image already scaled to [0, 1] would be
        scaled again: multiply by 255 or pass uint8)."""
        shape = tuple(getattr(images, "shape", ()))
        if len(shape) == 3:
            hint = ("it looks like one HWC image: use img.transpose(2, 0, 1)[None]"
                    if shape[-1] == 3 and shape[0] != 3 else
                    "add the batch dimension: images[None]")
            raise ValueError(f"FasterRCNN: images must be a batch (N, 3, H, W), got shape "
                             f"{shape}; {hint}")
        if len(shape) != 4:
            raise ValueError(f"FasterRCNN: images must be (N, 3, H, W), got shape {shape}")
        if shape[1] != 3:
            hint = ("; it looks like NHWC: use images.transpose(0, 3, 1, 2)"
                    if shape[3] == 3 else "")
            raise ValueError(f"FasterRCNN: images must have 3 channels in dimension 1 "
                             f"(N, 3, H, W), got shape {shape}{hint}")
        kind = np.dtype(images.dtype).kind
        if kind not in "uif":
            raise TypeError(f"FasterRCNN: images must be uint8 (0..255) or floats on the "
                            f"0..255 scale, got {images.dtype}")
        if kind == "f" and images.size:
            lo, hi = float(images.min()), float(images.max())
            if 0.0 <= lo and 0.0 < hi <= 1.0:
                raise ValueError(f"FasterRCNN: float images must be on the 0..255 scale (the "
                                 f"model divides by 255), but these lie in [{lo:g}, {hi:g}]; "
                                 f"multiply by 255 or pass uint8 images")

    def check_targets(self, image_size, gt_boxes, gt_labels, n):
        """Host copies of the targets of :meth:`loss`, checked: one (Gi, 4) xyxy float box array
        and one (Gi,) int label array in [0, num_classes) per image; coordinates finite with
        x1 < x2 and y1 < y2.  A box reaching outside the image is clipped to it (as an
        augmentation's crop would leave it); one that lies wholly outside is an error."""
        h, w = image_size
        if len(gt_boxes) != n or len(gt_labels) != n:
            raise ValueError(f"FasterRCNN.loss: need one gt_boxes and one gt_labels entry per "
                             f"image ({n}), got {len(gt_boxes)} and {len(gt_labels)}")
        boxes, labels = [], []
        for i, (b, lab) in enumerate(zip(gt_boxes, gt_labels)):
            b = np.asarray(to_numpy(b), np.float64)
            lab = np.asarray(to_numpy(lab))
            if b.size == 0:
                b = b.reshape(0, 4)
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"FasterRCNN.loss: gt_boxes[{i}] must be (G, 4) xyxy, got "
                                 f"shape {b.shape}")
            if lab.shape != (b.shape[0],) or (lab.size and np.dtype(lab.dtype).kind not in "iu"):
                raise ValueError(f"FasterRCNN.loss: gt_labels[{i}] must be {b.shape[0]} integer "
                                 f"labels, got {lab.dtype} of shape {lab.shape}")
            bad = np.nonzero((lab < 0) | (lab >= self.num_classes))[0]
            if bad.size:
                raise ValueError(f"FasterRCNN.loss: gt_labels[{i}][{bad[0]}] = {lab[bad[0]]} is "
                                 f"not in [0, {self.num_classes})")
            for j, (x1, y1, x2, y2) in enumerate(b):
                if not np.isfinite([x1, y1, x2, y2]).all() or x2 <= x1 or y2 <= y1:
                    raise ValueError(f"FasterRCNN.loss: gt_boxes[{i}][{j}] = {b[j].tolist()} is "
                                     f"not a box (x1 < x2, y1 < y2, finite)")
                if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
                    raise ValueError(f"FasterRCNN.loss: gt_boxes[{i}][{j}] = {b[j].tolist()} "
                                     f"lies outside the {w}x{h} image (boxes are xyxy pixels)")
            b = np.clip(b, 0, [w, h, w, h])
            boxes.append(b)
            labels.append(lab.astype(np.int64))
        return boxes, labels

    def features(self, images):
        """Backbone features of checked images."""
        self.check_images(images)
        return self._features(images)

    def _features(self, images):
        return self.backbone.forward(self.transform.forward(self.xp.asarray(images)))

    def loss(self, images, gt_boxes, gt_labels):
        """Training forward: images (N, 3, H, W) (see :meth:`check_images`), gt_boxes (list of
        array[Gi, 4] xyxy pixels; see :meth:`check_targets`), gt_labels (list of int array[Gi],
        0-based).  Returns the four losses (0-d arrays):
        ``rpn_objectness``, ``rpn_box``, ``roi_classifier``, ``roi_box``; their sum is what
        :meth:`backward` differentiates."""
        self.check_images(images)
        size = tuple(images.shape[2:])
        gt_boxes, gt_labels = self.check_targets(size, gt_boxes, gt_labels, images.shape[0])
        feats = self._features(images)
        props, losses = self.rpn.forward(feats, size, gt_boxes)
        self.last_proposals = props
        losses.update(self.roi_heads.forward(feats, [b for b, _ in props], size, gt_boxes,
                                             gt_labels))
        return losses

    def backward(self):
        """Gradients of the summed losses of the last :meth:`loss` into every parameter
        (accumulated into ``grads``, as :class:`convkit.nn.Module` does)."""
        g = self.rpn.backward() + self.roi_heads.backward()
        self.backbone.backward(g)

    def forward(self, images):
        """Detections per image: dicts with ``boxes`` (array[D, 4] xyxy), ``scores`` (array[D])
        and ``labels`` (int64 array[D], 0-based).  The RPN proposals (list of (boxes, scores))
        are left in ``last_proposals``.  Runs under :func:`convkit.nn.no_grad` (nothing here
        is differentiated)."""
        with no_grad():
            feats = self.features(images)
            size = tuple(images.shape[2:])
            props, _ = self.rpn.forward(feats, size)
            self.last_proposals = props
            return self.roi_heads.forward(feats, [b for b, _ in props], size)
