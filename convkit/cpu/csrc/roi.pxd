# cython: language_level=3
"""The C that RoI align and RoI pool share (csrc/roi_simd.h), and the NHWC copy of the map
that both forwards read."""
from cython cimport floating

cdef extern from "csrc/roi_simd.h":
    int ck_align_simd() noexcept nogil
    int ck_simd_level() noexcept nogil
    int ck_set_simd_cap(int cap) noexcept nogil
    int ck_all_finite_f(const float* a, Py_ssize_t n) noexcept nogil
    int ck_all_finite_d(const double* a, Py_ssize_t n) noexcept nogil
    void ck_transpose_f(const float* src, Py_ssize_t lds, Py_ssize_t rows, Py_ssize_t cols,
                        float* dst, Py_ssize_t ldd) noexcept nogil
    size_t ck_roi_scratch_bytes(Py_ssize_t nbins) noexcept nogil
    void* ck_malloc64(size_t n) noexcept nogil
    void ck_free64(void* p) noexcept nogil


cdef inline bint nhwc_row(const floating* x, floating* xt, Py_ssize_t C, Py_ssize_t H,
                          Py_ssize_t W, Py_ssize_t nh) noexcept nogil:
    """Row h of image n (nh = n*H + h) to NHWC: xt[n, h] (W, C) = x[n, :, h] (C, W).
    Returns 1 when it holds no NaN/inf."""
    cdef Py_ssize_t n = nh // H, h = nh % H, w, blk, c0, cc
    cdef const floating* src = x + n * C * H * W + h * W
    cdef floating* dst = xt + nh * W * C
    if floating is float:
        ck_transpose_f(src, H * W, C, W, dst, C)
        return ck_all_finite_f(dst, W * C)
    else:
        for blk in range((C + 15) // 16):   # 16-channel blocks keep the writes in cache
            c0 = blk * 16
            for w in range(W):
                for cc in range(c0, min(c0 + 16, C)):
                    dst[w * C + cc] = src[cc * H * W + w]
        return ck_all_finite_d(dst, W * C)


cdef inline Py_ssize_t batch_index(floating v, Py_ssize_t N) noexcept nogil:
    """A RoI's batch index (v, read once by the caller) as an int in [0, N), or -1 when it is
    not one: the boundary checked it, but another thread may have changed it since."""
    if not (v >= 0 and v < N):
        return -1
    return <Py_ssize_t>v


cdef inline int team(int n_threads, Py_ssize_t tasks) noexcept nogil:
    """Threads for a loop of ``tasks`` tasks: no more than there are tasks, at least 1."""
    if tasks < n_threads:
        return <int>tasks if tasks > 1 else 1
    return n_threads if n_threads > 1 else 1
