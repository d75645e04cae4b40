"""CPU conv2d: asks convkit/cpu/conv_plan.py for the plan of a conv, then runs it -- one runner
per algorithm below, each calling its kernel in convkit/cpu/_conv_<algorithm>.pyx.

The plan (forward, grad_x and grad_weight chosen independently; the algorithms are listed in
conv_plan's docstring) is a pure function of the shapes, the dtype, the thread count, the
workspace limit and the machine's abilities, cached per geometry here; its constants are in
convkit/cpu/tuning.py.  This module owns what the plan does not: the per-thread workspaces
(kept between calls, below ``convkit.get_workspace_limit()``), the weights' packing for the own
GEMM, the offset and mask tables the kernels read, and the BLAS pin.

Every GEMM runs inside the kernels' OpenMP team.  float32 GEMMs run on convkit's own AVX-512
kernel (``csrc/sgemm.h``) where the CPU has AVX-512F; it keeps 0.8 MiB of packing buffers per
OpenMP thread, for the life of the thread.  GEMMs on BLAS (float64, or float32 without AVX-512)
pin BLAS to one thread for the duration of a call (``_blas_pin(dtype)``): one pool of
``convkit.get_num_threads()`` threads, never two pools competing for the cores.  Calls that use
no BLAS leave it alone: re-setting OpenBLAS's thread count wakes its threads, which then spin on
the cores the kernels need.
"""
from __future__ import annotations

import contextlib
import functools
import threading

import numpy as np

from .._config import blas_single_thread, get_num_threads, get_workspace_limit
from .._shapes import conv_out_size
from . import _conv, _gemm  # (_conv re-exports the kernels: their old home, tests use it)
from . import (_conv_batch as _batch, _conv_dense as _dense, _conv_depthwise as _depthwise,
               _conv_dot as _dot, _conv_im2col as _im2col, _conv_phases as _phases,
               _conv_wdirect as _wdirect, _conv_winograd as _winograd)
from . import conv_plan as P
from . import tuning as _T
from .tuning import KEEP_BYTES as _KEEP_BYTES

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
# float32 forwards and grad_x on a fixed-order GEMM (the own one, or csrc/fgemm.h on AVX2 + FMA):
# an output's bits do not follow its GEMM's shape, so several images may share a GEMM
_FIXED_SGEMM = _gemm.fixed_sgemm_active()
_NO_PACK = np.zeros((0, 1), np.float32)
# the CPU's 512-bit FMA at the full rate (csrc/isa.h's CPUID test, CONVKIT_AVX512_FULL_RATE):
# where not, the plan takes the AVX2 algorithms of tuning.HALF_RATE_AVX2 beside the own GEMM --
# not under CONVKIT_DISABLE_FGEMM=1 (a test switch for the BLAS paths: F(4x4)'s packed GEMMs
# are fgemm.h's), which keeps the AVX-512 plans
_FULL_RATE = _gemm.avx512_full_rate() or not _winograd.winograd4_packed_ok()


def _packed_a(a3, ta=False):
    """a3 (G, m, k; ta: G, k, m, its transposes packed): each a3[g] prepacked for the own
    float32 GEMM, in row g of the result -- a conv's weights are packed once per call, not once
    per task; an array with no rows when the GEMMs go to BLAS."""
    if a3.dtype != np.float32 or not _OWN_SGEMM:
        return _NO_PACK
    G, m, k = (a3.shape[0], a3.shape[2], a3.shape[1]) if ta else a3.shape
    n = _gemm.packed_a_floats(m, k)
    out = _workspace(G * n, np.float32, "packed_a")[:G * n].reshape(G, n)
    return out if _gemm.pack_a(np.ascontiguousarray(a3), out, ta) else _NO_PACK


def _packed_a_blocks(U, fparts, n_threads):
    """F(2x2)'s transformed filters U (16, F, C) prepacked for the own float32 GEMM by filter
    block for its two-region split (_conv_winograd.wino2_pack_filters: block b's plane e in row
    16 * b + e; fparts 1: _packed_a(U)'s rows), on the team -- many threads would wait for a
    serial packing (5 % of 64 threads' time on res_14); the one-region split packs serially
    (_packed_a): a region more cost one and two threads CPU time (spinning between regions,
    bench/RESULTS.md twelfth session xwino12).  No rows where the GEMMs do not run on it."""
    if U.dtype != np.float32 or not _OWN_SGEMM:
        return _NO_PACK
    F, C = U.shape[1], U.shape[2]
    n = _gemm.packed_a_floats(8 * -(-(-(-F // 8)) // fparts), C)    # (the largest block)
    out = _workspace(16 * fparts * n, np.float32, "packed_a")[:16 * fparts * n]
    out = out.reshape(16 * fparts, n)
    return out if _winograd.wino2_pack_filters(U, out, fparts, n_threads) else _NO_PACK


# --------------------------------------------------------------------------- the plan
_caps_by_level = {}
_WINOTINY = _winograd.winotiny_available()


def _caps():
    """This machine's ConvCaps (the depthwise 3x3 level is read each time: tests lower it)."""
    level = _depthwise.depthwise3x3_level(1, 1 << 30)
    caps = _caps_by_level.get(level)
    if caps is None:
        caps = _caps_by_level[level] = P.ConvCaps(own_sgemm=_OWN_SGEMM,
                                                   depthwise3x3_level=level, rowgemm=_ROWGEMM,
                                                   fixed_sgemm=_FIXED_SGEMM,
                                                   avx512_full_rate=_FULL_RATE,
                                                   winotiny=_WINOTINY)
    return caps


_plans = {}
_MAX_PLANS = 256


# Algorithms whose outputs can take a NaN or inf from another output's operands (Winograd's
# tile transforms, the dense and batch matrices' structural zeros; the dot weight gradient's
# padded planes; sub-pixel grad_x's padded windows, whose zeros meet every weight; the direct
# weight gradient's vector lanes past the output's width, zeros of grad_y times x): all
# operands are checked before them, for NaN, inf and values whose transforms could overflow
# where torch's sums do not (_finite).  The depthwise kernels skip padding
# taps instead of multiplying zeros, so only a non-finite weight (forward) or grad_y / weight
# (backward) makes them differ from torch; x is not read twice for them.  im2col, pointwise,
# wide, direct, phases, rowphases and stem compute each output from its own window, and
# weight_rowgemm and weight_stem each weight from its own products (the stem's padded taps and
# masked tails, direct's lanes past the image read no other values into kept outputs), padding
# included, as torch does: no check, no cost.  stem_wino checks
# its operands itself and falls back to the direct stem (_fwd_stem_wino); weight_stem_wino checks
# its result and falls back to weight_stem (_bwd_weight_stem_wino).
_MIXES_X = frozenset({"winograd", "dense", "batch", "weight_dot", "subpixel",
                      "weight_winograd", "weight_direct", "weight_winotiny", "polywino",
                      "weight_polywino"})
_MIXES_W = frozenset({"depthwise", "depthwise3x3"})


def _finite(*arrays) -> bool:
    """True when no array holds a NaN, an infinity or a value of 2**35 or more in magnitude
    (2**480 in float64), the bound under which no fast algorithm's transform or sum overflows
    where torch's direct sums do not (_conv_im2col.all_moderate): one pass over each array's
    raw bits, in one C call (the boundary hands C-contiguous arrays)."""
    return _im2col.all_moderate(*arrays)


def _bad_images(a):
    """bool array[N]: which images of a hold a NaN, an infinity or a value past _finite's bound."""
    return np.array([not _finite(a[n]) for n in range(a.shape[0])], dtype=bool)


def _split_images(bad, run, y):
    """Batch invariance of the non-finite rule: the images whose operands are finite keep the
    plan they would have in a batch of finite images -- run(good, exact=False) and run(bad,
    exact=True) (index arrays of images, each returning their slice) fill y's rows.  The
    rule is per image, so an image's bits do not depend on its batch's other images."""
    good = ~bad
    y[good] = run(np.flatnonzero(good), False)
    y[bad] = run(np.flatnonzero(bad), True)
    return y


def _plan(x, weight, stride, padding, dilation, groups, needs_input_grad=True, exact=False):
    """(ConvShape, Ho, Wo, ConvPlan) of this call, cached per geometry, dtype, thread count,
    workspace limit, depthwise 3x3 level and finiteness (a dict lookup per call: the small
    ResNet's convs take tens of microseconds at batch 1)."""
    key = (x.shape, weight.shape, stride, tuple(padding), dilation, groups, x.dtype,
           needs_input_grad, get_num_threads(), get_workspace_limit(),
           _depthwise.depthwise3x3_level(1, 1 << 30), exact)
    rule = _prefer_winograd is _PREFER_WINOGRAD        # (else a test replaced the rule)
    hit = _plans.get(key) if rule else None
    if hit is None:
        s = P.ConvShape.of(x.shape, weight.shape, stride, padding, dilation, groups)
        Ho, Wo = s.out
        wino = None if rule else _prefer_winograd(x, weight, s.stride, s.dilation, groups, Ho, Wo)
        hit = (s, Ho, Wo, P.plan_conv(s, x.dtype, key[8], _caps(), key[9], needs_input_grad,
                                      wino, exact))
        if rule:
            if len(_plans) >= _MAX_PLANS:
                _plans.clear()
            _plans[key] = hit
    return hit


# The plan's rules with this machine's caps and the current limit (tests ask them directly;
# a test may replace _prefer_winograd to force the im2col path).
def _prefer_winograd(x, weight, stride, dilation, groups, Ho, Wo):
    F, Cg, KH, KW = weight.shape
    return P.prefer_winograd(F, Cg, KH, KW, stride, dilation, groups, Ho, Wo)


_PREFER_WINOGRAD = _prefer_winograd


def _dense_ok(C, H, W, F, KH, KW, Ho, Wo, groups):
    return P.dense_ok(C, H, W, F, KH, KW, Ho, Wo, groups, get_workspace_limit())


def _depthwise3x3_plan(F, C, KH, KW, stride, padding, dilation, itemsize, W, Wo):
    return P.depthwise3x3_plan(F, C, KH, KW, stride, padding, dilation, itemsize, W, Wo,
                               _caps().depthwise3x3_level)


def _plan_weight_dot(x, weight, groups, pointwise, Ho, Wo, stride, dilation, n_threads):
    s = P.ConvShape.of(x.shape, weight.shape, stride, (0, 0, 0, 0), dilation, groups)
    return P.plan_weight_dot(s, Ho, Wo, x.dtype == np.float32, _OWN_SGEMM, pointwise,
                             n_threads, get_workspace_limit())


def _plan_batch_backward(N, Cg, G, F, KK, HpWp, HoWo, itemsize, n_threads, needs_gx):
    return P.plan_batch_backward(N, Cg, G, F, KK, HpWp, HoWo, itemsize, n_threads, needs_gx,
                                 get_workspace_limit(), _OWN_SGEMM,
                                 _FIXED_SGEMM and itemsize == 4)


def _geometry(x, weight, stride, padding, dilation):
    N, C, H, W = x.shape
    F, Cg, KH, KW = weight.shape
    pt, pb, pl, pr = padding
    Ho = conv_out_size(H, KH, stride[0], pt + pb, dilation[0])
    Wo = conv_out_size(W, KW, stride[1], pl + pr, dilation[1])
    return N, C, H, W, F, Cg, KH, KW, Ho, Wo


_is_pointwise = P.is_pointwise


# --------------------------------------------------------------------------- kernel tables
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


@functools.lru_cache(maxsize=64)
def _batch_geometry(N, Ho, Wo, KH, KW, stride, dilation):
    """(Hp, Wp, idx): the padded plane _batch_im2col gathers from and idx[q], the offset of
    column q's top-left tap in a row of padded planes (image after image,
    q = image * Ho*Wo + ho * Wo + wo)."""
    Hp, Wp = P.batch_padded(Ho, Wo, KH, KW, stride, dilation)
    per_img = (np.arange(Ho)[:, None] * (stride[0] * Wp) + np.arange(Wo) * stride[1]).ravel()
    idx = (np.arange(N)[:, None] * (Hp * Wp) + per_img).ravel().astype(np.intp)
    idx.flags.writeable = False      # cached: shared by every later call of this geometry
    return Hp, Wp, idx


# Stride-1 convs whose output is as wide as the input gather their columns with masked vector
# loads straight from x (_conv_batch._batch_im2col, "shifted"; AVX2 or AVX-512 CPUs), not
# through padded planes and an index table.  Same columns, so the same bits; False forces the
# general gather.
_SHIFTED = _batch.shift_available()


@functools.lru_cache(maxsize=64)
def _shift_masks(H, W, Ho, Wo, KH, KW, stride, pt, pl, dilation, itemsize):
    """uint16 array[KH*KW * HoWo/lanes]: bit i of entry (tap, v) is set when output position
    v*lanes + i reads x (not padding) through that tap; empty when the shifted gather does not
    apply (stride 1, Wo == W, HoWo a multiple of the lanes per vector, an AVX2 CPU)."""
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


def _flipped_transposed(weight, groups):
    """The filters of grad_x as a stride-1 conv of grad_y: per group, w[f, c] -> w_t[c, f],
    each flipped in both axes; (C, F/groups, KH, KW)."""
    F, Cg, KH, KW = weight.shape
    w = weight.reshape(groups, F // groups, Cg, KH, KW).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(w[..., ::-1, ::-1]).reshape(groups * Cg, F // groups, KH, KW)


@functools.lru_cache(maxsize=64)
def _subpixel_geometry(s):
    """(Th, Tw, ulo, uhi, vlo, vhi, emin_h, emin_w, taps_h, taps_w) of the sub-pixel grad_x
    (conv_plan.subpixel_axis per axis); taps_h[q, dr]: the kernel row phase q reads at window
    row dr, or KH where it has none (a zero row appended to the kernel)."""
    out = []
    for n, k, st, p, d in ((s.H, s.KH, s.stride[0], s.padding[0], s.dilation[0]),
                           (s.W, s.KW, s.stride[1], s.padding[2], s.dilation[1])):
        T, lo, hi, emin = P.subpixel_axis(n, k, st, p, d)
        taps = np.full((st, T), k, np.intp)
        for q in range(st):
            for t in range(k):
                if (q + p - t * d) % st == 0:
                    taps[q, (q + p - t * d) // st - emin[q]] = t
        taps.flags.writeable = False
        emin = np.array(emin, np.intp)
        emin.flags.writeable = False
        out.append((T, lo, hi, emin, taps))
    (Th, ulo, uhi, eh, th), (Tw, vlo, vhi, ew, tw) = out
    return Th, Tw, ulo, uhi, vlo, vhi, eh, ew, th, tw


_NO_BASE = np.zeros(0, np.intp)


@functools.lru_cache(maxsize=8)
def _zeros_intp(n):
    z = np.zeros(n, np.intp)
    z.flags.writeable = False
    return z


@functools.lru_cache(maxsize=64)
def _subpixel_bases(s):
    """Per 4-row panel of the shifted sub-pixel GEMM (rows (qh, qw, c), Cg a multiple of 4):
    the slab offset of its phase's shift (conv_plan.subpixel_shifted)."""
    *_, eh, ew, _, _ = _subpixel_geometry(s)
    _, _, Wd, eh_lo, ew_lo, _, _ = P.subpixel_shifted(s)
    ph = np.arange(0, s.stride[0] * s.stride[1] * s.Cg, 4) // s.Cg
    b = ((eh[ph // s.stride[1]] - eh_lo) * Wd + ew[ph % s.stride[1]] - ew_lo).astype(np.intp)
    b.flags.writeable = False
    return b


@functools.lru_cache(maxsize=64)
def _subpixel_offsets(Fg, Th, Tw, rows, Wp):
    """Offset of tap (f, dr, dc)'s run in a sub-pixel task's slab (Fg planes of rows + Th - 1
    rows, Wp wide), in tap order."""
    o = (np.arange(Fg)[:, None, None] * ((rows + Th - 1) * Wp) + np.arange(Th)[:, None] * Wp
         + np.arange(Tw)).ravel().astype(np.intp)
    o.flags.writeable = False
    return o


_ROWGEMM = _phases.rowgemm_available()


@functools.lru_cache(maxsize=64)
def _subpixel_index(s, panels):
    """Flat indices into weight.ravel() + [0] of the sub-pixel GEMM's weights, (G, P, K): row
    (qh, qw, c), column (f, dr, dc) takes w[f, c] at phase (qh, qw)'s tap of window position
    (dr, dc), the appended 0 where the phase has none; panels: (G, P*K) in csrc/rowgemm.h's
    4-row panels, tap-major."""
    Th, Tw, *_, th, tw = _subpixel_geometry(s)
    G, F, Cg, KH, KW = s.groups, s.F, s.Cg, s.KH, s.KW
    f = np.arange(F).reshape(G, 1, 1, 1, F // G, 1, 1)           # (G, sh, sw, Cg, Fg, Th, Tw)
    c = np.arange(Cg).reshape(1, 1, 1, Cg, 1, 1, 1)
    kh = th.reshape(1, th.shape[0], 1, 1, 1, Th, 1)
    kw = tw.reshape(1, 1, tw.shape[0], 1, 1, 1, Tw)
    idx = ((f * Cg + c) * KH + kh) * KW + kw
    idx = np.where((kh == KH) | (kw == KW), F * Cg * KH * KW, idx)   # no tap: the 0
    idx = idx.reshape(G, -1, (F // G) * Th * Tw)
    if panels:
        P, K = idx.shape[1:]
        idx = idx.reshape(G, P // 4, 4, K).transpose(0, 1, 3, 2).reshape(G, P * K)
    idx = np.ascontiguousarray(idx, dtype=np.intp)
    idx.flags.writeable = False
    return idx


def _dense_matrix(weight, H, W, Ho, Wo, stride, pt, pl, dilation, n_threads):
    """The conv's dense (C*H*W, F*Ho*Wo) matrix.  Each Python thread keeps the last
    DENSE_KEEP matrices with the bits of the weight they came from (at most DENSE_KEEP_BYTES
    in all): a layer's backward finds its forward's (the weight unchanged in between) instead
    of building it again, and a changed weight rebuilds in the same buffer."""
    F, C = weight.shape[:2]
    key = (weight.shape, weight.dtype, H, W, Ho, Wo, tuple(stride), pt, pl, tuple(dilation))
    bits = weight.reshape(-1).view(np.uint32 if weight.itemsize == 4 else np.uint64)
    kept = _tls.__dict__.setdefault("dense", [])    # [key, weight bits, matrix], newest last
    entry = None
    for i, e in enumerate(kept):
        if e[0] == key:
            entry = kept.pop(i)
            kept.append(entry)
            if np.array_equal(e[1], bits):
                return entry[2]
            break
    if entry is None:
        entry = [key, None, np.empty((C * H * W, F * Ho * Wo), weight.dtype)]
        if entry[2].nbytes <= _T.DENSE_KEEP_BYTES:     # (bigger: built for this call only)
            kept.append(entry)
            while len(kept) > _T.DENSE_KEEP or \
                    sum(e[2].nbytes for e in kept) > _T.DENSE_KEEP_BYTES:
                kept.pop(0)
    entry[1] = None                         # (an interrupted build leaves no stale match)
    _dense.dense_weight(weight, entry[2], H, W, Ho, Wo, stride[0], stride[1], pt, pl,
                       dilation[0], dilation[1], n_threads)
    entry[1] = bits.copy()
    return entry[2]


def _check(step):
    if step.error is not None:
        raise MemoryError(step.error)
    return step.params


# --------------------------------------------------------------------------- forward runners
# Each: (x, weight, b, has_bias, y, s, step); y = conv(x, weight) + b.  x may be grad_y and
# weight the flipped, transposed filters (grad_x of a stride-1 conv; s then describes that conv).
def _fwd_depthwise3x3(x, weight, b, has_bias, y, s, step):
    same, n = step.params["same"], step.threads
    Ho, Wo = y.shape[2:]
    scratch = _workspace(1 if same else n * (Ho + 2) * (Wo + 2), x.dtype)
    _depthwise.conv2d_forward_depthwise3x3(x, weight, b, has_bias, y, scratch, s.padding[0],
                                      s.padding[2], step.params["level"], same, n)


def _fwd_depthwise(x, weight, b, has_bias, y, s, step):
    (sh, sw), (dh, dw), n = s.stride, s.dilation, step.threads
    Ho, Wo = y.shape[2:]
    scratch = _workspace(n * (Ho + (s.KH - 1) * dh) * (Wo + (s.KW - 1) * dw), x.dtype)
    _depthwise.conv2d_forward_depthwise(x, weight, b, has_bias, y, scratch, sh, sw, s.padding[0],
                                   s.padding[2], dh, dw, n)


def _fwd_dense(x, weight, b, has_bias, y, s, step):
    N, C, H, W = x.shape
    F, Ho, Wo = y.shape[1:]
    wd = _dense_matrix(weight, H, W, Ho, Wo, s.stride, s.padding[0], s.padding[2], s.dilation,
                       step.threads)
    with _blas_pin(x.dtype):
        _dense.gemm_rows(False, False, x.reshape(N, C * H * W), wd, y.reshape(N, F * Ho * Wo),
                        C * H * W, step.threads, step.params["row_blocks"],
                        step.params["image_rows"])
    if has_bias:    # (as one contiguous row per image: numpy's broadcast of b over the small
        # planes walked them 4-16 floats at a time, ~10% of LeNet5's c2 forward; same adds)
        yr = y.reshape(N, F * Ho * Wo)
        yr += np.repeat(b, Ho * Wo)


def _fwd_winograd(x, weight, b, has_bias, y, s, step, pt=None, pl=None, transpose_flip=False):
    """transpose_flip: conv with the filters of grad_x, weight (F, C) transposed and turned by
    180 degrees (x then has F channels), padded by pt on top and pl on the left."""
    C = x.shape[1]
    F = weight.shape[1] if transpose_flip else weight.shape[0]
    n, p = step.threads, step.params
    if p.get("tiny"):       # (conv_plan.plan_winotiny: padded by 1, so grad_x's pt = pl = 1)
        U = _workspace(16 * F * C, x.dtype, "winograd")[:16 * F * C].reshape(16, F, C)
        _winograd.winograd_filters(weight, U, n, transpose_flip)
        ws = _workspace(p.get("shared", 0) + n * p["per_thread"], x.dtype)
        _winograd.conv2d_forward_winotiny(x, U, b, has_bias, y, ws, p["per_thread"],
                                          p["groups"], n, p.get("fparts", 0))
        return
    tile = p.get("tile", 2)
    packed = p.get("packed", False)
    E, Fp = (tile + 2) ** 2, P.winograd_filter_rows(F, packed)
    U = _workspace(E * Fp * C, x.dtype, "winograd")[:E * Fp * C].reshape(E, Fp, C)
    _winograd.winograd_filters(weight, U, n, transpose_flip, packed)
    ws = _workspace(p.get("shared", 0) + n * p["per_thread"], x.dtype)
    if packed:
        apk = _NO_PACK
    elif tile == 2 and p.get("fparts"):     # (F(2x2)'s two-region split: by filter block)
        apk = _packed_a_blocks(U, p["fparts"], n)
    else:
        apk = _packed_a(U)
    with _blas_pin(x.dtype):
        _winograd.conv2d_forward_winograd(x, U, b, has_bias, y, ws, p["per_thread"], p["trows"],
                                      s.padding[0] if pt is None else pt,
                                      s.padding[2] if pl is None else pl, n, apk, tile,
                                      p.get("per_image", False), packed, p.get("fparts", 0),
                                      p.get("mix_edges", False), p.get("staged", False),
                                      p.get("lead", 0))


# weight_direct's layers (one input channel, >= 25 taps at most 8 wide, stride 1) take their
# batch forward from csrc/wdirect.h where the batch GEMM runs on csrc/fgemm.h: the same chains
# over the same taps, so the same bits, without building the columns (LeNet5's first layer).
# Beside the own AVX-512 GEMM too where the plan takes weight_direct (a half-rate CPU): its
# kernel sums k in one chain from zero within a block of CK_KC = 192 (csrc/sgemm.h) and adds
# the bias after, so up to 192 taps the bits are its own (LeNet5's c1 forward, one thread:
# 32 -> 29 us at batch 64, 57 -> 54 us at 128).  The kernel: the "direct" forward's
# (ck_direct_forward, the CPU's widest level; 8x8 blocks before: 24.8 -> 21.5 us at batch 64,
# 48.2 -> 42.4 at 128, one thread CPU time, the same bits)
_DIRECT_FWD = _FIXED_SGEMM and _wdirect.available()
_SGEMM_KC = 192


def _direct_forward(x, weight, stride, s):
    F, C, KH, KW = weight.shape
    return (_DIRECT_FWD and x.dtype == np.float32 and s.groups == 1 and stride == (1, 1)
            and s.dilation == (1, 1) and C == x.shape[1] and C <= _T.WDIRECT_MAX_CHANNELS
            and KW <= 8 and KH * KW >= _T.WDIRECT_MIN_TAPS
            and (not _OWN_SGEMM or (C * KH * KW <= _SGEMM_KC
                                    and P.avx2_algo(_caps(), "weight_direct"))))


def _fwd_batch(x, weight, b, has_bias, y, s, step, stride=None, pt=None, pl=None):
    N = x.shape[0]
    F, _, KH, KW = weight.shape
    Ho, Wo = y.shape[2:]
    stride = s.stride if stride is None else stride
    pt = s.padding[0] if pt is None else pt
    pl = s.padding[2] if pl is None else pl
    n, p = step.threads, step.params
    if _direct_forward(x, weight, stride, s):
        per = _wdirect.direct_floats(x.shape[1], Ho, Wo, KH, KW)
        _wdirect.conv2d_forward_flat(x, weight, b, has_bias, y,
                                     _workspace(n * per, np.float32, "weight_direct"), pt, pl,
                                     _wdirect.direct_level(), n)
        return
    Hp, Wp, idx = _batch_geometry(N, Ho, Wo, KH, KW, stride, s.dilation)
    ws = _workspace(n * p["per_thread"], x.dtype)
    with _blas_pin(x.dtype):
        _batch.conv2d_forward_batch(x, weight, b, has_bias, y, ws, p["per_thread"], p["imgs"],
                                   idx, Hp, Wp, pt, pl, s.dilation[0], s.dilation[1], s.groups,
                                   _shift_masks(x.shape[2], x.shape[3], Ho, Wo, KH, KW, stride,
                                                pt, pl, s.dilation, x.itemsize), n)


def _fwd_phases(x, weight, b, has_bias, y, s, step):
    C, (KH, KW), (sh, sw), (dh, dw) = s.C, (s.KH, s.KW), s.stride, s.dilation
    rows, per = step.params["rows"], step.params["per_thread"]
    ws = _workspace(per * step.threads, x.dtype)
    _phases.conv2d_forward_phases(x, b, has_bias, y, ws, per, KH, KW, sh, sw, s.padding[0],
                                s.padding[2], dh, dw, rows, step.threads,
                                _packed_a(weight.reshape(1, s.F, -1)),
                                _phase_offsets(C, KH, KW, sh, sw, dh, dw, rows, y.shape[3]))


def _panels(a):
    """a (P, K), P a multiple of 4, in csrc/rowgemm.h's 4-row panels, tap-major (flat)."""
    P_, K = a.shape
    return np.ascontiguousarray(a.reshape(P_ // 4, 4, K).transpose(0, 2, 1)).reshape(-1)


def _fwd_rowphases(x, weight, b, has_bias, y, s, step):
    C, (KH, KW), (sh, sw), (dh, dw) = s.C, (s.KH, s.KW), s.stride, s.dilation
    rows, per = step.params["rows"], step.params["per_thread"]
    ws = _workspace(per * step.threads, x.dtype)
    _phases.conv2d_forward_rowphases(x, _panels(weight.reshape(s.F, -1)), b, has_bias, y, ws,
                                     per, KH, KW, sh, sw, s.padding[0], s.padding[2], dh, dw,
                                     rows, step.threads,
                                     _phase_offsets(C, KH, KW, sh, sw, dh, dw, rows,
                                                    y.shape[3]), step.params["kc"])


# Winograd F(4x4, 2x2)'s filter transform G g G^T (csrc/polywino.h), points 0, 1, -1, 1/2, inf
_PW_G = np.array([[1, 0], [0.5, 0.5], [-1 / 6, 1 / 6], [-8 / 3, -4 / 3], [0, 0.5]])
_PW_GG = np.kron(_PW_G, _PW_G)      # [k * 5 + l, a * 2 + b] = G[k, a] * G[l, b]


def polywino_filters(weight):
    """U (25, 4 * C8, F8) float32 for conv2d_forward_polywino: U[k * 5 + l, (2p + q) * C8 + c,
    f] = (G g G^T)[k, l], g[a, b] = weight[f, c, 2a + p, 2b + q] (the 2x2 sub-kernel of phase
    (p, q)); computed in float64, rounded once; zero for the padded channels and filters."""
    F, C = weight.shape[:2]
    C8, F8 = -(-C // 8) * 8, -(-F // 8) * 8
    # (one (25 x 4) @ (4 x 4CF) product in float64: einsum's path took 0.67 ms for convt_28)
    g = weight.reshape(F, C, 2, 2, 2, 2).transpose(2, 4, 3, 5, 1, 0)    # (a, b, p, q, c, f)
    u = _PW_GG @ g.reshape(4, 4 * C * F).astype(np.float64)
    U = np.zeros((25, 4, C8, F8), dtype=np.float32)
    U[:, :, :C, :F] = u.reshape(25, 4, C, F)
    return U.reshape(25, 4 * C8, F8)


def polywino_grad_filters(weight):
    """U (25, F8, 4 * C8) float32 for conv2d_grad_input_polywino: U[k * 5 + l, f, (2P + Q) * C8
    + c] = (G g G^T)[k, l], g[b, b'] = weight[f, c, 2(1 - b) + P, 2(1 - b') + Q] (output phase
    (P, Q)'s flipped sub-kernel); float64, rounded once; zero for the padded channels."""
    F, C = weight.shape[:2]
    C8, F8 = -(-C // 8) * 8, -(-F // 8) * 8
    g = weight.reshape(F, C, 2, 2, 2, 2)[:, :, ::-1, :, ::-1, :]      # (f, c, b, P, b', Q)
    u = _PW_GG @ g.transpose(2, 4, 0, 3, 5, 1).reshape(4, 4 * C * F).astype(np.float64)
    U = np.zeros((25, F8, 4, C8), dtype=np.float32)
    U[:, :F, :, :C] = u.reshape(25, F, 4, C)
    return U.reshape(25, F8, 4 * C8)


def _fwd_polywino(x, weight, b, has_bias, y, s, step):
    """The 4x4 stride-2 forward by F(4x4, 2x2) over the phase planes (conv_plan.plan_polywino)."""
    p = step.params
    ws = _workspace(step.threads * p["per_thread"], np.float32, "polywino")
    _winograd.conv2d_forward_polywino(x, polywino_filters(weight), b, has_bias, y, ws,
                                      p["per_thread"], p["trows"], s.padding[0], s.padding[2],
                                      step.threads, p["run"])


def _fwd_stem(x, weight, b, has_bias, y, s, step):
    """The stem forward on csrc/stem.h (conv_plan.plan_stem)."""
    rows, per = step.params["rows"], step.params["per_thread"]
    ws = _workspace(per * step.threads, x.dtype)
    _phases.conv2d_forward_stem(x, _panels(weight.reshape(s.F, -1)), b, has_bias, y, ws, per,
                                s.KH, s.KW, s.stride[0], s.stride[1], s.padding[0],
                                s.padding[2], rows, step.threads,
                                _phase_offsets(s.C, s.KH, s.KW, s.stride[0], s.stride[1], 1, 1,
                                               rows, y.shape[3]))


def _fwd_stem_wino(x, weight, b, has_bias, y, s, step):
    """The stem forward by a 1-D Winograd along the rows on csrc/stem_wino.h
    (conv_plan.plan_stem_wino).  Its transforms mix a tile's values (inf * 0 = NaN), so a
    non-finite weight sends the batch, and a non-finite image that image, to the direct stem
    (step.params["direct"]), whose outputs read only their own windows: NaN / inf element for
    element as torch, and an image's bits still do not depend on its batch."""
    p, direct = step.params, step.params["direct"]
    if not _finite(weight, x):
        if not _finite(weight):
            return _fwd_stem(x, weight, b, has_bias, y, s, direct)
        bad = _bad_images(x)
        for idx, run in ((np.flatnonzero(~bad), _fwd_stem_wino), (np.flatnonzero(bad), _fwd_stem)):
            if len(idx):
                part = np.empty((len(idx),) + y.shape[1:], dtype=y.dtype)
                run(np.ascontiguousarray(x[idx]), weight, b, has_bias, part,
                    s._replace(N=len(idx)), step if run is _fwd_stem_wino else direct)
                y[idx] = part
        return
    rows, per, sh = p["rows"], p["per_thread"], s.stride[0]
    U = _workspace(p["ufloats"], np.float32, "stem_wino")[:p["ufloats"]]
    _phases.stem_wino_filters(weight, U)
    ws = _workspace(per * step.threads, x.dtype)
    _phases.conv2d_forward_stem_wino(x, U, b, has_bias, y, ws, per, s.KH, sh, s.padding[0],
                                     s.padding[2], rows, step.threads,
                                     _stem_wino_offsets(s.C, s.KH, sh, rows + (s.KH - 1) // sh,
                                                        -(-y.shape[3] // 4)),
                                     p.get("stream", False))


@functools.lru_cache(maxsize=64)
def _stem_wino_offsets(C, KH, sh, Ra, nt):
    """csrc/stem_wino.h's tap offsets for tasks of Ra phase rows of nt tiles."""
    o = _phases.stem_wino_offsets(C, KH, sh, Ra, nt, np.empty(13 * C * KH, np.intp))
    o = np.asarray(o)
    o.flags.writeable = False
    return o


def _fwd_wide(x, weight, b, has_bias, y, s, step):
    (dh, dw), per = s.dilation, step.params["per_thread"]
    Ho, Wo = y.shape[2:]
    ws = _workspace(per * step.threads, x.dtype)
    with _blas_pin(x.dtype):
        _batch.conv2d_forward_wide(x, weight, b, has_bias, y, ws, per, s.padding[0],
                                  s.padding[2], dh, dw, step.threads,
                                  _packed_a(weight.reshape(1, s.F, -1)),
                                  _wide_offsets(s.C, s.KH, s.KW, Ho + (s.KH - 1) * dh,
                                                Wo + (s.KW - 1) * dw, dh, dw))


def _fwd_direct(x, weight, b, has_bias, y, s, step):
    p = step.params
    ws = _workspace(p["per_thread"] * step.threads, np.float32, "direct")
    _wdirect.conv2d_forward_flat(x, weight, b, has_bias, y, ws, s.padding[0], s.padding[2],
                                 p["level"], step.threads, p["bias_first"])


def _fwd_im2col(x, weight, b, has_bias, y, s, step):
    p = _check(step)
    (sh, sw), (dh, dw), G = s.stride, s.dilation, s.groups
    ws = _workspace(step.threads * p["per_thread"], x.dtype)
    with _blas_pin(x.dtype):
        _im2col.conv2d_forward_gemm(x, weight, b, has_bias, y, ws, p["per_thread"], p["rows"], sh,
                                  sw, s.padding[0], s.padding[2], dh, dw, G,
                                  step.algo == "pointwise", step.threads,
                                  _packed_a(weight.reshape(G, s.F // G, -1)),
                                  p.get("blocks", 0), p.get("fblocks", 0))


_FORWARD = {"depthwise3x3": _fwd_depthwise3x3, "depthwise": _fwd_depthwise, "dense": _fwd_dense,
            "winograd": _fwd_winograd, "batch": _fwd_batch, "phases": _fwd_phases,
            "rowphases": _fwd_rowphases, "stem": _fwd_stem, "stem_wino": _fwd_stem_wino,
            "wide": _fwd_wide, "direct": _fwd_direct, "polywino": _fwd_polywino,
            "pointwise": _fwd_im2col, "im2col": _fwd_im2col}


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, out=None,
                   exact=False):
    """x (N,C,H,W), weight (F,C/groups,KH,KW), bias (F,) or None -> y (N,F,Ho,Wo)."""
    s, Ho, Wo, plan = _plan(x, weight, stride, padding, dilation, groups, exact=exact)
    algo = plan.forward.algo
    # which operands can reach other outputs than torch's on this plan (see _MIXES_X)
    # (each operand scanned once: on LeNet's small maps the scans are part of the op's cost)
    if algo in _MIXES_X:
        w_ok, x_ok = _finite(weight), _finite(x)
        if w_ok and not x_ok:
            bad = _bad_images(x)
            if not bad.all():       # (per image: the finite ones keep their plan)
                y = out if out is not None else np.empty((s.N, s.F, Ho, Wo), dtype=x.dtype)
                return _split_images(bad, lambda i, ex: conv2d_forward(
                    x[i], weight, bias, stride, padding, dilation, groups, exact=ex), y)
        exact_plan = not (w_ok and x_ok)
    else:
        exact_plan = algo in _MIXES_W and not _finite(weight)
    if exact_plan:
        s, Ho, Wo, plan = _plan(x, weight, stride, padding, dilation, groups, exact=True)
    y = out if out is not None else np.empty((s.N, s.F, Ho, Wo), dtype=x.dtype)
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(1, dtype=x.dtype)
    _FORWARD[plan.forward.algo](x, weight, b, has_bias, y, s, plan.forward)
    return y


# --------------------------------------------------------------------------- backward runners
# Each: (grad_y, x, weight, gx, gw, gb, s, step, needs_gx, needs_gw) fills what it is asked for.
def _bwd_depthwise3x3(gy, x, weight, gx, gw, gb, s, step, needs_gx, needs_gw):
    """grad_x, grad_weight and grad_bias in one pass per plane."""
    H, W, (Ho, Wo), n, dt = s.H, s.W, gy.shape[2:], step.threads, x.dtype
    same = step.params["same"]
    scratch = _workspace(1 if same else n * ((Ho + 2) * (Wo + 2) + (H + 2) * (W + 2)), dt)
    parts = _workspace(s.N * s.C * 10, np.float64, "parts")
    _depthwise.conv2d_backward_depthwise3x3(gy, x, weight, gx, gw,
                                       gb if gb is not None else np.empty(1, dtype=dt),
                                       gb is not None, needs_gx, scratch, parts, s.padding[0],
                                       s.padding[2], step.params["level"], same, n)


def _bwd_depthwise(gy, x, weight, gx, gw, gb, s, step, needs_gx, needs_gw):
    H, W, (Ho, Wo), n, (dh, dw) = s.H, s.W, gy.shape[2:], step.threads, s.dilation
    KH, KW = s.KH, s.KW
    per = max(KH * KW * Wo, (Ho + (KH - 1) * dh) * (Wo + (KW - 1) * dw),
              (H + (KH - 1) * dh) * (W + (KW - 1) * dw) + KH * KW)
    scratch = _workspace(n * per, x.dtype)[:n * per]
    accs = np.empty(n * KH * KW, dtype=np.float64)
    _depthwise.conv2d_backward_depthwise(gy, x, weight, gx, gw, scratch, accs, s.stride[0],
                                    s.stride[1], s.padding[0], s.padding[2], dh, dw, needs_gx, n)


def _bwd_dense(gy, x, weight, gx, gw, gb, s, step, needs_gx, needs_gw):
    N, C, H, W = x.shape
    F, Ho, Wo = gy.shape[1:]
    n, rb, dt = step.threads, step.params["row_blocks"], x.dtype
    pt, pl = s.padding[0], s.padding[2]
    wd = _dense_matrix(weight, H, W, Ho, Wo, s.stride, pt, pl, s.dilation, n)
    gy2 = gy.reshape(N, F * Ho * Wo)
    with _blas_pin(dt):
        if needs_gx:
            _dense.gemm_rows(False, True, gy2, wd, gx.reshape(N, C * H * W), F * Ho * Wo, n, rb,
                             step.params["image_rows"])
        if not needs_gw:        # (grad_x alone: conv2d_grad_input)
            return
        gwd = _workspace(wd.size, dt, "dense_grad")[:wd.size].reshape(wd.shape)
        _dense.gemm_rows(True, False, x.reshape(N, C * H * W), gy2, gwd, N, n, rb)
    _dense.dense_fold(gwd, gw, H, W, Ho, Wo, s.stride[0], s.stride[1], pt, pl, s.dilation[0],
                     s.dilation[1], n)


def _bwd_winograd(gy, x, weight, gx, gw, gb, s, step, needs_gx, needs_gw):
    """grad_x of a 3x3 stride-1 conv: the conv of grad_y with the filters flipped and
    transposed, padded by 2 - pt on top and 2 - pl on the left (negative padding crops)."""
    _fwd_winograd(gy, weight, np.zeros(1, dtype=x.dtype), False, gx, s, step,
                  2 - s.padding[0], 2 - s.padding[2], transpose_flip=True)


def _bwd_batch(gy, x, weight, gx, gw, gb, s, step, needs_gx, needs_gw):
    if step.params.get("flipped"):
        # stride 1: grad_x is the conv of grad_y with the flipped, transposed filters, padded by
        # (KH-1)*dh - pt on top, (KW-1)*dw - pl on the left (negative: cropped); a gather into
        # columns with K = F*KH*KW instead of a K = F GEMM and a scatter-add
        _fwd_batch(gy, _flipped_transposed(weight, s.groups), np.zeros(1, dtype=x.dtype), False,
                   gx, s, step, (1, 1), (s.KH - 1) * s.dilation[0] - s.padding[0],
                   (s.KW - 1) * s.dilation[1] - s.padding[2])
        return
    N, F, Ho, Wo, dt, p = s.N, s.F, gy.shape[2], gy.shape[3], x.dtype, step.params
    KH, KW, pt, pl = s.KH, s.KW, s.padding[0], s.padding[2]
    Hp, Wp, idx = _batch_geometry(N, Ho, Wo, KH, KW, s.stride, s.dilation)
    gwp = _workspace(max(1, (p["nsplit"] - 1) * gw.size), dt, "gw_parts")
    gyt = _workspace(F * N * Ho * Wo, dt, "gyt")
    ws = _workspace(step.threads * p["per_thread"], dt)
    with _blas_pin(dt):
        _batch.conv2d_backward_batch(gy, x, weight, gx, gw, gyt, ws, p["per_thread"],
                                    p["chans_w"], p["kimgs"], p["imgs"], idx, Hp, Wp,
                                    s.stride[1], pt, pl, s.dilation[0], s.dilation[1], s.groups,
                                    needs_gx,
                                    _shift_masks(s.H, s.W, Ho, Wo, KH, KW, s.stride, pt, pl,
                                                 s.dilation, x.itemsize), p["nsplit"], gwp,
                                    step.threads, needs_gw, _T.BATCH_W_FGEMM_RATIO,
                                    p.get("filters_w", -1))


def _bwd_polywino(gy, x, weight, gx, gw, gb, s, step, needs_gx, needs_gw, bias=None):
    """grad_x of a 4x4 stride-2 conv by F(4x4, 2x2) on its output phases
    (conv_plan.plan_polywino_grad_x); bias (C,): added to grad_x as it is written
    (conv_transpose2d's forward)."""
    p = step.params
    ws = _workspace(step.threads * p["per_thread"], np.float32, "polywino")
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(1, np.float32)
    _winograd.conv2d_grad_input_polywino(gy, polywino_grad_filters(weight), b, has_bias, gx, ws,
                                         p["per_thread"], p["trows"], s.padding[0],
                                         s.padding[2], step.threads)


def _bwd_subpixel(gy, x, weight, gx, gw, gb, s, step, needs_gx, needs_gw, bias=None):
    """grad_x of a strided conv by its output phases (conv_plan.plan_subpixel); bias (C,):
    added to grad_x on the way (conv_transpose2d's forward)."""
    Th, Tw, ulo, uhi, vlo, vhi, eh, ew, th, tw = _subpixel_geometry(s)
    p = step.params
    G, P_, K = s.groups, s.stride[0] * s.stride[1] * s.Cg, (s.F // s.groups) * Th * Tw
    w0 = np.append(weight.reshape(-1), weight.dtype.type(0))
    rows, Wp, pbase, shift = p["rows"], vhi - vlo + Tw - 1, _NO_BASE, (0, 0, 0, 0, 1, 1)
    if x.dtype == np.float32 and _ROWGEMM and P_ % 4 == 0:     # (csrc/rowgemm.h's panels)
        wpan, wsub = w0.take(_subpixel_index(s, True)), np.zeros((0, 1, 1), x.dtype)
        if p["srows"]:                  # each phase at its own shift: fewer columns
            I, J, Wd, eh_lo, ew_lo, deep, spread_w = P.subpixel_shifted(s)
            pbase, eh, ew = _subpixel_bases(s), _zeros_intp(s.stride[0]), _zeros_intp(s.stride[1])
            rows, Wp, ulo, uhi, vlo, vhi = p["srows"], Wd, 0, I, 0, J
            tile = _T.SUBPIXEL_TILE
            shift = (eh_lo, ew_lo, deep, spread_w + Tw - 1 + tile - 1, tile, p["skc"])
    else:
        wpan, wsub = _NO_PACK, w0.take(_subpixel_index(s, False))
    ws = _workspace(step.threads * p["per_thread"], x.dtype)
    # (on rowgemm no BLAS runs: leave its threads alone, see the module docstring)
    with _blas_pin(x.dtype) if wpan is _NO_PACK else _no_pin:
        _phases.conv2d_grad_x_subpixel(gy, G, P_, K, wsub, wpan, gx, ws, p["per_thread"],
                                       s.stride[0], s.stride[1], Th, Tw, ulo, uhi, vlo, vhi, eh, ew,
                                       _subpixel_offsets(s.F // s.groups, Th, Tw,
                                                         rows + shift[2], Wp),
                                       rows, step.threads,
                                       bias if bias is not None else np.zeros(1, x.dtype),
                                       bias is not None, pbase, Wp, *shift)


def _bwd_weight_dot(gy, x, weight, gx, gw, gb, s, step, needs_gx, needs_gw):
    """grad_weight and grad_bias as dot products along the output positions."""
    p, dt, (sh, sw), (dh, dw) = step.params, x.dtype, s.stride, s.dilation
    _dot.conv2d_backward_weight_dot(gy, x, gw.reshape(s.F, -1),
                                     gb if gb is not None else np.empty(1, dtype=dt),
                                     gb is not None, _workspace(p["floats"], dt), s.KH, s.KW,
                                     sh, sw, s.padding[0], s.padding[2], dh, dw, p["rows"],
                                     p["kr"], p["fchunk"], p["groups_n"],
                                     _phase_offsets(s.Cg, s.KH, s.KW, sh, sw, dh, dw, p["rows"],
                                                    gy.shape[3]),
                                     step.threads, s.groups)


@functools.lru_cache(maxsize=64)
def _rowgemm_w_offsets(N, Ho, Wo, sh, sw, Hp, Wp, C):
    """Offset of position (n, i, j)'s tap row start in channels-last padded x (N, Hp, Wp, C),
    in position order (conv2d_grad_weight_rowgemm)."""
    o = (((np.arange(N)[:, None, None] * Hp + np.arange(Ho)[:, None] * sh) * Wp
          + np.arange(Wo) * sw) * C).ravel().astype(np.intp)
    o.flags.writeable = False
    return o


def _bwd_weight_rowgemm(gy, x, weight, gx, gw, gb, s, step, needs_gx, needs_gw):
    """grad_weight on csrc/rowgemm.h (conv_plan.plan_weight_rowgemm)."""
    p, (sh, sw), (Ho, Wo) = step.params, s.stride, gy.shape[2:]
    Hp, Wp = (Ho - 1) * sh + s.KH, (Wo - 1) * sw + s.KW
    nx, ng = p["team"] * Hp * Wp * s.C, p["team"] * s.F * Ho * Wo      # (per thread of it)
    ws = _workspace(p["floats"], np.float32, "weight_rowgemm")
    _phases.conv2d_grad_weight_rowgemm(gy, x, gw, ws[:nx], ws[nx:nx + ng],
                                       ws[nx + ng:p["floats"]],
                                       _rowgemm_w_offsets(1, Ho, Wo, sh, sw, Hp, Wp, s.C),
                                       sh, sw, s.padding[0], s.padding[2], p["filters"],
                                       p["khs"], p["kc"], step.threads)


@functools.lru_cache(maxsize=64)
def _stem_w_offsets(C, KH, KW, sh, sw, rows, Wo):
    """_phase_offsets padded with zeros to a multiple of 3 taps (csrc/stem.h's 4x3 tiles; the
    padded taps read the planes' start and their sums are dropped)."""
    o = _phase_offsets(C, KH, KW, sh, sw, 1, 1, rows, Wo)
    o = np.concatenate([o, np.zeros(-len(o) % 3, np.intp)])
    o.flags.writeable = False
    return o


def _bwd_weight_stem(gy, x, weight, gx, gw, gb, s, step, needs_gx, needs_gw):
    """grad_weight on csrc/stem.h (conv_plan.plan_weight_stem)."""
    p, (sh, sw) = step.params, s.stride
    per, npart = p["per_thread"], p["part"]
    ws = _workspace(per * step.threads + npart, np.float32, "weight_stem")
    planes, part = ws[:per * step.threads], ws[per * step.threads:per * step.threads + npart]
    _phases.conv2d_grad_weight_stem(gy, x, gw, gb if gb is not None else np.empty(1, np.float32),
                                    gb is not None, planes, per, part,
                                    _stem_w_offsets(s.C, s.KH, s.KW, sh, sw, p["rows"],
                                                    gy.shape[3]),
                                    sh, sw, s.padding[0], s.padding[2], p["rows"], p["fchunk"],
                                    p["groups_n"], step.threads)


@functools.lru_cache(maxsize=64)
def _stem_wgrad_offsets(C, KH, sh, Ra, nt):
    """csrc/stem_wgrad.h's tap offsets for slabs of Ra phase rows of nt tiles."""
    o = np.empty(_phases.stem_wgrad_sizes(4, C, KH)[0], np.intp)
    o = np.asarray(_phases.stem_wgrad_offsets(C, KH, sh, Ra, nt, o))
    o.flags.writeable = False
    return o


def _bwd_weight_stem_wino(gy, x, weight, gx, gw, gb, s, step, needs_gx, needs_gw):
    """grad_weight by the transposed 1-D Winograd on csrc/stem_wgrad.h
    (conv_plan.plan_weight_stem_wino).  Its transforms mix a tile's values (inf * 0 = NaN), and
    a NaN or inf in x or grad_y always leaves one in the result, as does a transform that
    overflows: where the result (or grad_bias) is not finite, the direct weight_stem
    (step.params["direct"]) computes it again, each weight from its own products as torch.
    Checking the 64 x 147 results costs nothing; checking the operands would read them again."""
    p, sh = step.params, s.stride[0]
    per, npart, rows = p["per_thread"], p["part"], p["rows"]
    ws = _workspace(per * step.threads + npart, np.float32, "weight_stem")
    _phases.conv2d_grad_weight_stem_wino(
        gy, x, gw, gb if gb is not None else np.empty(1, np.float32), gb is not None,
        ws[:per * step.threads], per, ws[per * step.threads:per * step.threads + npart],
        _stem_wgrad_offsets(s.C, s.KH, sh, rows + (s.KH - 1) // sh, -(-gy.shape[3] // 4)),
        sh, s.padding[0], s.padding[2], rows, p["groups_n"], step.threads)
    if not (np.isfinite(gw).all() and (gb is None or np.isfinite(gb).all())):
        _bwd_weight_stem(gy, x, weight, gx, gw, gb, s, p["direct"], needs_gx, needs_gw)


def _bwd_weight_winograd(gy, x, weight, gx, gw, gb, s, step, needs_gx, needs_gw):
    """grad_weight by the transposed F(4x4, 3x3) (conv_plan.plan_weight_winograd)."""
    p = step.params
    ws = _workspace(p["floats"], x.dtype, "weight_winograd")
    with _no_pin if p["fixed"] else _blas_pin(x.dtype):
        _winograd.conv2d_grad_weight_winograd(gy, x, gw, ws[:p["floats"]], s.padding[0],
                                              s.padding[2], p["trows"], p["cols"], p["parts"],
                                              step.threads, p["fixed"],
                                              p.get("fgemm", False))


def _bwd_weight_polywino(gy, x, weight, gx, gw, gb, s, step, needs_gx, needs_gw):
    """grad_weight of a 4x4 stride-2 conv by the transposed F(4x4, 2x2) over the phase planes
    (conv_plan.plan_weight_polywino)."""
    p = step.params
    ws = _workspace(p["floats"], np.float32, "weight_polywino")
    _winograd.conv2d_grad_weight_polywino(gy, x, gw, ws[:p["floats"]], s.padding[0],
                                          s.padding[2], p["imgs"], p["cols"], step.threads)


def _bwd_weight_winotiny(gy, x, weight, gx, gw, gb, s, step, needs_gx, needs_gw):
    """grad_weight by the transposed F(2x2) over 8-image tiles (conv_plan.plan_weight_winotiny)."""
    p = step.params
    n = p["sums"] + p.get("shared", 0) + step.threads * p["per_thread"]
    ws = _workspace(n, np.float32, "weight_winotiny")
    _winograd.conv2d_grad_weight_winotiny(gy, x, gw, ws[:n], p["per_thread"], p["part_groups"],
                                          p["chunk"], step.threads, p.get("split", False))


def _bwd_weight_direct(gy, x, weight, gx, gw, gb, s, step, needs_gx, needs_gw):
    """grad_weight on csrc/wdirect.h (conv_plan.plan_weight_direct)."""
    xp = _workspace(step.params["floats"], np.float32, "weight_direct")
    _wdirect.conv2d_grad_weight_direct(gy, x, gw, xp, s.padding[0], s.padding[2], step.threads)


def _bwd_im2col(gy, x, weight, gx, gw, gb, s, step, needs_gx, needs_gw):
    p = _check(step)
    (sh, sw), (dh, dw), dt = s.stride, s.dilation, x.dtype
    nsplit = p["nsplit"] if needs_gw else 1
    if needs_gw:
        gw[...] = 0         # (the kernel adds each task's columns into it)
    gwp = _workspace(max(1, (nsplit - 1) * gw.size), dt, "gw_parts")
    if nsplit > 1:
        gwp[:(nsplit - 1) * gw.size] = 0    # (the later parts of the batch, summed apart)
    ws = _workspace(step.threads * p["per_thread"], dt)
    with _blas_pin(dt):
        _im2col.conv2d_backward_gemm(gy, x, weight, gx, gw, ws, p["per_thread"], p["units_w"],
                                   p["rows_w"], p["chans_x"], p["rows_x"], sh, sw, s.padding[0],
                                   s.padding[2], dh, dw, s.groups, step.algo == "pointwise",
                                   needs_gx, needs_gw, step.threads, nsplit, gwp,
                                   p.get("filters_w", 0), p.get("pos_x", 0),
                                   p.get("fgemm_w", False), _T.PW_W_CHAIN,
                                   _packed_a(weight.reshape(s.groups, s.F // s.groups, -1), True)
                                   if needs_gx and step.algo == "pointwise" else _NO_PACK,
                                   p.get("smallk_x", False))


_BACKWARD = {"depthwise3x3": _bwd_depthwise3x3, "depthwise": _bwd_depthwise, "dense": _bwd_dense,
             "winograd": _bwd_winograd, "batch": _bwd_batch, "weight_dot": _bwd_weight_dot,
             "subpixel": _bwd_subpixel, "weight_rowgemm": _bwd_weight_rowgemm,
             "polywino": _bwd_polywino,
             "weight_stem": _bwd_weight_stem, "weight_stem_wino": _bwd_weight_stem_wino,
             "weight_winograd": _bwd_weight_winograd, "weight_direct": _bwd_weight_direct,
             "weight_winotiny": _bwd_weight_winotiny,
             "weight_polywino": _bwd_weight_polywino,
             "pointwise": _bwd_im2col, "im2col": _bwd_im2col}


def conv2d_backward(grad_y, x, weight, stride, padding, dilation, groups, needs_input_grad,
                    has_bias):
    """-> (grad_x or None, grad_weight, grad_bias or None); deterministic."""
    s, Ho, Wo, plan = _plan(x, weight, stride, padding, dilation, groups, needs_input_grad)
    algos = {plan.grad_weight.algo, plan.grad_x.algo if plan.grad_x is not None else "im2col"}
    sums_check = False      # grad_y checked through the per-filter sums the kernel makes anyway
    if algos & _MIXES_X and not _finite(grad_y, x, weight):
        plan = None
    elif algos & _MIXES_W:
        if not _finite(weight):
            plan = None
        elif plan.grad_bias == "fused" or has_bias:
            sums_check = True
        elif not _finite(grad_y):
            plan = None
    # grad_x of an image reads its grad_y and the weight alone: where the exact plan is taken
    # (a non-finite operand) and the weight is finite, grad_x comes from conv2d_grad_input,
    # which applies the non-finite rule per image -- the images with a finite grad_y keep the
    # bits they get in a batch of finite images (batch invariance)
    exact = plan is None
    gx_apart = exact and needs_input_grad and _finite(weight)
    if exact:
        s, Ho, Wo, plan = _plan(x, weight, stride, padding, dilation, groups,
                                needs_input_grad and not gx_apart, exact=True)
    out = _backward(plan, s, grad_y, x, weight, needs_input_grad and not (exact and gx_apart),
                    has_bias or sums_check)
    if sums_check and not np.isfinite(out[2].sum()):
        # a NaN or inf in grad_y: the depthwise kernels would differ from torch (they skip
        # the padding taps torch multiplies); run again on im2col
        exact = True
        gx_apart = needs_input_grad        # (sums_check: the weight is finite)
        s, Ho, Wo, plan = _plan(x, weight, stride, padding, dilation, groups,
                                needs_input_grad and not gx_apart, exact=True)
        out = _backward(plan, s, grad_y, x, weight, needs_input_grad and not gx_apart, has_bias)
    gx, gw, gb = out
    if exact and gx_apart:
        gx = conv2d_grad_input(grad_y, weight, x.shape, stride, padding, dilation, groups)
    return (gx if needs_input_grad else None), gw, (gb if has_bias else None)


def _backward(plan, s, grad_y, x, weight, needs_input_grad, with_bias):
    dt = x.dtype
    gx = np.empty(x.shape, dtype=dt) if needs_input_grad else np.empty((1, 1, 1, 1), dtype=dt)
    gw = np.empty(weight.shape, dtype=dt)
    gb = np.empty(s.F, dtype=dt) if with_bias else None
    gx_step, gw_step = plan.grad_x, plan.grad_weight
    if with_bias and plan.grad_bias == "sum":
        _im2col.bias_grad(grad_y, gb, plan.grad_bias_threads)
    if gx_step is not None and gx_step is not gw_step:        # grad_x on its own
        _BACKWARD[gx_step.algo](grad_y, x, weight, gx, gw, None, s, gx_step, True, False)
    _BACKWARD[gw_step.algo](grad_y, x, weight, gx, gw, gb, s, gw_step, gx_step is gw_step, True)
    return gx, gw, gb


# --------------------------------------------------------------------------- grad_x alone
# The runners that make grad_weight whatever they are asked (one pass per plane): grad_x alone
# runs them on a zero stand-in for x and discards their grad_weight.  Every other runner reads
# x for grad_weight only, so its x is then just the shape (the grad_x buffer stands in).
_GW_ALWAYS = frozenset({"depthwise3x3", "depthwise"})


def conv2d_grad_input(grad_y, weight, x_shape, stride, padding, dilation, groups, bias=None):
    """grad_x (x_shape) of conv2d alone -- conv_transpose2d's forward: conv2d_backward's grad_x
    step of the same plan, with no weight gradient; the same non-finite rules (a plan whose
    grad_x mixes values across outputs runs on im2col when grad_y or weight is not finite).
    bias (x_shape[1],) or None: added to grad_x (by the subpixel kernel as it writes, else
    after; the same bits)."""
    gx = np.empty(x_shape, dtype=grad_y.dtype)
    # (gx stands in for x: the plan reads its shape and dtype)
    s, Ho, Wo, plan = _plan(gx, weight, stride, padding, dilation, groups)
    step = plan.grad_x
    w_ok = g_ok = True
    if step.algo in _MIXES_X or step.algo in _MIXES_W:
        w_ok, g_ok = _finite(weight), _finite(grad_y)
        if w_ok and not g_ok:
            bad = _bad_images(grad_y)
            if not bad.all():       # (per image: the finite ones keep their plan)
                def run(i, exact):
                    fn = _grad_input_exact if exact else conv2d_grad_input
                    return fn(grad_y[i], weight, (len(i),) + tuple(x_shape[1:]), stride,
                              padding, dilation, groups, bias)
                return _split_images(bad, run, gx)
    if step.algo in _GW_ALWAYS and gx.nbytes > get_workspace_limit():
        step = None                      # the zero stand-in would not fit the limit
    elif not (w_ok and g_ok):
        step = None
    if step is None:
        step = _plan(gx, weight, stride, padding, dilation, groups, exact=True)[3].grad_x
    return _run_grad_input(grad_y, weight, gx, s, step, bias)


def _grad_input_exact(grad_y, weight, x_shape, stride, padding, dilation, groups, bias=None):
    """conv2d_grad_input on the exact (im2col) plan."""
    gx = np.empty(x_shape, dtype=grad_y.dtype)
    s, _, _, plan = _plan(gx, weight, stride, padding, dilation, groups, exact=True)
    return _run_grad_input(grad_y, weight, gx, s, plan.grad_x, bias)


def _run_grad_input(grad_y, weight, gx, s, step, bias=None):
    x, gw = gx, np.empty_like(weight)     # (gw: written only by the _GW_ALWAYS runners)
    if step.algo in _GW_ALWAYS:
        x = np.zeros(gx.shape, dtype=gx.dtype)
    if step.algo in ("subpixel", "polywino"):     # (they add the bias as they write)
        _BACKWARD[step.algo](grad_y, x, weight, gx, gw, None, s, step, True, False, bias)
        return gx
    _BACKWARD[step.algo](grad_y, x, weight, gx, gw, None, s, step, True, False)
    if bias is not None:
        gx += bias.reshape(1, -1, 1, 1)
    return gx
