"""CpuBackend: the Python wrappers of each op family (conv.py, pool.py, ...) around the compiled
kernels, composed into one Backend.  Wrappers allocate outputs and pick the thread count; the
kernels assume valid input (validated once in convkit.functional)."""
from __future__ import annotations

import numpy as np

from .._hostarray import host_asarray
from ..backend import Backend
from . import batchnorm, boxes, conv, pool, roi


class CpuBackend(Backend):
    name = "cpu"
    xp = np
    validates_indices = True   # the pool / roi-pool backward kernels range-check indices themselves

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

    conv2d_forward = staticmethod(conv.conv2d_forward)
    conv2d_backward = staticmethod(conv.conv2d_backward)
    max_pool2d_forward = staticmethod(pool.max_pool2d_forward)
    max_pool2d_backward = staticmethod(pool.max_pool2d_backward)
    avg_pool2d_forward = staticmethod(pool.avg_pool2d_forward)
    avg_pool2d_backward = staticmethod(pool.avg_pool2d_backward)
    batch_norm_forward = staticmethod(batchnorm.batch_norm_forward)
    batch_norm_backward = staticmethod(batchnorm.batch_norm_backward)
    roi_pool_forward = staticmethod(roi.roi_pool_forward)
    roi_pool_backward = staticmethod(roi.roi_pool_backward)
    roi_align_forward = staticmethod(roi.roi_align_forward)
    roi_align_backward = staticmethod(roi.roi_align_backward)
    nms = staticmethod(boxes.nms)
    box_iou = staticmethod(boxes.box_iou)
