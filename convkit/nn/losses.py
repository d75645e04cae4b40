"""Losses: each returns ``(loss, grad)``, the value and its gradient w.r.t. the first argument.

reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.  With "mean"/"sum" the loss is a 0-d
array of the input's array module (``float(loss)`` gives a number); with "none" it is per element
(per row for cross-entropy) and ``grad`` is the gradient of ``loss.sum()``.  All formulas are
torch's (``torch.nn.functional``, ``torchvision.ops.sigmoid_focal_loss`` and the box-IoU
losses), written to be stable for large |logits|.
"""
from __future__ import annotations

import numpy as np

from .._registry import get_backend
from ..boxes import _V_SCALE, _aspect_angle, _positive_eps

__all__ = ["softmax_cross_entropy", "binary_cross_entropy_with_logits", "smooth_l1_loss",
           "mse_loss", "sigmoid_focal_loss", "sigmoid", "log_softmax",
           "generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss"]

_REDUCTIONS = ("mean", "sum", "none")


def _xp(a):
    """Array module of ``a`` (numpy or the backend's), without branching on a backend name."""
    if isinstance(a, np.ndarray):
        return np
    return get_backend().xp


def _check(op, logits, reduction):
    if np.dtype(logits.dtype).kind != "f":
        raise TypeError(f"{op}: input must be float32 or float64, got {logits.dtype}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _elementwise(op, x, other, other_name, reduction):
    """The checks of an elementwise loss of x against ``other`` (same shape); returns x's xp."""
    _check(op, x, reduction)
    if other.shape != x.shape:
        raise ValueError(f"{op}: {other_name} must have shape {tuple(x.shape)}, got "
                         f"{tuple(other.shape)}")
    return _xp(x)


def _reduce(xp, loss, grad, reduction, count=None):
    if reduction == "none":
        return loss, grad
    if reduction == "sum":
        return loss.sum(), grad
    n = loss.size if count is None else count
    if n == 0:   # torch: the mean of nothing is nan; its gradient is zero
        return xp.asarray(np.nan, dtype=loss.dtype), grad
    return loss.sum() / n, grad / grad.dtype.type(n)


def sigmoid(x):
    """1 / (1 + exp(-x)), without overflow for large |x|."""
    xp = _xp(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def log_softmax(logits, axis=-1):
    xp = _xp(logits)
    z = logits - logits.max(axis=axis, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))


def softmax_cross_entropy(logits, labels, reduction="mean", ignore_index=-100):
    """Cross-entropy of softmax(logits) against integer class labels (``F.cross_entropy``).

    logits (array[N, C] float), labels (array[N] int in [0, C) or ``ignore_index``).  Rows whose
    label is ignore_index add nothing and have zero gradient; "mean" divides by the number of
    the other rows.  Returns (loss, grad (array[N, C])).
    """
    op = "softmax_cross_entropy"
    _check(op, logits, reduction)
    xp = _xp(logits)
    if logits.ndim != 2:
        raise ValueError(f"{op}: logits must be 2-D (N, C), got shape {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{op}: labels must have shape ({logits.shape[0]},), got "
                         f"{tuple(labels.shape)}")
    if np.dtype(labels.dtype).kind not in "iu":
        raise TypeError(f"{op}: labels must be integer class indices, got {labels.dtype}")
    N, C = logits.shape
    # every label in [0, C) and none equal to ignore_index (a training batch): one unsigned
    # compare checks them all (negatives wrap above C), and the masks by ``valid`` -- products
    # by 1 -- are left out; the same bits
    all_valid = not 0 <= ignore_index < C and not (N and bool(
        (labels.astype(np.uint64) >= C).any()))
    if all_valid:
        valid, safe = None, labels
    else:
        valid = labels != ignore_index
        if N and bool(((labels[valid] < 0) | (labels[valid] >= C)).any()):
            raise ValueError(f"{op}: labels must lie in [0, {C}) (or equal ignore_index="
                             f"{ignore_index})")
        safe = xp.where(valid, labels, 0)
    # log_softmax's steps, in place where log_softmax makes temporaries (the same bits)
    logp = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(logp)
    lse = e.sum(axis=1, keepdims=True)
    logp -= xp.log(lse, out=lse)
    rows = xp.arange(N)
    loss = -logp[rows, safe]
    grad = xp.exp(logp, out=e)
    grad[rows, safe] -= 1
    if valid is None:
        return _reduce(xp, loss, grad, reduction, count=N)
    loss *= valid
    grad *= valid[:, None]
    return _reduce(xp, loss, grad, reduction, count=int(valid.sum()))


def binary_cross_entropy_with_logits(logits, targets, weight=None, reduction="mean"):
    """``F.binary_cross_entropy_with_logits``: per element
    ``max(x, 0) - x*t + log(1 + exp(-|x|))`` (stable), times ``weight`` if given.

    logits, targets (same shape, float; targets in [0, 1]); weight broadcastable.
    Returns (loss, grad) with grad = weight * (sigmoid(x) - t) (divided by the count for "mean").
    """
    xp = _elementwise("binary_cross_entropy_with_logits", logits, targets, "targets", reduction)
    t = targets.astype(logits.dtype, copy=False)
    loss = xp.maximum(logits, 0) - logits * t + xp.log1p(xp.exp(-xp.abs(logits)))
    grad = sigmoid(logits) - t
    if weight is not None:
        loss = loss * weight
        grad = grad * weight
    return _reduce(xp, loss.astype(logits.dtype, copy=False), grad.astype(logits.dtype, copy=False),
                   reduction)


def smooth_l1_loss(pred, target, beta=1.0, reduction="mean"):
    """``F.smooth_l1_loss``: 0.5 * d^2 / beta where |d| < beta, else |d| - 0.5 * beta
    (d = pred - target); beta = 0 is the L1 loss.  Returns (loss, grad w.r.t. pred)."""
    op = "smooth_l1_loss"
    xp = _elementwise(op, pred, target, "target", reduction)
    if beta < 0:
        raise ValueError(f"{op}: beta must be >= 0, got {beta!r}")
    d = pred - target.astype(pred.dtype, copy=False)
    ad = xp.abs(d)
    if beta == 0:
        loss, grad = ad, xp.sign(d)
    else:
        small = ad < beta
        loss = xp.where(small, 0.5 * d * d / beta, ad - 0.5 * beta)
        grad = xp.where(small, d / beta, xp.sign(d))
    return _reduce(xp, loss.astype(pred.dtype, copy=False), grad.astype(pred.dtype, copy=False),
                   reduction)


def mse_loss(pred, target, reduction="mean"):
    """``F.mse_loss``: (pred - target)^2 per element.  Returns (loss, grad w.r.t. pred) with
    grad = 2 (pred - target) (divided by the count for "mean")."""
    xp = _elementwise("mse_loss", pred, target, "target", reduction)
    d = pred - target.astype(pred.dtype, copy=False)
    return _reduce(xp, d * d, d * pred.dtype.type(2), reduction)


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="mean"):
    """Focal loss (Lin et al. 2017), ``torchvision.ops.sigmoid_focal_loss``:
    ``alpha_t * BCE(x, t) * (1 - p_t)^gamma`` with p = sigmoid(x), p_t = p*t + (1-p)*(1-t),
    alpha_t = alpha*t + (1-alpha)*(1-t); alpha < 0 disables the alpha weighting.
    Returns (loss, grad w.r.t. logits)."""
    op = "sigmoid_focal_loss"
    xp = _elementwise(op, logits, targets, "targets", reduction)
    if gamma < 0:
        raise ValueError(f"{op}: gamma must be >= 0, got {gamma!r}")
    t = targets.astype(logits.dtype, copy=False)
    p = sigmoid(logits)
    ce, dce = binary_cross_entropy_with_logits(logits, t, reduction="none")
    q = 1.0 - (p * t + (1.0 - p) * (1.0 - t))          # 1 - p_t
    mod = q ** gamma
    loss = ce * mod
    # d(1 - p_t)/dx = -(2t - 1) p (1 - p); d q^gamma / dq = gamma q^(gamma-1) (0 where q = 0)
    grad = dce * mod
    if gamma != 0:
        safe_q = xp.where(q > 0, q, 1.0)
        dmod = xp.where(q > 0, gamma * safe_q ** (gamma - 1.0), 0.0)
        grad = grad - ce * dmod * (2.0 * t - 1.0) * p * (1.0 - p)
    if alpha >= 0:
        at = alpha * t + (1.0 - alpha) * (1.0 - t)
        loss = loss * at
        grad = grad * at
    return _reduce(xp, loss.astype(logits.dtype, copy=False), grad.astype(logits.dtype, copy=False),
                   reduction)


# ------------------------------------------------------------------------------ box-IoU losses
def _win(xp, a, b):
    """d max(a, b) / da: 1 where a > b, 0 where a < b, and 1/2 at a tie (torch's rule for
    torch.max / torch.min of two tensors, so the gradients match autograd's bit for bit)."""
    return xp.where(a > b, 1, xp.where(a == b, 0.5, 0)).astype(a.dtype, copy=False)


def _box_iou_loss(op, kind, boxes1, boxes2, reduction, eps):
    """The three box-IoU losses of torchvision (``generalized_box_iou_loss``,
    ``distance_box_iou_loss``, ``complete_box_iou_loss``) and their gradient w.r.t. boxes1.

    Elementwise over pairs (boxes1[i], boxes2[i]), with U the union, C the enclosing box (width
    cw, height ch) and ``IoU = inter / (U + eps)``::

        giou: 1 - IoU + (cw*ch - U) / (cw*ch + eps)
        diou: 1 - IoU + rho^2 / (cw^2 + ch^2 + eps)          rho: distance of the centres
        ciou: diou + alpha * v,  v = 4/pi^2 (atan(w2/h2) - atan(w1/h1))^2,
              alpha = v / (1 - IoU + v + eps) held constant (torch.no_grad in torchvision)

    The gradient is written out by the chain rule over those terms (inter, area1, cw, ch, the
    centre offsets and CIoU's aspect angle).
    """
    _check(op, boxes1, reduction)
    if not hasattr(boxes2, "dtype") or isinstance(boxes1, np.ndarray) != isinstance(boxes2,
                                                                                    np.ndarray):
        raise TypeError(f"{op}: boxes2 must be an array of the same kind as boxes1, got "
                        f"{type(boxes2).__module__}.{type(boxes2).__name__}")
    if boxes1.ndim < 1 or boxes1.shape[-1] != 4:
        raise ValueError(f"{op}: boxes1 must have shape (N, 4) xyxy, got {tuple(boxes1.shape)}")
    if boxes2.shape != boxes1.shape:
        raise ValueError(f"{op}: boxes2 must have the shape of boxes1 {tuple(boxes1.shape)} (one "
                         f"box per box), got {tuple(boxes2.shape)}")
    if np.dtype(boxes2.dtype).kind not in "fiu":
        raise TypeError(f"{op}: boxes2 must be a float or integer array, got {boxes2.dtype}")
    e = _positive_eps(op, eps)
    xp = _xp(boxes1)
    dt = boxes1.dtype
    g = boxes2.astype(dt, copy=False)
    x1, y1, x2, y2 = (boxes1[..., i] for i in range(4))
    gx1, gy1, gx2, gy2 = (g[..., i] for i in range(4))
    w1, h1 = x2 - x1, y2 - y1
    # intersection: positive only where the boxes overlap in both axes (torchvision's mask)
    iw = xp.minimum(x2, gx2) - xp.maximum(x1, gx1)
    ih = xp.minimum(y2, gy2) - xp.maximum(y1, gy1)
    m = (iw > 0) & (ih > 0)
    inter = xp.where(m, iw * ih, 0)
    ue = w1 * h1 + (gx2 - gx1) * (gy2 - gy1) - inter + e          # U + eps
    iou = inter / ue
    cw = xp.maximum(x2, gx2) - xp.minimum(x1, gx1)
    ch = xp.maximum(y2, gy2) - xp.minimum(y1, gy1)
    # partial derivatives of the loss w.r.t. inter, area1 = w1*h1, cw, ch, w1, h1, dx, dy
    d_inter = -(ue + inter) / (ue * ue)
    d_area = inter / (ue * ue)
    d_w1 = d_h1 = d_dx = d_dy = 0
    if kind == "giou":
        ce = cw * ch + e
        loss = 1 - iou + (cw * ch - (ue - e)) / ce
        d_c = ue / (ce * ce)                                    # d/dC of (C - U) / (C + eps)
        d_cw, d_ch = d_c * ch, d_c * cw
        d_inter = d_inter + 1 / ce                              # U = area1 + area2 - inter
        d_area = d_area - 1 / ce
    else:
        diag = cw * cw + ch * ch + e
        dx = (x1 + x2) / 2 - (gx1 + gx2) / 2
        dy = (y1 + y2) / 2 - (gy1 + gy2) / 2
        rho2 = dx * dx + dy * dy
        loss = 1 - iou + rho2 / diag
        d_diag = -rho2 / (diag * diag)
        d_cw, d_ch = 2 * cw * d_diag, 2 * ch * d_diag
        d_dx, d_dy = 2 * dx / diag, 2 * dy / diag
        if kind == "ciou":
            t = _aspect_angle(xp, gx2 - gx1, gy2 - gy1) - _aspect_angle(xp, w1, h1)
            v = _V_SCALE * t * t
            alpha = v / (1 - iou + v + e)
            loss = loss + alpha * v
            # d(alpha v)/d atan(w1/h1) = -2 alpha 4/pi^2 t; d atan(w/h) = (h dw - w dh)/(w^2+h^2)
            r2 = w1 * w1 + h1 * h1
            k = xp.where(r2 > 0, -2 * _V_SCALE * alpha * t / xp.where(r2 > 0, r2, 1), 0)
            d_w1, d_h1 = k * h1, -k * w1
    d_w1 = d_w1 + d_area * h1
    d_h1 = d_h1 + d_area * w1
    d_iw = xp.where(m, d_inter * ih, 0)
    d_ih = xp.where(m, d_inter * iw, 0)
    grad = xp.stack([
        -d_w1 - d_iw * _win(xp, x1, gx1) - d_cw * _win(xp, gx1, x1) + d_dx / 2,
        -d_h1 - d_ih * _win(xp, y1, gy1) - d_ch * _win(xp, gy1, y1) + d_dy / 2,
        d_w1 + d_iw * _win(xp, gx2, x2) + d_cw * _win(xp, x2, gx2) + d_dx / 2,
        d_h1 + d_ih * _win(xp, gy2, y2) + d_ch * _win(xp, y2, gy2) + d_dy / 2,
    ], axis=-1).astype(dt, copy=False)
    loss = loss.astype(dt, copy=False)
    if reduction == "mean" and loss.size == 0:    # torchvision: the mean of no pairs is 0
        return xp.zeros((), dt), grad
    return _reduce(xp, loss, grad, reduction)


def generalized_box_iou_loss(boxes1, boxes2, reduction="mean", eps=1e-7):
    """``torchvision.ops.generalized_box_iou_loss``: ``1 - GIoU`` per pair of boxes,
    ``GIoU = inter / (U + eps) - (C - U) / (C + eps)`` (U the union, C the enclosing box's area).

    boxes1 (array[N, 4] xyxy float, the predictions), boxes2 (same shape, the targets; cast to
    boxes1's dtype): row i of one against row i of the other.  eps > 0.  Returns (loss, grad
    w.r.t. boxes1 (array[N, 4])).  The mean over no boxes is 0 (torchvision), not NaN.
    """
    return _box_iou_loss("generalized_box_iou_loss", "giou", boxes1, boxes2, reduction, eps)


def distance_box_iou_loss(boxes1, boxes2, reduction="mean", eps=1e-7):
    """``torchvision.ops.distance_box_iou_loss``: ``1 - IoU + rho^2 / (c^2 + eps)`` per pair,
    rho the distance between the centres and c the enclosing box's diagonal,
    ``IoU = inter / (U + eps)``.  Arguments and result as :func:`generalized_box_iou_loss`."""
    return _box_iou_loss("distance_box_iou_loss", "diou", boxes1, boxes2, reduction, eps)


def complete_box_iou_loss(boxes1, boxes2, reduction="mean", eps=1e-7):
    """``torchvision.ops.complete_box_iou_loss``: the DIoU loss plus ``alpha * v``,
    ``v = 4/pi^2 (atan(w2/h2) - atan(w1/h1))^2``, ``alpha = v / (1 - IoU + v + eps)`` taken as
    a constant in the gradient (as torchvision's ``torch.no_grad``).  A box of zero height has
    the aspect angle +-pi/2 (0 for a point) and a finite gradient, where torch's gives NaN.
    Arguments and result as :func:`generalized_box_iou_loss`."""
    return _box_iou_loss("complete_box_iou_loss", "ciou", boxes1, boxes2, reduction, eps)
