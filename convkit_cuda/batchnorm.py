"""Spatial batch norm on the GPU, torch semantics: batch statistics over (N, H, W) in training
(biased variance for normalising, unbiased for ``running_var``), running statistics in eval.

Statistics are computed in double by a two-level, atomic-free reduction (partial sums per
(channel, slot), then the slots in order): deterministic, and the two-pass variance
(sum of squared deviations from the mean) avoids the cancellation of E[x^2] - E[x]^2.
"""
from __future__ import annotations

import cupy
import numpy as np

from ._kernels import grid_for, launch, on_device

STEM = "batchnorm"
_I = np.int64

# Partial-sum slots per channel: enough threads in total to fill the GPU, few enough that each
# thread sums a long run.  Depends on the shapes only, so results are the same bits every run.
_TARGET_THREADS = 1 << 16


def _slots(C, M):
    return max(1, min(M, -(-_TARGET_THREADS // C), 4096))


def _channel_sums(x, gy, mean_d, invstd_d, mode):
    """(C, 2) float64 per-channel sums; mode as in ``bn_partial_sums``."""
    N, C, H, W = x.shape
    HW, M = H * W, N * H * W
    P = _slots(C, M)
    partial = cupy.empty((C, P, 2), dtype=np.float64)
    dummy_d = partial                       # never read in the modes that pass it
    grid, block = grid_for(C * P)
    launch(STEM, "bn_partial_sums", x.dtype, grid, block,
           (x, gy if gy is not None else x, mean_d if mean_d is not None else dummy_d,
            invstd_d if invstd_d is not None else dummy_d, _I(N), _I(C), _I(HW), _I(P),
            _I(mode), partial))
    sums = cupy.empty((C, 2), dtype=np.float64)
    grid, block = grid_for(C * 2)
    launch(STEM, "bn_reduce", x.dtype, grid, block, (partial, _I(C), _I(P), sums))
    return sums


def _affine(weight, bias, C, dtype):
    w = weight if weight is not None else cupy.ones(C, dtype=dtype)
    b = bias if bias is not None else cupy.zeros(C, dtype=dtype)
    return w, b


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps,
                       out=None):
    """-> (y, save_mean (C,), save_invstd (C,)); running_* updated in place when training."""
    with on_device("batch_norm_forward", x=x, weight=weight, bias=bias,
                   running_mean=running_mean, running_var=running_var, out=out):
        N, C, H, W = x.shape
        M = N * H * W
        dt = x.dtype
        if training:
            mean_d = _channel_sums(x, None, None, None, 0)[:, 0] / M
            mean_d = cupy.ascontiguousarray(mean_d)
            var_d = _channel_sums(x, None, mean_d, None, 1)[:, 0] / M
            invstd_d = 1.0 / cupy.sqrt(var_d + eps)
            if running_mean is not None:
                m = float(momentum)
                running_mean[...] = ((1.0 - m) * running_mean.astype(np.float64)
                                     + m * mean_d).astype(dt)
                running_var[...] = ((1.0 - m) * running_var.astype(np.float64)
                                    + m * var_d * (M / (M - 1))).astype(dt)
        else:
            mean_d = running_mean.astype(np.float64)
            invstd_d = 1.0 / cupy.sqrt(running_var.astype(np.float64) + eps)
        mean_d = cupy.ascontiguousarray(mean_d)
        invstd_d = cupy.ascontiguousarray(invstd_d)
        w, b = _affine(weight, bias, C, dt)
        y = out if out is not None else cupy.empty(x.shape, dtype=dt)
        grid, block = grid_for(x.size)
        launch(STEM, "bn_forward_apply", dt, grid, block,
               (x, mean_d, invstd_d, w, b, _I(C), _I(H * W), _I(x.size), y))
        return y, mean_d.astype(dt), invstd_d.astype(dt)


def batch_norm_backward(grad_y, x, weight, save_mean, save_invstd, training):
    """-> (grad_x, grad_weight or None, grad_bias or None)."""
    with on_device("batch_norm_backward", grad_y=grad_y, x=x, weight=weight,
                   save_mean=save_mean, save_invstd=save_invstd):
        N, C, H, W = x.shape
        M = N * H * W
        dt = x.dtype
        mean_d = save_mean.astype(np.float64)
        invstd_d = save_invstd.astype(np.float64)
        sums = _channel_sums(x, grad_y, mean_d, invstd_d, 2)
        w, _ = _affine(weight, None, C, dt)
        gx = cupy.empty(x.shape, dtype=dt)
        grid, block = grid_for(x.size)
        launch(STEM, "bn_backward_apply", dt, grid, block,
               (grad_y, x, mean_d, invstd_d, w, sums, _I(C), _I(H * W), _I(x.size), _I(M),
                _I(bool(training)), gx))
        if weight is None:
            return gx, None, None
        return gx, sums[:, 1].astype(dt), sums[:, 0].astype(dt)
