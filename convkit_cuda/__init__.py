"""convkit_cuda: the ``cuda`` backend plugin (CuPy RawKernels), registered through the
``convkit.backends`` entry point exactly as a third-party backend would be.

Importing this package does no GPU work and does not import CuPy.
"""
__all__ = ["CudaBackend"]


def __getattr__(name):
    if name == "CudaBackend":
        from .backend import CudaBackend

        return CudaBackend
    raise AttributeError(name)
