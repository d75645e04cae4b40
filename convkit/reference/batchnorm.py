"""Reference (NumPy) spatial batch normalisation, forward and backward.

Semantics are ``torch.nn.functional.batch_norm`` on NCHW input: one mean and variance per
channel c over the N*H*W values of that channel::

    y = (x - mean[c]) * invstd[c] * weight[c] + bias[c],    invstd = 1 / sqrt(var + eps)

Precision choice: every per-channel reduction (mean, variance, the two sums of the backward)
and the elementwise arithmetic run in float64, also for float32 input; results are rounded to
the input dtype once at the end.  Statistics of a float32 batch summed in float32 lose digits
with N*H*W (and a one-pass variance loses them all when |mean| >> std), so accumulating in
float64 is what keeps this oracle within 1e-5 relative of torch (whose CPU kernels also
accumulate float32 statistics in double, ``at::acc_type``).  The variance is two-pass (mean
first, then the mean of squared deviations), never E[x^2] - E[x]^2.
"""
from __future__ import annotations

import numpy as np

_AXES = (0, 2, 3)   # reduce over N, H, W: one statistic per channel


def _col(v):
    """(C,) -> (1, C, 1, 1) so a per-channel vector broadcasts against NCHW."""
    return v.reshape(1, -1, 1, 1)


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps,
                       out=None):
    """Batch norm forward.

    Args:
        x (array[N, C, H, W]) float32/float64, C-contiguous, N*H*W > 1 when training.
        weight, bias (array[C] or None; both None = no affine transform).
        running_mean, running_var (array[C] or None): in training mode they are updated IN
        PLACE, ``r = (1 - momentum) * r + momentum * stat``, with the unbiased variance
        (divisor N*H*W - 1) for running_var, as torch does.  In eval mode they are the
        statistics used (and required).
        training (bool), momentum, eps (floats).
        out: optional C-contiguous array[N, C, H, W] of x's dtype to write y into.

    Returns:
        (y (array[N, C, H, W]), save_mean (array[C]), save_invstd (array[C])), all in x's
        dtype.  training: save_mean is the batch mean, save_invstd = 1/sqrt(biased var + eps);
        eval: a copy of running_mean and 1/sqrt(running_var + eps).
    """
    dt = x.dtype
    x64 = x.astype(np.float64, copy=False)
    if training:
        mean = x64.mean(axis=_AXES)
        var = np.square(x64 - _col(mean)).mean(axis=_AXES)   # biased: normalises the batch
        if running_mean is not None:
            m = x.size // x.shape[1]                          # N*H*W values per channel
            unbiased = var * (m / (m - 1))
            # in place: the caller's arrays are the module's state (torch semantics)
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * unbiased
    else:
        mean = running_mean.astype(np.float64)
        var = running_var.astype(np.float64)
    invstd = 1.0 / np.sqrt(var + eps)

    scale = invstd if weight is None else invstd * weight
    y64 = (x64 - _col(mean)) * _col(scale)
    if bias is not None:
        y64 += _col(bias)
    y = out if out is not None else np.empty(x.shape, dtype=dt)
    y[...] = y64
    return y, mean.astype(dt), invstd.astype(dt)


def batch_norm_backward(grad_y, x, weight, save_mean, save_invstd, training):
    """Gradients of :func:`batch_norm_forward`.

    Args:
        grad_y, x (array[N, C, H, W]); weight (array[C] or None = no affine);
        save_mean, save_invstd (array[C]): what the forward returned.
        training: whether the forward used batch statistics.

    Returns:
        (grad_x (array[N, C, H, W]), grad_weight (array[C]) or None, grad_bias (array[C]) or
        None), in x's dtype; the two parameter gradients are None without affine.

    With xhat = (x - mean) * invstd, M = N*H*W and w = weight (1 without affine)::

        grad_bias   = sum(grad_y)                  grad_weight = sum(grad_y * xhat)
        training:   grad_x = w * invstd / M * (M * grad_y - grad_bias - xhat * grad_weight)
        eval:       grad_x = w * invstd * grad_y   (the statistics are constants)

    The training formula is the chain rule through the batch mean and variance, which both
    depend on every x of the channel.  The sums are taken over (N, H, W) in float64.
    """
    dt = x.dtype
    gy = grad_y.astype(np.float64, copy=False)
    mean = save_mean.astype(np.float64)
    invstd = save_invstd.astype(np.float64)
    xhat = (x.astype(np.float64, copy=False) - _col(mean)) * _col(invstd)
    sum_gy = gy.sum(axis=_AXES)
    sum_gy_xhat = (gy * xhat).sum(axis=_AXES)

    scale = invstd if weight is None else invstd * weight
    if training:
        m = x.size // x.shape[1]
        gx = _col(scale / m) * (m * gy - _col(sum_gy) - xhat * _col(sum_gy_xhat))
    else:
        gx = gy * _col(scale)

    if weight is None:
        return gx.astype(dt), None, None
    return gx.astype(dt), sum_gy_xhat.astype(dt), sum_gy.astype(dt)
