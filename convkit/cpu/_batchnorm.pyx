# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Spatial batch norm (torch semantics): training / eval forward and backward.

Each OpenMP thread owns whole channels, so every per-channel sum is accumulated by one thread
in a fixed order: the same bits on every run and for any thread count.  Statistics are two-pass
(mean, then the mean squared deviation) and accumulated in double, also for float32 data, which
keeps them as accurate as torch's.  A channel of a (8, 64, 112, 112) float32 batch is 400 KB,
so the second pass and the output pass read it from L2.  The SSE2 sums and the slab loops are
C in csrc/batchnorm.h.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY, sqrt

from convkit.cpu.csrc.batchnorm cimport (ck_bn_sums_d, ck_bn_dot_d,
    ck_bn_sum_f, ck_bn_sums2_f, ck_bn_dot2_f, ck_bn_apply_f, ck_bn_apply_d, ck_bn_grad_apply_f,
    ck_bn_grad_apply_d,
    ck_bnv_sum_f, ck_bnv_sum_d, ck_bnv_dev_f, ck_bnv_dev_d, ck_bnv_dot_f, ck_bnv_dot_d,
    ck_bnv_affine_f, ck_bnv_affine_d, ck_bnv_grad_f, ck_bnv_grad_d,
    ck_bnvn_sum_f, ck_bnvn_sum_d, ck_bnvn_dev_f, ck_bnvn_dev_d)


cdef void bn_channel_stats(const floating* x, Py_ssize_t N, Py_ssize_t stride, Py_ssize_t HW,
                           double* mean, double* var) noexcept nogil:
    """Mean and biased variance of one channel: two passes, in double."""
    cdef Py_ssize_t n
    cdef double s = 0, q = 0, m, M = <double>(N * HW)
    for n in range(N):
        if floating is float:
            ck_bn_sum_f(x + n * stride, HW, &s)     # (the sum alone: q is not used)
        else:
            ck_bn_sums_d(x + n * stride, HW, 0.0, &s, &q)
    m = s / M
    s = 0
    q = 0
    for n in range(N):
        if floating is float:
            ck_bn_sums2_f(x + n * stride, HW, m, &s, &q)
        else:
            ck_bn_sums_d(x + n * stride, HW, m, &s, &q)
    # s = sum(x - m) is ~0; subtracting s*s/M makes the result the exact two-pass variance of
    # the rounded mean (the "corrected two-pass" formula)
    mean[0] = m
    var[0] = (q - s * s / M) / M
    if var[0] < 0:
        var[0] = 0
    if q == INFINITY:   # finite data whose squares overflow: var is +inf (torch: y = 0), not NaN
        var[0] = INFINITY


cdef void bn_channel_apply(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t stride,
                           Py_ssize_t HW, floating mean, floating scale, floating shift) noexcept nogil:
    """y = (x - mean) * scale + shift over one channel."""
    cdef Py_ssize_t n
    for n in range(N):
        if floating is float:
            ck_bn_apply_f(x + n * stride, y + n * stride, HW, mean, scale, shift)
        else:
            ck_bn_apply_d(x + n * stride, y + n * stride, HW, mean, scale, shift)


cdef void bn_channel_grad_sums(const floating* gy, const floating* x, Py_ssize_t N,
                               Py_ssize_t stride, Py_ssize_t HW, double mean,
                               double* sum_gy, double* sum_gy_xmu) noexcept nogil:
    cdef Py_ssize_t n
    sum_gy[0] = 0
    sum_gy_xmu[0] = 0
    for n in range(N):
        if floating is float:
            ck_bn_dot2_f(gy + n * stride, x + n * stride, HW, mean, sum_gy, sum_gy_xmu)
        else:
            ck_bn_dot_d(gy + n * stride, x + n * stride, HW, mean, sum_gy, sum_gy_xmu)


cdef void bn_channel_grad_apply(const floating* gy, const floating* x, floating* gx,
                                Py_ssize_t N, Py_ssize_t stride, Py_ssize_t HW,
                                floating k_gy, floating mean, floating k_xmu,
                                floating shift) noexcept nogil:
    """gx = gy * k_gy + (x - mean) * k_xmu + shift over one channel; x == NULL (eval: x does
    not enter grad_x, so a non-finite x must not reach it): gx = gy * k_gy."""
    cdef Py_ssize_t n, i
    cdef const floating* gs
    cdef floating* out
    for n in range(N):
        gs = gy + n * stride
        out = gx + n * stride
        if x == NULL:
            for i in range(HW):
                out[i] = gs[i] * k_gy
            continue
        if floating is float:
            ck_bn_grad_apply_f(gs, x + n * stride, out, HW, k_gy, mean, k_xmu, shift)
        else:
            ck_bn_grad_apply_d(gs, x + n * stride, out, HW, k_gy, mean, k_xmu, shift)


# ------------------------------------------------- channel blocks, for small planes
# With a small H*W a channel is N runs of a few values, 4 KB or more apart.  Instead, one task
# takes CB consecutive channels and walks each image's contiguous (CB, HW) slab, accumulating
# one double per slab position over the images (a vector loop over the whole slab), then sums
# each channel's HW positions in order.  Every channel's sums run in an order fixed by N and
# HW alone -- the same bits for any CB and thread count -- and are as accurate as the
# per-channel path's (double accumulation, two passes), though not bit-identical to it.  The
# elementwise passes expand the per-channel coefficients to one value per slab position so
# that their inner loop runs over the whole slab.


cdef enum:
    BN_SLAB = 1024      # most values in one (CB, HW) slab: CB * HW <= BN_SLAB
    # Planes of at most BN_SMALL_HW values take the channel-block path.  Measured (2-core Xeon,
    # float32, kernel alone, medians of 200, per-channel -> block path): (64, 64, 2, 2) 1 thread
    # train 49 -> 29 us, eval 14 -> 5; (64, 32, 4, 4) train 48 -> 39; at H*W = 64,
    # (64, 16, 8, 8), still no loss: 2 threads train 61 -> 57, backward 50 -> 48, eval 29 -> 26.
    BN_SMALL_HW = 64


cdef inline void bn_affine(const floating* x, floating* y, Py_ssize_t L, const floating* m,
                           const floating* a, const floating* b) noexcept nogil:
    if floating is float:
        ck_bnv_affine_f(x, y, L, m, a, b)
    else:
        ck_bnv_affine_d(x, y, L, m, a, b)


cdef inline double bn_run_sum(const double* v, Py_ssize_t n) noexcept nogil:
    cdef double t = 0
    cdef Py_ssize_t i
    for i in range(n):
        t += v[i]
    return t


cdef void bn_block_train(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t stride,
                         Py_ssize_t HW, Py_ssize_t CB, const floating* weight,
                         const floating* bias, bint affine, double eps, double* mean,
                         double* var, floating* save_mean, floating* save_invstd) noexcept nogil:
    """Training forward of channels [0, CB) of the block at x (element (0, c0, 0))."""
    cdef double s[BN_SLAB]
    cdef double q[BN_SLAB]
    cdef double md[BN_SLAB]
    cdef floating em[BN_SLAB]
    cdef floating es[BN_SLAB]
    cdef floating eb[BN_SLAB]
    cdef Py_ssize_t n, j, i, L = CB * HW
    cdef double M = <double>(N * HW), m, invstd, w, b, sj, qj
    if floating is float:       # (s, q from 0, the images in order)
        ck_bnvn_sum_f(x, stride, N, L, s)
    else:
        ck_bnvn_sum_d(x, stride, N, L, s)
    for j in range(CB):
        mean[j] = bn_run_sum(s + j * HW, HW) / M
        for i in range(HW):
            md[j * HW + i] = mean[j]
    if floating is float:
        ck_bnvn_dev_f(x, stride, N, L, md, s, q)
    else:
        ck_bnvn_dev_d(x, stride, N, L, md, s, q)
    for j in range(CB):
        m = mean[j]
        sj = bn_run_sum(s + j * HW, HW)
        qj = bn_run_sum(q + j * HW, HW)
        # sj = sum(x - m) is ~0; subtracting sj*sj/M makes the result the exact two-pass
        # variance of the rounded mean (the "corrected two-pass" formula)
        var[j] = (qj - sj * sj / M) / M
        if var[j] < 0:
            var[j] = 0
        if qj == INFINITY:  # (see bn_channel_stats)
            var[j] = INFINITY
        invstd = 1.0 / sqrt(var[j] + eps)
        save_mean[j] = <floating>m
        save_invstd[j] = <floating>invstd
        w = weight[j] if affine else 1.0
        b = bias[j] if affine else 0.0
        for i in range(HW):
            em[j * HW + i] = <floating>m
            es[j * HW + i] = <floating>(invstd * w)
            eb[j * HW + i] = <floating>b
    for n in range(N):
        bn_affine(x + n * stride, y + n * stride, L, em, es, eb)


cdef void bn_block_eval(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t stride,
                        Py_ssize_t HW, Py_ssize_t CB, const floating* mean,
                        const floating* invstd, const floating* weight, const floating* bias,
                        bint affine) noexcept nogil:
    cdef floating em[BN_SLAB]
    cdef floating es[BN_SLAB]
    cdef floating eb[BN_SLAB]
    cdef Py_ssize_t n, j, i, L = CB * HW
    cdef floating sc, sh
    for j in range(CB):
        sc = invstd[j] * weight[j] if affine else invstd[j]
        sh = bias[j] if affine else 0
        for i in range(HW):
            em[j * HW + i] = mean[j]
            es[j * HW + i] = sc
            eb[j * HW + i] = sh
    for n in range(N):
        bn_affine(x + n * stride, y + n * stride, L, em, es, eb)


cdef void bn_block_backward(const floating* gy, const floating* x, floating* gx,
                            Py_ssize_t N, Py_ssize_t stride, Py_ssize_t HW, Py_ssize_t CB,
                            const floating* weight, bint affine, const floating* mean,
                            const floating* invstd, bint training, floating* grad_weight,
                            floating* grad_bias) noexcept nogil:
    cdef double sg[BN_SLAB]
    cdef double sd[BN_SLAB]
    cdef double md[BN_SLAB]
    cdef floating eg[BN_SLAB]
    cdef floating em[BN_SLAB]
    cdef floating ex[BN_SLAB]
    cdef floating eb[BN_SLAB]
    cdef Py_ssize_t n, j, i, L = CB * HW
    cdef double M = <double>(N * HW), w, inv, sgj, sdj
    cdef floating k_gy, k_xmu, shift
    for j in range(CB):
        for i in range(HW):
            md[j * HW + i] = <double>mean[j]
            sg[j * HW + i] = 0
            sd[j * HW + i] = 0
    for n in range(N):     # (ck_bnvn_dot_f's strips over all images measured slower here)
        if floating is float:
            ck_bnv_dot_f(gy + n * stride, x + n * stride, L, md, sg, sd)
        else:
            ck_bnv_dot_d(gy + n * stride, x + n * stride, L, md, sg, sd)
    for j in range(CB):
        sgj = bn_run_sum(sg + j * HW, HW)
        sdj = bn_run_sum(sd + j * HW, HW)
        inv = invstd[j]
        w = weight[j] if affine else 1.0
        grad_bias[j] = <floating>sgj
        grad_weight[j] = <floating>(sdj * inv)
        k_gy = <floating>(w * inv)
        if training:
            k_xmu = <floating>(-w * inv * inv * inv * sdj / M)
            shift = <floating>(-w * inv * sgj / M)
        else:
            k_xmu = 0
            shift = 0
        for i in range(HW):
            eg[j * HW + i] = k_gy
            em[j * HW + i] = mean[j]
            ex[j * HW + i] = k_xmu
            eb[j * HW + i] = shift
    if not training:    # gx = gy * w * invstd: x does not enter it (nor may its NaN / inf)
        for j in range(CB):
            bn_channel_grad_apply(gy + j * HW, NULL, gx + j * HW, N, stride, HW, eg[j * HW], 0,
                                  0, 0)
        return
    for n in range(N):
        if floating is float:
            ck_bnv_grad_f(gy + n * stride, x + n * stride, gx + n * stride, L, eg, em, ex, eb)
        else:
            ck_bnv_grad_d(gy + n * stride, x + n * stride, gx + n * stride, L, eg, em, ex, eb)


# ---------------------------------------------------------------- Python-callable drivers
cdef Py_ssize_t block_channels(Py_ssize_t C, Py_ssize_t HW, int n_threads) noexcept nogil:
    """Channels per task on the block path: a slab of at most BN_SLAB values, and at least one
    block per thread.  (The results do not depend on it.)"""
    cdef Py_ssize_t cb = BN_SLAB // HW, per = (C + n_threads - 1) // n_threads
    if per < cb:
        cb = per
    return cb if cb > 0 else 1


cdef void update_running(const double[::1] mean, const double[::1] var,
                         floating[::1] running_mean, floating[::1] running_var, double momentum,
                         double unbias) noexcept nogil:
    """The wrapper's former NumPy update, operation for operation (so the same bits): r *= 1 - m
    in the storage type, then r += (m * stat) rounded to it.  A few C values: one thread."""
    cdef Py_ssize_t c
    cdef floating keep = <floating>(1.0 - momentum)
    if running_mean.shape[0] == 0:
        return
    for c in range(running_mean.shape[0]):
        running_mean[c] = running_mean[c] * keep
        running_mean[c] = running_mean[c] + <floating>(momentum * mean[c])
        running_var[c] = running_var[c] * keep
        running_var[c] = running_var[c] + <floating>(momentum * var[c] * unbias)


def batch_norm_train_forward(const floating[:, :, ::1] x, const floating[::1] weight,
                             const floating[::1] bias, double eps, floating[:, :, ::1] y,
                             double[::1] mean, double[::1] var, floating[::1] save_mean,
                             floating[::1] save_invstd, int n_threads,
                             floating[::1] running_mean, floating[::1] running_var,
                             double momentum, double unbias):
    """x, y (N, C, HW).  Fills mean/var (double, biased var) and save_mean/save_invstd.
    weight/bias: length C, or length 0 for no affine.  running_mean/var: length C (updated in
    place as NumPy would, torch's r = r * (1 - momentum) + momentum * stat in the storage type,
    the variance times unbias = M / (M - 1)) or length 0."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], HW = x.shape[2], c
    cdef bint affine = weight.shape[0] > 0
    cdef double invstd, w, b
    cdef Py_ssize_t cb, nb, blk, c0
    if HW <= BN_SMALL_HW:
        cb = block_channels(C, HW, n_threads)
        nb = (C + cb - 1) // cb
        with nogil:
            for blk in prange(nb, schedule="static", num_threads=n_threads):
                c0 = blk * cb
                bn_block_train(&x[0, c0, 0], &y[0, c0, 0], N, C * HW, HW, min(cb, C - c0),
                               &weight[c0] if affine else NULL,
                               &bias[c0] if affine else NULL, affine, eps, &mean[c0],
                               &var[c0], &save_mean[c0], &save_invstd[c0])
        update_running(mean, var, running_mean, running_var, momentum, unbias)
        return
    with nogil:
        for c in prange(C, schedule="static", num_threads=n_threads):
            bn_channel_stats(&x[0, c, 0], N, C * HW, HW, &mean[c], &var[c])
            invstd = 1.0 / sqrt(var[c] + eps)
            save_mean[c] = <floating>mean[c]
            save_invstd[c] = <floating>invstd
            w = weight[c] if affine else 1.0
            b = bias[c] if affine else 0.0
            bn_channel_apply(&x[0, c, 0], &y[0, c, 0], N, C * HW, HW, <floating>mean[c],
                             <floating>(invstd * w), <floating>b)
    update_running(mean, var, running_mean, running_var, momentum, unbias)


def batch_norm_eval_forward(const floating[:, :, ::1] x, const floating[::1] mean,
                            const floating[::1] invstd, const floating[::1] weight,
                            const floating[::1] bias, floating[:, :, ::1] y, int n_threads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], HW = x.shape[2], c
    cdef bint affine = weight.shape[0] > 0
    cdef Py_ssize_t cb, nb, blk, c0
    if HW <= BN_SMALL_HW:
        cb = block_channels(C, HW, n_threads)
        nb = (C + cb - 1) // cb
        with nogil:
            for blk in prange(nb, schedule="static", num_threads=n_threads):
                c0 = blk * cb
                bn_block_eval(&x[0, c0, 0], &y[0, c0, 0], N, C * HW, HW, min(cb, C - c0),
                              &mean[c0], &invstd[c0], &weight[c0] if affine else NULL,
                              &bias[c0] if affine else NULL, affine)
        return
    with nogil:
        for c in prange(C, schedule="static", num_threads=n_threads):
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
    cdef Py_ssize_t cb, nb, blk, c0
    if HW <= BN_SMALL_HW:
        cb = block_channels(C, HW, n_threads)
        nb = (C + cb - 1) // cb
        with nogil:
            for blk in prange(nb, schedule="static", num_threads=n_threads):
                c0 = blk * cb
                bn_block_backward(&gy[0, c0, 0], &x[0, c0, 0], &gx[0, c0, 0], N, C * HW, HW,
                                  min(cb, C - c0), &weight[c0] if affine else NULL, affine,
                                  &mean[c0], &invstd[c0], training, &grad_weight[c0],
                                  &grad_bias[c0])
        return
    with nogil:
        for c in prange(C, schedule="static", num_threads=n_threads):
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
                bn_channel_grad_apply(&gy[0, c, 0], NULL, &gx[0, c, 0], N, C * HW, HW,
                                      <floating>(w * inv), mean[c], 0, 0)
