"""CpuBackend: the Python wrappers of each op family (conv.py, pool.py, ...) around the compiled
kernels, bound as the Backend's hooks.  Wrappers allocate outputs and pick the thread count; the
kernels assume valid input (validated once in convkit.functional)."""
from __future__ import annotations

import numpy as np

from .._hostarray import host_asarray
from ..backend import Backend
from . import batchnorm, boxes, conv, pool, roi


class CpuBackend(Backend):
    name = "cpu"
    xp = np
    # the max-pool / roi-pool backward kernels read each index once and range-check it before
    # use (then the wrapper raises), so the boundary passes indices/argmax without a copy
    validates_indices = True

    def asarray(self, a, dtype=None):
        return host_asarray(a, dtype, self.name)

    def info(self):
        from ._gemm import own_sgemm_active
        from ._omp import openmp_info

        facts = dict(openmp_info())
        facts["float32 GEMM"] = ("convkit's AVX-512 kernel" if own_sgemm_active()
                                 else "BLAS (scipy's; this CPU or build has no AVX-512 kernel)")
        facts["float64 GEMM"] = "BLAS (scipy's)"
        return facts

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
