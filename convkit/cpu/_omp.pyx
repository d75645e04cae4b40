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


cdef extern from "csrc/pingpong.h" nogil:
    double ck_pp_run(long* flag, int* abort_, int tid, long reps)


def pair_round_trip_ns(long reps=20000, int rounds=3):
    """The median ns of a cache line's round trip between the two threads of a 2-thread OpenMP
    team (csrc/pingpong.h), over ``rounds`` rounds of ``reps``; None without OpenMP, with one
    CPU, or when a round did not finish in its 50 ms budget.  50-100 ns (unpinned
    threads; bench/host_pingpong.c pins them: ~50): the two cores share an L3; 200-400: they are
    apart, and multi-threaded kernels read lower (`convkit bench`
    prints it beside the one-core probe)."""
    import os
    import statistics
    if reps < 1 or rounds < 1:
        raise ValueError(f"reps and rounds must be >= 1, got {reps}, {rounds}")
    IF CONVKIT_OPENMP:
        from cython.parallel cimport parallel, threadid
        cdef long flag[16]      # (the line the two threads hand back and forth: flag[0])
        cdef int abort_[16]
        cdef double got[2]
        cdef int t
        try:
            if len(os.sched_getaffinity(0)) < 2:
                return None
        except AttributeError:
            if (os.cpu_count() or 1) < 2:
                return None
        out = []
        for _ in range(rounds):
            flag[0] = 0
            abort_[0] = 0
            got[0] = got[1] = -1.0
            with nogil, parallel(num_threads=2):
                t = threadid()
                got[t] = ck_pp_run(&flag[0], &abort_[0], t, reps)
            if got[0] < 0 or got[1] < 0:
                return None
            out.append(got[0])
        return round(statistics.median(out), 1)
    ELSE:
        return None
