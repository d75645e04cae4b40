"""Spatial batch norm on the GPU, torch semantics: batch statistics over (N, H, W) in training
(biased variance for normalising, unbiased for ``running_var``), running statistics in eval.

Statistics are computed in double by a two-level, atomic-free reduction (per (channel, slot)
sums of x - x[0, c, 0] and of its square -- shifted into the data, so no cancellation of
E[x^2] - E[x]^2 -- then the slots added in order): deterministic, three launches a direction
(see ``kernels/batchnorm.cu``).
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


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps,
                       out=None):
    """-> (y, save_mean (C,), save_invstd (C,)); running_* updated in place when training.
    Three launches: statistics partials (training only), per-channel finalize, normalise."""
    with on_device("batch_norm_forward", x=x, weight=weight, bias=bias,
                   running_mean=running_mean, running_var=running_var, out=out):
        N, C, H, W = x.shape
        HW, M = H * W, N * H * W
        dt = x.dtype
        P = _slots(C, M) if training else 0
        partial = cupy.empty((C, max(P, 1), 2), dtype=np.float64)
        if training:
            grid, block = grid_for(C * P)
            launch(STEM, "bn_stats_partial", dt, grid, block,
                   (x, _I(N), _I(C), _I(HW), _I(P), partial))
        stats = cupy.empty((2, C), dtype=np.float64)           # mean, invstd in double
        saved = cupy.empty((2, C), dtype=dt)                   # ... in the input dtype
        has_running = running_mean is not None
        dummy = saved[0]                                       # never touched then
        rm, rv = (running_mean, running_var) if has_running else (dummy, dummy)   # contiguous
        grid, block = grid_for(C)
        launch(STEM, "bn_stats_finalize", dt, grid, block,
               (x, partial, _I(C), _I(HW), _I(M), _I(P), _I(bool(training)), np.float64(eps),
                np.float64(momentum), _I(has_running),
                rm, rv,
                stats[0], stats[1], saved[0], saved[1]))
        y = out if out is not None else cupy.empty(x.shape, dtype=dt)
        has_affine = weight is not None
        grid, block = grid_for(x.size)
        launch(STEM, "bn_forward_apply", dt, grid, block,
               (x, stats[0], stats[1], weight if has_affine else dummy,
                bias if has_affine else dummy, _I(has_affine), _I(C), _I(HW), _I(x.size), y))
        return y, saved[0], saved[1]


def batch_norm_backward(grad_y, x, weight, save_mean, save_invstd, training):
    """-> (grad_x, grad_weight or None, grad_bias or None).  Three launches: gradient partials,
    per-channel finalize (grad_weight, grad_bias), grad_x."""
    with on_device("batch_norm_backward", grad_y=grad_y, x=x, weight=weight,
                   save_mean=save_mean, save_invstd=save_invstd):
        N, C, H, W = x.shape
        HW, M = H * W, N * H * W
        dt = x.dtype
        P = _slots(C, M)
        partial = cupy.empty((C, P, 2), dtype=np.float64)
        grid, block = grid_for(C * P)
        launch(STEM, "bn_grad_partial", dt, grid, block,
               (grad_y, x, save_mean, save_invstd, _I(N), _I(C), _I(HW), _I(P), partial))
        sums = cupy.empty((C, 2), dtype=np.float64)
        has_weight = weight is not None
        gwb = cupy.empty((2, C), dtype=dt)
        grid, block = grid_for(C)
        launch(STEM, "bn_grad_finalize", dt, grid, block,
               (partial, _I(C), _I(P), _I(has_weight), sums, gwb[0], gwb[1]))
        gx = cupy.empty(x.shape, dtype=dt)
        grid, block = grid_for(x.size)
        launch(STEM, "bn_backward_apply", dt, grid, block,
               (grad_y, x, save_mean, save_invstd, weight if has_weight else save_mean,
                _I(has_weight), sums, _I(C), _I(HW), _I(x.size), _I(M), _I(bool(training)),
                gx))
        if not has_weight:
            return gx, None, None
        return gx, gwb[0], gwb[1]
