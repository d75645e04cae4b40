"""``asarray`` for the host backends (``numpy`` and ``cpu``): DESIGN.md, "Backend selection".

Any host array comes in without a copy: NumPy arrays, the buffer protocol and
``__array_interface__`` through ``numpy.asarray``, and any DLPack producer (torch CPU tensors,
JAX, array-API objects) through ``numpy.from_dlpack``.  Anything that is not an array (a string,
a dict, an arbitrary object) is a ``TypeError``, never the 0-d object or string array that
``numpy.asarray`` would make of it.
"""
from __future__ import annotations

import numpy as np

_CPU_DEVICES = (1, 3)   # DLPack kDLCPU, kDLCUDAHost (pinned host memory): both host-readable


def _kind(a) -> str:
    return f"{type(a).__module__}.{type(a).__name__}"


def host_asarray(a, dtype=None, backend: str = "cpu") -> np.ndarray:
    """``a`` as a ``numpy.ndarray``, zero-copy where it already is host memory (a ``dtype`` that
    differs from ``a``'s makes one converted copy)."""
    if hasattr(a, "__cuda_array_interface__"):
        raise TypeError(f"the {backend!r} backend takes host arrays; copy device arrays to the "
                        f"host first (convkit.to_numpy(a))")
    if isinstance(a, np.ndarray):
        return a if dtype is None else a.astype(dtype, copy=False)
    if hasattr(a, "__dlpack__") and not hasattr(a, "__array_interface__"):
        device = a.__dlpack_device__()[0] if hasattr(a, "__dlpack_device__") else 1
        if device not in _CPU_DEVICES:
            raise TypeError(f"the {backend!r} backend takes host arrays; {_kind(a)} lives on "
                            f"DLPack device type {device}: copy it to the host first (for torch: "
                            f"tensor.cpu())")
        try:
            out = np.from_dlpack(a)
        except (BufferError, RuntimeError, TypeError, ValueError) as e:
            # torch refuses tensors that require grad, numpy refuses dtypes it has no match for
            raise TypeError(f"convkit.asarray: cannot take the {_kind(a)} through DLPack: {e}") \
                from e
        return out if dtype is None else out.astype(dtype, copy=False)
    out = np.asarray(a, dtype=dtype)
    if out.dtype.kind in "OUSV":
        raise TypeError(f"convkit.asarray: expected an array (NumPy, the buffer protocol, "
                        f"__array_interface__, DLPack) or a nested list of numbers, got "
                        f"{_kind(a)}")
    return out
