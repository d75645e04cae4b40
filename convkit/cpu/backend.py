"""CpuBackend: the Python wrappers of each op family (conv.py, pool.py, ...) around the compiled
kernels, bound as the Backend's hooks by ``hook_modules``.  Wrappers allocate outputs and pick
the thread count; the kernels assume valid input (validated once in convkit.functional)."""
from __future__ import annotations

import numpy as np

from .._config import get_num_threads
from .._hostarray import host_asarray
from ..backend import Backend
from . import (_activation, _optim, adaptive_pool, batchnorm, boxes, conv, conv_transpose,
               deform_conv, pool, psroi, roi, roi_variants)


class CpuBackend(Backend, hook_modules=(conv, conv_transpose, deform_conv, pool, adaptive_pool,
                                       batchnorm, roi, roi_variants, psroi, boxes)):
    name = "cpu"
    xp = np
    # the max-pool / roi-pool backward kernels read each index once and range-check it before
    # use (then the wrapper raises), so the boundary passes indices/argmax without a copy
    validates_indices = True

    def asarray(self, a, dtype=None):
        return host_asarray(a, dtype, self.name)

    def _sgd_update(self, params, grads, bufs, lr, momentum, dampening, weight_decay,
                    nesterov) -> None:
        # one fused pass per parameter (csrc/sgd.h), the default's bits; anything else
        # (other arrays, layouts, overlaps) takes the default
        if not _optim.sgd_step(params, grads, bufs, lr, momentum, dampening, weight_decay,
                               nesterov):
            super()._sgd_update(params, grads, bufs, lr, momentum, dampening, weight_decay,
                                nesterov)

    def _relu_forward(self, x):
        # one pass (csrc/relu.h) on the convkit thread count, np.maximum's bits; other arrays
        # take the default
        out = _activation.relu_forward(x, get_num_threads())
        return super()._relu_forward(x) if out is None else out

    def _relu_backward(self, y, grad_y):
        # one pass (csrc/relu.h) on the convkit thread count, the default's bits; other arrays
        # (layouts, dtypes) take the default
        out = _activation.relu_backward(y, grad_y, get_num_threads())
        return super()._relu_backward(y, grad_y) if out is None else out

    def info(self):
        from ._gemm import avx512_emulated, fixed_sgemm_active, own_sgemm_active
        from ._omp import openmp_info

        facts = dict(openmp_info())
        facts["float32 GEMM"] = (
            "convkit's AVX-512 kernel" if own_sgemm_active() else
            "convkit's fixed-order AVX2 kernel for conv forwards and grad_x (batch invariant), "
            "BLAS (scipy's) for the rest" if fixed_sgemm_active() else
            "BLAS (scipy's; this CPU or build has no AVX-512 or AVX2 kernel)")
        if own_sgemm_active():  # the half-rate rule (tuning.HALF_RATE_AVX2)
            from .conv import _caps
            facts["AVX-512 FMA rate"] = (
                "full: the AVX-512 conv plans" if _caps().avx512_full_rate else
                "half (512-bit FMA as two 256-bit halves, e.g. AMD Zen 4): the AVX2 conv "
                "algorithms of tuning.HALF_RATE_AVX2 beside the AVX-512 GEMM")
            facts["AVX-512 FMA rate"] += " (CONVKIT_AVX512_FULL_RATE=0/1 overrides the CPUID test)"
        if avx512_emulated():   # a test build (setup.py CONVKIT_EMULATE_AVX512=1)
            facts["float32 GEMM"] += " (EMULATED)"
            facts["AVX-512"] = ("EMULATED: a test build whose AVX-512 code runs on SIMDe's "
                                "portable emulation, not on AVX-512 hardware (slow)")
        facts["float64 GEMM"] = "BLAS (scipy's)"
        return facts
