# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# cython: language_level=3
"""im2col + GEMM conv kernels (the general path) and the plane kernels others may ``cimport``
(convkit/cpu/_conv.pxd re-exports them): im2col_plane / col2im_plane write and fold back a
plane's tap rows; conv2d_forward_gemm / conv2d_backward_gemm run the GEMMs per task (a 1x1
stride-1 conv reads x in place, no columns); bias_grad sums grad_y per filter.

Part of the conv kernels laid out by algorithm: see convkit/cpu/_conv.pyx.
"""
from cython cimport floating
cimport numpy as cnp
cimport openmp
from cython.parallel cimport prange, threadid
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from ._blas cimport gemm, gemm_fixed, gemm_pk, ck_fgemm
from ._conv_csrc cimport ck_sum_f, ck_sum8_f, ck_im2col_taps_f, ck_smallk_d, ck_smallk_f
from ._conv_common cimport _row_copy, _min, _wo_range

cnp.import_array()


cdef void _im2col_taps(const floating* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh,
                      Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                      Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Wo, Py_ssize_t h0,
                      Py_ssize_t nrows, floating* cols, Py_ssize_t ldc,
                      floating* xs) noexcept nogil:
    """The KW rows of tap row kh (row kw of cols, stride ldc): see im2col_plane.

    xs: NULL, or scratch of W + sw elements.  With a stride sw > 1 each input row is first split
    into its sw phases (x[p::sw], each Wq long) so that every tap row becomes one memcpy instead
    of a strided gather: KW strided copies of Wo values per row become one of W values.
    """
    cdef Py_ssize_t kw, r, wo, hi, off, lo = 0, up = 0, p, q, j
    cdef Py_ssize_t Wq = (W + sw - 1) // sw
    cdef floating* dst
    cdef const floating* src
    cdef const floating* xrow
    if floating is float:   # the same loop in C with the row copies inlined (csrc/vsum.h)
        if ck_im2col_taps_f(x, H, W, kh, KW, sh, sw, pt, pl, dh, dw, Wo, h0, nrows, cols, ldc,
                            xs):
            return
    for r in range(nrows):
        hi = (h0 + r) * sh - pt + kh * dh
        if hi < 0 or hi >= H:
            for kw in range(KW):
                _row_copy(cols + kw * ldc + r * Wo, NULL, Wo)
            continue
        xrow = x + hi * W
        if sw > 1 and xs != NULL:
            for p in range(sw):
                j = 0
                while p + j * sw < W:
                    xs[p * Wq + j] = xrow[p + j * sw]
                    j = j + 1
        for kw in range(KW):
            dst = cols + kw * ldc + r * Wo
            off = kw * dw - pl
            _wo_range(off, sw, W, Wo, &lo, &up)
            if lo == up:
                _row_copy(dst, NULL, Wo)
                continue
            if lo > 0:
                _row_copy(dst, NULL, lo)
            if sw == 1:
                _row_copy(dst + lo, xrow + off + lo, up - lo)
            elif xs != NULL:
                # column wo*sw + off = (wo + q)*sw + p with p = off mod sw (floor), q exact
                p = ((off % sw) + sw) % sw
                q = (off - p) // sw
                _row_copy(dst + lo, xs + p * Wq + q + lo, up - lo)
            else:
                src = xrow + off
                for wo in range(lo, up):
                    dst[wo] = src[wo * sw]
            if up < Wo:
                _row_copy(dst + up, NULL, Wo - up)


cdef void im2col_plane(const floating* x, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                       Py_ssize_t Wo, Py_ssize_t h0, Py_ssize_t nrows,
                       floating* cols, Py_ssize_t ldc) noexcept nogil:
    cdef Py_ssize_t kh
    for kh in range(KH):
        _im2col_taps(x, H, W, kh, KW, sh, sw, pt, pl, dh, dw, Wo, h0, nrows,
                     cols + kh * KW * ldc, ldc, NULL)


cdef void col2im_plane(const floating* cols, Py_ssize_t ldc, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                       Py_ssize_t Wo, Py_ssize_t h0, Py_ssize_t nrows,
                       floating* gx) noexcept nogil:
    cdef Py_ssize_t kh, kw, r, wo, hi, off, lo = 0, up = 0
    cdef const floating* src
    cdef floating* dst
    for kh in range(KH):
        for kw in range(KW):
            off = kw * dw - pl
            _wo_range(off, sw, W, Wo, &lo, &up)
            if lo == up:
                continue
            for r in range(nrows):
                hi = (h0 + r) * sh - pt + kh * dh
                if hi < 0 or hi >= H:
                    continue
                src = cols + (kh * KW + kw) * ldc + r * Wo
                dst = gx + hi * W + off
                if sw == 1:
                    for wo in range(lo, up):
                        dst[wo] += src[wo]
                else:
                    for wo in range(lo, up):
                        dst[wo * sw] += src[wo]


cdef double plane_sum(const floating* p, Py_ssize_t n) noexcept nogil:
    # eight independent accumulators: no loop-carried add latency, and a fixed order
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0
    cdef Py_ssize_t i = 0
    if floating is float:                   # AVX-512 where the CPU has it (csrc/vsum.h)
        if ck_sum_f(p, n, &s0):
            return s0
        if ck_sum8_f(p, n, &s0):           # AVX2: this loop's lanes, the same result
            return s0
    while i + 8 <= n:
        s0 += p[i]
        s1 += p[i + 1]
        s2 += p[i + 2]
        s3 += p[i + 3]
        s4 += p[i + 4]
        s5 += p[i + 5]
        s6 += p[i + 6]
        s7 += p[i + 7]
        i += 8
    while i < n:
        s0 += p[i]
        i += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


def conv2d_forward_gemm(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                        const floating[::1] bias, bint has_bias, floating[:, :, :, ::1] y,
                        floating[::1] ws, Py_ssize_t ws_per_thread, Py_ssize_t rows,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t groups, bint pointwise,
                        int n_threads, const float[:, ::1] apk, Py_ssize_t blocks=0,
                        Py_ssize_t fblocks=0):
    """y = conv(x, w) + bias by im2col + GEMM (IN: x, w, bias; OUT: y; scratch: ws).
    apk: group g's weights prepacked for the own float32 GEMM in row g (no rows: none).

    Tasks are (image, block of ``rows`` output rows), independent of each other: one parallel
    region, no barrier inside, a static schedule (the same thread writes the same rows every
    call: handed out dynamically, the rows moved between the cores' caches, up to ~2x slower
    when the host runs the vCPUs on cores apart -- bench/RESULTS.md, eleventh session; the
    results do not depend on who ran what).  A task writes its columns into its
    thread's slice of ws (ws_per_thread elements: the columns, then W + sw for _im2col_taps),
    then one GEMM per group writes y.
    pointwise (1x1 kernel, stride 1, no padding): the GEMMs read x in place, ``rows`` output
    positions (not rows) per task; ws is unused.
    blocks > 0: each image in that many blocks of floor / ceil(span / blocks) rows (at most
    ``rows``) instead -- even work where ``rows``-row blocks leave a short last one
    (conv_plan.im2col_rows).
    fblocks > 1 (pointwise on BLAS, no apk): each task also takes one of that many blocks of
    a group's filters (near-equal multiples of 8, set by the layer:
    conv_plan.pointwise_filter_blocks) -- a
    block's GEMM repacks x's run and its own rows of w, not the whole weight, so an image of
    few position runs still makes several tasks (float64's pw_14: 8 tasks -> 16).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], Cg = w.shape[1], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t Ho = y.shape[2], Wo = y.shape[3], HoWo = Ho * Wo
    cdef Py_ssize_t G = groups, Fg = F // groups, KK = KH * KW, CgKK = Cg * KK
    cdef Py_ssize_t span = HoWo if pointwise else Ho       # what a task takes ``rows`` of
    cdef Py_ssize_t nrb = blocks if blocks > 0 else (span + rows - 1) // rows
    cdef Py_ssize_t nfb = fblocks if fblocks > 1 and pointwise else 1
    cdef Py_ssize_t t, n, rb, h0, hr, L, ld, c, g, kh, p0, fb, f0, nf
    cdef const floating* cols
    cdef floating* buf
    cdef floating* yp
    with nogil:
        for t in prange(N * nrb * nfb, schedule="static", num_threads=n_threads):
            n = t // (nrb * nfb)
            rb = (t - n * nrb * nfb) // nfb
            fb = t - (n * nrb + rb) * nfb
            # the block's filters in a group: near-equal whole multiples of 8 (the last takes
            # the rest), so BLAS's row kernels see no edge but the group's own
            f0 = _min(Fg, fb * ((Fg + 7) // 8) // nfb * 8)
            nf = _min(Fg, (fb + 1) * ((Fg + 7) // 8) // nfb * 8) - f0
            if blocks > 0:
                h0 = rb * span // nrb
                hr = (rb + 1) * span // nrb - h0
            else:
                h0 = rb * rows
                hr = _min(rows, span - h0)
            L = hr if pointwise else hr * Wo
            p0 = h0 if pointwise else h0 * Wo               # its first output position
            if pointwise:
                cols = &x[n, 0, 0, 0] + p0
                ld = H * W
            else:
                buf = &ws[0] + threadid() * ws_per_thread
                for c in range(C):
                    for kh in range(KH):
                        _im2col_taps(&x[n, c, 0, 0], H, W, kh, KW, sh, sw, pt, pl, dh, dw,
                                     Wo, h0, hr, buf + (c * KK + kh * KW) * L, L,
                                     buf + C * KK * L)
                cols = buf
                ld = L
            for g in range(G):
                yp = &y[n, g * Fg + f0, 0, 0] + p0
                gemm_pk(False, False, nf, L, CgKK, &w[g * Fg + f0, 0, 0, 0], CgKK,
                        &apk[g, 0] if apk.shape[0] > g and nfb == 1 else <const float*>NULL,
                        cols + g * CgKK * ld, ld, <floating>0, yp, HoWo,
                        &bias[g * Fg + f0] if has_bias else <const floating*>NULL)
    return y


cdef int _pw_weight_fg(const floating* gy, const floating* x, floating* gw, Py_ssize_t N,
                       Py_ssize_t F, Py_ssize_t C, Py_ssize_t HoWo, Py_ssize_t kstep,
                       Py_ssize_t f0, Py_ssize_t nf, Py_ssize_t c0, Py_ssize_t nc,
                       Py_ssize_t ldw, Py_ssize_t u0) noexcept nogil:
    """gw[f0:f0+nf, u0:u0+nc] (row stride ldw, zero-filled) += sum over images n of
    gy[n, f0:f0+nf] @ x[n, c0:c0+nc]^T (planes of HoWo), float32 on csrc/fgemm.h.  Each image's
    positions in runs of ``kstep``: a run's products are one FMA chain from 0 (into a buffer),
    added into gw run after run, image after image -- short chains, as BLAS's k blocks were.
    The larger side is the GEMM's rows (read in place; fgemm packs the other, transposed):
    nc > nf runs x @ gy^T, added back transposed -- fma(a, b, c) == fma(b, a, c), the same
    bits.  Where fgemm declines (no memory for its buffer) BLAS computes the run.  Returns 0
    when the buffer cannot be had."""
    cdef Py_ssize_t n, i, j, q0, kl
    cdef floating* dst = gw + f0 * ldw + u0
    cdef floating* tmp = <floating*>malloc(nf * nc * sizeof(floating))
    cdef const floating* a
    cdef const floating* b
    cdef bint tr
    if tmp == NULL:
        return 0
    for n in range(N):
        a = gy + (n * F + f0) * HoWo
        b = x + (n * C + c0) * HoWo
        q0 = 0
        while q0 < HoWo:
            kl = _min(kstep, HoWo - q0)
            tr = False
            if floating is float:
                if nc > nf:
                    tr = ck_fgemm(False, True, nc, nf, kl, 1, <float*>b + q0, HoWo,
                                  <float*>a + q0, HoWo, 0, <float*>tmp, nf) != 0
                if not tr and not ck_fgemm(False, True, nf, nc, kl, 1, <float*>a + q0, HoWo,
                                           <float*>b + q0, HoWo, 0, <float*>tmp, nc):
                    gemm(False, True, nf, nc, kl, <floating>1, a + q0, HoWo, b + q0, HoWo,
                         <floating>0, tmp, nc)
            else:
                gemm(False, True, nf, nc, kl, <floating>1, a + q0, HoWo, b + q0, HoWo,
                     <floating>0, tmp, nc)
            if tr:
                for i in range(nf):
                    for j in range(nc):
                        dst[i * ldw + j] = dst[i * ldw + j] + tmp[j * nf + i]
            else:
                for i in range(nf):
                    for j in range(nc):
                        dst[i * ldw + j] = dst[i * ldw + j] + tmp[i * nc + j]
            q0 = q0 + kl
    free(tmp)
    return 1


def conv2d_backward_gemm(const floating[:, :, :, ::1] gy, const floating[:, :, :, ::1] x,
                         const floating[:, :, :, ::1] w, floating[:, :, :, ::1] gx,
                         floating[:, :, :, ::1] gw, floating[::1] ws, Py_ssize_t ws_per_thread,
                         Py_ssize_t units_w, Py_ssize_t rows_w, Py_ssize_t chans_x,
                         Py_ssize_t rows_x, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                         Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t groups,
                         bint pointwise, bint needs_input_grad, bint needs_weight_grad,
                         int n_threads, Py_ssize_t nsplit, floating[::1] gwp,
                         Py_ssize_t filters_w=0, Py_ssize_t pos_x=0, bint fgemm_w=False,
                         Py_ssize_t kchain=256, const float[:, ::1] apk_x=None,
                         bint smallk_x=False):
    """grad_weight into gw (OUT, zero-filled by the caller; when needs_weight_grad) and, when
    needs_input_grad, grad_x into gx (OUT, any contents) of conv2d_forward_gemm.

    grad_weight: a task owns a block of ``units_w`` (channel, kh) tap rows (pointwise:
    channels) -- a column block of gw[g] -- and one of ``nsplit`` fixed parts of the batch's
    slabs (image n, output rows [h0, h0 + rows_w)), numbered image after image: part s takes
    slabs [s*S/nsplit, (s+1)*S/nsplit).  It adds gy[n, g, slab] @ cols^T slab after slab in
    order, part 0 into gw, part s > 0 into gwp[(s-1)*F*Cg*KH*KW:] (laid out as gw, zero-filled
    by the caller); pointwise on BLAS, ``filters_w`` (0: all) filters of the group too (rows
    of gw[g], conv_plan.pointwise_weight_filters).  The task that finishes a (filter, column)
    block's last part (a counter per block, under a lock) adds its parts into gw in order: no
    extra parallel region, whose barrier costs a time slice whenever another process holds a
    core.  Every sum runs in the same order whatever the thread count and whoever adds
    (deterministic).
    grad_x: a task owns ``chans_x`` channels of one image: cols_grad = w^T @ gy, ``rows_x``
    output rows at a time, then col2im into those gx planes.

    pointwise, fgemm_w (float32 on csrc/fgemm.h, conv_plan.pointwise_weight_blocks): a
    grad_weight task owns ``filters_w`` filters x ``units_w`` channels of gw[g], the images
    added in order as one FMA chain per entry (nsplit 1), with the larger side as the GEMM's
    rows: gy @ x^T straight into gw, or x @ gy^T into a small buffer written back transposed
    -- the same chains, so the same bits whatever the blocks; each chain at most ``kchain``
    positions of one image (near-equal runs), the runs added in order (_pw_weight_fg).
    pointwise grad_x: a task owns ``pos_x`` output positions of one image (0: all), every
    channel of its group; apk_x (float32 on the own GEMM, else None or no rows): row g holds
    group g's w^T prepacked, read by every task whose block is the whole group (one pack per
    call, not one per task: pw_14's 1 MiB of weights 16 times).  smallk_x (few filters, on
    the BLAS plans): csrc/smallk.h instead of the GEMM -- each output one chain over the
    filters in order, so the blocks (``chans_x``, ``pos_x``) cut no sum.
    """
    cdef Py_ssize_t N = x.shape[0], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], Cg = w.shape[1], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t Ho = gy.shape[2], Wo = gy.shape[3], HoWo = Ho * Wo
    cdef Py_ssize_t G = groups, Fg = F // groups, KK = KH * KW, CgKK = Cg * KK
    cdef Py_ssize_t Ug = Cg * KH, ntw = (Ug + units_w - 1) // units_w
    cdef Py_ssize_t ntx = (Cg + chans_x - 1) // chans_x
    cdef bint pwfg = pointwise and fgemm_w and floating is float
    cdef Py_ssize_t fw = filters_w if pointwise and filters_w > 0 else Fg
    cdef Py_ssize_t nfw = (Fg + fw - 1) // fw
    cdef Py_ssize_t px = pos_x if pointwise and pos_x > 0 else HoWo
    cdef Py_ssize_t npx = (HoWo + px - 1) // px if pointwise else 1
    cdef Py_ssize_t f0, nf, p0, failed = 0
    cdef Py_ssize_t npk = apk_x.shape[0] if apk_x is not None else 0
    cdef Py_ssize_t kruns = (HoWo + kchain - 1) // kchain if kchain > 0 else 1
    cdef Py_ssize_t krun = (HoWo + kruns - 1) // kruns     # (near-equal runs: 238 of 1900)
    cdef Py_ssize_t nrw = (Ho + rows_w - 1) // rows_w, S = N * nrw, gwn = F * CgKK
    cdef Py_ssize_t t, n, g, u0, u1, u, h0, hr, L, c, c0, nc, sp, tw, j, i, f, last
    cdef floating* buf
    cdef floating* dst
    cdef floating* row
    cdef floating* gwf = &gw[0, 0, 0, 0]
    cdef openmp.omp_lock_t lock
    cdef Py_ssize_t* done = NULL
    if needs_weight_grad and nsplit > 1:
        done = <Py_ssize_t*>calloc(G * nfw * ntw, sizeof(Py_ssize_t))
        if done == NULL:
            raise MemoryError("conv2d_backward: out of memory for the part counters")
        openmp.omp_init_lock(&lock)
    with nogil:
        for t in prange(G * nfw * ntw * nsplit if needs_weight_grad else 0,
                        schedule="static", num_threads=n_threads):
            sp = t % nsplit
            tw = t // nsplit
            g = tw // (nfw * ntw)
            u0 = (tw - g * nfw * ntw) % ntw * units_w
            u1 = _min(Ug, u0 + units_w)
            f0 = g * Fg + (tw - g * nfw * ntw) // ntw * fw
            nf = _min(fw, (g + 1) * Fg - f0)
            if pwfg:
                if not _pw_weight_fg(&gy[0, 0, 0, 0], &x[0, 0, 0, 0], gwf, N, F, x.shape[1],
                                     HoWo, krun, f0, nf, g * Cg + u0, u1 - u0, CgKK, u0):
                    failed += 1
                continue
            buf = &ws[0] + threadid() * ws_per_thread
            dst = (gwf if sp == 0 else &gwp[0] + (sp - 1) * gwn) + f0 * CgKK
            for j in range(sp * S // nsplit, (sp + 1) * S // nsplit):
                n = j // nrw
                h0 = (j - n * nrw) * rows_w
                hr = _min(rows_w, Ho - h0)
                L = hr * Wo
                if pointwise:   # units are channels; x is its own column matrix
                    gemm(False, True, nf, u1 - u0, L, <floating>1,
                         &gy[n, f0, 0, 0] + h0 * Wo, HoWo,
                         &x[n, g * Cg + u0, 0, 0] + h0 * Wo, HoWo, <floating>1, dst + u0, CgKK)
                    continue
                for u in range(u0, u1):
                    _im2col_taps(&x[n, g * Cg + u // KH, 0, 0], H, W, u % KH, KW, sh, sw,
                                 pt, pl, dh, dw, Wo, h0, hr, buf + (u - u0) * KW * L, L,
                                 buf + (u1 - u0) * KW * L)
                gemm(False, True, Fg, (u1 - u0) * KW, L, <floating>1,
                     &gy[n, g * Fg, 0, 0] + h0 * Wo, HoWo, buf, L, <floating>1,
                     dst + u0 * KW, CgKK)
            if nsplit > 1:
                openmp.omp_set_lock(&lock)      # (also makes the other parts' sums visible)
                done[tw] = done[tw] + 1
                last = done[tw] == nsplit
                openmp.omp_unset_lock(&lock)
                if last:                        # this block's parts, in order
                    for f in range(f0, f0 + nf):
                        row = gwf + f * CgKK + u0 * KW
                        for sp in range(1, nsplit):
                            dst = &gwp[0] + (sp - 1) * gwn + f * CgKK + u0 * KW
                            for i in range((u1 - u0) * KW):
                                row[i] = row[i] + dst[i]
    if done != NULL:
        openmp.omp_destroy_lock(&lock)
        free(done)
    if failed:
        raise MemoryError("conv2d_backward: out of memory for a grad_weight block's sums")
    with nogil:
        if needs_input_grad:
            for t in prange(N * G * ntx * npx, schedule="static", num_threads=n_threads):
                p0 = t % npx * px
                n = t // npx // (G * ntx)
                g = (t // npx - n * G * ntx) // ntx
                c0 = (t // npx - n * G * ntx - g * ntx) * chans_x
                nc = _min(Cg - c0, chans_x)
                if pointwise and smallk_x:
                    if floating is double:
                        ck_smallk_d(nc, _min(px, HoWo - p0), Fg, &w[g * Fg, c0, 0, 0], CgKK,
                                    &gy[n, g * Fg, 0, 0] + p0, HoWo,
                                    &gx[n, g * Cg + c0, 0, 0] + p0, HoWo)
                    else:
                        ck_smallk_f(nc, _min(px, HoWo - p0), Fg, &w[g * Fg, c0, 0, 0], CgKK,
                                    &gy[n, g * Fg, 0, 0] + p0, HoWo,
                                    &gx[n, g * Cg + c0, 0, 0] + p0, HoWo)
                    continue
                if pointwise:
                    gemm_pk(True, False, nc, _min(px, HoWo - p0), Fg, &w[g * Fg, c0, 0, 0],
                            CgKK, &apk_x[g, 0] if c0 == 0 and nc == Cg and npk > g
                            else <const float*>NULL, &gy[n, g * Fg, 0, 0] + p0, HoWo,
                            <floating>0, &gx[n, g * Cg + c0, 0, 0] + p0, HoWo,
                            <const floating*>NULL)
                    continue
                buf = &ws[0] + threadid() * ws_per_thread
                for c in range(nc):
                    memset(&gx[n, g * Cg + c0 + c, 0, 0], 0, H * W * sizeof(floating))
                h0 = 0
                while h0 < Ho:
                    hr = _min(rows_x, Ho - h0)
                    L = hr * Wo
                    gemm_fixed(True, False, nc * KK, L, Fg, <floating>1, &w[g * Fg, c0, 0, 0],
                               CgKK, &gy[n, g * Fg, 0, 0] + h0 * Wo, HoWo, <floating>0, buf, L)
                    for c in range(nc):
                        col2im_plane(buf + c * KK * L, L, H, W, KH, KW, sh, sw, pt, pl, dh, dw,
                                     Wo, h0, hr, &gx[n, g * Cg + c0 + c, 0, 0])
                    h0 = h0 + hr


def bias_grad(const floating[:, :, :, ::1] gy, floating[::1] gb, int n_threads):
    """gb[f] = sum over n, ho, wo of gy[n, f] (double accumulation, images in order)."""
    cdef Py_ssize_t N = gy.shape[0], F = gy.shape[1], HW = gy.shape[2] * gy.shape[3]
    cdef Py_ssize_t f, n
    cdef double s
    with nogil:
        for f in prange(F, schedule="static", num_threads=n_threads):
            s = 0
            for n in range(N):
                s = s + plane_sum(&gy[n, f, 0, 0], HW)
            gb[f] = <floating>s


# The fast conv algorithms (Winograd's and stem_wino's transforms, the dense and batch GEMMs over
# padded tiles) match torch's NaN / inf pattern only where their sums cannot overflow when
# torch's do not: operands finite and below 2**35 in magnitude (2**480 in float64).  Every
# intermediate is then under |a|max * |b|max * (reduction length) * (transform growth) <
# 2**70 * 2**34 * 2**18 = 2**122 < 2**128 (growth: F(4x4) 2**14.4, stem_wino 2**9.1, F(2x2)
# 2**6.3, bench/wino_growth.py; a reduction of 2**34 terms, 64 GB of float32 operand, does not
# fit in memory here).  Larger values take the exact path, like NaN and inf.
cdef unsigned int _BIG32 = (127u + 35u) << 23
cdef unsigned long long _BIG64 = (1023ull + 480ull) << 52


cdef extern from "csrc/moderate.h" nogil:
    int ck_any_big32(const unsigned int* u, Py_ssize_t n, unsigned int big)
    int ck_any_big64(const unsigned long long* u, Py_ssize_t n, unsigned long long big)


cdef inline bint _any_big32(const unsigned int* u, Py_ssize_t n) noexcept nogil:
    return ck_any_big32(u, n, _BIG32) != 0


cdef inline bint _any_big64(const unsigned long long* u, Py_ssize_t n) noexcept nogil:
    return ck_any_big64(u, n, _BIG64) != 0


def all_moderate(*arrays):
    """True when every value of every array is finite and below 2**35 in magnitude (2**480 for
    float64; the bound above): read as raw bits, the exponent field against a threshold -- NaN
    and inf have the all-ones exponent, so they fail too.  An integer OR-reduction the compiler
    vectorises (csrc/moderate.h), with no floating-point status flags to raise warnings
    (numpy's sum under np.errstate cost a small conv ~30 us), and one call for all of a conv's
    operands, reading each array's buffer directly: the typed memoryviews and views this
    replaced cost more than the scan on LeNet's small maps.  Arrays must be C-contiguous float32 or float64 (what the
    boundary hands the hooks)."""
    cdef cnp.ndarray a
    cdef Py_ssize_t n
    cdef int t
    cdef bint bad
    cdef const void* p
    for obj in arrays:
        a = <cnp.ndarray?>obj
        if not cnp.PyArray_IS_C_CONTIGUOUS(a):
            raise ValueError("all_moderate: arrays must be C-contiguous")
        t, n, p = cnp.PyArray_TYPE(a), cnp.PyArray_SIZE(a), cnp.PyArray_DATA(a)
        if t == cnp.NPY_FLOAT32:
            with nogil:
                bad = _any_big32(<const unsigned int*>p, n)
        elif t == cnp.NPY_FLOAT64:
            with nogil:
                bad = _any_big64(<const unsigned long long*>p, n)
        else:
            raise TypeError(f"all_moderate: float32 or float64 arrays only, got {a.dtype}")
        if bad:
            return False
    return True
