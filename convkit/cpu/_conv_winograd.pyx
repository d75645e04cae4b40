# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# cython: language_level=3
"""Winograd F(2x2, 3x3) and F(4x4, 3x3) for 3x3 stride-1 convs (conv_plan "winograd", tile 2
or 4): filter transforms (winograd_filters, 16 or 36 planes), input / output tile transforms
(F(2x2): here, and csrc/wino.h for float32 on AVX-512; F(4x4): csrc/wino4.h) and 16 or 36
GEMMs per task on the transformed tiles.

Part of the conv kernels laid out by algorithm: see convkit/cpu/_conv.pyx.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from ._blas cimport (gemm, gemm_fixed, gemm_pk, ck_fgemm, ck_sgemm_packed_a_floats,
                     ck_sgemm_pack_a)
from ._conv_csrc cimport (ck_wino_input_row_f, ck_wino_output_row_f, ck_wino_filters_f,
                          ck_w4_input_rows_f, ck_w4_input_rows_d, ck_w4_output_tiles_f,
                          ck_w4_input_mix_f, ck_w4_output_block_f, ck_w4_store_mix_f,
                          ck_w4_output_tiles_d, ck_w4_store_row_f, ck_w4_store_row_d,
                          ck_w4_filters_f, ck_w4_filters_d, ck_w4_input_scratch,
                          ck_w4_output_scratch, ck_w4_set_avx2, ck_w4_grad_row_f,
                          ck_w4_grad_row_d, ck_w4_wgrad_out_f, ck_w4_wgrad_out_d,
                          ck_w4_grad_scratch, ck_w4_filters_pk_f, ck_w4_gemm_pk, ck_w4_pk_rows,
                          ck_fgemm_available, ck_wt_scratch, ck_wt_available,
                          ck_wt_input_f, ck_wt_output_f, ck_pw_stage_floats, ck_pw_available,
                          ck_pw_stage_f, ck_pw_input_f, ck_pw_output_f, ck_pw_stage1_f,
                          ck_pw_output_d2s_f, ck_pw_grad_input_f)
from ._conv_common cimport _min


# ---------------------------------------------------------------------------- Winograd F(2x2, 3x3)
# 3x3 stride-1 forwards as 16 GEMMs of (F x C) @ (C x tiles) instead of one (F x 9C) @ (9C x
# outputs): 2.25x fewer multiplications (Lavin & Gray, "Fast Algorithms for Convolutional Neural
# Networks", 2016).  With 2x2 output tiles every transform coefficient is 0, +-1 or 1/2, so the
# rounding error stays that of a few extra additions.
#   V = B^T d B (4x4 input tile d), U = G g G^T (the wrapper computes it), Y = A^T (U . V) A
#   B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]],  A^T = [[1,1,1,0],[0,1,-1,-1]]
cdef inline void _wino_filter(const floating* g, floating* u, Py_ssize_t us) noexcept nogil:
    """u[e * us] = (G g G^T)[e // 4, e % 4] for one 3x3 filter g (row-major)."""
    cdef floating t[12]
    cdef floating h = 0.5
    cdef Py_ssize_t k
    for k in range(3):                                  # t (4x3) = G g
        t[k] = g[k]
        t[3 + k] = h * (g[k] + g[3 + k] + g[6 + k])
        t[6 + k] = h * (g[k] - g[3 + k] + g[6 + k])
        t[9 + k] = g[6 + k]
    for k in range(4):                                  # row k of t G^T
        u[(k * 4) * us] = t[k * 3]
        u[(k * 4 + 1) * us] = h * (t[k * 3] + t[k * 3 + 1] + t[k * 3 + 2])
        u[(k * 4 + 2) * us] = h * (t[k * 3] - t[k * 3 + 1] + t[k * 3 + 2])
        u[(k * 4 + 3) * us] = t[k * 3 + 2]


def winograd_filters(const floating[:, :, :, ::1] w, floating[:, :, ::1] U, int n_threads,
                     bint transpose_flip=False, bint packed=False):
    """U[(a*4 + b), f, c] = (G w[f, c] G^T)[a, b] (OUT: U (16, F, C)) for 3x3 filters w,
    G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]; with U (36, F, C), F(4x4)'s
    U[(a*6 + b), f, c] (G as in the comment above _wino4_filter_block, 16 channels per step,
    csrc/wino4.h).
    transpose_flip: the filters of grad_x instead, w'[f, c] = w[c, f] turned by 180 degrees
    (U (16, C, F) for w (F, C, 3, 3)), without making w' first.
    packed (F(4x4), float32): each plane in csrc/wino4.h's ck_w4_gemm_pk layout, U (36,
    winograd4_packed_rows(F), C) holding strips of 6 filters, (strip, channel, filter) order.

    A task transforms 16 channels of one filter into a small buffer and writes 16 runs of 16:
    one filter at a time would store its 16 values F*C elements apart, all in one cache set.
    Packed: a strip's 8 channels, one run of 48 per plane."""
    cdef Py_ssize_t F = U.shape[1], C = U.shape[2]
    cdef Py_ssize_t nb = (C + 15) // 16
    cdef Py_ssize_t it
    cdef bint four = U.shape[0] == 36
    if U.shape[0] != 16 and not four:
        raise ValueError(f"U must have 16 (F(2x2)) or 36 (F(4x4)) planes, got {U.shape[0]}")
    if packed:
        _wino4_filters_packed(w, U, n_threads, transpose_flip)
        return
    with nogil:
        for it in prange(F * nb, schedule="static", num_threads=n_threads):
            if four:
                _wino4_filter_block(w, U, it // nb, (it % nb) * 16, transpose_flip)
            else:
                _wino_filter_block(w, U, it // nb, (it % nb) * 16, transpose_flip)


def winograd4_packed_rows(Py_ssize_t F):
    """Rows of a packed F(4x4) plane for F filters (whole strips of 6)."""
    return ck_w4_pk_rows(F)


def winograd4_packed_ok():
    """Whether the packed F(4x4) GEMMs can run here (csrc/fgemm.h's AVX2 + FMA kernel)."""
    return bool(ck_fgemm_available())


# A packed-filter task: a strip's _PK_CHANS channels (runs of 6 * _PK_CHANS per plane) into a
# buffer (110 KB), then copied plane by plane, where U is large.  Written straight into U, its
# 36 planes took 36 interleaved write streams of 192 bytes a block: 32 ns a filter for 256 x 256
# filters (U 9.5 MB) against 23 through the buffer; where U stays in cache the copy costs more
# (128 x 128: 10.8 ns straight, 13.5 through the buffer; bench/wino_filters_ab.py)
cdef Py_ssize_t _PK_CHANS = 128
cdef Py_ssize_t _PK_STAGE_MIN = 1 << 21    # elements of U (8 MiB) from which the buffer is used
cdef int _pk_stage = -1                      # -1: by U's size; 0 / 1: never / always (tests)


def winograd4_stage_filters(int mode):
    """Set how packed F(4x4) filters are written (-1: through a buffer where U exceeds
    _PK_STAGE_MIN elements, 0: straight into U, 1: always through the buffer); returns the old
    mode.  The same values whichever way (tests, bench/wino_filters_ab.py)."""
    global _pk_stage
    cdef int old = _pk_stage
    _pk_stage = mode
    return old


cdef bint _last_apart = True     # (winograd4_last_apart: A/B timing and tests)


def winograd4_last_apart(bint on):
    """Whether the packed F(4x4) forward skips the images' last tile rows in the GEMMs of the
    six planes whose outputs those rows do not store (conv2d_forward_winograd, where Ho % 4);
    returns the old setting.  The same bits either way."""
    global _last_apart
    cdef bint old = _last_apart
    _last_apart = on
    return old


cdef bint _mix_edges = True      # (winograd4_mix_edges: A/B timing and tests)


def winograd4_mix_edges(bint on):
    """Whether the packed F(4x4) forward takes its edge tiles by F(2x2) where the plan asks for
    it (conv2d_forward_winograd's mix_edges); returns the old setting.  Off: every tile by
    F(4x4) (the edge outputs' bits differ, the others' do not)."""
    global _mix_edges
    cdef bint old = _mix_edges
    _mix_edges = on
    return old


cdef _wino4_filters_packed(const floating[:, :, :, ::1] w, floating[:, :, ::1] U, int n_threads,
                           bint transpose_flip):
    cdef Py_ssize_t F = w.shape[1] if transpose_flip else w.shape[0]
    cdef Py_ssize_t C = w.shape[0] if transpose_flip else w.shape[1]
    cdef Py_ssize_t ns = ck_w4_pk_rows(F) // 6, nch = (C + _PK_CHANS - 1) // _PK_CHANS
    cdef Py_ssize_t it, s, c0, c1, cb, nc, e, us
    cdef float* buf
    cdef float* u
    if U.shape[0] != 36 or U.shape[1] != 6 * ns or U.shape[2] != C:
        raise ValueError(f"U must be (36, {6 * ns}, {C}) for packed filters, got "
                         f"{(U.shape[0], U.shape[1], U.shape[2])}")
    cdef bint stage = _pk_stage == 1 or (_pk_stage < 0 and 36 * U.shape[1] * C > _PK_STAGE_MIN)
    if floating is float:
        with nogil:
            for it in prange(ns * nch, schedule="static", num_threads=n_threads):
                s = it // nch
                c1 = (it % nch) * _PK_CHANS
                nc = _min(_PK_CHANS, C - c1)
                buf = <float*>malloc(36 * 6 * _PK_CHANS * sizeof(float)) if stage else NULL
                us = 6 * _PK_CHANS
                if buf == NULL:     # (no memory: straight into U, the same values)
                    us = U.shape[1] * C
                for cb in range(0, nc, 8):
                    c0 = c1 + cb
                    u = buf + 6 * cb if buf != NULL else &U[0, 0, 0] + 6 * (s * C + c0)
                    if transpose_flip:
                        ck_w4_filters_pk_f(&w[c0, 6 * s, 0, 0], 9, w.shape[1] * 9,
                                           _min(6, F - 6 * s), _min(8, C - c0), 1, u, us)
                    else:
                        ck_w4_filters_pk_f(&w[6 * s, c0, 0, 0], C * 9, 9, _min(6, F - 6 * s),
                                           _min(8, C - c0), 0, u, us)
                if buf != NULL:
                    for e in range(36):
                        memcpy(&U[0, 0, 0] + e * U.shape[1] * C + 6 * (s * C + c1),
                               buf + e * us, 6 * nc * sizeof(float))
                    free(buf)
    else:
        raise ValueError("packed F(4x4) filters are float32 only")


cdef void _wino_filter_block(const floating[:, :, :, ::1] w, floating[:, :, ::1] U, Py_ssize_t f,
                             Py_ssize_t c0, bint transpose_flip) noexcept nogil:
    """Channels c0 .. c0+15 (or to C) of filter f into U, through a buffer on this thread's stack."""
    cdef floating buf[256]
    cdef floating g[9]
    cdef Py_ssize_t c1 = _min(c0 + 16, U.shape[2])
    cdef Py_ssize_t c, e, i
    cdef const floating* src
    if floating is float:       # 16 filters per step, stored straight into U (csrc/wino.h)
        if transpose_flip:
            if ck_wino_filters_f(&w[c0, f, 0, 0], w.shape[1] * 9, c1 - c0, 1, &U[0, f, c0],
                                 U.shape[1] * U.shape[2]):
                return
        elif ck_wino_filters_f(&w[f, c0, 0, 0], 9, c1 - c0, 0, &U[0, f, c0],
                               U.shape[1] * U.shape[2]):
            return
    for c in range(c0, c1):
        if transpose_flip:
            src = &w[c, f, 0, 0]
            for i in range(9):          # flipping both axes of a 3x3 reverses its 9 values
                g[i] = src[8 - i]
            _wino_filter(g, &buf[c - c0], 16)
        else:
            _wino_filter(&w[f, c, 0, 0], &buf[c - c0], 16)
    for e in range(16):
        for c in range(c0, c1):
            U[e, f, c] = buf[e * 16 + c - c0]


cdef inline void _wino_input_row(const floating* x, Py_ssize_t H, Py_ssize_t W,
                                 Py_ssize_t r0, Py_ssize_t pl, Py_ssize_t tw, floating* v,
                                 Py_ssize_t vs, floating* scratch) noexcept nogil:
    """One row of tiles: v[e * vs + j] = (B^T d_j B)[e // 4, e % 4] for the tiles
    d_j = x[r0:r0+4, 2j-pl : 2j-pl+4] (0 outside x), j < tw.  scratch: 8 * (2*tw + 2).

    Row-wise so the loops run over whole rows (vectorisable): first B^T down the 4 input rows,
    then B across each tile's 4 columns."""
    cdef Py_ssize_t Wb = 2 * tw + 2, k, col, lo, up, j
    cdef floating* R = scratch              # 4 zero-padded input rows, columns -pl .. Wb-1-pl
    if floating is float:                   # the same additions, 16 tiles at a time (csrc/wino.h)
        if ck_wino_input_row_f(x, H, W, r0, pl, tw, v, vs, scratch):
            return
    cdef floating* T = scratch + 4 * Wb     # B^T applied down the rows
    cdef floating* t
    lo = pl if pl > 0 else 0
    up = _min(Wb, pl + W)
    for k in range(4):
        if r0 + k < 0 or r0 + k >= H or lo >= up:
            memset(R + k * Wb, 0, Wb * sizeof(floating))
            continue
        if lo > 0:
            memset(R + k * Wb, 0, lo * sizeof(floating))
        memcpy(R + k * Wb + lo, x + (r0 + k) * W + lo - pl, (up - lo) * sizeof(floating))
        if up < Wb:
            memset(R + k * Wb + up, 0, (Wb - up) * sizeof(floating))
    for col in range(Wb):
        T[col] = R[col] - R[2 * Wb + col]
        T[Wb + col] = R[Wb + col] + R[2 * Wb + col]
        T[2 * Wb + col] = R[2 * Wb + col] - R[Wb + col]
        T[3 * Wb + col] = R[Wb + col] - R[3 * Wb + col]
    for k in range(4):
        t = T + k * Wb
        for j in range(tw):
            v[(k * 4) * vs + j] = t[2 * j] - t[2 * j + 2]
            v[(k * 4 + 1) * vs + j] = t[2 * j + 1] + t[2 * j + 2]
            v[(k * 4 + 2) * vs + j] = t[2 * j + 2] - t[2 * j + 1]
            v[(k * 4 + 3) * vs + j] = t[2 * j + 1] - t[2 * j + 3]


cdef inline void _wino_output_row(const floating* m, Py_ssize_t ms, Py_ssize_t tw,
                                  floating bias, floating* y, Py_ssize_t Wo,
                                  bint two_rows) noexcept nogil:
    """One row of tiles: y[r, 2j + q] = (A^T m_j A)[r, q] + bias (m_j element e at
    m[e * ms + j]); writes rows 0 and (if two_rows) 1 of y, Wo columns."""
    cdef Py_ssize_t j, jf = Wo // 2
    cdef floating s0, s1, s2, s3, s4, s5, s6, s7
    if floating is float:                   # the same additions, 16 tiles at a time (csrc/wino.h)
        if ck_wino_output_row_f(m, ms, tw, bias, y, Wo, two_rows):
            return
    for j in range(jf):
        s0 = m[j] + m[4 * ms + j] + m[8 * ms + j]
        s1 = m[ms + j] + m[5 * ms + j] + m[9 * ms + j]
        s2 = m[2 * ms + j] + m[6 * ms + j] + m[10 * ms + j]
        s3 = m[3 * ms + j] + m[7 * ms + j] + m[11 * ms + j]
        y[2 * j] = s0 + s1 + s2 + bias
        y[2 * j + 1] = s1 - s2 - s3 + bias
    if jf < tw:     # odd Wo: the last tile has one column
        j = jf
        y[2 * j] = (m[j] + m[4 * ms + j] + m[8 * ms + j]) + (m[ms + j] + m[5 * ms + j]
                    + m[9 * ms + j]) + (m[2 * ms + j] + m[6 * ms + j] + m[10 * ms + j]) + bias
    if not two_rows:
        return
    y = y + Wo
    for j in range(jf):
        s4 = m[4 * ms + j] - m[8 * ms + j] - m[12 * ms + j]
        s5 = m[5 * ms + j] - m[9 * ms + j] - m[13 * ms + j]
        s6 = m[6 * ms + j] - m[10 * ms + j] - m[14 * ms + j]
        s7 = m[7 * ms + j] - m[11 * ms + j] - m[15 * ms + j]
        y[2 * j] = s4 + s5 + s6 + bias
        y[2 * j + 1] = s5 - s6 - s7 + bias
    if jf < tw:
        j = jf
        y[2 * j] = (m[4 * ms + j] - m[8 * ms + j] - m[12 * ms + j]) + (m[5 * ms + j]
                    - m[9 * ms + j] - m[13 * ms + j]) + (m[6 * ms + j] - m[10 * ms + j]
                    - m[14 * ms + j]) + bias


# ---------------------------------------------------------------------------- Winograd F(4x4, 3x3)
# 36 GEMMs of (F x C) @ (C x tiles) per 4x4 output tile: 4x fewer multiplications than direct
# (F(2x2): 2.25x).  The price of the bigger tile is accuracy: its transforms use larger and
# non-dyadic coefficients, and the error grows with them.  Points (with infinity):
# 0, 1, -1, 1/2, -2.  In a float32 emulation (bench/wino_points.py) this set's largest error is
# 2.6x lower than that of the textbook 0, +-1, +-2 (Lavin & Gray) or of 0, +-1, +-1/2 (RMS
# 1.4x lower); its coefficients stay within 1/8 .. 8, and every one outside G is a small integer
# or a power of two.  Measured per layer: bench/wino_accuracy.py, RESULTS.md "Winograd F(4x4,
# 3x3)" (about 1e-6 of the output's scale, ~5x F(2x2)'s error).
#   B^T (rows scaled by 2, 2, 2, 1, 2, 2: exact)   G (rows scaled back)       A^T
#   [2 -3 -4  3  2  0]                             [ 1/2    0     0   ]      [1 1  1  1    1  0]
#   [0 -2  1  5  2  0]                             [ 1/6   1/6   1/6  ]      [0 1 -1 1/2  -2  0]
#   [0  2 -5  1  2  0]                             [-1/6   1/6  -1/6  ]      [0 1  1 1/4   4  0]
#   [0 -2 -1  2  1  0]                             [-16/15 -8/15 -4/15]      [0 1 -1 1/8  -8  1]
#   [0  1 -2 -1  2  0]                             [ 1/30 -1/15  2/15 ]
#   [0  2 -3 -4  3  2]                             [  0     0    1/2  ]
# Y = A^T [(G g G^T) . (B^T d B)] A for a 6x6 input tile d; G g G^T is computed in double and
# rounded once (it holds the inexact thirds and fifteenths), 16 filters at a time, G's rows by
# their common factors (winograd_filters with 36 planes; csrc/wino4.h's CK_W4_G, ck_w4_filters).


cdef void _wino4_filter_block(const floating[:, :, :, ::1] w, floating[:, :, ::1] U,
                              Py_ssize_t f, Py_ssize_t c0, bint transpose_flip) noexcept nogil:
    """Channels c0 .. c0+15 (or to C) of filter f into U, 16 lanes at once (csrc/wino4.h)."""
    cdef Py_ssize_t nl = _min(c0 + 16, U.shape[2]) - c0
    if floating is float:
        if transpose_flip:
            ck_w4_filters_f(&w[c0, f, 0, 0], w.shape[1] * 9, nl, 1, &U[0, f, c0],
                            U.shape[1] * U.shape[2])
        else:
            ck_w4_filters_f(&w[f, c0, 0, 0], 9, nl, 0, &U[0, f, c0], U.shape[1] * U.shape[2])
    else:
        if transpose_flip:
            ck_w4_filters_d(&w[c0, f, 0, 0], w.shape[1] * 9, nl, 1, &U[0, f, c0],
                            U.shape[1] * U.shape[2])
        else:
            ck_w4_filters_d(&w[f, c0, 0, 0], 9, nl, 0, &U[0, f, c0], U.shape[1] * U.shape[2])


def winograd4_avx2(bint allow):
    """Allow (True) or forbid the AVX2 build of the F(4x4) transforms (tests compare the two);
    returns the previous setting.  Not thread-safe: for tests only."""
    return bool(ck_w4_set_avx2(allow))


# conv2d_forward_winograd's extra distance between the planes of V and of M (elements)
WINO_PLANE_PAD = 16


def winograd4_scratch(Py_ssize_t trows, Py_ssize_t tw):
    """Scratch (elements) of the F(4x4) transforms for a task of trows rows of tw tiles."""
    return max(ck_w4_input_scratch(tw), ck_w4_output_scratch(trows * tw, tw))


cdef inline Py_ssize_t _w4_pos(Py_ssize_t th, Py_ssize_t g0, Py_ssize_t nt, Py_ssize_t k,
                               bint last_apart) noexcept nogil:
    """The column block (of tw tiles) of a task's tile row k (batch row g0 + k): k, or with
    last_apart the rows that are no image's last first, in order, then the images' last rows
    (g // th counts the last rows before batch row g)."""
    cdef Py_ssize_t before = (g0 + k) // th - g0 // th
    if not last_apart:
        return k
    if (g0 + k) % th == th - 1:
        return nt - ((g0 + nt) // th - g0 // th) + before
    return k - before


cdef void _wino4_input_rows(const floating* x, Py_ssize_t img_stride, Py_ssize_t H,
                            Py_ssize_t W, Py_ssize_t th, Py_ssize_t g0, Py_ssize_t nt,
                            Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t tw, floating* v,
                            Py_ssize_t vs, floating* scratch, Py_ssize_t nscratch,
                            bint last_apart=False) noexcept nogil:
    """The F(4x4) input transform of the batch's tile rows g0 .. g0+nt-1 of one channel (as
    _wino_input_rows): an image's consecutive rows in one call, as many as nscratch elements of
    scratch hold (ck_w4_input_rows_scratch; each input row split once, not in each of the two
    or three tile rows it belongs to).  last_apart: tile row k's tiles at column block
    _w4_pos(k), the images' last rows after the others."""
    cdef Py_ssize_t k = 0, n, i, m
    cdef Py_ssize_t most = max(1, (nscratch // (4 * tw + 4) - 9) // 4)
    cdef floating* vl
    while k < nt:
        n = (g0 + k) // th
        i = g0 + k - n * th
        m = _min(_min(th - i, nt - k), most)
        # (a run of rows ending on the image's last row: that one to its own place)
        vl = v + _w4_pos(th, g0, nt, k + m - 1, True) * tw \
            if last_apart and m > 1 and i + m == th else NULL
        if floating is float:
            ck_w4_input_rows_f(x + n * img_stride, H, W, 4 * i - pt, m, pl, tw,
                               v + _w4_pos(th, g0, nt, k, last_apart) * tw, vl, vs, scratch)
        else:
            ck_w4_input_rows_d(x + n * img_stride, H, W, 4 * i - pt, m, pl, tw,
                               v + _w4_pos(th, g0, nt, k, last_apart) * tw, vl, vs, scratch)
        k += m


cdef void _wino4_output_rows(const floating* m, Py_ssize_t ms, Py_ssize_t th, Py_ssize_t g0,
                             Py_ssize_t nt, Py_ssize_t tw, floating bias, floating* y,
                             Py_ssize_t img_stride, Py_ssize_t Ho, Py_ssize_t Wo,
                             floating* scratch, bint last_apart=False) noexcept nogil:
    """The F(4x4) output transform of tile rows g0 .. g0+nt-1 of one filter: all nt*tw tiles
    in one pass, then stored row by row (tile row k's tiles at column block _w4_pos(k))."""
    cdef Py_ssize_t k, n, i, P = nt * tw
    cdef floating* Yp = scratch + 24 * P
    cdef floating* buf = Yp + 16 * P
    if floating is float:
        ck_w4_output_tiles_f(m, ms, P, bias, scratch, Yp)
    else:
        ck_w4_output_tiles_d(m, ms, P, bias, scratch, Yp)
    for k in range(nt):
        n = (g0 + k) // th
        i = g0 + k - n * th
        if floating is float:
            ck_w4_store_row_f(Yp + _w4_pos(th, g0, nt, k, last_apart) * tw, P, tw,
                              y + n * img_stride + 4 * i * Wo, Wo,
                              _min(4, Ho - 4 * i), buf)
        else:
            ck_w4_store_row_d(Yp + _w4_pos(th, g0, nt, k, last_apart) * tw, P, tw,
                              y + n * img_stride + 4 * i * Wo, Wo,
                              _min(4, Ho - 4 * i), buf)


# Mixed edge tiles (conv2d_forward_winograd's mix_edges): where Ho % 4 (or Wo % 4) is 1 or 2
# an image's last tile row (column) keeps at most 2 of its 4 outputs, and F(2x2)'s points are
# F(4x4)'s planes 0, 1, 2, 5 (csrc/wino4.h, CK_W2_B): those tiles go by F(2) in that direction
# on U's planes as they are, 4 planes instead of 6 (res_14: 484 products an image, not 576).
# A task's columns (tiles) are laid out [R | I | Cc | K]: the images' last rows' other tiles,
# the other rows' other tiles, the other rows' last tiles, the last rows' last tiles; then
# every plane's GEMM takes one contiguous range of them (_w4_mix_range).  l2 / c2: the last
# rows / columns go by F(2).  Each output is still one chain over the channels.
cdef inline void _w4_mix_layout(Py_ssize_t th, Py_ssize_t g0, Py_ssize_t nt, Py_ssize_t tw,
                                bint l2, bint c2, Py_ssize_t* lay) noexcept nogil:
    """lay: nl (last rows by F(2)), tm (tiles a row by F(4) across), I0, C0, K0, P."""
    cdef Py_ssize_t nl = (g0 + nt) // th - g0 // th if l2 else 0
    cdef Py_ssize_t tm = tw - 1 if c2 else tw
    lay[0] = nl
    lay[1] = tm
    lay[2] = nl * tm
    lay[3] = lay[2] + (nt - nl) * tm
    lay[4] = lay[3] + (nt - nl if c2 else 0)
    lay[5] = nt * tw


cdef inline void _w4_mix_range(Py_ssize_t e, const Py_ssize_t* lay, Py_ssize_t* lo,
                               Py_ssize_t* hi) noexcept nogil:
    """The columns plane e's GEMM needs: I always, R where e's row point is one of F(2)'s,
    Cc where its column point is, K where both are."""
    cdef bint ra = e // 6 < 3 or e // 6 == 5, cb = e % 6 < 3 or e % 6 == 5
    lo[0] = 0 if ra else lay[2]
    hi[0] = (lay[5] if ra else lay[4]) if cb else lay[3]


cdef void _wino4_input_mix(const float* x, Py_ssize_t img_stride, Py_ssize_t H, Py_ssize_t W,
                           Py_ssize_t th, Py_ssize_t g0, Py_ssize_t nt, Py_ssize_t pt,
                           Py_ssize_t pl, Py_ssize_t tw, bint l2, bint c2, float* v,
                           Py_ssize_t vs, float* scratch, Py_ssize_t nscratch) noexcept nogil:
    """_wino4_input_rows for the mixed edges' layout (one channel, v: its column block)."""
    cdef Py_ssize_t lay[6]
    cdef Py_ssize_t k = 0, n, i, m, before, q
    cdef Py_ssize_t most = max(1, (nscratch // (4 * tw + 4) - 9) // 4)
    cdef bint last
    _w4_mix_layout(th, g0, nt, tw, l2, c2, lay)
    while k < nt:
        n = (g0 + k) // th
        i = g0 + k - n * th
        m = _min(_min(th - i, nt - k), most)
        before = (g0 + k) // th - g0 // th      # images' last rows before row k in the task
        q = k - before if l2 else k
        last = l2 and i + m == th
        ck_w4_input_mix_f(x + n * img_stride, H, W, 4 * i - pt, m, pl, tw, c2, l2,
                          v + lay[2] + q * lay[1], v + lay[3] + q,
                          v + before * lay[1] if last else NULL, v + lay[4] + before,
                          v + lay[3], v + lay[2], vs, scratch)
        k += m


cdef void _wino4_output_mix(const float* m, Py_ssize_t ms, Py_ssize_t th, Py_ssize_t g0,
                            Py_ssize_t nt, Py_ssize_t tw, bint l2, bint c2, float bias,
                            float* y, Py_ssize_t img_stride, Py_ssize_t Ho, Py_ssize_t Wo,
                            float* scratch) noexcept nogil:
    """_wino4_output_rows for the mixed edges' layout: the four blocks' transforms (block X's
    outputs at Y + 16 * X0), then each tile row stored from its two blocks."""
    cdef Py_ssize_t lay[6]
    cdef Py_ssize_t k, n, i, before, q, P = nt * tw, nR, nI, nC, nK
    cdef float* Y = scratch + 24 * P
    cdef float* buf = Y + 16 * P
    _w4_mix_layout(th, g0, nt, tw, l2, c2, lay)
    nR, nI, nC, nK = lay[2], lay[3] - lay[2], lay[4] - lay[3], P - lay[4]
    if nR:
        ck_w4_output_block_f(m, ms, nR, 1, 0, bias, scratch, Y)
    if nI:
        ck_w4_output_block_f(m + lay[2], ms, nI, 0, 0, bias, scratch, Y + 16 * lay[2])
    if nC:
        ck_w4_output_block_f(m + lay[3], ms, nC, 0, 1, bias, scratch, Y + 16 * lay[3])
    if nK:
        ck_w4_output_block_f(m + lay[4], ms, nK, 1, 1, bias, scratch, Y + 16 * lay[4])
    for k in range(nt):
        n = (g0 + k) // th
        i = g0 + k - n * th
        before = (g0 + k) // th - g0 // th
        if l2 and i == th - 1:
            ck_w4_store_mix_f(Y + before * lay[1], nR, lay[1], Y + 16 * lay[4] + before, nK,
                              c2, y + n * img_stride + 4 * i * Wo, Wo, _min(4, Ho - 4 * i), buf)
        else:
            q = k - before if l2 else k
            ck_w4_store_mix_f(Y + 16 * lay[2] + q * lay[1], nI, lay[1], Y + 16 * lay[3] + q,
                              nC, c2, y + n * img_stride + 4 * i * Wo, Wo, _min(4, Ho - 4 * i),
                              buf)


cdef void _wino4_task_mix(const float[:, :, :, ::1] x, const float[:, :, ::1] U,
                          const float[::1] bias, bint has_bias, float[:, :, :, ::1] y, float* V,
                          Py_ssize_t vs, float* M, Py_ssize_t ms, Py_ssize_t scr, Py_ssize_t th,
                          Py_ssize_t tw, Py_ssize_t g0, Py_ssize_t nt, Py_ssize_t pt,
                          Py_ssize_t pl, bint l2, bint c2) noexcept nogil:
    """One task of conv2d_forward_winograd with mixed edges: the input transform, each
    plane's GEMM over its range of columns, the output transform."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = y.shape[1], Ho = y.shape[2], Wo = y.shape[3], P = nt * tw
    cdef Py_ssize_t lay[6]
    cdef Py_ssize_t c, e, f, lo, hi
    for c in range(C):
        _wino4_input_mix(&x[0, c, 0, 0], C * H * W, H, W, th, g0, nt, pt, pl, tw, l2, c2,
                         V + c * P, vs, M + 36 * ms, scr)
    _w4_mix_layout(th, g0, nt, tw, l2, c2, lay)
    for e in range(36):
        _w4_mix_range(e, lay, &lo, &hi)
        if hi > lo:
            ck_w4_gemm_pk(F, hi - lo, C, &U[e, 0, 0], V + e * vs + lo, P, M + e * ms + lo, P)
    for f in range(F):
        _wino4_output_mix(M + f * P, ms, th, g0, nt, tw, l2, c2, bias[f] if has_bias else 0,
                          &y[0, f, 0, 0], F * Ho * Wo, Ho, Wo, M + 36 * ms)


cdef void _wino4_block_mix(const float[:, :, ::1] U, const float[::1] bias, bint has_bias,
                           float[:, :, :, ::1] y, const float* V, Py_ssize_t vs, Py_ssize_t ldv,
                           float* M, Py_ssize_t th, Py_ssize_t tw, Py_ssize_t g0, Py_ssize_t nt,
                           Py_ssize_t f0, Py_ssize_t f1, bint l2, bint c2) noexcept nogil:
    """_wino4_forward_split's second-region task with mixed edges: filters f0 .. f1-1 of the
    block's tile rows g0 .. g0+nt-1 (V: the block's first column of the shared V, planes vs
    apart, rows of ldv), each plane's GEMM over its range of columns, the output transform."""
    cdef Py_ssize_t C = U.shape[2], F = y.shape[1], Ho = y.shape[2], Wo = y.shape[3]
    cdef Py_ssize_t P = nt * tw, nf = f1 - f0
    cdef Py_ssize_t lay[6]
    cdef Py_ssize_t e, f, lo, hi
    _w4_mix_layout(th, g0, nt, tw, l2, c2, lay)
    for e in range(36):
        _w4_mix_range(e, lay, &lo, &hi)
        if hi > lo:     # (strip s of the packed plane at 6 * s * C)
            ck_w4_gemm_pk(nf, hi - lo, C, &U[e, 0, 0] + f0 * C, V + e * vs + lo, ldv,
                          M + e * nf * P + lo, P)
    for f in range(f0, f1):
        _wino4_output_mix(M + (f - f0) * P, nf * P, th, g0, nt, tw, l2, c2,
                          bias[f] if has_bias else 0, &y[0, f, 0, 0], F * Ho * Wo, Ho, Wo,
                          M + 36 * nf * P)


# ---------------------------------------------------------------------------- F(4x4) grad_weight
# The weight gradient by the transposed F(4x4, 3x3) (csrc/wino4.h, above ck_w4_grad_row):
# grad_weight[f, c] = G^T M[f, c] G, M_e = sum over the batch's tiles t of
# (A gy_t A^T)_e (B^T x_t B)_e -- the forward's input tiles and transform, grad_y's 4x4 tiles.
# V's, Z's and M's planes this many elements further apart than their sizes: res_14's V plane
# (256 x 128 tiles), vgg_56's (64 x 1568) and M's of 256 x 256 are whole multiples of 4 KiB, so
# the 36 planes a transform writes (or a grad_weight entry reads) fell into the same cache sets.
cdef enum:
    _WG_PAD = 16


def winograd4_wgrad_floats(Py_ssize_t N, Py_ssize_t C, Py_ssize_t F, Py_ssize_t Ho,
                           Py_ssize_t Wo, Py_ssize_t parts):
    """(elements of V, Z and the parts of M together, row scratch elements per thread) of
    conv2d_grad_weight_winograd."""
    cdef Py_ssize_t tw = (Wo + 3) // 4, T = N * ((Ho + 3) // 4) * tw
    return (36 * (C * T + F * T + parts * F * C + (2 + parts) * _WG_PAD),
            max(ck_w4_input_scratch(tw), ck_w4_grad_scratch(tw)))


cdef void _wino4_grad_rows(const floating* gy, Py_ssize_t img_stride, Py_ssize_t Ho,
                           Py_ssize_t Wo, Py_ssize_t th, Py_ssize_t g0, Py_ssize_t nt,
                           Py_ssize_t tw, floating* z, Py_ssize_t zs,
                           floating* scratch) noexcept nogil:
    """The A transform of grad_y's tile rows g0 .. g0+nt-1 of one filter (as _wino4_input_rows)."""
    cdef Py_ssize_t k, n, i
    for k in range(nt):
        n = (g0 + k) // th
        i = g0 + k - n * th
        if floating is float:
            ck_w4_grad_row_f(gy + n * img_stride, Ho, Wo, 4 * i, tw, z + k * tw, zs, scratch)
        else:
            ck_w4_grad_row_d(gy + n * img_stride, Ho, Wo, 4 * i, tw, z + k * tw, zs, scratch)


def conv2d_grad_weight_winograd(const floating[:, :, :, ::1] gy,
                                const floating[:, :, :, ::1] x, floating[:, :, :, ::1] gw,
                                floating[::1] ws, Py_ssize_t pt, Py_ssize_t pl,
                                Py_ssize_t trows, Py_ssize_t cols, Py_ssize_t parts,
                                int n_threads, bint fixed=True, bint fgemm=False):
    """grad_weight (OUT gw (F, C, 3, 3), any contents) of a 3x3 stride-1 conv of x padded by pt
    on top and pl on the left, output gy (N, F, Ho, Wo), by the transposed F(4x4, 3x3).

    Three passes, each a parallel loop whose every output is made by one task in a fixed order
    (the bits do not depend on the thread count):
    1. the transforms, tasks of ``trows`` of the batch's tile rows of one channel of x (into
       V (36, C, T), T = the batch's tiles, numbered image after image) or of one filter of gy
       (into Z (36, F, T));
    2. M_e (F x C) = Z_e @ V_e^T, the T tiles in ``parts`` near-equal runs, each its own GEMM
       (the sums' chains stay short: float32's error), per plane e and block of ``cols``
       channels: 36 * parts * ceil(C / cols) tasks, into M (parts, 36, F, C);
    3. gw[f] = G^T M[:, f] G, the parts added in double in order (double, rounded once), one
       task per filter.
    ws: winograd4_wgrad_floats' V, Z and M (planes _WG_PAD apart), then n_threads slices of
    its row scratch.  fixed:
    float32 GEMMs on the fixed-order kernel (gemm_fixed: the own AVX-512 GEMM, else
    csrc/fgemm.h), else BLAS.  fgemm (float32, with fixed): on csrc/fgemm.h even where the own
    GEMM runs (a half-rate AVX-512 CPU, conv_plan's weight_winograd rule: its narrow GEMMs
    measured faster there; both sum each output in one chain over k ascending: same bits)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = gy.shape[1], Ho = gy.shape[2], Wo = gy.shape[3]
    cdef Py_ssize_t th = (Ho + 3) // 4, tw = (Wo + 3) // 4, T = N * th * tw
    cdef Py_ssize_t nrb = (N * th + trows - 1) // trows, ncb = (C + cols - 1) // cols
    cdef Py_ssize_t per = max(ck_w4_input_scratch(tw), ck_w4_grad_scratch(tw))
    cdef Py_ssize_t t, c, f, g0, nt, e, c0, nc, p, k0, k1
    cdef floating* V
    cdef floating* Z
    cdef floating* M
    cdef floating* S
    cdef bint fg = floating is float and fixed and fgemm
    if gw.shape[0] != F or gw.shape[1] != C or gw.shape[2] != 3 or gw.shape[3] != 3:
        raise ValueError(f"gw must be ({F}, {C}, 3, 3), got "
                         f"{(gw.shape[0], gw.shape[1], gw.shape[2], gw.shape[3])}")
    if gy.shape[0] != N or trows < 1 or cols < 1 or parts < 1 or parts > T:
        raise ValueError(f"gy must hold {N} images, trows and cols be >= 1 and parts in 1 .. "
                         f"{T}, got {gy.shape[0]}, {trows}, {cols}, {parts}")
    cdef Py_ssize_t VS = C * T + _WG_PAD, ZS = F * T + _WG_PAD, MS = F * C + _WG_PAD
    if ws.shape[0] < 36 * (VS + ZS + parts * MS) + n_threads * per:
        raise ValueError("conv2d_grad_weight_winograd: ws too small")
    V = &ws[0]
    Z = V + 36 * VS
    M = Z + 36 * ZS
    with nogil:
        for t in prange((C + F) * nrb, schedule="static", num_threads=n_threads):
            S = M + 36 * parts * MS + threadid() * per
            c = t // nrb
            g0 = (t - c * nrb) * trows
            nt = _min(trows, N * th - g0)
            if c < C:
                _wino4_input_rows(&x[0, c, 0, 0], C * H * W, H, W, th, g0, nt, pt, pl, tw,
                                  V + c * T + g0 * tw, VS, S, per)
            else:
                f = c - C
                _wino4_grad_rows(&gy[0, f, 0, 0], F * Ho * Wo, Ho, Wo, th, g0, nt, tw,
                                 Z + f * T + g0 * tw, ZS, S)
        for t in prange(36 * parts * ncb, schedule="static", num_threads=n_threads):
            e = t // (parts * ncb)
            p = (t // ncb) % parts
            c0 = (t % ncb) * cols
            nc = _min(cols, C - c0)
            k0 = p * T // parts
            k1 = (p + 1) * T // parts
            if fg and ck_fgemm(False, True, F, nc, k1 - k0, 1, <float*>Z + e * ZS + k0, T,
                               <float*>V + e * VS + c0 * T + k0, T, 0,
                               <float*>M + (p * 36 + e) * MS + c0, C):
                pass
            elif fixed:
                gemm_fixed(False, True, F, nc, k1 - k0, <floating>1, Z + e * ZS + k0, T,
                           V + e * VS + c0 * T + k0, T, <floating>0,
                           M + (p * 36 + e) * MS + c0, C)
            else:
                gemm(False, True, F, nc, k1 - k0, <floating>1, Z + e * ZS + k0, T,
                     V + e * VS + c0 * T + k0, T, <floating>0,
                     M + (p * 36 + e) * MS + c0, C)
        for f in prange(F, schedule="static", num_threads=n_threads):
            if floating is float:
                ck_w4_wgrad_out_f(M + f * C, MS, parts, 36 * MS, C, &gw[f, 0, 0, 0])
            else:
                ck_w4_wgrad_out_d(M + f * C, MS, parts, 36 * MS, C, &gw[f, 0, 0, 0])
    return gw


# ---------------------------------------------------------------------------- both tiles
cdef void _wino_input_rows(const floating* x, Py_ssize_t img_stride, Py_ssize_t H,
                           Py_ssize_t W, Py_ssize_t th, Py_ssize_t g0, Py_ssize_t nt,
                           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t tw, floating* v,
                           Py_ssize_t vs, floating* scratch) noexcept nogil:
    """_wino_input_row for the batch's tile rows g0 .. g0+nt-1 of one channel (x: image 0's
    plane of that channel; rows are numbered image after image, th per image)."""
    cdef Py_ssize_t k, n, i
    for k in range(nt):
        n = (g0 + k) // th
        i = g0 + k - n * th
        _wino_input_row(x + n * img_stride, H, W, 2 * i - pt, pl, tw, v + k * tw, vs, scratch)


cdef void _wino_output_rows(const floating* m, Py_ssize_t ms, Py_ssize_t th, Py_ssize_t g0,
                            Py_ssize_t nt, Py_ssize_t tw, floating bias, floating* y,
                            Py_ssize_t img_stride, Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil:
    """_wino_output_row for tile rows g0 .. g0+nt-1 of one filter (y: image 0's plane)."""
    cdef Py_ssize_t k, n, i
    for k in range(nt):
        n = (g0 + k) // th
        i = g0 + k - n * th
        _wino_output_row(m + k * tw, ms, tw, bias, y + n * img_stride + 2 * i * Wo, Wo,
                         2 * i + 1 < Ho)


def conv2d_forward_winograd(const floating[:, :, :, ::1] x, const floating[:, :, ::1] U,
                            const floating[::1] bias, bint has_bias, floating[:, :, :, ::1] y,
                            floating[::1] ws, Py_ssize_t ws_per_thread, Py_ssize_t trows,
                            Py_ssize_t pt, Py_ssize_t pl, int n_threads,
                            const float[:, ::1] apk, int tile=2, bint per_image=False,
                            bint packed=False, Py_ssize_t fparts=0, bint mix_edges=False,
                            bint staged=False, Py_ssize_t lead=0):
    """3x3, stride 1, dilation 1, groups 1: y = conv(x, w) + bias by Winograd F(2x2, 3x3)
    (tile 2) or F(4x4, 3x3) (tile 4).  apk: U[e] prepacked for the own float32 GEMM in row e
    (no rows: none).

    U (E, F, C), E = (tile + 2)**2: the transformed filters G w G^T.  The batch's rows of output
    tiles (N * ceil(Ho/tile) of them, numbered image after image) go in blocks of ``trows`` -- a
    block may span images, so small images still make wide GEMMs.  Blocks are independent tasks
    (static schedule, no barrier).  per_image: a block never spans images -- each image's rows
    are cut into blocks of ``trows`` (its last block shorter), so an image gets the same GEMMs
    whatever batch it is in (BLAS's bits follow a GEMM's shape and a column's place in it).
    A task's slice of ws holds V (E, C, tiles), M (E, F,
    tiles) and the row scratch: ws_per_thread >= E*(C + F)*trows*tw + 8*(2*tw + 2) (tile 2) or
    + winograd4_scratch(trows, tw) (tile 4).
    packed (tile 4, float32): U from winograd_filters(packed=True), the GEMMs on ck_w4_gemm_pk
    (the same bits as on the plain layout).
    fparts (tile 2: see wino2_split_floats; the same bits as the split above on the own
    float32 GEMM or csrc/fgemm.h, whose outputs are each one chain over the channels)
    fparts (tile 4, not per_image; 0: the split above): two regions instead -- the input
    transform of the whole batch into one shared V (tasks of a channel's ``trows`` tile rows),
    then tasks of (``trows`` tile rows, one of ``fparts`` near-equal blocks of whole 6-filter
    strips), each the block's 36 GEMMs and output transform.  For a fixed-order GEMM (each
    output one FMA chain over the channels wherever it sits) the same bits as the split above;
    more tasks where a layer has few tiles.  ws: V (36 * C * N*th*tw) first, then the threads'
    slices, ws_per_thread >= 36 * 6*ceil(ceil(F/6)/fparts) * trows*tw +
    winograd4_scratch(trows, tw).
    mix_edges (packed, one region): where Ho % 4 or Wo % 4 is 1 or 2, the last tile row or
    column by F(2x2) in that direction (above _w4_mix_layout; conv_plan.winograd4_mix_edges).
    staged (tile 4, per_image, not packed: the GEMMs on BLAS): the first ``lead`` blocks as
    above (one region, the threads' slices first in ws), then the other blocks in three regions
    (winograd4_staged_floats: their V and M after the slices), every GEMM call the one-region
    task's: the same bits.  ws_per_thread >= winograd4_scratch(trows, tw) where lead is 0.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = y.shape[1], Ho = y.shape[2], Wo = y.shape[3]
    cdef Py_ssize_t E = (tile + 2) * (tile + 2)
    cdef Py_ssize_t th = (Ho + tile - 1) // tile, tw = (Wo + tile - 1) // tile
    cdef Py_ssize_t nri = (th + trows - 1) // trows      # blocks per image (per_image)
    cdef Py_ssize_t nrb = N * nri if per_image else (N * th + trows - 1) // trows
    cdef Py_ssize_t t, g0, nt, P, c, e, f, n, r, vs, ms
    cdef Py_ssize_t nrb1 = lead if staged else nrb        # (the one-region blocks)
    cdef floating* V
    cdef floating* M
    if tile != 2 and tile != 4:
        raise ValueError(f"tile must be 2 or 4, got {tile}")
    if U.shape[0] != E:
        raise ValueError(f"U must have {E} transformed planes for tile {tile}, got {U.shape[0]}")
    if packed and (tile != 4 or floating is double or not ck_fgemm_available()):
        raise ValueError("packed filters need tile 4, float32 and csrc/fgemm.h's kernel")
    if U.shape[1] != (ck_w4_pk_rows(F) if packed else F) or U.shape[2] != C:
        raise ValueError(f"U's filters and channels do not match y's {F} and x's {C}")
    if staged and (tile != 4 or not per_image or packed or fparts or lead < 0 or lead > nrb):
        raise ValueError("staged needs tile 4, per_image, neither packed nor fparts, and lead "
                         f"in 0 .. {nrb}, got {lead}")
    if fparts and tile == 2:
        _wino2_forward_split(x, U, bias, has_bias, y, ws, ws_per_thread, trows, pt, pl,
                             n_threads, apk, fparts, per_image)
        return y
    if fparts:
        _wino4_forward_split(x, U, bias, has_bias, y, ws, ws_per_thread, trows, pt, pl,
                             n_threads, packed, fparts, tile, per_image, mix_edges)
        return y
    # planes of V and of M WINO_PLANE_PAD elements further apart where the slice has the room
    # (the plan gives it, conv_plan.winograd_plane_pad): C * tiles elements apart (res_14's
    # 256 x 64 floats, 64 KiB) every plane's run and the row scratch share cache sets, and the
    # input transform's stores miss L1 and L2 (the same arithmetic, the same bits, either way)
    cdef Py_ssize_t pad = WINO_PLANE_PAD
    # F(4x4)'s output row r is A^T's row r times M, and only A^T's row 3 meets the sixth point
    # (infinity): where Ho % 4, an image's last tile row stores rows 0 .. Ho % 4 - 1 only, so
    # M's planes 30 .. 35 (the sixth row of the 6x6) are not needed there.  The task puts those
    # tile rows after its others (_w4_pos) and those six GEMMs take the others' columns alone
    # (res_14: 48 of 64).  On the fixed-order GEMM each output is one chain whatever the GEMM's
    # width: the same bits.  Their M columns are zeroed (no stale values in the unstored rows).
    cdef bint l2 = Ho % 4 == 1 or Ho % 4 == 2, c2 = Wo % 4 == 1 or Wo % 4 == 2
    cdef bint mix = (_mix_edges and mix_edges and tile == 4 and packed and floating is float
                     and (l2 or c2))
    cdef bint apart = (_last_apart and tile == 4 and packed and floating is float
                       and Ho % 4 != 0 and not mix)
    cdef Py_ssize_t P1
    cdef Py_ssize_t scr = 8 * (2 * tw + 2) if tile == 2 else winograd4_scratch(trows, tw)
    if ws_per_thread < E * (C + F) * trows * tw + 2 * E * pad + scr:
        pad = 0
    if staged and ws.shape[0] < n_threads * ws_per_thread:
        raise ValueError("conv2d_forward_winograd: ws too small for the staged plan")
    with nogil:
        for t in prange(nrb1, schedule="static", num_threads=n_threads):
            if per_image:
                n = t // nri
                r = (t - n * nri) * trows
                g0 = n * th + r
                nt = _min(trows, th - r)
            else:
                g0 = t * trows
                nt = _min(trows, N * th - g0)
            P = nt * tw
            vs = C * P + pad
            ms = F * P + pad
            V = &ws[0] + threadid() * ws_per_thread
            M = V + E * vs
            if floating is float:
                if mix:
                    _wino4_task_mix(x, U, bias, has_bias, y, V, vs, M, ms, scr, th, tw, g0, nt,
                                    pt, pl, l2, c2)
                    continue
            for c in range(C):
                if tile == 2:
                    _wino_input_rows(&x[0, c, 0, 0], C * H * W, H, W, th, g0, nt, pt, pl, tw,
                                     V + c * P, vs, M + E * ms)
                else:
                    _wino4_input_rows(&x[0, c, 0, 0], C * H * W, H, W, th, g0, nt, pt, pl,
                                      tw, V + c * P, vs, M + E * ms, scr, apart)
            P1 = (nt - ((g0 + nt) // th - g0 // th)) * tw if apart else P
            for e in range(E):
                if floating is float:
                    if packed:
                        if e >= 30 and P1 < P:
                            ck_w4_gemm_pk(F, P1, C, &U[e, 0, 0], V + e * vs, P, M + e * ms, P)
                            for f in range(F):
                                memset(M + e * ms + f * P + P1, 0, (P - P1) * sizeof(float))
                            continue
                        ck_w4_gemm_pk(F, P, C, &U[e, 0, 0], V + e * vs, P, M + e * ms, P)
                        continue
                gemm_pk(False, False, F, P, C, &U[e, 0, 0], C,
                        &apk[e, 0] if apk.shape[0] > e else <const float*>NULL,
                        V + e * vs, P, <floating>0, M + e * ms, P, <const floating*>NULL)
            for f in range(F):
                if tile == 2:
                    _wino_output_rows(M + f * P, ms, th, g0, nt, tw,
                                      bias[f] if has_bias else <floating>0, &y[0, f, 0, 0],
                                      F * Ho * Wo, Ho, Wo)
                else:
                    _wino4_output_rows(M + f * P, ms, th, g0, nt, tw,
                                       bias[f] if has_bias else <floating>0, &y[0, f, 0, 0],
                                       F * Ho * Wo, Ho, Wo, M + E * ms, apart)
    if staged:
        _wino4_forward_staged(x, U, bias, has_bias, y, ws, ws_per_thread, trows, pt, pl,
                              n_threads, apk, lead)
    return y


def winograd4_staged_floats(Py_ssize_t N, Py_ssize_t C, Py_ssize_t F, Py_ssize_t Ho,
                            Py_ssize_t Wo, Py_ssize_t trows, Py_ssize_t lead=0):
    """(shared, scratch) workspace elements of conv2d_forward_winograd's staged F(4x4) plan
    (tile 4, per_image, staged): the V and M of every block from ``lead`` on -- an image's
    blocks of ``trows`` tile rows one after the other, each laid out as a one-region task's
    slice (V's 36 planes of C * P, then M's of F * P, P its tiles, planes WINO_PLANE_PAD
    apart), the images one after the other -- and a thread's row scratch (winograd4_scratch,
    in its slice: the slices come first, the shared V and M after them).

    The staged plan: the blocks before ``lead`` as one-region tasks (where they fill whole
    rounds of the team), then the others in three regions: (1) the input transforms, tasks of
    (block, channel); (2) the GEMMs, tasks of (transform point, block), each the one-region
    task's GEMM of that point (same shape, leading dimensions and operands: the same bits as
    the one-region plan on any team, on BLAS too); (3) the output transforms, tasks of (block,
    filter).  For few blocks (rpn_3x3's 2, res_14's 8): 36x the GEMM tasks."""
    cdef Py_ssize_t th = (Ho + 3) // 4, tw = (Wo + 3) // 4
    cdef Py_ssize_t nri = (th + trows - 1) // trows
    cdef Py_ssize_t n = lead // nri, j = lead - n * nri
    return (N * (36 * (C + F) * th * tw + nri * 72 * WINO_PLANE_PAD)
            - n * (36 * (C + F) * th * tw + nri * 72 * WINO_PLANE_PAD)
            - j * (36 * (C + F) * trows * tw + 72 * WINO_PLANE_PAD),
            winograd4_scratch(trows, tw))


cdef _wino4_forward_staged(const floating[:, :, :, ::1] x, const floating[:, :, ::1] U,
                           const floating[::1] bias, bint has_bias, floating[:, :, :, ::1] y,
                           floating[::1] ws, Py_ssize_t ws_per_thread, Py_ssize_t trows,
                           Py_ssize_t pt, Py_ssize_t pl, int n_threads, const float[:, ::1] apk,
                           Py_ssize_t lead):
    """conv2d_forward_winograd's staged F(4x4) plan, blocks lead .. (winograd4_staged_floats);
    the checks of the arguments they share are the caller's."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = y.shape[1], Ho = y.shape[2], Wo = y.shape[3]
    cdef Py_ssize_t th = (Ho + 3) // 4, tw = (Wo + 3) // 4
    cdef Py_ssize_t nri = (th + trows - 1) // trows, nb = N * nri - lead
    cdef Py_ssize_t pad = WINO_PLANE_PAD
    cdef Py_ssize_t img = 36 * (C + F) * th * tw + nri * 72 * pad   # (an image's blocks)
    cdef Py_ssize_t blk = 36 * (C + F) * trows * tw + 72 * pad      # (a whole block)
    cdef Py_ssize_t scr = winograd4_scratch(trows, tw)
    cdef Py_ssize_t shared = winograd4_staged_floats(N, C, F, Ho, Wo, trows, lead)[0]
    cdef Py_ssize_t t, b, n, j, r, nt, P, c, e, f
    cdef floating* V0
    cdef floating* V
    if ws_per_thread < scr or ws.shape[0] < n_threads * ws_per_thread + shared:
        raise ValueError("conv2d_forward_winograd: ws too small for the staged plan")
    # (block b's V at V0 + its offset from the first one's)
    V0 = &ws[0] + n_threads * ws_per_thread - (lead // nri) * img - (lead % nri) * blk
    with nogil:
        for t in prange(nb * C, schedule="static", num_threads=n_threads):
            b = lead + t // C
            c = t % C
            n = b // nri
            j = b - n * nri
            r = j * trows
            nt = _min(trows, th - r)
            P = nt * tw
            _wino4_input_rows(&x[0, c, 0, 0], C * H * W, H, W, th, n * th + r, nt, pt, pl, tw,
                              V0 + n * img + j * blk + c * P, C * P + pad,
                              &ws[0] + threadid() * ws_per_thread, scr)
        # (point-major: a thread's run of GEMMs shares its plane of U -- res_14's U is 36 x
        # 512 KiB in float64, the one-region tasks read all of it each)
        for t in prange(36 * nb, schedule="static", num_threads=n_threads):
            e = t // nb
            b = lead + t % nb
            n = b // nri
            j = b - n * nri
            P = _min(trows, th - j * trows) * tw
            V = V0 + n * img + j * blk
            gemm_pk(False, False, F, P, C, &U[e, 0, 0], C,
                    &apk[e, 0] if apk.shape[0] > e else <const float*>NULL,
                    V + e * (C * P + pad), P, <floating>0,
                    V + 36 * (C * P + pad) + e * (F * P + pad), P, <const floating*>NULL)
        for t in prange(nb * F, schedule="static", num_threads=n_threads):
            b = lead + t // F
            f = t % F
            n = b // nri
            j = b - n * nri
            r = j * trows
            nt = _min(trows, th - r)
            P = nt * tw
            V = V0 + n * img + j * blk
            _wino4_output_rows(V + 36 * (C * P + pad) + f * P, F * P + pad, th, n * th + r, nt,
                               tw, bias[f] if has_bias else <floating>0, &y[0, f, 0, 0],
                               F * Ho * Wo, Ho, Wo, &ws[0] + threadid() * ws_per_thread)


cdef _wino4_forward_split(const floating[:, :, :, ::1] x, const floating[:, :, ::1] U,
                          const floating[::1] bias, bint has_bias, floating[:, :, :, ::1] y,
                          floating[::1] ws, Py_ssize_t ws_per_thread, Py_ssize_t trows,
                          Py_ssize_t pt, Py_ssize_t pl, int n_threads, bint packed,
                          Py_ssize_t fparts, int tile, bint per_image, bint mix_edges):
    """conv2d_forward_winograd's two-region F(4x4) split (fparts > 0, see there); mix_edges
    as there, each block of trows tile rows laid out as a one-region task's (the same bits
    as that split on any team)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = y.shape[1], Ho = y.shape[2], Wo = y.shape[3]
    cdef Py_ssize_t th = (Ho + 3) // 4, tw = (Wo + 3) // 4, T = N * th * tw
    cdef Py_ssize_t nrb = (N * th + trows - 1) // trows
    cdef Py_ssize_t nu = (F + 5) // 6           # 6-filter strips (csrc/fgemm.h's tile rows)
    cdef Py_ssize_t mrows = 6 * ((nu + fparts - 1) // fparts)
    cdef Py_ssize_t t, c, g0, nt, P, b, f0, f1, e, f
    cdef floating* V = &ws[0]
    cdef floating* S
    cdef floating* M
    cdef bint l2 = Ho % 4 == 1 or Ho % 4 == 2, c2 = Wo % 4 == 1 or Wo % 4 == 2
    cdef bint mix = (_mix_edges and mix_edges and packed and floating is float and (l2 or c2))
    if tile != 4 or per_image:
        raise ValueError("fparts (the two-region split) needs tile 4 and per_image off")
    if trows < 1 or fparts < 1 or fparts > nu:
        raise ValueError(f"trows must be >= 1 and fparts in 1 .. {nu}, got {trows}, {fparts}")
    if ws_per_thread < 36 * mrows * trows * tw + winograd4_scratch(trows, tw) or \
            ws.shape[0] < 36 * C * T + n_threads * ws_per_thread:
        raise ValueError("conv2d_forward_winograd: ws too small for the split")
    with nogil:
        for t in prange(C * nrb, schedule="static", num_threads=n_threads):
            S = V + 36 * C * T + threadid() * ws_per_thread
            c = t // nrb
            g0 = (t - c * nrb) * trows
            nt = _min(trows, N * th - g0)
            if floating is float:
                if mix:
                    _wino4_input_mix(&x[0, c, 0, 0], C * H * W, H, W, th, g0, nt, pt, pl, tw,
                                     l2, c2, V + c * T + g0 * tw, C * T, S, ws_per_thread)
                    continue
            _wino4_input_rows(&x[0, c, 0, 0], C * H * W, H, W, th, g0, nt, pt, pl, tw,
                              V + c * T + g0 * tw, C * T, S, ws_per_thread)
        for t in prange(nrb * fparts, schedule="static", num_threads=n_threads):
            M = V + 36 * C * T + threadid() * ws_per_thread
            g0 = (t // fparts) * trows
            nt = _min(trows, N * th - g0)
            P = nt * tw
            b = t % fparts
            f0 = 6 * (b * nu // fparts)
            f1 = _min(F, 6 * ((b + 1) * nu // fparts))
            if floating is float:
                if mix:
                    _wino4_block_mix(U, bias, has_bias, y, V + g0 * tw, C * T, T, M, th, tw, g0,
                                     nt, f0, f1, l2, c2)
                    continue
            for e in range(36):
                if floating is float:
                    if packed:      # (strip s of the packed plane at 6 * s * C)
                        ck_w4_gemm_pk(f1 - f0, P, C, &U[e, 0, 0] + f0 * C,
                                      V + e * C * T + g0 * tw, T, M + e * (f1 - f0) * P, P)
                        continue
                gemm_fixed(False, False, f1 - f0, P, C, <floating>1, &U[e, f0, 0], C,
                           V + e * C * T + g0 * tw, T, <floating>0, M + e * (f1 - f0) * P, P)
            for f in range(f0, f1):
                _wino4_output_rows(M + (f - f0) * P, (f1 - f0) * P, th, g0, nt, tw,
                                   bias[f] if has_bias else <floating>0, &y[0, f, 0, 0],
                                   F * Ho * Wo, Ho, Wo, M + 36 * (f1 - f0) * P)


def wino2_filter_block(Py_ssize_t F, Py_ssize_t fparts, Py_ssize_t b):
    """(f0, f1): block b of F(2x2)'s two-region split, ``fparts`` near-equal blocks of whole
    8-filter strips (the own GEMM's MR-row panels: no block ends in a partial panel but the
    last)."""
    cdef Py_ssize_t nu = (F + 7) // 8
    return 8 * (b * nu // fparts), _min(F, 8 * ((b + 1) * nu // fparts))


def wino2_pack_filters(const float[:, :, ::1] U, float[:, ::1] out, Py_ssize_t fparts,
                       int n_threads):
    """out[16 * b + e] = U[e]'s filter block b (wino2_filter_block) prepacked for the own
    float32 GEMM (gemm_pk's apk; fparts 1: each plane whole, as _gemm.pack_a), the 16 * fparts
    blocks in a static parallel loop (the split's many threads would wait for a serial
    packing: res_14's 1M floats, 5 % of 64 threads' time by bench/many_core_split.py); False
    where there is no own kernel."""
    cdef Py_ssize_t F = U.shape[1], C = U.shape[2], nu = (F + 7) // 8
    cdef Py_ssize_t t, b, e, f0, f1
    cdef int bad = 0
    if U.shape[0] != 16 or fparts < 1 or fparts > max(1, nu) or out.shape[0] != 16 * fparts \
            or out.shape[1] < ck_sgemm_packed_a_floats(8 * ((nu + fparts - 1) // fparts), C):
        raise ValueError("wino2_pack_filters: U (16, F, C) and out (16 * fparts, floats)")
    if ck_sgemm_packed_a_floats(1, 1) == 0:
        return False
    if F == 0 or C == 0:
        return True
    with nogil:
        for t in prange(16 * fparts, schedule="static", num_threads=n_threads):
            b = t // 16
            e = t - 16 * b
            f0 = 8 * (b * nu // fparts)
            f1 = _min(F, 8 * ((b + 1) * nu // fparts))
            if not ck_sgemm_pack_a(0, f1 - f0, C, &U[e, f0, 0], C, &out[t, 0]):
                bad += 1
    return bad == 0


def wino2_split_floats(Py_ssize_t N, Py_ssize_t C, Py_ssize_t F, Py_ssize_t Ho, Py_ssize_t Wo,
                       Py_ssize_t trows, Py_ssize_t fparts):
    """(shared, per thread) workspace elements of conv2d_forward_winograd's two-region F(2x2)
    split (tile 2, fparts > 0): the batch's V (16 planes of C * N*th*tw, WINO_PLANE_PAD apart),
    then a slice per thread of one (tile-row block, filter block) task's M (16 planes of the
    block's filters x trows*tw tiles, WINO_PLANE_PAD apart) and the row scratch.

    The split: the input transform of the whole batch into the shared V, tasks of (a channel,
    ``trows`` tile rows); then tasks of (``trows`` tile rows, one of ``fparts`` filter blocks,
    wino2_filter_block), each the block's 16 GEMMs and its output transform.  apk then holds
    16 * fparts rows: block b's plane e prepacked in row 16 * b + e (no rows: not prepacked).
    Each output is the one-region split's chain (the same bits where the GEMM sums in a fixed
    order, the own float32 GEMM or csrc/fgemm.h); more tasks where a layer has few tile rows
    (rpn_3x3's 19, res_14's 56 on 16 threads)."""
    cdef Py_ssize_t th = (Ho + 1) // 2, tw = (Wo + 1) // 2, nu = (F + 7) // 8
    cdef Py_ssize_t fb = 8 * ((nu + fparts - 1) // fparts)
    return (16 * (C * N * th * tw + WINO_PLANE_PAD),
            16 * (fb * trows * tw + WINO_PLANE_PAD) + 8 * (2 * tw + 2))


cdef _wino2_forward_split(const floating[:, :, :, ::1] x, const floating[:, :, ::1] U,
                          const floating[::1] bias, bint has_bias, floating[:, :, :, ::1] y,
                          floating[::1] ws, Py_ssize_t ws_per_thread, Py_ssize_t trows,
                          Py_ssize_t pt, Py_ssize_t pl, int n_threads, const float[:, ::1] apk,
                          Py_ssize_t fparts, bint per_image):
    """conv2d_forward_winograd's two-region F(2x2) split (tile 2, fparts > 0:
    wino2_split_floats)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = y.shape[1], Ho = y.shape[2], Wo = y.shape[3]
    cdef Py_ssize_t th = (Ho + 1) // 2, tw = (Wo + 1) // 2, T = N * th * tw
    cdef Py_ssize_t nrb = (N * th + trows - 1) // trows, nu = (F + 7) // 8
    cdef Py_ssize_t pad = WINO_PLANE_PAD
    cdef Py_ssize_t VS = C * T + pad
    cdef Py_ssize_t t, c, g0, nt, P, b, f0, f1, e, f, ms
    cdef Py_ssize_t shared, per
    cdef floating* V = &ws[0]
    cdef floating* M
    cdef bint pk = apk.shape[0] > 0
    if per_image:
        raise ValueError("fparts (the two-region split) needs per_image off")
    if trows < 1 or fparts < 1 or fparts > nu:
        raise ValueError(f"trows must be >= 1 and fparts in 1 .. {nu}, got {trows}, {fparts}")
    if pk and (floating is double or apk.shape[0] != 16 * fparts
               or apk.shape[1] < ck_sgemm_packed_a_floats(8 * ((nu + fparts - 1) // fparts), C)):
        raise ValueError(f"apk must hold 16 * fparts = {16 * fparts} prepacked filter blocks")
    shared, per = wino2_split_floats(N, C, F, Ho, Wo, trows, fparts)
    if ws_per_thread < per or ws.shape[0] < shared + n_threads * ws_per_thread:
        raise ValueError("conv2d_forward_winograd: ws too small for the split")
    with nogil:
        for t in prange(C * nrb, schedule="static", num_threads=n_threads):
            c = t // nrb
            g0 = (t - c * nrb) * trows
            nt = _min(trows, N * th - g0)
            _wino_input_rows(&x[0, c, 0, 0], C * H * W, H, W, th, g0, nt, pt, pl, tw,
                             V + c * T + g0 * tw, VS,
                             V + shared + threadid() * ws_per_thread)
        for t in prange(nrb * fparts, schedule="static", num_threads=n_threads):
            M = V + shared + threadid() * ws_per_thread
            g0 = (t // fparts) * trows
            nt = _min(trows, N * th - g0)
            P = nt * tw
            b = t % fparts
            f0 = 8 * (b * nu // fparts)
            f1 = _min(F, 8 * ((b + 1) * nu // fparts))
            ms = (f1 - f0) * P + pad
            for e in range(16):
                gemm_pk(False, False, f1 - f0, P, C, &U[e, f0, 0], C,
                        &apk[16 * b + e, 0] if pk else <const float*>NULL,
                        V + e * VS + g0 * tw, T, <floating>0, M + e * ms, P,
                        <const floating*>NULL)
            for f in range(f0, f1):
                _wino_output_rows(M + (f - f0) * P, ms, th, g0, nt, tw,
                                  bias[f] if has_bias else <floating>0, &y[0, f, 0, 0],
                                  F * Ho * Wo, Ho, Wo)


# ------------------------------------------------------------ F(2x2, 3x3) on tiny maps (float32)
def winotiny_available():
    """Whether conv2d_forward_winotiny runs here (csrc/winotiny.h: AVX2 + FMA, fgemm on)."""
    return bool(ck_wt_available())


def winotiny_floats(Py_ssize_t C, Py_ssize_t F, Py_ssize_t H, Py_ssize_t W, Py_ssize_t groups):
    """Workspace floats of one conv2d_forward_winotiny task of ``groups`` groups of 8 images."""
    cdef Py_ssize_t T = groups * (H // 2) * (W // 2) * 8 + 16
    return 16 * (C + F) * T + ck_wt_scratch(H, W)


def winotiny_split_floats(Py_ssize_t C, Py_ssize_t F, Py_ssize_t H, Py_ssize_t W,
                          Py_ssize_t N, Py_ssize_t fparts):
    """(shared, per thread) workspace floats of conv2d_forward_winotiny's two-region split:
    the batch's V (16, C, ceil(N/8) * per + 16), then a slice per thread of one filter block's
    M (16, ceil(F/fparts), per + 16) and the scratch blocks."""
    cdef Py_ssize_t per = (H // 2) * (W // 2) * 8
    return (16 * C * (((N + 7) // 8) * per + 16),
            16 * ((F + fparts - 1) // fparts) * (per + 16) + ck_wt_scratch(H, W))


def conv2d_forward_winotiny(const float[:, :, :, ::1] x, const float[:, :, ::1] U,
                            const float[::1] bias, bint has_bias, float[:, :, :, ::1] y,
                            float[::1] ws, Py_ssize_t ws_per_thread, Py_ssize_t groups,
                            int n_threads, Py_ssize_t fparts=0):
    """y = conv(x, w) + bias for a 3x3 stride-1 conv padded by 1 on every side, H and W even
    (y as big as x), by Winograd F(2x2, 3x3) with the tiles of 8 images in a vector
    (csrc/winotiny.h).  U (16, F, C): winograd_filters' transformed filters.

    A task takes ``groups`` groups of 8 images (the last ones may be short): the input
    transform of every channel into V (16, C, T), the 16 GEMMs M[e] = U[e] @ V[e] (F x T) on
    the fixed-order GEMM (each output one FMA chain over the channels wherever its column
    sits), then the output transform of every filter.  T = groups * (H/2)*(W/2) * 8 + 16 floats a row;
    ws_per_thread >= winotiny_floats(C, F, H, W, groups).  Every value of an image depends on
    that image alone: the same bits for any batch, block and thread count.

    fparts > 0 (conv_plan.plan_winotiny where the groups alone are fewer tasks than the
    threads): two regions -- the input transform of the whole batch into a shared V, a task
    per (group of 8 images, channel); then (group, block of fparts near-equal filter blocks)
    tasks, each the 16 GEMMs of its filters' rows and their output transform.  Each output is
    the same FMA chain over the channels as with fparts 0 (the fixed-order GEMM): the same
    bits.  ws: winotiny_split_floats's shared V, then n_threads slices of ws_per_thread."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = y.shape[1]
    cdef Py_ssize_t per = (H // 2) * (W // 2) * 8       # columns of one group of 8 images
    # (rows 16 floats longer than the columns: rows a multiple of 1 KiB apart share a few L1
    # sets, and the GEMM reads 16 of them at a time)
    cdef Py_ssize_t T = groups * per + 16, nimg = groups * 8
    cdef Py_ssize_t ntask = (N + nimg - 1) // nimg
    cdef Py_ssize_t t, n0, g, c, e, f, ng, Tt
    cdef float* V
    cdef float* M
    cdef float* S
    if not ck_wt_available():
        raise RuntimeError("conv2d_forward_winotiny needs AVX2 + FMA (csrc/winotiny.h)")
    if H % 2 or W % 2 or y.shape[2] != H or y.shape[3] != W or y.shape[0] != N:
        raise ValueError("conv2d_forward_winotiny: H, W even and y as big as x")
    if U.shape[0] != 16 or U.shape[1] != F or U.shape[2] != C:
        raise ValueError(f"U must be (16, {F}, {C}), got ({U.shape[0]}, {U.shape[1]}, {U.shape[2]})")
    if fparts > 0:
        _winotiny_forward_split(x, U, bias, has_bias, y, ws, ws_per_thread, fparts, n_threads)
        return y
    if groups < 1 or ws_per_thread < 16 * (C + F) * T + ck_wt_scratch(H, W) or \
            ws.shape[0] < n_threads * ws_per_thread:
        raise ValueError("conv2d_forward_winotiny: workspace too small")
    with nogil:
        for t in prange(ntask, schedule="static", num_threads=n_threads):
            V = &ws[0] + threadid() * ws_per_thread
            M = V + 16 * C * T
            S = M + 16 * F * T
            n0 = t * nimg
            Tt = ((_min(nimg, N - n0) + 7) // 8) * per      # the columns this task fills
            memset(S, 0, (H + 2) * (W + 2) * 8 * sizeof(float))     # the zero borders
            for g in range(0, _min(nimg, N - n0), 8):
                ng = _min(8, N - n0 - g)
                for c in range(C):
                    ck_wt_input_f(&x[n0 + g, c, 0, 0], C * H * W, <int>ng, H, W,
                                  V + c * T + (g // 8) * per, C * T, S)
            for e in range(16):
                gemm_fixed(False, False, F, Tt, C, <float>1, &U[e, 0, 0], C, V + e * C * T, T,
                           <float>0, M + e * F * T, T)
            for g in range(0, _min(nimg, N - n0), 8):
                ng = _min(8, N - n0 - g)
                for f in range(F):
                    ck_wt_output_f(M + f * T + (g // 8) * per, F * T, <int>ng, H, W,
                                   bias[f] if has_bias else <float>0, &y[n0 + g, f, 0, 0],
                                   F * H * W, S)
    return y


cdef _winotiny_forward_split(const float[:, :, :, ::1] x, const float[:, :, ::1] U,
                             const float[::1] bias, bint has_bias, float[:, :, :, ::1] y,
                             float[::1] ws, Py_ssize_t ws_per_thread, Py_ssize_t fparts,
                             int n_threads):
    """conv2d_forward_winotiny's two-region split (fparts > 0, see there)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = y.shape[1]
    cdef Py_ssize_t per = (H // 2) * (W // 2) * 8, G8 = (N + 7) // 8
    cdef Py_ssize_t TT = G8 * per + 16, P = per + 16       # (rows 16 floats longer, as above)
    cdef Py_ssize_t fb = (F + fparts - 1) // fparts
    cdef Py_ssize_t t, g, c, e, f, f0, f1, ng, border = 8 * (H + 2) * (W + 2)
    cdef float* V = &ws[0]
    cdef float* M
    cdef float* S
    if fparts > F:
        raise ValueError(f"fparts must be in 1 .. {F}, got {fparts}")
    if ws_per_thread < 16 * fb * P + ck_wt_scratch(H, W) or \
            ws.shape[0] < 16 * C * TT + n_threads * ws_per_thread:
        raise ValueError("conv2d_forward_winotiny: workspace too small for the split")
    with nogil:
        for t in prange(G8 * C, schedule="static", num_threads=n_threads):
            S = V + 16 * C * TT + threadid() * ws_per_thread + 16 * fb * P
            g = t // C
            c = t - g * C
            # (the zero borders; ~1/4 of a channel's transform at 8x8)
            memset(S, 0, border * sizeof(float))
            ck_wt_input_f(&x[8 * g, c, 0, 0], C * H * W, <int>_min(8, N - 8 * g), H, W,
                          V + c * TT + g * per, C * TT, S)
        for t in prange(G8 * fparts, schedule="static", num_threads=n_threads):
            M = V + 16 * C * TT + threadid() * ws_per_thread
            S = M + 16 * fb * P
            g = t // fparts
            f0 = (t - g * fparts) * F // fparts
            f1 = (t - g * fparts + 1) * F // fparts
            ng = _min(8, N - 8 * g)
            for e in range(16):
                gemm_fixed(False, False, f1 - f0, per, C, <float>1, &U[e, f0, 0], C,
                           V + e * C * TT + g * per, TT, <float>0, M + e * (f1 - f0) * P, P)
            for f in range(f0, f1):
                ck_wt_output_f(M + (f - f0) * P, (f1 - f0) * P, <int>ng, H, W,
                               bias[f] if has_bias else <float>0, &y[8 * g, f, 0, 0],
                               F * H * W, S)


# grad_weight of the same layers by the transposed F(2x2, 3x3) over the same 8-image tiles:
# grad_weight[f, c] = G^T M[f, c] G, M_e = sum over the batch's tiles t of (A gy_t A^T)_e
# (B^T x_t B)_e -- the forward's input tiles and grad_y's 2x2 blocks (csrc/winotiny.h).
from ._conv_csrc cimport ck_wt_grad_f, ck_wt_wgrad_dot_f, ck_wt_wgrad_out_f


def winotiny_wgrad_floats(Py_ssize_t C, Py_ssize_t F, Py_ssize_t H, Py_ssize_t W,
                          Py_ssize_t chunk):
    """Workspace floats of one conv2d_grad_weight_winotiny thread (``chunk`` groups of 8
    images at a time): V, Z and the scratch blocks, and 16 to align them."""
    cdef Py_ssize_t T = chunk * (H // 2) * (W // 2) * 8 + 16
    return 16 * (C + F) * T + ck_wt_scratch(H, W) + 16


def _wt_wgrad_check(bint gy_fits, Py_ssize_t H, Py_ssize_t W, Py_ssize_t F, Py_ssize_t C,
                    gw_shape, Py_ssize_t part_groups, Py_ssize_t chunk, int n_threads):
    """The checks both conv2d_grad_weight_winotiny kernels (one region, split) make."""
    if not ck_wt_available():
        raise RuntimeError("conv2d_grad_weight_winotiny needs AVX2 + FMA (csrc/winotiny.h)")
    if H % 2 or W % 2 or not gy_fits:
        raise ValueError("conv2d_grad_weight_winotiny: H, W even and gy as big as x")
    if tuple(gw_shape[:4]) != (F, C, 3, 3):
        raise ValueError(f"gw must be ({F}, {C}, 3, 3), got {tuple(gw_shape[:4])}")
    if part_groups < 1 or chunk < 1 or n_threads < 1:
        raise ValueError(f"part_groups, chunk and n_threads must be >= 1, got {part_groups}, "
                         f"{chunk}, {n_threads}")


def winotiny_wgrad_split_floats(Py_ssize_t C, Py_ssize_t F, Py_ssize_t H, Py_ssize_t W,
                                Py_ssize_t N):
    """Shared floats of conv2d_grad_weight_winotiny's split: the batch's V and Z (rows
    ceil(N/8) * per + 16 floats apart), and 16 to align them."""
    return 16 * (C + F) * (((N + 7) // 8) * (H // 2) * (W // 2) * 8 + 16) + 16


cdef _winotiny_wgrad_split(const float[:, :, :, ::1] gy, const float[:, :, :, ::1] x,
                           float[:, :, :, ::1] gw, float[::1] ws, Py_ssize_t ws_per_thread,
                           Py_ssize_t part_groups, Py_ssize_t chunk, int n_threads):
    """conv2d_grad_weight_winotiny's split (see there)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = gy.shape[1]
    cdef Py_ssize_t per = (H // 2) * (W // 2) * 8, G8 = (N + 7) // 8
    cdef Py_ssize_t parts = (G8 + part_groups - 1) // part_groups if part_groups > 0 else 0
    cdef Py_ssize_t TT = G8 * per + 16, border = 8 * (H + 2) * (W + 2)
    cdef Py_ssize_t nm = parts * 16 * F * C, sh = winotiny_wgrad_split_floats(C, F, H, W, N)
    cdef Py_ssize_t t, p, e, q, g, g0, g1, c, ng
    cdef float* M = &ws[0]
    cdef float* V
    cdef float* Z
    cdef float* S
    _wt_wgrad_check(gy.shape[0] == N and gy.shape[2] == H and gy.shape[3] == W, H, W, F, C,
                    gw.shape, part_groups, chunk, n_threads)
    if ws_per_thread < ck_wt_scratch(H, W) or ws.shape[0] < nm + sh + n_threads * ws_per_thread:
        raise ValueError("conv2d_grad_weight_winotiny: workspace too small for the split")
    # (V on a 64-byte line: loads split across two lines ran the products 1.5x slower)
    V = M + nm
    V = V + (16 - (<size_t>V // sizeof(float)) % 16) % 16
    Z = V + 16 * C * TT
    with nogil:
        for t in prange(G8 * (C + F), schedule="static", num_threads=n_threads):
            S = M + nm + sh + threadid() * ws_per_thread
            g = t // (C + F)
            c = t - g * (C + F)
            ng = _min(8, N - 8 * g)
            if c < C:
                memset(S, 0, border * sizeof(float))        # the input block's zero borders
                ck_wt_input_f(&x[8 * g, c, 0, 0], C * H * W, <int>ng, H, W,
                              V + c * TT + g * per, C * TT, S)
            else:
                ck_wt_grad_f(&gy[8 * g, c - C, 0, 0], F * H * W, <int>ng, H, W,
                             Z + (c - C) * TT + g * per, F * TT, S)
        for t in prange(parts * 16, schedule="static", num_threads=n_threads):
            p = t // 16
            e = t - p * 16
            g1 = _min(G8, (p + 1) * part_groups)
            for q in range((g1 - p * part_groups + chunk - 1) // chunk):
                g0 = p * part_groups + q * chunk
                ck_wt_wgrad_dot_f(Z + e * F * TT + g0 * per, TT, V + e * C * TT + g0 * per, TT,
                                  (_min(g0 + chunk, g1) - g0) * per, F, C,
                                  M + (p * 16 + e) * F * C, C, q > 0)
        for c in prange(F, schedule="static", num_threads=n_threads):
            ck_wt_wgrad_out_f(M + c * C, F * C, parts, 16 * F * C, C, &gw[c, 0, 0, 0])
    return gw


def conv2d_grad_weight_winotiny(const float[:, :, :, ::1] gy, const float[:, :, :, ::1] x,
                                float[:, :, :, ::1] gw, float[::1] ws, Py_ssize_t ws_per_thread,
                                Py_ssize_t part_groups, Py_ssize_t chunk, int n_threads,
                                bint split=False):
    """grad_weight (OUT gw (F, C, 3, 3), any contents) of a 3x3 stride-1 conv padded by 1 on
    every side, H and W even, gy (N, F, H, W), by the transposed F(2x2, 3x3) with 8 images in
    a vector (csrc/winotiny.h).

    The batch's groups of 8 images go in parts of ``part_groups`` groups, a task each (the
    parts and their order are set by the layer: the bits do not depend on the thread count).
    A task takes its part ``chunk`` groups at a time (the transforms stay in the cache): the
    transforms of every channel of x into V (16, C, Tc) and of every filter of gy into Z (16,
    F, Tc) (column = group * (H/2 * W/2 * 8) + tile * 8 + lane, missing images zero lanes; rows
    Tc = chunk's columns + 16 floats apart, as the forward's), then M_e += Z_e @ V_e^T on the
    fixed-order GEMM, one FMA chain per output through the part's chunks in order, into the
    part's M (16, F, C).  Then gw[f] = G^T M[:, f] G, the parts added in double in order, one
    task per filter.  ws: the parts' M (ceil(groups / part_groups) * 16 * F * C), then
    n_threads slices of ws_per_thread >= winotiny_wgrad_floats(C, F, H, W, chunk).

    split (conv_plan.plan_weight_winotiny where the parts are fewer tasks than the threads):
    the transforms of the whole batch first, into a shared V and Z (a task per (group, channel
    of x or filter of gy)), then a task per (part, point e): M_e's products through the part's
    chunks in the same order -- the same calls on the same values: the same bits.  ws: the
    parts' M, then winotiny_wgrad_split_floats(C, F, H, W, N) for V and Z, then n_threads
    slices of ws_per_thread >= ck_wt_scratch(H, W) (the zero-bordered blocks)."""
    if split:
        _winotiny_wgrad_split(gy, x, gw, ws, ws_per_thread, part_groups, chunk, n_threads)
        return gw
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = gy.shape[1]
    cdef Py_ssize_t per = (H // 2) * (W // 2) * 8, G8 = (N + 7) // 8
    cdef Py_ssize_t parts = (G8 + part_groups - 1) // part_groups if part_groups > 0 else 0
    cdef Py_ssize_t Tc = chunk * per + 16, border = 8 * (H + 2) * (W + 2)
    cdef Py_ssize_t p, q, g0, g1, k0, g, c, f, ng, e, nm = parts * 16 * F * C
    cdef float* V
    cdef float* Z
    cdef float* S
    cdef float* M = &ws[0]
    _wt_wgrad_check(gy.shape[0] == N and gy.shape[2] == H and gy.shape[3] == W, H, W, F, C,
                    gw.shape, part_groups, chunk, n_threads)
    if ws_per_thread < 16 * (C + F) * Tc + ck_wt_scratch(H, W) + 16 or \
            ws.shape[0] < nm + n_threads * ws_per_thread:
        raise ValueError("conv2d_grad_weight_winotiny: workspace too small")
    with nogil:
        for p in prange(parts, schedule="static", num_threads=n_threads):
            # (on a 64-byte line: loads split across two lines ran the products 1.5x slower)
            V = M + nm + threadid() * ws_per_thread
            V = V + (16 - (<size_t>V // sizeof(float)) % 16) % 16
            Z = V + 16 * C * Tc
            S = Z + 16 * F * Tc
            memset(S, 0, border * sizeof(float))        # the input block's zero borders
            g1 = _min(G8, (p + 1) * part_groups)
            for q in range((g1 - p * part_groups + chunk - 1) // chunk):
                g0 = p * part_groups + q * chunk
                for g in range(g0, _min(g0 + chunk, g1)):
                    ng = _min(8, N - 8 * g)
                    k0 = (g - g0) * per
                    for c in range(C):
                        ck_wt_input_f(&x[8 * g, c, 0, 0], C * H * W, <int>ng, H, W,
                                      V + c * Tc + k0, C * Tc, S)
                    for f in range(F):  # (grad_y's block after the input block)
                        ck_wt_grad_f(&gy[8 * g, f, 0, 0], F * H * W, <int>ng, H, W,
                                     Z + f * Tc + k0, F * Tc, S + border)
                for e in range(16):
                    ck_wt_wgrad_dot_f(Z + e * F * Tc, Tc, V + e * C * Tc, Tc,
                                      (_min(g0 + chunk, g1) - g0) * per, F, C,
                                      M + (p * 16 + e) * F * C, C, q > 0)
        for f in prange(F, schedule="static", num_threads=n_threads):
            ck_wt_wgrad_out_f(M + f * C, F * C, parts, 16 * F * C, C, &gw[f, 0, 0, 0])
    return gw
# ------------------------------------------------------- Winograd F(4x4, 2x2) over phase planes
# A stride-2 4x4 conv is a stride-1 2x2 conv over its 4 input phase planes (4*C channels), and
# its grad_x 4 stride-1 2x2 convs of grad_y (one per output phase, 4*C filters): F(4x4, 2x2) on
# them, csrc/polywino.h (conv_plan "polywino").
def polywino_available():
    """Whether conv2d_forward_polywino runs here (csrc/polywino.h: AVX2 + FMA, fgemm on)."""
    return bool(ck_pw_available())


def polywino_floats(Py_ssize_t C, Py_ssize_t F, Py_ssize_t trows, Py_ssize_t tw):
    """Workspace floats of one conv2d_forward_polywino task of trows tile rows of tw tiles:
    V (25, tiles, 4 * C8), M (25, tiles, F8) and the staged block (C8, F8: C, F rounded up to
    multiples of 8)."""
    cdef Py_ssize_t C8 = (C + 7) // 8 * 8, F8 = (F + 7) // 8 * 8
    return 25 * trows * tw * (4 * C8 + F8) + ck_pw_stage_floats(trows, tw)


def polywino_gx_floats(Py_ssize_t F, Py_ssize_t C, Py_ssize_t trows, Py_ssize_t tw):
    """Workspace floats of one conv2d_grad_input_polywino task (grad_y's F channels in, grad_x's
    C out): V (25, tiles, F8), M (25, tiles, 4 * C8) and the staged block."""
    cdef Py_ssize_t C8 = (C + 7) // 8 * 8, F8 = (F + 7) // 8 * 8
    return 25 * trows * tw * (F8 + 4 * C8) + ck_pw_stage_floats(trows, tw)


def polywino_run_rows(Py_ssize_t th, Py_ssize_t tw, Py_ssize_t run):
    """The most tile rows a task of conv2d_forward_polywino spans: runs of ``run`` tiles
    (row-major) of an image's th x tw, the last one shorter."""
    cdef Py_ssize_t t0, t1, most = 0
    for t0 in range(0, th * tw, run):
        t1 = _min(t0 + run, th * tw)
        most = max(most, (t1 - 1) // tw - t0 // tw + 1)
    return most


def conv2d_forward_polywino(const float[:, :, :, ::1] x, const float[:, :, ::1] U,
                            const float[::1] bias, bint has_bias, float[:, :, :, ::1] y,
                            float[::1] ws, Py_ssize_t ws_per_thread, Py_ssize_t trows,
                            Py_ssize_t pt, Py_ssize_t pl, int n_threads, Py_ssize_t run=0):
    """y = conv(x, w) + bias for a 4x4 stride-2 conv padded by pt on top and pl on the left,
    by Winograd F(4x4, 2x2) over x's 4 phase planes (csrc/polywino.h).  U (25, 4 * C8, F8):
    conv.polywino_filters' transformed filters (zero rows and columns for the padded
    channels and filters).  A task is trows tile rows (4 output rows each) of one image, or
    where run > 0 a run of ``run`` tiles of one image, row-major (the last one shorter; it
    spans polywino_run_rows(th, tw, run) <= trows tile rows): the staged planes and input
    transform of every 8 channels of its tile rows into V, the 25 GEMMs M[e] = V[e] @ U[e] of
    its tiles on csrc/fgemm.h (each output one FMA chain over the 4 * C8 channels), then the
    output transform of every 8 filters (through the staging block, free by then).  Every
    output depends on its own tile alone: the same bits for any batch, task split and thread
    count.  ws_per_thread >= polywino_floats(C, F, trows, tw)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = y.shape[1], Ho = y.shape[2], Wo = y.shape[3]
    cdef Py_ssize_t C8 = (C + 7) // 8 * 8, F8 = (F + 7) // 8 * 8, K = 4 * C8
    cdef Py_ssize_t th = (Ho + 3) // 4, tw = (Wo + 3) // 4
    cdef Py_ssize_t R = run if run > 0 else trows * tw
    cdef Py_ssize_t nb = (th * tw + R - 1) // R if R > 0 else 0
    cdef Py_ssize_t t, n, t0, nt, a0, ntr, Tt, off, c0, f0, e
    cdef float* V
    cdef float* M
    cdef float* S
    cdef float zb[8]
    _pw_check("conv2d_forward_polywino", y.shape[0] == N, trows, pt, pl, U, K, F8,
              polywino_floats(C, F, trows, tw), ws, ws_per_thread, n_threads,
              has_bias and bias.shape[0] < F)
    if run < 0 or (run > 0 and polywino_run_rows(th, tw, run) > trows):
        raise ValueError("conv2d_forward_polywino: runs span more than trows tile rows")
    memset(zb, 0, sizeof(zb))
    with nogil:
        # static: the same thread writes the same outputs every call.  Handed out dynamically,
        # a task's output lines came from the other core's cache each call, which cost up to 2x
        # when the host ran the two vCPUs on cores apart (bench/RESULTS.md, eleventh session)
        for t in prange(N * nb, schedule="static", num_threads=n_threads):
            V = &ws[0] + threadid() * ws_per_thread
            n = t // nb
            t0 = (t % nb) * R
            nt = _min(R, th * tw - t0)
            a0 = t0 // tw
            ntr = (t0 + nt - 1) // tw + 1 - a0
            off = t0 - a0 * tw          # the run's first tile among its rows' (whole rows
            Tt = ntr * tw               # staged and transformed, its own tiles multiplied)
            M = V + 25 * Tt * K
            S = M + 25 * Tt * F8
            for c0 in range(0, C8, 8):
                ck_pw_stage_f(&x[n, c0, 0, 0], H * W, <int>_min(8, C - c0), H, W, pt, pl,
                              4 * a0, 4 * ntr + 1, 4 * tw + 1, S)
                ck_pw_input_f(S, ntr, tw, V + c0, Tt * K, K, C8, 4)
            _pw_gemms(V + off * K, Tt * K, U, M + off * F8, Tt * F8, nt, K, F8)
            for f0 in range(0, F, 8):
                ck_pw_output_f(M + f0, Tt * F8, F8, ntr, tw, off, nt, <int>_min(8, F - f0),
                               &bias[f0] if has_bias else <const float*>zb,
                               &y[n, f0, 4 * a0, 0], Ho * Wo, Ho - 4 * a0, Wo, S)
    return y


def _pw_check(str name, bint same_n, Py_ssize_t trows, Py_ssize_t pt, Py_ssize_t pl,
              const float[:, :, ::1] U, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t need,
              float[::1] ws, Py_ssize_t ws_per_thread, int n_threads, bint short_bias):
    """The argument checks both polywino kernels make: U (25, rows, cols), the workspace
    (n_threads slices of ws_per_thread >= need floats), the bias, the batch and the padding."""
    if not ck_pw_available():
        raise RuntimeError(f"{name} needs AVX2 + FMA (csrc/polywino.h)")
    if not same_n or trows < 1 or pt < 0 or pl < 0:
        raise ValueError(f"{name}: bad shapes or padding")
    if U.shape[0] != 25 or U.shape[1] != rows or U.shape[2] != cols:
        raise ValueError(f"U must be (25, {rows}, {cols}), got ({U.shape[0]}, {U.shape[1]}, "
                         f"{U.shape[2]})")
    if ws_per_thread < need or ws.shape[0] < n_threads * ws_per_thread:
        raise ValueError(f"{name}: workspace too small")
    if short_bias:
        raise ValueError(f"{name}: bias too short")


cdef void _pw_gemms(const float* V, Py_ssize_t vs, const float[:, :, ::1] U, float* M,
                    Py_ssize_t ms, Py_ssize_t Tt, Py_ssize_t K, Py_ssize_t Fn) noexcept nogil:
    """M[e] = V[e] (Tt x K) @ U[e] (K x Fn) for the 25 positions (V[e] at V + e * vs, M[e] at
    M + e * ms), on csrc/fgemm.h."""
    cdef Py_ssize_t e
    for e in range(25):
        if not ck_fgemm(0, 0, Tt, Fn, K, <float>1, V + e * vs, K, &U[e, 0, 0], Fn,
                        <float>0, M + e * ms, Fn):     # (no memory: BLAS)
            gemm(False, False, Tt, Fn, K, <float>1, V + e * vs, K, &U[e, 0, 0], Fn,
                 <float>0, M + e * ms, Fn)


def conv2d_grad_input_polywino(const float[:, :, :, ::1] gy, const float[:, :, ::1] U,
                               const float[::1] bias, bint has_bias, float[:, :, :, ::1] gx,
                               float[::1] ws, Py_ssize_t ws_per_thread, Py_ssize_t trows,
                               Py_ssize_t pt, Py_ssize_t pl, int n_threads):
    """gx = conv2d's grad_x of a 4x4 stride-2 conv padded by pt on top and pl on the left, from
    gy (N, F, Ho, Wo), + bias (C,) -- conv_transpose2d's forward -- by F(4x4, 2x2): output
    phase (P, Q) of gx is the 2x2 conv of gy padded by 1 with the flipped sub-kernel
    w[:, :, 2(1-b) + P, 2(1-b') + Q]; the four share their input tiles, so one grid of
    (H - 1 + pt) / 2 + 1 x (W - 1 + pl) / 2 + 1 outputs with 4 * C8 filters (csrc/polywino.h's
    ck_pw_output_d2s_f).  U (25, F8, 4 * C8): conv.polywino_grad_filters.  Tasks, GEMMs and
    bits as conv2d_forward_polywino's; ws_per_thread >= polywino_gx_floats(F, C, trows, tw)."""
    cdef Py_ssize_t N = gy.shape[0], F = gy.shape[1], Ho = gy.shape[2], Wo = gy.shape[3]
    cdef Py_ssize_t C = gx.shape[1], H = gx.shape[2], W = gx.shape[3]
    cdef Py_ssize_t C8 = (C + 7) // 8 * 8, F8 = (F + 7) // 8 * 8, Fo = 4 * C8
    cdef Py_ssize_t th = ((H - 1 + pt) // 2 + 4) // 4, tw = ((W - 1 + pl) // 2 + 4) // 4
    cdef Py_ssize_t nb = (th + trows - 1) // trows if trows > 0 else 0
    cdef Py_ssize_t t, n, a0, ntr, Tt, c0, ph
    cdef float* V
    cdef float* M
    cdef float* S
    cdef float zb[8]
    _pw_check("conv2d_grad_input_polywino", gx.shape[0] == N, trows, pt, pl, U, F8, Fo,
              polywino_gx_floats(F, C, trows, tw), ws, ws_per_thread, n_threads,
              has_bias and bias.shape[0] < C)
    memset(zb, 0, sizeof(zb))
    with nogil:
        # (static: as conv2d_forward_polywino)
        for t in prange(N * nb, schedule="static", num_threads=n_threads):
            V = &ws[0] + threadid() * ws_per_thread
            n = t // nb
            a0 = (t % nb) * trows
            ntr = _min(trows, th - a0)
            Tt = ntr * tw
            M = V + 25 * Tt * F8
            S = M + 25 * Tt * Fo
            for c0 in range(0, F8, 8):      # grid row u reads gy rows u - 1 and u
                ck_pw_stage1_f(&gy[n, c0, 0, 0], Ho * Wo, <int>_min(8, F - c0), Ho, Wo, 1, 1,
                               4 * a0, 4 * ntr + 1, 4 * tw + 1, S)
                ck_pw_input_f(S, ntr, tw, V + c0, Tt * F8, F8, 0, 1)
            _pw_gemms(V, Tt * F8, U, M, Tt * Fo, Tt, F8, Fo)
            for ph in range(2):         # (row phase P; both column phases at once)
                for c0 in range(0, C, 8):
                    ck_pw_output_d2s_f(M + 2 * ph * C8 + c0, C8, Tt * Fo, Fo, ntr, tw,
                                       <int>_min(8, C - c0),
                                       &bias[c0] if has_bias else <const float*>zb,
                                       &gx[n, c0, 0, 0], H * W, H, W, 4 * a0, <int>ph, pt, pl,
                                       S)
    return gx


# ---------------------------------------------------------------------------- polywino grad_weight
# The weight gradient of a 4x4 stride-2 conv by the transposed F(4x4, 2x2) over x's 4 phase
# planes: w[f, c, 2a + p, 2b + q] = sum over the batch's 4x4 tiles of grad_y of
# (G^T [(A dy A^T) . (B^T d B)] G)[a, b], d the phase plane (p, q)'s 5x5 tile of x (the forward's
# tiles and transform).  25 GEMMs over the tiles: 2.56x fewer multiplications than the direct
# weight_rowgemm.  The planes of V, Z, M this many floats further apart than their sizes
# (convt_28's V and Z planes are whole multiples of 4 KiB: the 25 a transform writes fell into
# the same cache sets).
cdef enum:
    _PWG_PAD = 16


def polywino_wgrad_floats(Py_ssize_t C, Py_ssize_t F, Py_ssize_t Ho, Py_ssize_t Wo,
                          Py_ssize_t imgs):
    """(floats of V, Z and M together, staging floats per thread) of
    conv2d_grad_weight_polywino with groups of ``imgs`` images."""
    cdef Py_ssize_t C8 = (C + 7) // 8 * 8, F8 = (F + 7) // 8 * 8
    cdef Py_ssize_t th = (Ho + 3) // 4, tw = (Wo + 3) // 4, Tg = imgs * th * tw
    return (25 * (Tg * 4 * C8 + Tg * F8 + F8 * 4 * C8 + 3 * _PWG_PAD),
            ck_pw_stage_floats(th, tw))


cdef void _pw_wgrad_out(const float* m, Py_ssize_t ms, Py_ssize_t C, Py_ssize_t C8,
                        float* gw) noexcept nogil:
    """gw[c, 2a + p, 2b + q] (one filter, (C, 4, 4)) = (G^T m G)[a, b] in double, rounded
    once, m[e * ms + (2p + q) * C8 + c] the filter's 25 sums (points 0, 1, -1, 1/2, inf)."""
    cdef double g0[5]
    cdef double g1[5]
    cdef double r0[5]
    cdef double r1[5]
    cdef double v
    cdef Py_ssize_t ph, c, k, l
    cdef const float* b
    g0[0] = 1.0; g0[1] = 0.5; g0[2] = -1.0 / 6.0; g0[3] = -8.0 / 3.0; g0[4] = 0.0
    g1[0] = 0.0; g1[1] = 0.5; g1[2] = 1.0 / 6.0; g1[3] = -4.0 / 3.0; g1[4] = 0.5
    for ph in range(4):
        for c in range(C):
            b = m + ph * C8 + c
            for l in range(5):          # R = G^T m, then R G
                r0[l] = 0.0
                r1[l] = 0.0
                for k in range(5):
                    v = b[(5 * k + l) * ms]
                    r0[l] += g0[k] * v
                    r1[l] += g1[k] * v
            gw[c * 16 + (ph >> 1) * 4 + (ph & 1)] = <float>(
                r0[0] + 0.5 * r0[1] + g0[2] * r0[2] + g0[3] * r0[3])
            gw[c * 16 + (ph >> 1) * 4 + 2 + (ph & 1)] = <float>(
                0.5 * r0[1] + g1[2] * r0[2] + g1[3] * r0[3] + 0.5 * r0[4])
            gw[c * 16 + (2 + (ph >> 1)) * 4 + (ph & 1)] = <float>(
                r1[0] + 0.5 * r1[1] + g0[2] * r1[2] + g0[3] * r1[3])
            gw[c * 16 + (2 + (ph >> 1)) * 4 + 2 + (ph & 1)] = <float>(
                0.5 * r1[1] + g1[2] * r1[2] + g1[3] * r1[3] + 0.5 * r1[4])


def conv2d_grad_weight_polywino(const float[:, :, :, ::1] gy, const float[:, :, :, ::1] x,
                                float[:, :, :, ::1] gw, float[::1] ws, Py_ssize_t pt,
                                Py_ssize_t pl, Py_ssize_t imgs, Py_ssize_t cols,
                                int n_threads):
    """grad_weight (OUT gw (F, C, 4, 4), every value written) of a 4x4 stride-2 conv of x
    padded by pt on top and pl on the left, output gy (N, F, Ho, Wo), by the transposed
    F(4x4, 2x2) over x's 4 phase planes (csrc/polywino.h, conv_plan "weight_polywino").

    The batch in groups of ``imgs`` images, two parallel loops a group:
    1. the transforms, a task per image and 8 channels of x (staged phase planes, B^T d B into
       V (25, tiles, 4 * C8): the forward's V) or 8 filters of gy (A dy A^T into Z (25, tiles,
       F8)), an image's two kinds interleaved;
    2. M[e] (F8 x 4 * C8) (+)= Z[e]^T @ V[e] on csrc/fgemm.h, a task per position e and block
       of ``cols`` columns, each output one FMA chain over the tiles in order that goes on from
       the group before (fgemm's beta 1) -- one chain over the whole batch's tiles whatever
       ``imgs``, split or thread count: the bits follow none of them;
    then gw[f] = G^T M[:, f] G in double, rounded once, a task per filter.
    ws >= the sum of polywino_wgrad_floats(C, F, Ho, Wo, imgs): V, Z, M, then n_threads
    staging slices."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = gy.shape[1], Ho = gy.shape[2], Wo = gy.shape[3]
    cdef Py_ssize_t C8 = (C + 7) // 8 * 8, F8 = (F + 7) // 8 * 8, K = 4 * C8
    cdef Py_ssize_t th = (Ho + 3) // 4, tw = (Wo + 3) // 4, tt = th * tw
    cdef Py_ssize_t cb = C8 // 8, nb = cb + F8 // 8, ncb
    cdef Py_ssize_t t, n, gi, g0, ng, e, c0, nc, f, i, xi
    cdef Py_ssize_t VS, ZS, MS, per
    cdef float* V
    cdef float* Z
    cdef float* M
    cdef float* S
    if not ck_pw_available():
        raise RuntimeError("conv2d_grad_weight_polywino needs AVX2 + FMA (csrc/polywino.h)")
    if gw.shape[0] != F or gw.shape[1] != C or gw.shape[2] != 4 or gw.shape[3] != 4:
        raise ValueError(f"gw must be ({F}, {C}, 4, 4), got "
                         f"{(gw.shape[0], gw.shape[1], gw.shape[2], gw.shape[3])}")
    if gy.shape[0] != N or imgs < 1 or cols < 1 or pt < 0 or pl < 0:
        raise ValueError("conv2d_grad_weight_polywino: bad shapes, padding, imgs or cols")
    imgs = _min(imgs, N)
    VS = imgs * tt * K + _PWG_PAD
    ZS = imgs * tt * F8 + _PWG_PAD
    MS = F8 * K + _PWG_PAD
    per = ck_pw_stage_floats(th, tw)
    if ws.shape[0] < 25 * (VS + ZS + MS) + n_threads * per:
        raise ValueError("conv2d_grad_weight_polywino: ws too small")
    ncb = (K + cols - 1) // cols
    V = &ws[0]
    Z = V + 25 * VS
    M = Z + 25 * ZS
    with nogil:
        for gi in range((N + imgs - 1) // imgs):
            g0 = gi * imgs
            ng = _min(imgs, N - g0)
            # (static, as conv2d_forward_polywino: a task's V / Z and M columns stay with one
            # core from group to group and call to call).  An image's cb tasks of x spread
            # evenly among its nb - cb of grad_y (task u is x's block xi where u * cb // nb
            # steps up at u + 1): on a team larger than the images, every thread's contiguous
            # run holds the two kinds in about the same proportion (8 images on 16 threads:
            # runs of 6 tasks, 2 of x and 4 of grad_y, not 4 of x or 6 of grad_y)
            for t in prange(ng * nb, schedule="static", num_threads=n_threads):
                S = M + 25 * MS + threadid() * per
                n = g0 + t // nb
                i = t % nb
                xi = i * cb // nb
                if (i + 1) * cb // nb > xi:
                    i = xi
                    ck_pw_stage_f(&x[n, 8 * i, 0, 0], H * W, <int>_min(8, C - 8 * i), H, W,
                                  pt, pl, 0, 4 * th + 1, 4 * tw + 1, S)
                    ck_pw_input_f(S, th, tw, V + (n - g0) * tt * K + 8 * i, VS, K, C8, 4)
                else:
                    f = 8 * (i - xi)
                    ck_pw_stage1_f(&gy[n, f, 0, 0], Ho * Wo, <int>_min(8, F - f), Ho, Wo, 0, 0,
                                   0, 4 * th, 4 * tw, S)
                    ck_pw_grad_input_f(S, th, tw, Z + (n - g0) * tt * F8 + f, ZS, F8)
            for t in prange(25 * ncb, schedule="static", num_threads=n_threads):
                e = t // ncb
                c0 = (t % ncb) * cols
                nc = _min(cols, K - c0)
                if not ck_fgemm(1, 0, F8, nc, ng * tt, <float>1, Z + e * ZS, F8,
                                V + e * VS + c0, K, <float>(g0 > 0), M + e * MS + c0, K):
                    gemm(True, False, F8, nc, ng * tt, <float>1, Z + e * ZS, F8,
                         V + e * VS + c0, K, <float>(g0 > 0), M + e * MS + c0, K)
        for f in prange(F, schedule="static", num_threads=n_threads):
            _pw_wgrad_out(M + f * K, MS, C, C8, &gw[f, 0, 0, 0])
    return gw
