"""The ``cpu`` backend: Cython kernels (``_conv``, ``_pool``, ``_batchnorm``, ``_roi_align``,
``_roi_pool``, ``_boxes``; their C in ``csrc/``),
GIL released, OpenMP across batch x channels, GEMMs on BLAS through scipy's cython_blas.

Importing this package raises ImportError when the compiled extensions are missing; the registry
turns that into a RuntimeError saying how to build them.
"""
from .backend import CpuBackend

__all__ = ["CpuBackend"]
