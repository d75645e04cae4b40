"""The ``numpy`` backend: plain vectorised NumPy, readable, the oracle for every other backend.

One module per op family; each function has the signature of the Backend hook it implements
(see :mod:`convkit.backend` for what the boundary guarantees), bound as the hooks by
``hook_modules``.
"""
from __future__ import annotations

import numpy as np

from .._hostarray import host_asarray
from ..backend import Backend
from . import (adaptive_pool, batchnorm, boxes, conv, conv_transpose, deform_conv, pool, psroi,
               roi, roi_variants)


class NumpyBackend(Backend, hook_modules=(conv, conv_transpose, deform_conv, pool, adaptive_pool,
                                         batchnorm, roi, roi_variants, psroi, boxes)):
    name = "numpy"
    xp = np

    def asarray(self, a, dtype=None):
        return host_asarray(a, dtype, self.name)

    def info(self):
        return {"kind": "vectorised NumPy reference (no compiler needed)"}
