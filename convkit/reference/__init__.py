"""The ``numpy`` backend: plain vectorised NumPy, readable, the oracle for every other backend.

One module per op family; each function has the signature of the Backend hook it implements
(see :mod:`convkit.backend` for what the boundary guarantees).
"""
from __future__ import annotations

import numpy as np

from .._hostarray import host_asarray
from ..backend import Backend
from . import batchnorm, boxes, conv, pool, roi


class NumpyBackend(Backend):
    name = "numpy"
    xp = np

    def asarray(self, a, dtype=None):
        return host_asarray(a, dtype, self.name)

    def info(self):
        return {"kind": "vectorised NumPy reference (no compiler needed)"}

    _conv2d_forward = staticmethod(conv.conv2d_forward)
    _conv2d_backward = staticmethod(conv.conv2d_backward)
    _max_pool2d_forward = staticmethod(pool.max_pool2d_forward)
    _max_pool2d_backward = staticmethod(pool.max_pool2d_backward)
    _avg_pool2d_forward = staticmethod(pool.avg_pool2d_forward)
    _avg_pool2d_backward = staticmethod(pool.avg_pool2d_backward)
    _batch_norm_forward = staticmethod(batchnorm.batch_norm_forward)
    _batch_norm_backward = staticmethod(batchnorm.batch_norm_backward)
    _roi_pool_forward = staticmethod(roi.roi_pool_forward)
    _roi_pool_backward = staticmethod(roi.roi_pool_backward)
    _roi_align_forward = staticmethod(roi.roi_align_forward)
    _roi_align_backward = staticmethod(roi.roi_align_backward)
    _nms = staticmethod(boxes.nms)
    _box_iou = staticmethod(boxes.box_iou)
