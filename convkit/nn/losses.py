"""Losses: each returns ``(loss, grad)``, the value and its gradient w.r.t. the first argument.

reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.  With "mean"/"sum" the loss is a 0-d
array of the input's array module (``float(loss)`` gives a number); with "none" it is per element
(per row for cross-entropy) and ``grad`` is the gradient of ``loss.sum()``.  All formulas are
torch's (``torch.nn.functional``, ``torchvision.ops.sigmoid_focal_loss``), written to be stable
for large |logits|.
"""
from __future__ import annotations

import numpy as np

from .._registry import get_backend

__all__ = ["softmax_cross_entropy", "binary_cross_entropy_with_logits", "smooth_l1_loss",
           "mse_loss", "sigmoid_focal_loss", "sigmoid", "log_softmax"]

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
    valid = labels != ignore_index
    if N and bool(((labels[valid] < 0) | (labels[valid] >= C)).any()):
        raise ValueError(f"{op}: labels must lie in [0, {C}) (or equal ignore_index="
                         f"{ignore_index})")
    safe = xp.where(valid, labels, 0)
    logp = log_softmax(logits, axis=1)
    rows = xp.arange(N)
    loss = -logp[rows, safe] * valid
    grad = xp.exp(logp)
    grad[rows, safe] -= 1
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
