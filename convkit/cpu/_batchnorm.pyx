# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Spatial batch norm (torch semantics): training / eval forward and backward.

Each OpenMP thread owns whole channels, so every per-channel sum is accumulated by one thread
in a fixed order: the same bits on every run and for any thread count.  Statistics are two-pass
(mean, then the mean squared deviation) and accumulated in double, also for float32 data, which
keeps them as accurate as torch's.  A channel of a (8, 64, 112, 112) float32 batch is 400 KB,
so the second pass and the output pass read it from L2.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

cdef extern from *:
    """
    /* Double-precision sums over one contiguous run, SSE2 (every x86-64 CPU) with several
       independent accumulators (a plain C loop would be one serial add chain: C forbids the
       compiler to reorder floating-point additions).  Plain C elsewhere. */
    #include <stddef.h>
    #if defined(__SSE2__) || defined(_M_X64)
    #include <emmintrin.h>
    #define CK_BN_SSE2 1
    #endif

    /* s += sum(x - m), q += sum((x - m)^2) */
    static void ck_bn_sums_f(const float* x, ptrdiff_t n, double m, double* s, double* q) {
        ptrdiff_t i = 0;
        double ts = 0, tq = 0;
    #ifdef CK_BN_SSE2
        __m128d vm = _mm_set1_pd(m), s0 = _mm_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
        __m128d q0 = s0, q1 = s0, q2 = s0, q3 = s0, d0, d1, d2, d3;
        double buf[2];
        for (; i + 8 <= n; i += 8) {
            __m128 a = _mm_loadu_ps(x + i), b = _mm_loadu_ps(x + i + 4);
            d0 = _mm_sub_pd(_mm_cvtps_pd(a), vm);
            d1 = _mm_sub_pd(_mm_cvtps_pd(_mm_movehl_ps(a, a)), vm);
            d2 = _mm_sub_pd(_mm_cvtps_pd(b), vm);
            d3 = _mm_sub_pd(_mm_cvtps_pd(_mm_movehl_ps(b, b)), vm);
            s0 = _mm_add_pd(s0, d0); s1 = _mm_add_pd(s1, d1);
            s2 = _mm_add_pd(s2, d2); s3 = _mm_add_pd(s3, d3);
            q0 = _mm_add_pd(q0, _mm_mul_pd(d0, d0)); q1 = _mm_add_pd(q1, _mm_mul_pd(d1, d1));
            q2 = _mm_add_pd(q2, _mm_mul_pd(d2, d2)); q3 = _mm_add_pd(q3, _mm_mul_pd(d3, d3));
        }
        _mm_storeu_pd(buf, _mm_add_pd(_mm_add_pd(s0, s1), _mm_add_pd(s2, s3)));
        ts = buf[0] + buf[1];
        _mm_storeu_pd(buf, _mm_add_pd(_mm_add_pd(q0, q1), _mm_add_pd(q2, q3)));
        tq = buf[0] + buf[1];
    #endif
        for (; i < n; i++) { double d = (double)x[i] - m; ts += d; tq += d * d; }
        *s += ts; *q += tq;
    }

    static void ck_bn_sums_d(const double* x, ptrdiff_t n, double m, double* s, double* q) {
        ptrdiff_t i = 0;
        double ts = 0, tq = 0;
    #ifdef CK_BN_SSE2
        __m128d vm = _mm_set1_pd(m), s0 = _mm_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
        __m128d q0 = s0, q1 = s0, q2 = s0, q3 = s0, d0, d1, d2, d3;
        double buf[2];
        for (; i + 8 <= n; i += 8) {
            d0 = _mm_sub_pd(_mm_loadu_pd(x + i), vm);
            d1 = _mm_sub_pd(_mm_loadu_pd(x + i + 2), vm);
            d2 = _mm_sub_pd(_mm_loadu_pd(x + i + 4), vm);
            d3 = _mm_sub_pd(_mm_loadu_pd(x + i + 6), vm);
            s0 = _mm_add_pd(s0, d0); s1 = _mm_add_pd(s1, d1);
            s2 = _mm_add_pd(s2, d2); s3 = _mm_add_pd(s3, d3);
            q0 = _mm_add_pd(q0, _mm_mul_pd(d0, d0)); q1 = _mm_add_pd(q1, _mm_mul_pd(d1, d1));
            q2 = _mm_add_pd(q2, _mm_mul_pd(d2, d2)); q3 = _mm_add_pd(q3, _mm_mul_pd(d3, d3));
        }
        _mm_storeu_pd(buf, _mm_add_pd(_mm_add_pd(s0, s1), _mm_add_pd(s2, s3)));
        ts = buf[0] + buf[1];
        _mm_storeu_pd(buf, _mm_add_pd(_mm_add_pd(q0, q1), _mm_add_pd(q2, q3)));
        tq = buf[0] + buf[1];
    #endif
        for (; i < n; i++) { double d = x[i] - m; ts += d; tq += d * d; }
        *s += ts; *q += tq;
    }

    /* sg += sum(g), sd += sum(g * (x - m)) */
    static void ck_bn_dot_f(const float* g, const float* x, ptrdiff_t n, double m,
                            double* sg, double* sd) {
        ptrdiff_t i = 0;
        double tg = 0, td = 0;
    #ifdef CK_BN_SSE2
        __m128d vm = _mm_set1_pd(m), s0 = _mm_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
        __m128d q0 = s0, q1 = s0, q2 = s0, q3 = s0, g0, g1, g2, g3;
        double buf[2];
        for (; i + 8 <= n; i += 8) {
            __m128 a = _mm_loadu_ps(x + i), b = _mm_loadu_ps(x + i + 4);
            __m128 ga = _mm_loadu_ps(g + i), gb = _mm_loadu_ps(g + i + 4);
            g0 = _mm_cvtps_pd(ga); g1 = _mm_cvtps_pd(_mm_movehl_ps(ga, ga));
            g2 = _mm_cvtps_pd(gb); g3 = _mm_cvtps_pd(_mm_movehl_ps(gb, gb));
            s0 = _mm_add_pd(s0, g0); s1 = _mm_add_pd(s1, g1);
            s2 = _mm_add_pd(s2, g2); s3 = _mm_add_pd(s3, g3);
            q0 = _mm_add_pd(q0, _mm_mul_pd(g0, _mm_sub_pd(_mm_cvtps_pd(a), vm)));
            q1 = _mm_add_pd(q1, _mm_mul_pd(g1, _mm_sub_pd(_mm_cvtps_pd(_mm_movehl_ps(a, a)), vm)));
            q2 = _mm_add_pd(q2, _mm_mul_pd(g2, _mm_sub_pd(_mm_cvtps_pd(b), vm)));
            q3 = _mm_add_pd(q3, _mm_mul_pd(g3, _mm_sub_pd(_mm_cvtps_pd(_mm_movehl_ps(b, b)), vm)));
        }
        _mm_storeu_pd(buf, _mm_add_pd(_mm_add_pd(s0, s1), _mm_add_pd(s2, s3)));
        tg = buf[0] + buf[1];
        _mm_storeu_pd(buf, _mm_add_pd(_mm_add_pd(q0, q1), _mm_add_pd(q2, q3)));
        td = buf[0] + buf[1];
    #endif
        for (; i < n; i++) { tg += (double)g[i]; td += (double)g[i] * ((double)x[i] - m); }
        *sg += tg; *sd += td;
    }

    static void ck_bn_dot_d(const double* g, const double* x, ptrdiff_t n, double m,
                            double* sg, double* sd) {
        ptrdiff_t i = 0;
        double tg = 0, td = 0;
    #ifdef CK_BN_SSE2
        __m128d vm = _mm_set1_pd(m), s0 = _mm_setzero_pd(), s1 = s0;
        __m128d q0 = s0, q1 = s0, g0, g1;
        double buf[2];
        for (; i + 4 <= n; i += 4) {
            g0 = _mm_loadu_pd(g + i); g1 = _mm_loadu_pd(g + i + 2);
            s0 = _mm_add_pd(s0, g0); s1 = _mm_add_pd(s1, g1);
            q0 = _mm_add_pd(q0, _mm_mul_pd(g0, _mm_sub_pd(_mm_loadu_pd(x + i), vm)));
            q1 = _mm_add_pd(q1, _mm_mul_pd(g1, _mm_sub_pd(_mm_loadu_pd(x + i + 2), vm)));
        }
        _mm_storeu_pd(buf, _mm_add_pd(s0, s1));
        tg = buf[0] + buf[1];
        _mm_storeu_pd(buf, _mm_add_pd(q0, q1));
        td = buf[0] + buf[1];
    #endif
        for (; i < n; i++) { tg += g[i]; td += g[i] * (x[i] - m); }
        *sg += tg; *sd += td;
    }
    """
    void ck_bn_sums_f(const float* x, Py_ssize_t n, double m, double* s, double* q) noexcept nogil
    void ck_bn_sums_d(const double* x, Py_ssize_t n, double m, double* s, double* q) noexcept nogil
    void ck_bn_dot_f(const float* g, const float* x, Py_ssize_t n, double m,
                     double* sg, double* sd) noexcept nogil
    void ck_bn_dot_d(const double* g, const double* x, Py_ssize_t n, double m,
                     double* sg, double* sd) noexcept nogil


cdef void bn_channel_stats(const floating* x, Py_ssize_t N, Py_ssize_t stride, Py_ssize_t HW,
                           double* mean, double* var) noexcept nogil:
    """Mean and biased variance of one channel: two passes, in double."""
    cdef Py_ssize_t n
    cdef double s = 0, q = 0, m, M = <double>(N * HW)
    for n in range(N):
        if floating is float:
            ck_bn_sums_f(x + n * stride, HW, 0.0, &s, &q)
        else:
            ck_bn_sums_d(x + n * stride, HW, 0.0, &s, &q)
    m = s / M
    s = 0
    q = 0
    for n in range(N):
        if floating is float:
            ck_bn_sums_f(x + n * stride, HW, m, &s, &q)
        else:
            ck_bn_sums_d(x + n * stride, HW, m, &s, &q)
    # s = sum(x - m) is ~0; subtracting s*s/M makes the result the exact two-pass variance of
    # the rounded mean (the "corrected two-pass" formula)
    mean[0] = m
    var[0] = (q - s * s / M) / M
    if var[0] < 0:
        var[0] = 0


cdef void bn_channel_apply(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t stride,
                           Py_ssize_t HW, floating mean, floating scale, floating shift) noexcept nogil:
    """y = (x - mean) * scale + shift over one channel."""
    cdef Py_ssize_t n, i
    cdef const floating* xs
    cdef floating* ys
    for n in range(N):
        xs = x + n * stride
        ys = y + n * stride
        for i in range(HW):
            ys[i] = (xs[i] - mean) * scale + shift


cdef void bn_channel_grad_sums(const floating* gy, const floating* x, Py_ssize_t N,
                               Py_ssize_t stride, Py_ssize_t HW, double mean,
                               double* sum_gy, double* sum_gy_xmu) noexcept nogil:
    cdef Py_ssize_t n
    sum_gy[0] = 0
    sum_gy_xmu[0] = 0
    for n in range(N):
        if floating is float:
            ck_bn_dot_f(gy + n * stride, x + n * stride, HW, mean, sum_gy, sum_gy_xmu)
        else:
            ck_bn_dot_d(gy + n * stride, x + n * stride, HW, mean, sum_gy, sum_gy_xmu)


cdef void bn_channel_grad_apply(const floating* gy, const floating* x, floating* gx,
                                Py_ssize_t N, Py_ssize_t stride, Py_ssize_t HW,
                                floating k_gy, floating mean, floating k_xmu,
                                floating shift) noexcept nogil:
    """gx = gy * k_gy + (x - mean) * k_xmu + shift over one channel."""
    cdef Py_ssize_t n, i
    cdef const floating* gs
    cdef const floating* xs
    cdef floating* out
    for n in range(N):
        gs = gy + n * stride
        xs = x + n * stride
        out = gx + n * stride
        for i in range(HW):
            out[i] = gs[i] * k_gy + (xs[i] - mean) * k_xmu + shift


# ---------------------------------------------------------------- Python-callable drivers
def batch_norm_train_forward(const floating[:, :, ::1] x, const floating[::1] weight,
                             const floating[::1] bias, double eps, floating[:, :, ::1] y,
                             double[::1] mean, double[::1] var, floating[::1] save_mean,
                             floating[::1] save_invstd, int n_threads):
    """x, y (N, C, HW).  Fills mean/var (double, biased var) and save_mean/save_invstd.
    weight/bias: length C, or length 0 for no affine."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], HW = x.shape[2], c
    cdef bint affine = weight.shape[0] > 0
    cdef double invstd, w, b
    with nogil:
        for c in prange(C, schedule="dynamic", num_threads=n_threads):
            bn_channel_stats(&x[0, c, 0], N, C * HW, HW, &mean[c], &var[c])
            invstd = 1.0 / sqrt(var[c] + eps)
            save_mean[c] = <floating>mean[c]
            save_invstd[c] = <floating>invstd
            w = weight[c] if affine else 1.0
            b = bias[c] if affine else 0.0
            bn_channel_apply(&x[0, c, 0], &y[0, c, 0], N, C * HW, HW, <floating>mean[c],
                             <floating>(invstd * w), <floating>b)


def batch_norm_eval_forward(const floating[:, :, ::1] x, const floating[::1] mean,
                            const floating[::1] invstd, const floating[::1] weight,
                            const floating[::1] bias, floating[:, :, ::1] y, int n_threads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], HW = x.shape[2], c
    cdef bint affine = weight.shape[0] > 0
    with nogil:
        for c in prange(C, schedule="dynamic", num_threads=n_threads):
            if affine:
                bn_channel_apply(&x[0, c, 0], &y[0, c, 0], N, C * HW, HW, mean[c],
                                 invstd[c] * weight[c], bias[c])
            else:
                bn_channel_apply(&x[0, c, 0], &y[0, c, 0], N, C * HW, HW, mean[c], invstd[c], 0)


def batch_norm_backward(const floating[:, :, ::1] gy, const floating[:, :, ::1] x,
                        const floating[::1] weight, const floating[::1] mean,
                        const floating[::1] invstd, bint training, floating[:, :, ::1] gx,
                        floating[::1] grad_weight, floating[::1] grad_bias, int n_threads):
    """gy, x, gx (N, C, HW).  grad_weight/grad_bias (C,) are always filled (the caller drops
    them without affine).  Training: the batch statistics depend on x, so
    gx = (gy - mean(gy) - xhat * mean(gy * xhat)) * invstd * w; eval: gx = gy * invstd * w."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], HW = x.shape[2], c
    cdef bint affine = weight.shape[0] > 0
    cdef double sg, sd, w, inv, M = <double>(N * HW)
    with nogil:
        for c in prange(C, schedule="dynamic", num_threads=n_threads):
            sg = 0      # assigned here so that Cython makes them thread-private
            sd = 0
            bn_channel_grad_sums(&gy[0, c, 0], &x[0, c, 0], N, C * HW, HW, mean[c], &sg, &sd)
            inv = invstd[c]
            w = weight[c] if affine else 1.0
            grad_bias[c] = <floating>sg
            grad_weight[c] = <floating>(sd * inv)
            if training:
                bn_channel_grad_apply(&gy[0, c, 0], &x[0, c, 0], &gx[0, c, 0], N, C * HW, HW,
                                      <floating>(w * inv), mean[c],
                                      <floating>(-w * inv * inv * inv * sd / M),
                                      <floating>(-w * inv * sg / M))
            else:
                bn_channel_grad_apply(&gy[0, c, 0], &x[0, c, 0], &gx[0, c, 0], N, C * HW, HW,
                                      <floating>(w * inv), mean[c], 0, 0)
