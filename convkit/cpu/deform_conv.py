"""Deformable convolution (deform_conv2d, torchvision semantics) -- cpu backend: the wrappers
around ``_deform_conv`` (deformable im2col in C + the cpu conv's GEMMs; the rule is stated in
convkit/reference/deform_conv.py).

The C kernels sample channels innermost (csrc/deform_conv.h): x is read through a
channels-last copy, the columns are stored one row per output position, and the weights go
to the GEMMs permuted to (F, KH*KW*Cg) (grad_weight comes back in that order and is permuted
back here).  float32 on AVX2 + FMA: the GEMMs read the columns in place (no BLAS packing):
the forward's on ck_deform_opgemm_f (csrc/deform_conv.h; the weights packed there in panels
of 16 filters), the backward's grad_weight on ck_deform_wgrad_f (one task per image) or
csrc/rowgemm.h (the phases) and its dL/dcols on ck_deform_opgemm_t_f (the weights copied in
panels of 16 columns, ``_strips``) -- also where the own AVX-512 GEMM runs at half rate (AMD
Zen 4, csrc/isa.h; faster there, bench/RESULTS.md); elsewhere, and for float64, they go to BLAS
or the own AVX-512 GEMM.

The batch runs in chunks within ``convkit.get_workspace_limit()``: a chunk's zero-bordered
channels-last copies of x (C*(H+2)*(W+2) values per image) and, in the backward, its columns
(C*KH*KW*Ho*Wo values per image), sample tables (offset_groups*KH*KW*Ho*Wo entries of six
weights and two indices per image) and grad_weight shares (one weight's size per image; on
AVX2 with its filters rounded up to 16 per group) are held at once; the forward keeps one
task's columns and table per thread instead (and, float32 on AVX2, the weights in panels:
their size rounded up to 16 filters per group), and the float32 backward on AVX2 one image's
grad_y in panels and a 24-column strip of the columns per thread (the larger of (F + 24) and
F rounded up to 16 per group, times Ho*Wo values), the rows' offsets and a second bordered
plane per chunk image (grad_x's, filled while the first is still read).  A limit below one image is a MemoryError.  Deterministic: the same
bits on every run and for any thread count (task sizes depend on the shapes only, or, where
the backward runs one task per image, every sum keeps the order of its phases; no
atomics).
"""
from __future__ import annotations

import numpy as np

from .._config import get_num_threads, get_workspace_limit
from . import _conv_im2col, _conv_phases, _deform_conv
from .conv import _blas_pin, _no_pin, _workspace

# Positions per task (a block of output pixels of one image) and grad_weight columns per
# task (wide: a task packs gy[n] once for its GEMM): fixed sizes (never the thread count),
# so that the GEMM shapes and thus the bits do not depend on how many threads run.  The
# forward's blocks are small enough that a task's columns (at most C*KH*KW*128 values:
# 288 KiB for bench's deform_conv) stay in L2 for its GEMMs.
_FWD_POSITIONS = 128
_POSITIONS = 256
_WEIGHT_COLS = 288
# Channels per grad_x task (a block never crosses an offset group's or weight group's edge;
# wide, so that a task reads whole rows of the columns' gradient).
_CHANNELS = 64
# Below this many sample-channel products a call runs on one thread.
_PARALLEL_MIN = 1 << 15


def _plan(op, x, offset, weight, Ho, Wo, n_threads, forward):
    """(chunk, buffers): images per chunk and the scratch arrays (from the per-thread cache).

    forward: per chunk image its bordered planes; per thread one task's columns and table.
    backward: per chunk image its bordered planes, columns and table."""
    N, C, H, W = x.shape
    _, _, KH, KW = weight.shape
    P = Ho * Wo
    RK = offset.shape[1] // 2             # offset groups * taps
    item = x.dtype.itemsize
    entry = 6 * item + 2 * np.dtype(np.intp).itemsize   # one table entry: weights, corners
    plane = (H + 2) * (W + 2)
    if forward:
        pb = _block(P, _FWD_POSITIONS)
        G = C // weight.shape[1]
        npanel = (G * -(-weight.shape[0] // G // 16) * 16 * (weight.size // weight.shape[0])
                  * _opgemm(x.dtype))
        fixed = n_threads * (C * KH * KW * pb * item + RK * pb * entry) + npanel * item
        per_image = C * plane * item
        cols, table = n_threads * C * KH * KW * pb, n_threads * RK * pb
    else:   # float32 on rowgemm: per thread one task's gy panels, and the rows' offsets
        G = C // weight.shape[1]
        Fg = weight.shape[0] // G
        F16 = G * -(-Fg // 16) * 16         # filters in the fused backward's panels of 16
        pan = (max((weight.shape[0] + 24) * P, F16 * P, _block(P, _POSITIONS) * Fg)
               if _rowgemm(x.dtype) else 0)
        K = weight.size // weight.shape[0]
        # grad_weight's share per image (the fused tasks': panel-major, 16 filters a panel)
        wsz = max(weight.size, F16 * K) if pan else weight.size
        fixed = (n_threads * pan * item + (2 * P + Fg) * np.dtype(np.intp).itemsize * (pan > 0)
                 + weight.shape[0] * -(-K // 16) * 16 * item * (pan > 0))     # + _strips(w2)
        # (+ with rowgemm: a second plane per image, grad_x's, filled while the first is read)
        per_image = ((C * plane * (2 if pan else 1) + C * KH * KW * P
                      + wsz) * item + RK * P * entry)
    limit = get_workspace_limit()
    if fixed + per_image > limit:
        raise MemoryError(f"{op}: one image's bordered planes, deformable columns and sample "
                          f"table need {fixed + per_image} bytes, over the workspace limit of "
                          f"{limit} bytes (convkit.set_workspace_limit)")
    chunk = max(1, min(N, (limit - fixed) // per_image))
    if not forward:
        cols, table = chunk * C * KH * KW * P, chunk * RK * P
    bufs = (_workspace(chunk * C * plane, x.dtype, "deform_planes"),
            _workspace(cols, x.dtype, "deform_cols"),
            _workspace(table * 6, x.dtype, "deform_weights"),
            _workspace(2 * table, np.intp, "deform_index"))
    if forward and _opgemm(x.dtype):     # the weights in panels of 16 filters
        bufs += (_workspace(npanel, x.dtype, "deform_panels16")[:npanel],)
    if not forward:     # per chunk image its grad_weight; the GEMM panels and row offsets
        bufs += (_workspace(chunk * wsz, x.dtype, "deform_wpart"),
                 _workspace(n_threads * pan, x.dtype, "deform_panels")[:n_threads * pan],
                 np.concatenate([np.arange(P, dtype=np.intp) * (C * KH * KW),
                                 np.arange(Fg, dtype=np.intp) * 24,
                                 np.arange(P, dtype=np.intp) * 24]) if pan else _NO_ROWS,
                 _workspace(chunk * C * plane, x.dtype, "deform_gplanes") if pan else
                 _NO_MASK[x.dtype].reshape(1))
    return chunk, bufs


_NO_ROWS = np.zeros(1, np.intp)


def _strips(w2, Fg):
    """w2 (F, K) -> per weight group, per 16 columns: its (Fg, 16) block, contiguous (the last
    zero-padded); flat (ck_deform_opgemm_t_f's panels)."""
    F, K = w2.shape
    ns = -(-K // 16)
    p = np.zeros((F // Fg, Fg, ns * 16), w2.dtype)
    p[:, :, :K] = w2.reshape(F // Fg, Fg, K)
    return np.ascontiguousarray(p.reshape(F // Fg, Fg, ns, 16).transpose(0, 2, 1, 3)).reshape(-1)


def _opgemm(dtype):
    """Whether the forward's float32 GEMMs run on ck_deform_opgemm_f (AVX2 + FMA)."""
    return dtype == np.float32 and _deform_conv.opgemm_available()


def _rowgemm(dtype):
    """Whether the backward's float32 GEMMs run on csrc/rowgemm.h (AVX2 + FMA)."""
    return dtype == np.float32 and _conv_phases.rowgemm_available()


def _block(P, most):
    """Positions per task: at most ``most``, the blocks of P as even as that allows (no
    small last block for the GEMMs)."""
    return -(-P // -(-P // most))


def _threads(x, weight, P):
    work = x.shape[0] * x.shape[1] * weight.shape[2] * weight.shape[3] * P
    return 1 if work < _PARALLEL_MIN else get_num_threads()


def _params(stride, padding, dilation):
    return (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])


def _taps_first(weight):
    """weight (F, Cg, KH, KW) -> (F, KH*KW*Cg), columns ordered (tap, channel) like the
    columns' (csrc/deform_conv.h)."""
    F, Cg, KH, KW = weight.shape
    return np.ascontiguousarray(weight.reshape(F, Cg, KH * KW).transpose(0, 2, 1)).reshape(
        F, KH * KW * Cg)


_NO_MASK = {np.dtype(np.float32): np.zeros((1, 1, 1, 1), np.float32),
            np.dtype(np.float64): np.zeros((1, 1, 1, 1), np.float64)}


def deform_conv2d_forward(x, offset, weight, bias, stride, padding, dilation, mask):
    N, F = x.shape[0], weight.shape[0]
    Ho, Wo = offset.shape[2:]
    n = _threads(x, weight, Ho * Wo)
    chunk, bufs = _plan("deform_conv2d_forward", x, offset, weight, Ho, Wo, n, True)
    y = np.empty((N, F, Ho, Wo), x.dtype)
    b = bias if bias is not None else np.zeros(1, x.dtype)
    m = mask if mask is not None else _NO_MASK[x.dtype]
    if _opgemm(x.dtype):    # the weights packed into panels in C; no BLAS call to pin
        wp, w2, pin = bufs[4], _NO_MASK[x.dtype].reshape(1, 1), _no_pin
        bufs = bufs[:4]
    else:
        wp, w2, pin = _NO_MASK[x.dtype].reshape(1), _taps_first(weight), _blas_pin(x.dtype)
    with pin:
        _deform_conv.deform_forward(x, offset, weight, w2, wp, b, bias is not None, m,
                                    mask is not None, y, *bufs, _params(stride, padding, dilation),
                                    chunk, _block(Ho * Wo, _FWD_POSITIONS), *weight.shape[2:], n)
    return y


def deform_conv2d_backward(grad_y, x, offset, weight, stride, padding, dilation, mask, has_bias):
    Ho, Wo = offset.shape[2:]
    n = _threads(x, weight, Ho * Wo)
    chunk, bufs = _plan("deform_conv2d_backward", x, offset, weight, Ho, Wo, n, False)
    dt = x.dtype
    gx = np.empty(x.shape, dt)
    goff = np.empty(offset.shape, dt)
    F, Cg, KH, KW = weight.shape
    gw2 = np.zeros((F, KH * KW * Cg), dt)
    gm = np.empty(mask.shape, dt) if mask is not None else _NO_MASK[dt]
    m = mask if mask is not None else _NO_MASK[dt]
    w2 = _taps_first(weight)
    with _blas_pin(dt):
        _deform_conv.deform_backward(grad_y, x, offset, w2, m, mask is not None,
                                     gx, goff, gw2, gm, *bufs,
                                     _strips(w2, F // (x.shape[1] // Cg)) if bufs[5].size else
                                     _NO_MASK[dt].reshape(1), _params(stride, padding, dilation),
                                     chunk, _block(Ho * Wo, _POSITIONS), _WEIGHT_COLS, _CHANNELS,
                                     KH, KW, n)
    gw = np.ascontiguousarray(gw2.reshape(F, KH * KW, Cg).transpose(0, 2, 1)).reshape(
        weight.shape)
    gb = None
    if has_bias:
        gb = np.empty(weight.shape[0], dt)
        _conv_im2col.bias_grad(grad_y, gb, n)     # the cpu conv's per-filter sums
    return gx, goff, gw, gb, (gm if mask is not None else None)
