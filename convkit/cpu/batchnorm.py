"""CPU spatial batch norm: Python wrappers around ``_batchnorm`` (torch semantics).

The kernels give each OpenMP thread whole channels (one at a time, or a block of channels when
H*W <= 64); they also update the running statistics.  The wrappers allocate outputs and pick the
thread count.
"""
from __future__ import annotations

import numpy as np

from .._config import get_num_threads
from . import _batchnorm

# Below this many elements a call runs on one thread.  Measured (2-core Xeon, training forward
# on (1, 16, hw, hw), 1 vs 2 threads): 4096 elements 8.7 vs 10.5 us, 9216: 13.3 vs 13.4 us,
# 16384: 20.7 vs 15.6 us.
_PARALLEL_MIN = 1 << 13


def _threads(C, size):
    return 1 if size < _PARALLEL_MIN else max(1, min(get_num_threads(), C))


def _affine(weight, bias, dt):
    if weight is None:            # no affine: empty vectors tell the kernel
        return np.empty(0, dt), np.empty(0, dt)
    return weight, bias


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps,
                       out=None):
    N, C, H, W = x.shape
    dt = x.dtype
    y = out if out is not None else np.empty(x.shape, dt)
    w, b = _affine(weight, bias, dt)
    nt = _threads(C, x.size)
    x3, y3 = x.reshape(N, C, H * W), y.reshape(N, C, H * W)
    if training:
        mean, var = np.empty(C), np.empty(C)
        save_mean, save_invstd = np.empty(C, dt), np.empty(C, dt)
        if running_mean is not None:
            # torch: r = (1 - momentum) * r + momentum * stat, the variance unbiased; done by
            # the kernel (as NumPy did it here: ~8 us of small-array calls per layer)
            M = N * H * W
            rm, rv, mom, unbias = running_mean, running_var, float(momentum), M / (M - 1)
        else:
            rm = rv = np.empty(0, dt)
            mom, unbias = 0.0, 1.0
        _batchnorm.batch_norm_train_forward(x3, w, b, float(eps), y3, mean, var, save_mean,
                                            save_invstd, nt, rm, rv, mom, unbias)
        return y, save_mean, save_invstd
    save_mean = running_mean.copy()
    save_invstd = (1.0 / np.sqrt(running_var.astype(np.float64) + eps)).astype(dt)
    _batchnorm.batch_norm_eval_forward(x3, save_mean, save_invstd, w, b, y3, nt)
    return y, save_mean, save_invstd


def batch_norm_backward(grad_y, x, weight, save_mean, save_invstd, training):
    N, C, H, W = x.shape
    dt = x.dtype
    gx = np.empty(x.shape, dt)
    gw, gb = np.empty(C, dt), np.empty(C, dt)
    w = weight if weight is not None else np.empty(0, dt)
    nt = _threads(C, x.size)
    _batchnorm.batch_norm_backward(grad_y.reshape(N, C, H * W), x.reshape(N, C, H * W), w,
                                   save_mean, save_invstd, bool(training),
                                   gx.reshape(N, C, H * W), gw, gb, nt)
    if weight is None:
        return gx, None, None
    return gx, gw, gb
