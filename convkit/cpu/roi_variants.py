"""The lecture's other RoI aggregators on the cpu: roi_avg_pool (quantised bins, mean) and
roi_max_align (bilinear samples, max), Python wrappers around ``_roi_variants`` (rules in
convkit/reference/roi_variants.py).  Forwards read an NHWC copy of the map, one RoI per task;
backwards give each task one (image, block of channels) of grad_x and add that image's RoIs
in order: the same bits for any thread count.
"""
from __future__ import annotations

import numpy as np

from . import _roi_variants
from ..reference.roi_variants import argmax_dtype
from .roi import _check_batch, _empty64, _local_order, _threads


def _raise(op, status, rois, N):
    """The error for the first RoI the kernel flagged (status 1: batch index, 2: grid)."""
    if not status.any():
        return
    k = int(np.argmax(status != 0))
    if status[k] == 2:
        raise ValueError(f"{op}: rois[{k}] gets an adaptive sampling grid of over 2**30 points "
                         f"per axis or 2**31 per bin (argmax numbers the samples in int32); "
                         f"pass sampling_ratio > 0 or a smaller box")
    _check_batch(op, True, N)


def roi_avg_pool_forward(x, rois, output_size, spatial_scale):
    N, C, H, W = x.shape
    K = rois.shape[0]
    y = np.empty((K, C) + tuple(output_size), x.dtype)
    status = np.zeros(K, np.uint8)
    _roi_variants.roi_avg_pool_forward(x, _empty64((N, H, W, C), x.dtype), rois,
                                       _local_order(rois), float(spatial_scale), y, status,
                                       _threads(y.size + x.size))
    _raise("roi_avg_pool_forward", status, rois, N)
    return y


def roi_avg_pool_backward(grad_y, rois, input_shape, output_size, spatial_scale):
    gx = np.empty(input_shape, grad_y.dtype)
    status = np.zeros(rois.shape[0], np.uint8)
    _roi_variants.roi_avg_pool_backward(grad_y, rois, float(spatial_scale), gx, status,
                                        _threads(grad_y.size + gx.size))
    _raise("roi_avg_pool_backward", status, rois, input_shape[0])
    return gx


def roi_max_align_forward(x, rois, output_size, spatial_scale, sampling_ratio, aligned):
    N, C, H, W = x.shape
    K = rois.shape[0]
    shape = (K, C) + tuple(output_size)
    y = np.empty(shape, x.dtype)
    argmax = np.empty(shape, argmax_dtype(sampling_ratio))
    status = np.zeros(K, np.uint8)
    _roi_variants.roi_max_align_forward(x, _empty64((N, H, W, C), x.dtype), rois,
                                        _local_order(rois), float(spatial_scale),
                                        int(sampling_ratio), bool(aligned), y,
                                        argmax.reshape(-1).view(np.uint8), argmax.itemsize,
                                        status, _threads(y.size * 4 + x.size))
    _raise("roi_max_align_forward", status, rois, N)
    return y, argmax


def roi_max_align_backward(grad_y, argmax, rois, input_shape, output_size, spatial_scale,
                           sampling_ratio, aligned):
    gx = np.empty(input_shape, grad_y.dtype)
    status = np.zeros(rois.shape[0], np.uint8)
    if argmax.dtype not in (np.int8, np.int32):      # the boundary gives argmax_dtype's
        raise TypeError(f"roi_max_align_backward: argmax must be int8 or int32, got "
                        f"{argmax.dtype}")
    bad, _ = _roi_variants.roi_max_align_backward(grad_y, argmax.reshape(-1).view(np.uint8),
                                                  argmax.itemsize, rois, float(spatial_scale),
                                                  int(sampling_ratio), bool(aligned), gx, status,
                                                  _threads(grad_y.size + gx.size))
    _raise("roi_max_align_backward", status, rois, input_shape[0])
    if bad:
        raise ValueError(f"roi_max_align_backward: argmax must be -1 or the number iy*gw + ix "
                         f"of an in-range sample of its bin (as roi_max_align_forward returns "
                         f"for these rois and arguments); {bad} entries are not")
    return gx
