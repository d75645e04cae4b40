# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# cython: language_level=3
"""grad_weight of small-channel stride-1 convs by direct dot products on AVX2 + FMA
(csrc/wdirect.h; conv_plan "weight_direct": LeNet5's first layer), and the forward of such
convs with vectors along the flat output positions (conv_plan "direct": lenet_c1; the batch
path runs it on the small maps of weight_direct's layers, with its GEMM's bits: conv.py
_fwd_batch).

Part of the conv kernels laid out by algorithm: see convkit/cpu/_conv.pyx.
"""
from cython.parallel cimport prange, threadid


cdef extern from "csrc/wdirect.h" nogil:
    int ck_wdirect_available()
    void ck_wdirect_pad(const float* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t pt,
                        Py_ssize_t pl, Py_ssize_t Hp, Py_ssize_t Wp, float* xp)
    void ck_wdirect_task(const float* xp, const float* gy, Py_ssize_t N, Py_ssize_t C,
                         Py_ssize_t F, Py_ssize_t Hp, Py_ssize_t Wp, Py_ssize_t Ho,
                         Py_ssize_t Wo, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t f,
                         Py_ssize_t c, Py_ssize_t kh, float* out)
    Py_ssize_t ck_wdirect_rows(Py_ssize_t KW)
    int ck_direct_level3()
    Py_ssize_t ck_direct_floats(Py_ssize_t C, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t KH,
                                Py_ssize_t KW)
    void ck_direct_forward(const float* x, const float* w, const float* bias, float* y,
                           Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t F,
                           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t Ho, Py_ssize_t Wo,
                           Py_ssize_t pt, Py_ssize_t pl, float* ws, int level, int bias_first)


def available():
    """True where the kernel runs (x86-64 with AVX2 and FMA)."""
    return bool(ck_wdirect_available())


def padded_floats(Py_ssize_t N, Py_ssize_t C, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t KH,
                  Py_ssize_t KW):
    """Floats of the zero-padded input the kernel reads (N x C x Hp x Wp)."""
    return N * C * (Ho + KH - 1) * (8 * ((Wo + 7) // 8) + KW - 1)


def conv2d_grad_weight_direct(const float[:, :, :, ::1] gy, const float[:, :, :, ::1] x,
                              float[:, :, :, ::1] gw, float[::1] xp, Py_ssize_t pt,
                              Py_ssize_t pl, int n_threads):
    """gw (OUT, every value written) of a groups-1, stride-1, dilation-1 float32 conv with
    KW <= 8, finite operands: x zero-padded into xp (padded_floats), then one task per
    (f, c, one or two kernel rows) (csrc/wdirect.h).  Same bits for any n_threads."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = gw.shape[0], KH = gw.shape[2], KW = gw.shape[3]
    cdef Py_ssize_t Ho = gy.shape[2], Wo = gy.shape[3]
    cdef Py_ssize_t Hp = Ho + KH - 1, Wp = 8 * ((Wo + 7) // 8) + KW - 1
    cdef Py_ssize_t n, t, f, c, kh, kr = ck_wdirect_rows(KW), nkh = (KH + kr - 1) // kr
    if not ck_wdirect_available():
        raise RuntimeError("conv2d_grad_weight_direct: needs AVX2 and FMA")
    if not (1 <= KW <= 8) or gw.shape[1] != C or gy.shape[1] != F or gy.shape[0] != N:
        raise ValueError("conv2d_grad_weight_direct: shapes do not match (KW <= 8)")
    if xp.shape[0] < N * C * Hp * Wp:
        raise ValueError("conv2d_grad_weight_direct: xp is too small")
    if N == 0:
        gw[...] = 0
        return
    with nogil:
        for n in prange(N, schedule="static", num_threads=n_threads):
            ck_wdirect_pad(&x[n, 0, 0, 0], C, H, W, pt, pl, Hp, Wp, &xp[0] + n * C * Hp * Wp)
        for t in prange(F * C * nkh, schedule="static", num_threads=n_threads):
            f = t // (C * nkh)
            c = (t // nkh) % C
            kh = (t % nkh) * kr
            # (the task's kr kernel rows are consecutive in gw: written in place)
            ck_wdirect_task(&xp[0], &gy[0, 0, 0, 0], N, C, F, Hp, Wp, Ho, Wo, KH, KW, f, c, kh,
                            &gw[f, c, kh, 0])


def direct_level():
    """The vector level conv2d_forward_flat runs at best here: 3 (64-byte vectors, AVX-512F and
    CONVKIT_DISABLE_AVX512 unset), 2 (AVX2 + FMA) or 0 (neither)."""
    if not ck_wdirect_available():
        return 0
    return 3 if ck_direct_level3() else 2


def direct_floats(Py_ssize_t C, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t KH, Py_ssize_t KW):
    """Floats of one thread's workspace for conv2d_forward_flat (an image's padded copy and its
    C*KW shifted planes)."""
    return ck_direct_floats(C, Ho, Wo, KH, KW)


def conv2d_forward_flat(const float[:, :, :, ::1] x, const float[:, :, :, ::1] w,
                        const float[::1] bias, bint has_bias, float[:, :, :, ::1] y,
                        float[::1] ws, Py_ssize_t pt, Py_ssize_t pl, int level, int n_threads,
                        bint bias_first=False):
    """y (OUT) = conv(x, w) + bias for a groups-1, stride-1, dilation-1 float32 conv
    (csrc/wdirect.h ck_direct_forward, conv_plan "direct"): each output one FMA chain over the
    taps in order from 0, then the bias -- the own GEMM's chain, and the batch path's -- or, with
    bias_first, from the bias (csrc/fgemm.h's im2col and wide GEMMs): their bits at any level
    and thread count.  One task per image (static); ws: n_threads * direct_floats(...) floats;
    level 2 (AVX2 + FMA) or 3 (AVX-512F), at most direct_level()."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t Ho = y.shape[2], Wo = y.shape[3]
    cdef Py_ssize_t per = ck_direct_floats(C, Ho, Wo, KH, KW), n
    cdef const float* bp = &bias[0] if has_bias else NULL
    if not (2 <= level <= direct_level()):
        raise RuntimeError(f"conv2d_forward_flat: level {level} does not run here "
                           f"(at most {direct_level()}, at least 2)")
    if (w.shape[1] != C or y.shape[0] != N or y.shape[1] != F or Ho < 1 or Wo < 1 or pt < 0
            or pl < 0):
        raise ValueError("conv2d_forward_flat: shapes do not match")
    if ws.shape[0] < n_threads * per:
        raise ValueError("conv2d_forward_flat: ws is too small")
    if has_bias and bias.shape[0] < F:
        raise ValueError("conv2d_forward_flat: bias is too short")
    with nogil:
        for n in prange(N, schedule="static", num_threads=n_threads):
            ck_direct_forward(&x[n, 0, 0, 0], &w[0, 0, 0, 0], bp, &y[n, 0, 0, 0], C, H, W, F,
                              KH, KW, Ho, Wo, pt, pl, &ws[0] + threadid() * per, level,
                              bias_first)
