"""CPU conv2d: picks the kernel, the thread count and the im2col chunking, then calls _conv.

Paths (all in convkit/cpu/_conv.pyx):

* depthwise (groups == C, any channel multiplier): a direct kernel, one plane per task;
  3x3 stride-1 ones with one filter per channel get their own vector kernels (AVX2 /
  AVX-512 picked at run time) and a backward that makes grad_x, grad_weight and grad_bias
  in one pass per plane;
* pointwise (1x1 kernel, stride 1, no padding): GEMMs straight on x, no workspace;
* planes no bigger than the kernel (H*W <= KH*KW, e.g. 2x2 under 3x3), groups 1: one GEMM with
  the conv's dense (C*H*W, F*Ho*Wo) matrix, straight from x into y (grad_x and the dense
  grad_weight likewise, folded back onto the taps);
* small output maps (<= 64 positions per image, e.g. 2x2-8x8): the batch's columns side by
  side, one GEMM per block of images (forward; stride-1 grad_x as the conv of grad_y with the
  flipped filters; other grad_x GEMM + col2im), grad_weight summed over the same blocks in
  image order -- per-image GEMMs of 4-64 columns are mostly BLAS overhead;
* 3x3, stride 1, dilation 1, groups 1, >= 16 channels in and out, larger maps: Winograd
  F(2x2, 3x3) for the forward and for grad_x (16 GEMMs on transformed tiles, 2.25x fewer
  multiplies);
* everything else (and grad_weight): im2col into a workspace, then GEMMs on BLAS.  Tasks take
  blocks of output rows (of whole images where they fit), each thread with its own slice of the
  workspace, so the workspace stays below ``convkit.get_workspace_limit()``.

Every GEMM runs inside the kernels' OpenMP team.  float32 GEMMs run on convkit's own AVX-512
kernel (``_sgemm.h``) where the CPU has AVX-512F; it keeps 0.8 MiB of packing buffers per
OpenMP thread, for the life of the thread.  GEMMs on BLAS (float64, or float32 without AVX-512)
pin BLAS to one thread for the duration of a call (``_blas_pin(dtype)``): one pool of
``convkit.get_num_threads()`` threads, never two pools competing for the cores.  Calls that use
no BLAS leave it alone: re-setting OpenBLAS's thread count wakes its threads, which then spin on
the cores the kernels need.
"""
from __future__ import annotations

import contextlib
import functools
import math
import threading

import numpy as np

from .._config import blas_single_thread, get_num_threads, get_workspace_limit
from .._shapes import conv_out_size
from . import _conv, _gemm

# Workspace per thread for the im2col columns: twice the weight's bytes, clamped to
# [_CHUNK_MIN, _CHUNK_MAX].  Small pieces keep the columns in cache between im2col and the GEMM
# that reads them (and keep RSS low), but every piece is a GEMM that packs the whole weight
# again.  Measured forwards (2 threads, ms, per-thread piece 512K / 1M / 4M / 8M):
# vgg_56 48.0 / 48.9 / 56.1 / 56.8, res_28 49.1 / 48.0 / 62.0 / 55.6,
# stem_224 47.0 / 52.1 / 58.7 / 64.5, rpn_3x3 (9.4 MB of weights) 177.5 / 187.2 / 127.8 / 136.6.
_CHUNK_MIN = 512 * 2**10
_CHUNK_MAX = 8 * 2**20
# Below this many multiply-adds a call runs on one thread.  Measured (2-core Xeon, float32,
# 3x3 convs, median of 41 interleaved calls): 9.2k MACs 24.1 us on 1 thread vs 24.3 us on 2;
# 74k MACs 33.6 vs 30.0 us (forward) and 48.0 vs 43.0 us (backward); 332k MACs 62.7 vs 45.8 us.
_SERIAL_MACS = 1 << 15
# Workspaces kept between calls (per Python thread): reusing them avoids faulting fresh pages
# in on every call.  Bigger ones are freed after the call.
_KEEP_BYTES = 64 * 2**20

_tls = threading.local()


def _workspace(n: int, dtype, slot: str = "cols") -> np.ndarray:
    """A scratch array of at least n elements, kept per Python thread and slot between calls."""
    cache = _tls.__dict__.setdefault("ws", {})
    key = (slot, np.dtype(dtype))
    ws = cache.get(key)
    if ws is None or ws.size < n or ws.nbytes > max(get_workspace_limit(), n * ws.itemsize):
        # (a cached buffer above a since lowered limit is let go, not kept around)
        ws = np.empty(max(n, 1), dtype=dtype)
        if ws.nbytes <= _KEEP_BYTES:
            cache[key] = ws
    return ws


# --------------------------------------------------------------------------- BLAS threads
_no_pin = contextlib.nullcontext()


def _blas_pin(dtype):
    """The BLAS pin when this dtype's GEMMs go to BLAS, else a no-op context."""
    if dtype == np.float32 and _OWN_SGEMM:
        return _no_pin
    return blas_single_thread


_OWN_SGEMM = _gemm.own_sgemm_active()
_NO_PACK = np.zeros((0, 1), np.float32)


def _packed_a(a3):
    """a3 (G, m, k): each a3[g] prepacked for the own float32 GEMM, in row g of the result --
    a conv's weights are packed once per call, not once per task; an array with no rows when
    the GEMMs go to BLAS."""
    if a3.dtype != np.float32 or not _OWN_SGEMM:
        return _NO_PACK
    G, m, k = a3.shape
    n = _gemm.packed_a_floats(m, k)
    out = _workspace(G * n, np.float32, "packed_a")[:G * n].reshape(G, n)
    return out if _gemm.pack_a(np.ascontiguousarray(a3), out) else _NO_PACK


# --------------------------------------------------------------------------- planning
def _threads(macs: int) -> int:
    return 1 if macs < _SERIAL_MACS else get_num_threads()


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _team(op, n_threads, min_bytes, what, weight_bytes, extra=0):
    """(threads, per-thread budget in bytes for the pieces): each thread gets its own slice of
    the workspace -- a piece of at least min_bytes plus ``extra`` bytes of row scratch -- so
    fewer threads run when the limit cannot give each one its smallest slice."""
    limit = get_workspace_limit()
    if min_bytes + extra > limit:
        raise MemoryError(
            f"{op}: the im2col workspace needs {min_bytes + extra} bytes even for {what}, over "
            f"the workspace limit of {limit} bytes; raise it with convkit.set_workspace_limit()")
    n_threads = max(1, min(n_threads, limit // (min_bytes + extra)))
    chunk = min(max(2 * weight_bytes, _CHUNK_MIN), _CHUNK_MAX)
    return n_threads, max(min_bytes, min(chunk, limit // n_threads - extra))


# The wide-row forward (conv2d_forward_wide) takes an image per task when its workspace stays
# in L2 and the rows widen by at most a quarter (the extra columns are computed and dropped).
# lenet_c1 (64 images, 1 -> 6, 5x5, pad 2), interleaved: 421-485 us on the im2col path ->
# 172 us on 2 threads, 502 -> 254 us on 1 (torch 360-570 us on 2).
_WIDE_MAX_BYTES = 1 << 20


# Strided convs (stem_224: 7x7/s2 on 224x224) on the own float32 GEMM: polyphase planes and one
# GEMM per output row, no im2col (conv2d_forward_phases), for output rows of >= 32 values (a
# GEMM call per row of fewer costs more than it saves).  Rows per task: enough that the phase
# rows shared between neighbouring tasks ((KH-1)*dh//sh of them) are a small part.
_PHASES_MIN_WO = 32
_PHASES_ROWS = 16


def _plan_phases(x, weight, stride, groups, pointwise, Ho, Wo, dilation, n_threads):
    """(output rows per task, workspace floats per thread) of conv2d_forward_phases, or None."""
    sh, sw = stride
    if (x.dtype != np.float32 or not _OWN_SGEMM or groups != 1 or pointwise
            or stride == (1, 1) or Wo < _PHASES_MIN_WO):
        return None
    N, C = x.shape[:2]
    F, _, KH, KW = weight.shape
    rows = min(Ho, _PHASES_ROWS)
    if n_threads > 1 and N * _ceil_div(Ho, rows) < 4 * n_threads:
        rows = max(1, _ceil_div(Ho, _ceil_div(4 * n_threads, N)))
    Wq = Wo + (KW - 1) * dilation[1] // sw
    Rq = rows + (KH - 1) * dilation[0] // sh
    per = C * sh * sw * Rq * Wq + (KW - 1) * dilation[1] // sw
    if per * 4 * n_threads > get_workspace_limit():
        return None
    return rows, per


@functools.lru_cache(maxsize=64)
def _phase_offsets(C, KH, KW, sh, sw, dh, dw, rows, Wo):
    """Offset of tap (c, kh, kw)'s row in a task's phase planes (conv2d_forward_phases), in tap
    order: phase (kh*dh % sh, kw*dw % sw) of channel c, row kh*dh // sh, column kw*dw // sw."""
    Wq = Wo + (KW - 1) * dw // sw
    plane = (rows + (KH - 1) * dh // sh) * Wq
    kh = np.arange(KH)[:, None] * dh
    kw = np.arange(KW)[None, :] * dw
    per_c = ((kh % sh) * sw + kw % sw) * plane + (kh // sh) * Wq + kw // sw
    o = (np.arange(C)[:, None, None] * (sh * sw * plane) + per_c).ravel().astype(np.intp)
    o.flags.writeable = False
    return o


@functools.lru_cache(maxsize=64)
def _wide_offsets(C, KH, KW, Hp, Wp, dh, dw):
    """Offset of tap (c, kh, kw)'s column in a padded image (C, Hp, Wp), in tap order."""
    o = (np.arange(C)[:, None, None] * (Hp * Wp) + np.arange(KH)[:, None] * (dh * Wp)
         + np.arange(KW) * dw).ravel().astype(np.intp)
    o.flags.writeable = False
    return o


# Weight gradients with few taps per filter (C*KH*KW <= _DOT_MAX_TAPS; float32 on AVX-512F): dot products of grad_y's rows with the taps' rows, read in place in the phase planes
# of the strided forward (conv2d_backward_weight_dot, _sdot.h) -- no im2col, no packing.
# Measured (13:26 UTC, 2 threads, float32, medians of 9 interleaved rounds, ms, dot vs the im2col
# GEMM path, grad_weight + grad_bias): stem_224 10.6 vs 16.3; lenet_c1 0.28 vs 0.75; 6->16 5x5
# on 14x14 0.37 vs 0.52; 16->32 3x3 on 56x56 1.84 vs 2.36; 32->32 3x3/s2 on 56x56 1.60 vs 1.77;
# 3->16 3x3 on 32x32 (batch 128) 1.09 vs 3.09; but 64->128 3x3/s2 (576 taps) 6.9 vs 6.2 and
# 128->128 3x3 (1152 taps) 14.8 vs 10.6: with many taps the packed GEMM's register tile reuses
# each load more.  Output rows per phase block (_DOT_ROWS) and per tile pass (_DOT_PASS floats
# of a grad_y row block: 8 rows of it stay in L1 across the taps) were picked by timing stem_224
# (13:27 UTC: 16-112 rows per block within noise; passes of 4-8 rows of 112 within 10%).
_DOT_MAX_TAPS = 320
# Grouped convs (each group's filters against its channels' taps; not depthwise, which has its
# own kernels), 15:10 UTC, 1 / 2 threads, medians of 11 interleaved rounds, ms, im2col GEMM per
# group vs dot: 128 -> 128 3x3 in 32 groups on 28x28 (36 taps, 4 filters per group) 4.29 /
# 2.29 vs 1.96 / 1.02; 64 -> 64 3x3/s2 in 8 groups on 56x56 (72 taps) 3.94 / 1.96 vs 1.71 /
# 0.84; 256 in 64 groups on 14x14 (36 taps) 2.64 / 1.34 vs 1.50 / 0.75; 32 -> 64 in 2 groups on
# 32x32, batch 32 (144 taps) 7.97 / 3.84 vs 6.40 / 3.03; but 288 taps (4 groups of 32 on 28x28)
# 5.93 / 3.11 vs 6.96 / 3.48, and even on 56x56.  So grouped convs take it up to 160 taps.
_DOT_MAX_TAPS_GROUPED = 160
_DOT_ROWS = 28
_DOT_PASS = 700
_DOT_PART_BYTES = 1 << 19     # a task's 16-lane partial sums (filters x taps x 16 floats)
_DOT_IMAGE_GROUPS = 4          # tasks per filter chunk: the batch in this many groups


def _plan_weight_dot(x, weight, groups, pointwise, Ho, Wo, stride, dilation, n_threads):
    """(rows, pass rows, filters per task, image groups, workspace floats) of
    conv2d_backward_weight_dot, or None where the im2col GEMM path is used."""
    N, C = x.shape[:2]
    F, Cg, KH, KW = weight.shape
    taps = Cg * KH * KW
    if (x.dtype != np.float32 or not _OWN_SGEMM or (groups > 1 and Cg == 1) or pointwise
            or taps > (_DOT_MAX_TAPS if groups == 1 else _DOT_MAX_TAPS_GROUPED)
            or _batch_ok(Ho, Wo, pointwise)):
        return None     # (depthwise convs have their own kernels)
    Fg = F // groups
    sh, sw = stride
    dh, dw = dilation
    kr = max(1, min(Ho, _DOT_PASS // Wo))
    rows = min(Ho, max(kr, _DOT_ROWS))
    # a filter chunk per thread (whole 8-filter tiles, its partial sums within L2), times a
    # fixed split of the batch: several tasks per thread (one slowed by other load takes
    # fewer), each building the phase planes of its own images only; the split depends on
    # the batch alone, so the sums do not depend on the thread count
    fchunk = _ceil_div(_ceil_div(Fg, n_threads if groups == 1 else 1), 8) * 8
    fchunk = max(8, min(fchunk, _DOT_PART_BYTES // (64 * taps) // 8 * 8))
    groups_n = max(1, min(N, _DOT_IMAGE_GROUPS))
    per_thread, per_task = _conv.weight_dot_floats(Cg, KH, KW, sh, sw, dh, dw, Wo, rows, kr,
                                                   fchunk)
    floats = (n_threads * per_thread + groups * _ceil_div(Fg, fchunk) * groups_n * per_task
              + 16)
    if floats * 4 > get_workspace_limit():
        return None
    return rows, kr, fchunk, groups_n, floats


def _plan_wide(x, weight, stride, groups, pointwise, Ho, Wo, dilation):
    """Workspace elements per thread of conv2d_forward_wide, or None when it does not apply."""
    if stride != (1, 1) or groups != 1 or pointwise:
        return None
    C = x.shape[1]
    F, _, KH, KW = weight.shape
    Hp, Wp = Ho + (KH - 1) * dilation[0], Wo + (KW - 1) * dilation[1]
    if 4 * Wp > 5 * Wo:
        return None
    per = C * Hp * Wp + (KW - 1) * dilation[1] + (C * KH * KW + F) * Ho * Wp
    if per * x.itemsize > min(_WIDE_MAX_BYTES, get_workspace_limit()):
        return None
    return per


def _plan_forward(N, C, KK, Ho, Wo, W, sw, itemsize, n_threads, pointwise, weight_bytes,
                  own_gemm=True):
    """(threads, output rows per task, workspace elements per thread)."""
    if pointwise:
        rows, per_row = Ho, 0
    else:
        per_row = C * KK * Wo * itemsize          # columns of one output row of one image
        n_threads, budget = _team("conv2d_forward", n_threads, per_row,
                                  "one output row of one image", weight_bytes,
                                  (W + sw) * itemsize)
        rows = min(Ho, budget // per_row)
    if not own_gemm:    # (BLAS: tasks set by the batch, not the threads; see _plan_winograd)
        rows = max(1, min(rows, _ceil_div(Ho, _ceil_div(8, N))))
    elif n_threads > 1 and N * _ceil_div(Ho, rows) < 2 * n_threads:   # enough tasks for the team
        rows = max(1, _ceil_div(Ho, _ceil_div(2 * n_threads, N)))
    return n_threads, rows, rows * per_row // itemsize + (W + sw if not pointwise else 0)


def _plan_backward(N, C, Cg, G, KH, KW, Ho, Wo, W, sw, itemsize, n_threads, pointwise,
                   needs_gx, weight_bytes, own_gemm=True):
    """(threads, units_w, rows_w, chans_x, rows_x, workspace elements per thread)."""
    Ug = Cg * KH
    if pointwise:
        units_w = _ceil_div(Ug, _ceil_div(n_threads, G) if own_gemm else
                            _ceil_div(Ug, _BLAS_TASK_COLS))     # (see below)
        chans_x = _ceil_div(Cg, _ceil_div(2 * n_threads, N * G) if own_gemm else
                            _ceil_div(4, N * G))        # (BLAS: see chans_x below)
        return n_threads, units_w, Ho, chans_x, Ho, 0
    unit_w = KW * Wo * itemsize                    # one (channel, kh) tap row, one output row
    unit_x = KH * KW * Wo * itemsize               # one channel's taps, one output row
    n_threads, budget = _team("conv2d_backward", n_threads, unit_x if needs_gx else unit_w,
                              "one output row of one channel", weight_bytes,
                              (W + sw) * itemsize)
    units_w = _ceil_div(Ug, _ceil_div(n_threads, G))
    if not own_gemm:
        # BLAS (float64, or a CPU without AVX-512F) may sum a column's products in an order
        # that depends on the width of the block it is given (OpenBLAS did for a 3-channel
        # 7x7 stem: 147 columns in one task vs 77 + 70 in two): column blocks of a size set by
        # the layer alone, ~_BLAS_TASK_COLS wide, keep grad_weight thread-count independent
        units_w = _ceil_div(Ug, _ceil_div(Ug * KW, _BLAS_TASK_COLS))
    elif n_threads > 1:
        # several tasks per thread (a thread held up by other load, or a slower last task,
        # otherwise leaves the other waiting: res_14's two grad_weight tasks spent 15% of the
        # backward in libgomp's barrier), each a whole number of the own GEMM's 48-column
        # panels where that still leaves two tasks per thread; each task packs grad_y again,
        # which costs ~5% of a GEMM at these shapes
        step = _GEMM_PANEL // math.gcd(_GEMM_PANEL, KW)
        whole = _ceil_div(_ceil_div(Ug, _ceil_div(4 * n_threads, G)), step) * step
        if _ceil_div(Ug, whole) >= 2 * n_threads:
            units_w = whole     # (else, e.g. a 3-channel stem, one task per thread as before)
    units_w = min(units_w, budget // unit_w)
    rows_w = min(Ho, budget // (units_w * unit_w))
    if needs_gx:
        # output rows per GEMM from the group's channel count, not from the channels per task
        # (which follow the thread count): col2im adds a block's taps before the next block's,
        # so the row blocks fix the order of grad_x's sums
        rows_x = max(1, min(Ho, budget // (Cg * unit_x)))
        # channels per task: on BLAS from the layer alone (OpenBLAS's kernels follow the GEMM's
        # row count, so a split that followed the thread count changed grad_x's bits)
        split = _ceil_div(2 * n_threads, N * G) if own_gemm else _ceil_div(4, N * G)
        chans_x = max(1, min(_ceil_div(Cg, split), budget // (rows_x * unit_x)))
    else:
        chans_x, rows_x = Cg, Ho        # unused: no grad_x pass
    ws = max(units_w * rows_w * unit_w, chans_x * rows_x * unit_x if needs_gx else 0)
    return n_threads, units_w, rows_w, chans_x, rows_x, ws // itemsize + W + sw


# Batch-wide im2col for small output maps: up to this many output positions per image, the
# columns of several images go side by side into one GEMM per block of images
# (conv2d_forward_batch) instead of a GEMM per image, and it is preferred to Winograd.
# Measured 10:00-10:11 UTC (2-core Xeon, 1 thread, batch 64, float32, medians of 7-9
# interleaved rounds, us forward / backward; /tmp/ck/prof.py, /tmp/ck/ab.py): per-image im2col +
# GEMM vs batch: 16->32 3x3 s2 on 8x8 (Ho*Wo 16) 883 / 1462 vs 311 / 641; 32->64 3x3 s2 on 4x4
# (Ho*Wo 4) 869 / 1523 vs 338 / 727; 6->16 5x5 on 4x4 568 / 1049 vs 289 / 534.  Winograd vs
# batch: 64->64 3x3 on 2x2 919 / 2165 vs 804 / 1880; 16->16 3x3 on 8x8 (Ho*Wo 64) 1180 / 2178
# vs 794 / 1851; 32->32 on 4x4 even.  (Larger maps keep their per-image GEMMs / Winograd.)
_BATCH_MAX_HOWO = 64


# Dense maps: when an image's plane is no bigger than the kernel (H*W <= KH*KW, e.g. 2x2 under
# a 3x3 kernel) the conv is one GEMM with the dense (C*H*W, F*Ho*Wo) matrix of the map
# (_conv.dense_weight), at most as many multiplies as im2col and no column copies.  Measured
# (11:25-11:30 UTC, 1 thread, batch 128, float32, us forward / backward, /tmp/convmb.py):
# 64->64 3x3 on 2x2: batch im2col 925 / 1686, dense 197 / 376 (torch 342 / 1276); 32->64 3x3 s2
# on 4x4 (16/9 the multiplies): batch 349 / 738-990, dense 459-501 / 664-942, so H*W <= KH*KW.
_DENSE_MAX_ELEMS = 1 << 20


def _row_blocks(dtype) -> int:
    """Row blocks for gemm_rows: one per thread on the own GEMM (its bits do not depend on the
    split); _BATCH_BLOCKS on BLAS, whose kernels follow the row count."""
    return 0 if dtype == np.float32 and _OWN_SGEMM else _BATCH_BLOCKS


def _dense_ok(C, H, W, F, KH, KW, Ho, Wo, groups):
    return (groups == 1 and H * W <= KH * KW
            and C * H * W * F * Ho * Wo <= min(_DENSE_MAX_ELEMS, get_workspace_limit() // 16))


def _dense_matrix(weight, H, W, Ho, Wo, stride, pt, pl, dilation, n_threads):
    F, C = weight.shape[:2]
    wd = _workspace(C * H * W * F * Ho * Wo, weight.dtype, "dense")[:C * H * W * F * Ho * Wo]
    wd = wd.reshape(C * H * W, F * Ho * Wo)
    _conv.dense_weight(weight, wd, H, W, Ho, Wo, stride[0], stride[1], pt, pl, dilation[0],
                       dilation[1], n_threads)
    return wd


def _batch_ok(Ho, Wo, pointwise):
    return Ho * Wo <= _BATCH_MAX_HOWO and not pointwise


def _prefer_winograd(x, weight, stride, dilation, groups, Ho, Wo):
    return _winograd_ok(x, weight, stride, dilation, groups) and Ho * Wo > _BATCH_MAX_HOWO


@functools.lru_cache(maxsize=64)
def _batch_geometry(N, Ho, Wo, KH, KW, stride, dilation):
    """(Hp, Wp, idx): the padded plane _batch_im2col gathers from (exactly the rows and columns
    the taps read) and idx[q], the offset of column q's top-left tap in a row of padded planes
    (image after image, q = image * Ho*Wo + ho * Wo + wo)."""
    Hp = (Ho - 1) * stride[0] + (KH - 1) * dilation[0] + 1
    Wp = (Wo - 1) * stride[1] + (KW - 1) * dilation[1] + 1
    per_img = (np.arange(Ho)[:, None] * (stride[0] * Wp) + np.arange(Wo) * stride[1]).ravel()
    idx = (np.arange(N)[:, None] * (Hp * Wp) + per_img).ravel().astype(np.intp)
    idx.flags.writeable = False      # cached: shared by every later call of this geometry
    return Hp, Wp, idx


# The blocks of the batch paths do not depend on the thread count: BLAS picks its kernels
# (small-matrix paths, edge kernels) by the matrix sizes, so a block size that followed the
# team would change the bits of the result.  _BATCH_BLOCKS blocks of images (4: two tasks per
# thread on 2 cores, for the dynamic schedule) and _BATCH_W_BLOCKS column blocks of grad_weight.
_BATCH_BLOCKS = 4
_BATCH_W_BLOCKS = 2
# Blocks of images are also capped so that a block's columns stay in L2 (a thread's share of
# the 2-core Xeon's cache): 16->16 3x3 on 8x8, batch 128, 1 thread, us fwd / bwd (10:19-10:20
# UTC, /tmp/ck/prof.py): uncapped (32 images, 1.2 MB of columns) 1014 / 2295; 128 KiB (3
# images) 536 / 1129 and 513 / 1312; 256 KiB 828 / 1593; 64 KiB 948 / 3043 under load; the
# 2x2-4x4 maps (fewer images per block already) unchanged within noise.
# Re-measured with the own AVX-512 GEMM (it packs B in 48-column panels, so the block need not
# sit in L1), 11:58-12:00 UTC, 1 thread, batch 128, us fwd / bwd, 128K vs 512K (interleaved,
# /tmp/ab5.py): 16->16 on 8x8 745 / 1487 vs 674 / 1329 and 804 / 1661 vs 792 / 1599;
# 32->32 on 4x4 478 / 968 vs 457 / 918; 16->32 s2 on 8x8 536 / 1082 vs 482 / 843.
_BATCH_CACHE = 512 * 2**10
# Stride-1 convs whose output is as wide as the input gather their columns with masked vector
# loads straight from x (_conv._batch_im2col, "shifted"; AVX-512 CPUs), not through padded
# planes and an index table.  Same columns, so the same bits; False forces the general gather.
_SHIFTED = _conv.shift_available()


@functools.lru_cache(maxsize=64)
def _shift_masks(H, W, Ho, Wo, KH, KW, stride, pt, pl, dilation, itemsize):
    """uint16 array[KH*KW * HoWo/lanes]: bit i of entry (tap, v) is set when output position
    v*lanes + i reads x (not padding) through that tap; empty when the shifted gather does not
    apply (stride 1, Wo == W, HoWo a multiple of the lanes per vector, an AVX-512 CPU)."""
    lanes = 64 // itemsize
    if not (_SHIFTED and stride == (1, 1) and Wo == W and (Ho * Wo) % lanes == 0):
        masks = np.zeros(0, np.uint16)
    else:
        p = np.arange(Ho * Wo)
        ho, wo = p // Wo, p % Wo
        rows = []
        for kh in range(KH):
            for kw in range(KW):
                r, c = ho + kh * dilation[0] - pt, wo + kw * dilation[1] - pl
                ok = ((r >= 0) & (r < H) & (c >= 0) & (c < W)).reshape(-1, lanes)
                rows.append((ok * (1 << np.arange(lanes))).sum(axis=1))
        masks = np.concatenate(rows).astype(np.uint16)
    masks.flags.writeable = False
    return masks


# The float32 GEMM (_sgemm.h) computes C in panels of 48 columns, a partial panel at the cost of
# a whole one: blocks of images are rounded down to whole panels of columns (imgs * HoWo a
# multiple of 48) where they hold at least one.  The GEMM's k order does not depend on the
# number of columns, so the forward's bits do not change.
_GEMM_PANEL = 48
_BLAS_TASK_COLS = 96


def _panel_images(imgs, HoWo):
    q = _GEMM_PANEL // math.gcd(_GEMM_PANEL, HoWo)       # images per whole panel
    return imgs // q * q if imgs >= q else imgs


def _plan_batch_forward(N, C, F, KK, HpWp, HoWo, itemsize, n_threads):
    """(threads, images per task, workspace elements per thread), or None when one image does
    not fit the workspace limit.  (Cached per geometry and limit: a few us of Python per call
    otherwise, which for the small ResNet's convs is a good part of a call at batch 1.)"""
    return _plan_batch_forward_at(N, C, F, KK, HpWp, HoWo, itemsize, n_threads,
                                  get_workspace_limit())


@functools.lru_cache(maxsize=256)
def _plan_batch_forward_at(N, C, F, KK, HpWp, HoWo, itemsize, n_threads, limit):
    per_img = ((C * KK + F) * HoWo + C * HpWp) * itemsize
    if per_img > limit:
        return None
    imgs = _panel_images(min(_ceil_div(N, _BATCH_BLOCKS), limit // per_img,
                             max(1, _BATCH_CACHE // (C * KK * HoWo * itemsize))), HoWo)
    n_threads = max(1, min(n_threads, limit // (imgs * per_img), _ceil_div(N, imgs)))
    return n_threads, imgs, imgs * per_img // itemsize


def _plan_batch_backward(N, Cg, G, F, KK, HpWp, HoWo, itemsize, n_threads, needs_gx):
    """(threads, chans_w, kimgs, imgs, nsplit, workspace elements per thread), or None when it
    does not fit (gy side by side, the partial grad_weights, plus one channel's columns and
    padded plane of one image).

    grad_weight's column blocks (chans_w channels * KK taps) are whole 48-column panels of the
    GEMM where the channels allow; when that leaves fewer than _BATCH_W_BLOCKS blocks, the
    batch is split into nsplit fixed parts summed separately (tasks for the team) and added
    after.  Neither depends on the thread count.  (Cached, as _plan_batch_forward.)"""
    return _plan_batch_backward_at(N, Cg, G, F, KK, HpWp, HoWo, itemsize, n_threads, needs_gx,
                                   get_workspace_limit())


@functools.lru_cache(maxsize=256)
def _plan_batch_backward_at(N, Cg, G, F, KK, HpWp, HoWo, itemsize, n_threads, needs_gx,
                            workspace_limit):
    q = _GEMM_PANEL // math.gcd(_GEMM_PANEL, KK)      # channels per whole panel
    chans_w = min(Cg, _ceil_div(_ceil_div(Cg, _BATCH_W_BLOCKS), q) * q)
    nsplit = max(1, min(N, _BATCH_W_BLOCKS // (G * _ceil_div(Cg, chans_w))))
    unit_w = (KK * HoWo + HpWp) * itemsize              # one channel of one image
    unit_x = Cg * (KK * HoWo + HpWp) * itemsize          # all channels of one image
    limit = workspace_limit - (F * N * HoWo + (nsplit - 1) * F * Cg * KK) * itemsize
    if nsplit > 1 and limit < max(unit_w, unit_x if needs_gx else 0):
        nsplit = 1                                      # no room for the partial sums
        limit = workspace_limit - F * N * HoWo * itemsize
    if limit < max(unit_w, unit_x if needs_gx else 0):
        return None
    chans_w = min(chans_w, limit // unit_w)
    kimgs = min(N, limit // (chans_w * unit_w), max(1, _BATCH_CACHE // (chans_w * unit_w)))
    imgs = _panel_images(max(1, min(_ceil_div(N, _BATCH_BLOCKS), limit // unit_x,  # (1 if unused)
                                    max(1, _BATCH_CACHE // (Cg * KK * HoWo * itemsize)))), HoWo)
    ws = max(chans_w * kimgs * unit_w, imgs * unit_x if needs_gx else 0)
    n_threads = max(1, min(n_threads, limit // ws))
    return n_threads, chans_w, kimgs, imgs, nsplit, ws // itemsize


# Winograd F(2x2, 3x3) for 3x3 stride-1 convs with at least this many input and output channels
# (below, the transforms cost more than the multiplications they save).
_WINOGRAD_MIN_CHANNELS = 16


def _winograd_ok(x, weight, stride, dilation, groups):
    F, Cg, KH, KW = weight.shape
    return (KH == 3 and KW == 3 and stride == (1, 1) and dilation == (1, 1) and groups == 1
            and min(F, Cg) >= _WINOGRAD_MIN_CHANNELS)


def _plan_winograd(N, C, F, Ho, Wo, itemsize, n_threads, weight_bytes, own_gemm=True):
    """(threads, tile rows per task, workspace elements per thread), or None when not even one
    tile row per thread fits the workspace limit (the caller then takes the im2col path)."""
    tw = (Wo + 1) // 2
    th = (Ho + 1) // 2
    per_row = 16 * (C + F) * tw * itemsize      # V and M of one row of 2x2 tiles
    try:
        n_threads, budget = _team("conv2d_forward", n_threads, per_row, "one row of tiles",
                                  weight_bytes, 8 * (2 * tw + 2) * itemsize)
    except MemoryError:
        return None
    trows = min(N * th, budget // per_row)     # rows of tiles of the whole batch per task
    if not own_gemm:
        # BLAS may sum differently for a different number of columns (tiles): tasks set by the
        # batch alone (8 of them where the rows allow), not by the thread count, keep the bits
        # the same for any thread count (as the own kernel's are anyway)
        trows = max(1, min(trows, _ceil_div(N * th, 8)))
    elif n_threads > 1:
        # at least 2 tasks per thread, and a multiple of the team when there are few tasks
        tasks = max(_ceil_div(N * th, trows), 2 * n_threads)
        if tasks < 8 * n_threads:
            tasks = _ceil_div(tasks, n_threads) * n_threads
        trows = max(1, _ceil_div(N * th, tasks))
    return n_threads, trows, trows * per_row // itemsize + 8 * (2 * tw + 2)


def _winograd(x, weight, b, has_bias, y, pt, pl, n_threads, transpose_flip=False):
    """y = conv(x, weight) + b by Winograd F(2x2, 3x3); False (nothing done) when not even one
    row of tiles per thread fits the workspace limit.  transpose_flip: conv with the filters of
    grad_x, weight (F, C) transposed and turned by 180 degrees (x then has F channels)."""
    N, C = x.shape[:2]
    F = weight.shape[1] if transpose_flip else weight.shape[0]
    plan = _plan_winograd(N, C, F, y.shape[2], y.shape[3], x.itemsize, n_threads, weight.nbytes,
                          x.dtype == np.float32 and _OWN_SGEMM)
    if plan is None:
        return False
    n_threads, trows, per_thread = plan
    U = _workspace(16 * F * C, x.dtype, "winograd")[:16 * F * C].reshape(16, F, C)
    _conv.winograd_filters(weight, U, n_threads, transpose_flip)
    ws = _workspace(n_threads * per_thread, x.dtype)
    with _blas_pin(x.dtype):
        _conv.conv2d_forward_winograd(x, U, b, has_bias, y, ws, per_thread, trows, pt, pl,
                                      n_threads, _packed_a(U))
    return True


def _geometry(x, weight, stride, padding, dilation):
    N, C, H, W = x.shape
    F, Cg, KH, KW = weight.shape
    pt, pb, pl, pr = padding
    Ho = conv_out_size(H, KH, stride[0], pt + pb, dilation[0])
    Wo = conv_out_size(W, KW, stride[1], pl + pr, dilation[1])
    return N, C, H, W, F, Cg, KH, KW, Ho, Wo


def _is_pointwise(KH, KW, stride, padding):
    return KH == 1 and KW == 1 and stride == (1, 1) and tuple(padding) == (0, 0, 0, 0)


def _batch_forward(x, weight, b, has_bias, y, stride, pt, pl, dilation, groups, n_threads):
    """y = conv(x, weight) + b by batch-wide GEMMs; False (nothing done) when not even one
    image fits the workspace limit."""
    N, C = x.shape[:2]
    F, _, KH, KW = weight.shape
    Ho, Wo = y.shape[2:]
    Hp, Wp, idx = _batch_geometry(N, Ho, Wo, KH, KW, stride, dilation)
    plan = _plan_batch_forward(N, C, F, KH * KW, Hp * Wp, Ho * Wo, x.itemsize, n_threads)
    if plan is None:
        return False
    n_threads, imgs, per_thread = plan
    ws = _workspace(n_threads * per_thread, x.dtype)
    with _blas_pin(x.dtype):
        _conv.conv2d_forward_batch(x, weight, b, has_bias, y, ws, per_thread, imgs, idx, Hp, Wp,
                                   pt, pl, dilation[0], dilation[1], groups,
                                   _shift_masks(x.shape[2], x.shape[3], Ho, Wo, KH, KW, stride,
                                                pt, pl, dilation, x.itemsize), n_threads)
    return True


def _flipped_transposed(weight, groups):
    """The filters of grad_x as a stride-1 conv of grad_y: per group, w[f, c] -> w_t[c, f],
    each flipped in both axes; (C, F/groups, KH, KW)."""
    F, Cg, KH, KW = weight.shape
    w = weight.reshape(groups, F // groups, Cg, KH, KW).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(w[..., ::-1, ::-1]).reshape(groups * Cg, F // groups, KH, KW)


def _depthwise3x3_plan(F, C, KH, KW, stride, padding, dilation, itemsize, W, Wo):
    """(level, same) of the 3x3 stride-1 depthwise kernels for this conv; level 0 when they
    do not apply (another shape, a channel multiplier, rows shorter than one vector): then the
    general depthwise kernels run.  same: padding 1 all round, read without a padded copy."""
    if F != C or (KH, KW) != (3, 3) or tuple(stride) != (1, 1) or tuple(dilation) != (1, 1):
        return 0, False
    if tuple(padding) == (1, 1, 1, 1):
        level = _conv.depthwise3x3_level(itemsize, W - 2)
        if level:
            return level, True
    return _conv.depthwise3x3_level(itemsize, min(W, Wo)), False


# --------------------------------------------------------------------------- ops
def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, out=None):
    """x (N,C,H,W), weight (F,C/groups,KH,KW), bias (F,) or None -> y (N,F,Ho,Wo)."""
    N, C, H, W, F, Cg, KH, KW, Ho, Wo = _geometry(x, weight, stride, padding, dilation)
    y = out if out is not None else np.empty((N, F, Ho, Wo), dtype=x.dtype)
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(1, dtype=x.dtype)
    sh, sw = stride
    pt, _, pl, _ = padding
    dh, dw = dilation
    n_threads = _threads(N * F * Cg * KH * KW * Ho * Wo)
    if groups == C and Cg == 1 and groups > 1:
        level, same = _depthwise3x3_plan(F, C, KH, KW, stride, padding, dilation, x.itemsize,
                                         W, Wo)
        if level:
            scratch = _workspace(1 if same else n_threads * (Ho + 2) * (Wo + 2), x.dtype)
            _conv.conv2d_forward_depthwise3x3(x, weight, b, has_bias, y, scratch, pt, pl, level,
                                              same, n_threads)
            return y
        Hp, Wp = Ho + (KH - 1) * dh, Wo + (KW - 1) * dw
        scratch = _workspace(n_threads * Hp * Wp, x.dtype)
        _conv.conv2d_forward_depthwise(x, weight, b, has_bias, y, scratch, sh, sw, pt, pl, dh, dw,
                                       n_threads)
        return y
    pointwise = _is_pointwise(KH, KW, stride, padding)
    if _dense_ok(C, H, W, F, KH, KW, Ho, Wo, groups):
        wd = _dense_matrix(weight, H, W, Ho, Wo, stride, pt, pl, dilation, n_threads)
        with _blas_pin(x.dtype):
            _conv.gemm_rows(False, False, x.reshape(N, C * H * W), wd, y.reshape(N, F * Ho * Wo),
                            C * H * W, n_threads, _row_blocks(x.dtype))
        if has_bias:
            y += bias.reshape(1, F, 1, 1)
        return y
    if (_prefer_winograd(x, weight, stride, dilation, groups, Ho, Wo)
            and _winograd(x, weight, b, has_bias, y, pt, pl, n_threads)):
        return y
    if _batch_ok(Ho, Wo, pointwise) and _batch_forward(x, weight, b, has_bias, y, stride, pt, pl,
                                                      dilation, groups, n_threads):
        return y
    phases = _plan_phases(x, weight, stride, groups, pointwise, Ho, Wo, dilation, n_threads)
    if phases is not None:
        rows, per_thread = phases
        ws = _workspace(per_thread * n_threads, x.dtype)
        _conv.conv2d_forward_phases(x, b, has_bias, y, ws, per_thread, KH, KW, sh, sw, pt, pl,
                                    dh, dw, rows, n_threads, _packed_a(weight.reshape(1, F, -1)),
                                    _phase_offsets(C, KH, KW, sh, sw, dh, dw, rows, Wo))
        return y
    wide = _plan_wide(x, weight, stride, groups, pointwise, Ho, Wo, dilation)
    if wide is not None:
        ws = _workspace(wide * n_threads, x.dtype)
        with _blas_pin(x.dtype):
            _conv.conv2d_forward_wide(x, weight, b, has_bias, y, ws, wide, pt, pl, dh, dw,
                                      min(n_threads, N), _packed_a(weight.reshape(1, F, -1)),
                                      _wide_offsets(C, KH, KW, Ho + (KH - 1) * dh,
                                                    Wo + (KW - 1) * dw, dh, dw))
        return y
    n_threads, rows, per_thread = _plan_forward(N, C, KH * KW, Ho, Wo, W, sw, x.itemsize, n_threads,
                                                pointwise, weight.nbytes,
                                                x.dtype == np.float32 and _OWN_SGEMM)
    ws = _workspace(n_threads * per_thread, x.dtype)
    with _blas_pin(x.dtype):
        _conv.conv2d_forward_gemm(x, weight, b, has_bias, y, ws, per_thread, rows, sh, sw, pt, pl,
                                  dh, dw, groups, pointwise, n_threads,
                                  _packed_a(weight.reshape(groups, F // groups, -1)))
    return y


def conv2d_backward(grad_y, x, weight, stride, padding, dilation, groups, needs_input_grad,
                    has_bias):
    """-> (grad_x or None, grad_weight, grad_bias or None); deterministic."""
    N, C, H, W, F, Cg, KH, KW, Ho, Wo = _geometry(x, weight, stride, padding, dilation)
    sh, sw = stride
    pt, _, pl, _ = padding
    dh, dw = dilation
    dt = x.dtype
    n_threads = _threads(N * F * Cg * KH * KW * Ho * Wo)
    gx_done = False
    gx = np.empty(x.shape, dtype=dt) if needs_input_grad else np.empty((1, 1, 1, 1), dtype=dt)
    gb = np.empty(F, dtype=dt) if has_bias else None
    level, same = 0, False
    if groups == C and Cg == 1 and groups > 1:
        level, same = _depthwise3x3_plan(F, C, KH, KW, stride, padding, dilation, x.itemsize,
                                         W, Wo)
    if level:
        # one pass per plane: grad_x, grad_weight and grad_bias together
        gw = np.empty(weight.shape, dtype=dt)
        scratch = _workspace(1 if same else
                             n_threads * ((Ho + 2) * (Wo + 2) + (H + 2) * (W + 2)), dt)
        parts = _workspace(N * C * 10, np.float64, "parts")
        _conv.conv2d_backward_depthwise3x3(grad_y, x, weight, gx, gw,
                                           gb if has_bias else np.empty(1, dtype=dt), has_bias,
                                           needs_input_grad, scratch, parts, pt, pl, level,
                                           same, n_threads)
        return (gx if needs_input_grad else None), gw, gb
    pointwise = _is_pointwise(KH, KW, stride, padding)
    dot = (None if _dense_ok(C, H, W, F, KH, KW, Ho, Wo, groups) else
           _plan_weight_dot(x, weight, groups, pointwise, Ho, Wo, stride, dilation, n_threads))
    if has_bias and dot is None:
        _conv.bias_grad(grad_y, gb, _threads(grad_y.size))
    if groups == C and Cg == 1 and groups > 1:
        gw = np.empty(weight.shape, dtype=dt)
        per_thread = max(KH * KW * Wo, (Ho + (KH - 1) * dh) * (Wo + (KW - 1) * dw),
                         (H + (KH - 1) * dh) * (W + (KW - 1) * dw) + KH * KW)
        scratch = _workspace(n_threads * per_thread, dt)[:n_threads * per_thread]
        accs = np.empty(n_threads * KH * KW, dtype=np.float64)
        _conv.conv2d_backward_depthwise(grad_y, x, weight, gx, gw, scratch, accs, sh, sw, pt, pl,
                                        dh, dw, needs_input_grad, n_threads)
    elif _dense_ok(C, H, W, F, KH, KW, Ho, Wo, groups):
        gw = np.empty(weight.shape, dtype=dt)
        wd = _dense_matrix(weight, H, W, Ho, Wo, stride, pt, pl, dilation, n_threads)
        gwd = _workspace(wd.size, dt, "dense_grad")[:wd.size].reshape(wd.shape)
        gy2 = grad_y.reshape(N, F * Ho * Wo)
        with _blas_pin(dt):
            if needs_input_grad:
                _conv.gemm_rows(False, True, gy2, wd, gx.reshape(N, C * H * W), F * Ho * Wo,
                                n_threads, _row_blocks(dt))
            _conv.gemm_rows(True, False, x.reshape(N, C * H * W), gy2, gwd, N, n_threads,
                            _row_blocks(dt))
        _conv.dense_fold(gwd, gw, H, W, Ho, Wo, sh, sw, pt, pl, dh, dw, n_threads)
    else:
        if needs_input_grad and _prefer_winograd(x, weight, stride, dilation, groups, Ho, Wo):
            # grad_x of a 3x3 stride-1 conv is the conv of grad_y with the filters flipped and
            # transposed (C <- F), padded by 2 - pt on top and 2 - pl on the left (negative
            # padding crops; the Winograd input rows handle both)
            if _winograd(grad_y, weight, np.zeros(1, dtype=dt), False, gx, 2 - pt, 2 - pl,
                         n_threads, transpose_flip=True):
                needs_input_grad = False     # done; the pass below computes grad_weight
                gx_done = True
        if (needs_input_grad and stride == (1, 1) and _batch_ok(H, W, pointwise)
                and _batch_forward(grad_y, _flipped_transposed(weight, groups),
                                   np.zeros(1, dtype=dt), False, gx, (1, 1),
                                   (KH - 1) * dh - pt, (KW - 1) * dw - pl, dilation, groups,
                                   n_threads)):
            # stride 1: grad_x is the conv of grad_y with the flipped, transposed filters,
            # padded by (KH-1)*dh - pt on top, (KW-1)*dw - pl on the left (negative: cropped);
            # a gather into columns with K = F*KH*KW instead of a K = F GEMM and a scatter-add
            needs_input_grad = False
            gx_done = True
        needs_weight_grad = True
        if dot is not None:
            rows, kr, fchunk, groups_n, floats = dot
            gw = np.empty(weight.shape, dtype=dt)
            _conv.conv2d_backward_weight_dot(grad_y, x, gw.reshape(F, -1),
                                             gb if has_bias else np.empty(1, dtype=dt),
                                             has_bias, _workspace(floats, dt), KH, KW, sh, sw,
                                             pt, pl, dh, dw, rows, kr, fchunk, groups_n,
                                             _phase_offsets(Cg, KH, KW, sh, sw, dh, dw, rows,
                                                            Wo),
                                             n_threads, groups)
            if not needs_input_grad:
                return (gx if gx_done else None), gw, gb
            needs_weight_grad = False    # the pass below computes grad_x only
        plan = None
        if _batch_ok(Ho, Wo, pointwise):
            Hp, Wp, idx = _batch_geometry(N, Ho, Wo, KH, KW, stride, dilation)
            plan = _plan_batch_backward(N, Cg, groups, F, KH * KW, Hp * Wp, Ho * Wo, x.itemsize,
                                        n_threads, needs_input_grad)
        if plan is not None:
            n_threads, chans_w, kimgs, imgs, nsplit, per_thread = plan
            gw = np.empty(weight.shape, dtype=dt)
            gwp = _workspace(max(1, (nsplit - 1) * gw.size), dt, "gw_parts")
            gyt = _workspace(F * N * Ho * Wo, dt, "gyt")
            ws = _workspace(n_threads * per_thread, dt)
            with _blas_pin(x.dtype):
                _conv.conv2d_backward_batch(grad_y, x, weight, gx, gw, gyt, ws, per_thread,
                                            chans_w, kimgs, imgs, idx, Hp, Wp, sw, pt, pl,
                                            dh, dw, groups, needs_input_grad,
                                            _shift_masks(H, W, Ho, Wo, KH, KW, stride, pt, pl,
                                                         dilation, x.itemsize), nsplit, gwp,
                                            n_threads)
            return (gx if needs_input_grad or gx_done else None), gw, gb
        if needs_weight_grad:
            gw = np.zeros(weight.shape, dtype=dt)
        n_threads, units_w, rows_w, chans_x, rows_x, per_thread = _plan_backward(
            N, C, Cg, groups, KH, KW, Ho, Wo, W, sw, x.itemsize, n_threads, pointwise,
            needs_input_grad, weight.nbytes, dt == np.float32 and _OWN_SGEMM)
        ws = _workspace(n_threads * per_thread, dt)
        with _blas_pin(x.dtype):
            _conv.conv2d_backward_gemm(grad_y, x, weight, gx, gw, ws, per_thread, units_w, rows_w,
                                       chans_x, rows_x, sh, sw, pt, pl, dh, dw, groups, pointwise,
                                       needs_input_grad, needs_weight_grad, n_threads)
    return (gx if needs_input_grad or gx_done else None), gw, gb
