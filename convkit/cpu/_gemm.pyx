# cython: language_level=3
"""The GEMM every cpu conv kernel calls (``_blas.pxd``), exposed to Python for the tests and for
``convkit info``: float32 goes to convkit's own AVX-512 kernel (``csrc/sgemm.h``) where the CPU has
AVX-512F, float64 (and float32 elsewhere) to scipy's BLAS."""
from cython cimport floating
from ._blas cimport (gemm, gemm_pk, gemm_fixed, ck_sgemm_packed_a_floats, ck_sgemm_pack_a,
                     ck_sgemm_apacked_rows, ck_fgemm)


cdef extern from "csrc/sgemm.h" nogil:
    int ck_sgemm_available()
    int CK_SGEMM_BUILT
    int CK_AVX512_EMULATED


def own_sgemm_active():
    """True when float32 GEMMs run on convkit's AVX-512 kernel (built in and the CPU has it)."""
    return bool(CK_SGEMM_BUILT and ck_sgemm_available())


cdef extern from "csrc/isa.h" nogil:
    int ck_avx512_full_rate()


def avx512_full_rate():
    """False where the CPU's 512-bit FMA runs at the 256-bit rate (AMD family 0x19, Zen 4), so
    the own AVX-512 GEMM brings no FMA throughput over AVX2 there (csrc/isa.h; read once,
    CONVKIT_AVX512_FULL_RATE=0/1 overrides it).  The plan then takes the AVX2 algorithms that
    measured faster (conv_plan.py ConvCaps.avx512_full_rate)."""
    return bool(ck_avx512_full_rate())


cdef extern from "csrc/fgemm.h" nogil:
    int ck_fgemm_available()


def fixed_sgemm_active():
    """True when the float32 GEMMs of conv forwards and grad_x sum each output in a fixed order
    (one FMA chain over k ascending, whatever the GEMM's shape and the output's place): the own
    AVX-512 kernel, or csrc/fgemm.h on AVX2 + FMA.  Then those GEMMs may hold several images
    and stay batch invariant (conv_plan.py)."""
    return own_sgemm_active() or bool(ck_fgemm_available())


def fgemm_into(bint trans_a, bint trans_b, const float[:, ::1] a, const float[:, ::1] b,
               double beta, float[:, :] c):
    """c = op(a) @ op(b) (+ c when beta is 1) on csrc/fgemm.h alone; False when it did
    nothing (no AVX2/FMA, or CONVKIT_DISABLE_FGEMM=1) -- for the tests and
    bench/bench_gemm.py.  c: rows contiguous, a window of a larger array allowed."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1]
    if c.strides[1] != 4:
        raise ValueError("fgemm_into: c's rows must be contiguous")
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    cdef int ok
    with nogil:     # (row strides from the views: c may be a window of a larger array)
        ok = ck_fgemm(trans_a, trans_b, m, n, k, 1.0, &a[0, 0], a.strides[0] // 4, &b[0, 0],
                      b.strides[0] // 4, <float>beta, &c[0, 0], c.strides[0] // 4)
    return bool(ok)


def gemm_fixed_into(bint trans_a, bint trans_b, const floating[:, ::1] a,
                    const floating[:, ::1] b, double beta, floating[:, ::1] c):
    """c = op(a) @ op(b) + beta * c by the conv forwards' GEMM (_blas.gemm_fixed)."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    with nogil:
        gemm_fixed(trans_a, trans_b, m, n, k, <floating>1, &a[0, 0], a.shape[1], &b[0, 0],
                   b.shape[1], <floating>beta, &c[0, 0], c.shape[1])


def avx512_emulated():
    """True in a test build (CONVKIT_EMULATE_AVX512=1 at build time, csrc/isa.h) whose AVX-512
    code runs on SIMDe's portable emulation: right answers, not the hardware's speed."""
    return bool(CK_AVX512_EMULATED)


def gemm_into(bint trans_a, bint trans_b, double alpha, const floating[:, ::1] a,
              const floating[:, ::1] b, double beta, floating[:, ::1] c):
    """c = alpha * op(a) @ op(b) + beta * c in place (row-major; shapes checked by the caller)."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    with nogil:
        gemm(trans_a, trans_b, m, n, k, <floating>alpha, &a[0, 0], a.shape[1], &b[0, 0],
             b.shape[1], <floating>beta, &c[0, 0], c.shape[1])


def packed_a_floats(Py_ssize_t m, Py_ssize_t k):
    """Floats a prepacked m x k float32 A takes (0: no own kernel, nothing to prepack)."""
    return ck_sgemm_packed_a_floats(m, k)


def pack_a(const float[:, :, ::1] a, float[:, ::1] out, bint ta=False):
    """out[g] = a[g] (m x k; ta: a[g] is stored k x m and its transpose is packed) prepacked
    for gemm_pk, for each g; False when there is no own kernel (out is then unused)."""
    cdef Py_ssize_t g, G = a.shape[0], m = a.shape[2 if ta else 1], k = a.shape[1 if ta else 2]
    cdef int ok = 1
    if G == 0 or m == 0 or k == 0:
        return True
    with nogil:
        for g in range(G):
            ok = ok and ck_sgemm_pack_a(ta, m, k, &a[g, 0, 0], a.shape[2], &out[g, 0])
    return bool(ok)


def gemm_packed_into(const float[:, ::1] apk, bint trans_b, const float[:, ::1] b, double beta,
                     float[:, ::1] c, Py_ssize_t k):
    """c = A @ op(b) + beta * c with A given prepacked (apk[0], from pack_a) -- for the tests."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1]
    with nogil:
        gemm_pk(False, trans_b, m, n, k, <const float*>NULL, 0, &apk[0, 0], &b[0, 0], b.shape[1],
                <float>beta, &c[0, 0], c.shape[1], <const float*>NULL)


def gemm_rows_into(const float[:, ::1] apk, const float[::1] b, const Py_ssize_t[::1] boff,
                   double beta, float[:, ::1] c, const float[::1] rowbias=None):
    """c = A @ B (+ beta * c, + rowbias[i] on row i) with A prepacked (apk[0]) and row p of B at
    b[boff[p]:boff[p] + n] -- for the tests; False when there is no own kernel."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1], k = boff.shape[0]
    cdef int ok
    with nogil:
        ok = ck_sgemm_apacked_rows(m, n, k, &apk[0, 0], &b[0], &boff[0], <float>beta, &c[0, 0],
                                   c.shape[1], &rowbias[0] if rowbias is not None else NULL)
    return bool(ok)
