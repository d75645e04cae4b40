"""convkit_cuda: the ``cuda`` backend plugin (CuPy RawKernels + cuBLAS), registered through the
``convkit.backends`` entry point exactly as a third-party backend would be.

Layout: ``kernels/{conv,pool,batchnorm,roi,boxes}.cu`` hold the CUDA sources; ``_kernels``
turns them into one ``extern "C"`` kernel per dtype, compiles on first use (cached per kernel,
dtype and device) and checks every launch against the declared parameter types;
``{conv,pool,batchnorm,roi,boxes}.py`` are the launchers; ``backend.CudaBackend`` composes
them.  The tests run the same kernels on the CPU through a host emulation
(``tests/cuda_emulation.py``, test support, not shipped) on machines without a GPU.

Importing this package does no GPU work and does not import CuPy.
"""
__all__ = ["CudaBackend"]


def __getattr__(name):
    if name == "CudaBackend":
        from .backend import CudaBackend

        return CudaBackend
    raise AttributeError(name)
