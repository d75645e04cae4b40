"""The ``cpu`` backend: Cython kernels (``_conv``, ``_pool``, ``_batchnorm``, ``_roi``, ``_boxes``),
GIL released, OpenMP across batch x channels, GEMMs on BLAS through scipy's cython_blas.

Importing this package raises ImportError when the compiled extensions are missing; the registry
turns that into a RuntimeError saying how to build them.
"""
from .backend import CpuBackend

__all__ = ["CpuBackend"]
