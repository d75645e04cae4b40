# cython: language_level=3
"""What the CPU build got: OpenMP or not, and the team size OpenMP would use."""
IF CONVKIT_OPENMP:
    cimport openmp

def openmp_info():
    """dict for ``convkit info``: whether the extensions were built with OpenMP."""
    from .._config import get_num_threads
    IF CONVKIT_OPENMP:
        return {"openmp": f"yes (omp_get_max_threads={openmp.omp_get_max_threads()})",
                "threads used by convkit": get_num_threads()}
    ELSE:
        return {"openmp": "no (built without OpenMP: kernels run serially; "
                          "install a compiler with OpenMP, e.g. libomp, and reinstall)",
                "threads used by convkit": 1}

def built_with_openmp():
    IF CONVKIT_OPENMP:
        return True
    ELSE:
        return False
