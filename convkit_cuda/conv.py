"""conv2d on the GPU: im2col / col2im kernels + cuBLAS strided-batched GEMMs, and direct
kernels for the grouped convolutions too thin for GEMMs (depthwise among them).

The GEMM path runs in chunks of B whole images (the plan below): one im2col launch writes the
columns of the chunk, col (B, C*KH*KW, Ho*Wo), and ONE ``cublasGemmStridedBatchedEx`` per
group multiplies them by the weight, read with batch stride 0, straight into y in NCHW
(no transpose, no per-image loop): O(N/B) launches per call, not O(N).  The backward does the
same: grad_x is one batched W^T @ grad_y per chunk into the columns' gradient, then one col2im
gather; grad_w accumulates per-slot partials (slot i of the chunk: images i, i+B, ...) with a
batched GEMM of beta = 1 -- the columns read transposed by cuBLAS, no copy -- and sums the B
slots once at the end, in a fixed order.  A 1x1 / stride 1 / unpadded convolution needs no
columns: x (and grad_x) is the column matrix.  Every backward is deterministic: col2im and the
direct kernels gather, cuBLAS GEMMs use no atomics, and the slot sums have a fixed order.

The GEMMs call cuBLAS directly rather than ``cupy.matmul``, whose broadcast of the weight
over the batch builds pointer arrays (three extra launches) and calls ``sgemmBatched``, which
takes no compute type: here float32 uses ``CUBLAS_COMPUTE_32F`` (or ``_FAST_TF32`` under
``convkit.set_allow_tf32(True)``), chosen per call, so no process-wide CuPy setting changes.
"""
from __future__ import annotations

import contextlib

import cupy
import numpy as np

from convkit._config import get_allow_tf32, get_workspace_limit

from . import _kernels
from ._kernels import grid_for, launch, on_device

STEM = "conv"
_I = np.int64


def _out_hw(H, W, KH, KW, stride, padding, dilation):
    from convkit._shapes import conv_out_size

    return (conv_out_size(H, KH, stride[0], padding[0] + padding[1], dilation[0]),
            conv_out_size(W, KW, stride[1], padding[2] + padding[3], dilation[1]))


def _is_pointwise(KH, KW, stride, padding):
    return KH == 1 and KW == 1 and stride == (1, 1) and padding == (0, 0, 0, 0)


@contextlib.contextmanager
def _gemm_mode(dtype):
    """cuBLAS compute type of the float32 ``cupy.matmul`` calls inside the block (deform_conv's
    GEMMs; conv2d's own pass theirs per call): TF32 under ``convkit.set_allow_tf32(True)``,
    else full FP32 (even when CUPY_TF32=1 is set), then CuPy's setting is put back.  CuPy keeps
    the compute type process-wide, so two threads running float32 convs with different
    settings at once may see each other's."""
    if dtype != np.float32:
        yield
        return
    L = cupy._core._routines_linalg    # loaded with cupy (cupy._core imports from it)
    want = L.COMPUTE_TYPE_TF32 if get_allow_tf32() else L.COMPUTE_TYPE_FP32
    old = L.get_compute_type(dtype)
    if old == want:
        yield
        return
    L.set_compute_type(dtype, want)
    try:
        yield
    finally:
        L.set_compute_type(dtype, old)


# ---------------------------------------------------------------------------------- plan
# Which path a conv takes and how many images a chunk holds -- the whole rule, here.
#
# A grouped conv runs one batched GEMM per group when each group's product is at least
# GROUP_GEMM_MIN in both its rows (F/groups) and its reduction (C/groups*KH*KW); thinner
# products (depthwise, small groups) leave cuBLAS's tiles mostly idle, and the direct kernels
# (one launch per call) take them.  An estimate: no GPU has timed the crossover yet.
GROUP_GEMM_MIN = 32


def _uses_gemm(w_shape, groups):
    F, Cg, KH, KW = w_shape
    return groups == 1 or min(F // groups, Cg * KH * KW) >= GROUP_GEMM_MIN


def _images_per_chunk(op, N, per_image_bytes):
    """B: as many images as keep the per-image scratch (columns, their gradient, weight-
    gradient slots) under ``convkit.get_workspace_limit()``; all N when there is none."""
    if per_image_bytes == 0:
        return N
    limit = get_workspace_limit()
    if per_image_bytes > limit:
        raise MemoryError(f"{op}: the im2col workspace needs {per_image_bytes} bytes for one "
                          f"image, over the workspace limit of {limit} bytes; raise it with "
                          f"convkit.set_workspace_limit()")
    return max(1, min(N, limit // per_image_bytes))


# ------------------------------------------------------------------------------- cuBLAS
# Enumerators of the CUDA headers (library_types.h, cublas_api.h): part of the ABI.
_CUDA_R = {np.dtype(np.float32): 0, np.dtype(np.float64): 1}        # CUDA_R_32F, CUDA_R_64F
_COMPUTE_32F, _COMPUTE_32F_FAST_TF32, _COMPUTE_64F = 68, 77, 70     # cublasComputeType_t
_GEMM_DEFAULT = -1                                                  # CUBLAS_GEMM_DEFAULT
_INT_MAX = 2**31 - 1            # cuBLAS's sizes, leading dimensions and batch count are int
# alpha / beta in host memory, of the compute type's scalar type
_ONE_ZERO = {np.dtype(np.float32): (np.ones(1, np.float32), np.zeros(1, np.float32)),
             np.dtype(np.float64): (np.ones(1, np.float64), np.zeros(1, np.float64))}


def _compute_type(dtype):
    if dtype == np.float64:
        return _COMPUTE_64F
    return _COMPUTE_32F_FAST_TF32 if get_allow_tf32() else _COMPUTE_32F


def _ptr(a, off, rows, cols, ld, stride, batch):
    """The address of element ``off`` of ``a``, once the batch of row-major rows x cols
    matrices there (rows ld apart, matrices stride apart) is known to lie inside ``a``."""
    if not a.flags.c_contiguous:
        raise TypeError(f"conv GEMM operand of shape {a.shape} must be C-contiguous")
    if off + (batch - 1) * stride + (rows - 1) * ld + cols > a.size or cols > ld:
        raise AssertionError(f"conv GEMM operand out of bounds: {batch} x ({rows} x {cols}, "
                             f"ld {ld}) from element {off}, stride {stride}, of {a.shape}")
    return _kernels.data_ptr(a) + off * a.itemsize


def _gemm(trans_a, trans_b, M, N, K, a, a_off, lda, sa, b, b_off, ldb, sb, c, c_off, ldc,
          sc, batch, accumulate=False):
    """C_i = op(A_i) @ op(B_i) (+ C_i when ``accumulate``) for i < batch, in row-major terms
    and one cuBLAS call.  op(A_i) is M x K (stored K x M, transposed, when ``trans_a``), its
    rows lda elements apart, starting at element a_off + i*sa of ``a`` (sa = 0: one A for the
    whole batch); likewise B (K x N) and C (M x N).  cuBLAS is column-major, so it computes
    C^T = op(B)^T op(A)^T: the operands swap, the flags do not change."""
    if batch == 0 or M == 0 or N == 0:
        return
    if max(M, N, K, lda, ldb, ldc, batch) > _INT_MAX:
        raise ValueError(f"conv2d: a GEMM of {M} x {K} by {K} x {N} (batch {batch}) is past "
                         f"cuBLAS's 32-bit sizes")
    dt = c.dtype
    one, zero = _ONE_ZERO[dt]
    t = _CUDA_R[dt]
    pa = _ptr(a, a_off, *((K, M) if trans_a else (M, K)), lda, sa, batch)
    pb = _ptr(b, b_off, *((N, K) if trans_b else (K, N)), ldb, sb, batch)
    pc = _ptr(c, c_off, M, N, ldc, sc, batch)
    cupy.cuda.cublas.gemmStridedBatchedEx(
        cupy.cuda.device.get_cublas_handle(), int(trans_b), int(trans_a), N, M, K,
        one.ctypes.data, pb, t, ldb, sb, pa, t, lda, sa,
        (one if accumulate else zero).ctypes.data, pc, t, ldc, sc, batch,
        _compute_type(dt), _GEMM_DEFAULT)


# ----------------------------------------------------------------------------- launchers
_SMALL = 2**31 - 1


def _small(x_shape, KH, KW, stride, padding, dilation, Ho, Wo):
    """Whether every index and intermediate of im2col / col2im for this call fits the kernels'
    32-bit path: both arrays under 2**31 elements, window reach under 2**31."""
    B, C, H, W = x_shape
    return (B * C * KH * KW * Ho * Wo <= _SMALL and B * C * H * W <= _SMALL
            and Ho * stride[0] + KH * dilation[0] + H + padding[0] <= _SMALL
            and Wo * stride[1] + KW * dilation[1] + W + padding[2] <= _SMALL)


def _col_args(x_shape, KH, KW, stride, padding, dilation, Ho, Wo):
    B, C, H, W = x_shape
    return (_I(B), _I(C), _I(H), _I(W), _I(KH), _I(KW), _I(stride[0]), _I(stride[1]),
            _I(padding[0]), _I(padding[2]), _I(dilation[0]), _I(dilation[1]), _I(Ho), _I(Wo),
            _I(_small(x_shape, KH, KW, stride, padding, dilation, Ho, Wo)))


def _im2col(x, KH, KW, stride, padding, dilation, Ho, Wo, col):
    """col (B, C*KH*KW, Ho*Wo) <- x (B, C, H, W); writes all of col."""
    B, C = x.shape[:2]
    grid, block = grid_for(B * C * KH * KW * Ho * Wo)
    launch(STEM, "conv_im2col", x.dtype, grid, block,
           (x,) + _col_args(x.shape, KH, KW, stride, padding, dilation, Ho, Wo) + (col,))


def _col2im(col, x_shape, KH, KW, stride, padding, dilation, Ho, Wo, gx):
    """gx (B, C, H, W) <- sum of the col entries copied from each element; writes all of gx."""
    B, C, H, W = x_shape
    grid, block = grid_for(B * C * H * W)
    launch(STEM, "conv_col2im", col.dtype, grid, block,
           (col,) + _col_args(x_shape, KH, KW, stride, padding, dilation, Ho, Wo) + (gx,))


def _direct_fwd(x, weight, bias, stride, padding, dilation, groups, y):
    N, C, H, W = x.shape
    F, _, KH, KW = weight.shape
    Ho, Wo = y.shape[2:]
    grid, block = grid_for(y.size)
    launch(STEM, "conv_direct_fwd", x.dtype, grid, block,
           (x, weight, bias if bias is not None else weight, _I(bias is not None),
            _I(N), _I(C), _I(H), _I(W), _I(F), _I(KH), _I(KW), _I(stride[0]), _I(stride[1]),
            _I(padding[0]), _I(padding[2]), _I(dilation[0]), _I(dilation[1]), _I(Ho), _I(Wo),
            _I(groups), y))


def _direct_bwd_data(grad_y, weight, x_shape, stride, padding, dilation, groups, gx):
    N, C, H, W = x_shape
    F, _, KH, KW = weight.shape
    Ho, Wo = grad_y.shape[2:]
    grid, block = grid_for(N * C * H * W)
    launch(STEM, "conv_direct_bwd_data", grad_y.dtype, grid, block,
           (grad_y, weight, _I(N), _I(C), _I(H), _I(W), _I(F), _I(KH), _I(KW),
            _I(stride[0]), _I(stride[1]), _I(padding[0]), _I(padding[2]), _I(dilation[0]),
            _I(dilation[1]), _I(Ho), _I(Wo), _I(groups), gx))


# Target number of threads for the weight-gradient partial sums: enough to fill a large GPU,
# few enough that each thread still sums a long run.
_WGRAD_THREADS = 1 << 17


def _direct_bwd_weight(grad_y, x, w_shape, stride, padding, dilation, groups):
    N, C, H, W = x.shape
    F, Cg, KH, KW = w_shape
    Ho, Wo = grad_y.shape[2:]
    ws = F * Cg * KH * KW
    L = N * Ho * Wo
    P = max(1, min(L, _WGRAD_THREADS // ws, 1024))    # depends on the shapes only: same bits
    partial = cupy.empty((P, ws), dtype=np.float64)
    grid, block = grid_for(P * ws)
    launch(STEM, "conv_direct_bwd_weight", grad_y.dtype, grid, block,
           (grad_y, x, _I(N), _I(C), _I(H), _I(W), _I(F), _I(KH), _I(KW), _I(stride[0]),
            _I(stride[1]), _I(padding[0]), _I(padding[2]), _I(dilation[0]), _I(dilation[1]),
            _I(Ho), _I(Wo), _I(groups), _I(P), partial))
    return partial.sum(axis=0).astype(grad_y.dtype).reshape(w_shape)


# ---------------------------------------------------------------------------------- ops
def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, out=None):
    """x (N,C,H,W), weight (F,C/groups,KH,KW), bias (F,) or None -> y (N,F,Ho,Wo).
    padding is (top, bottom, left, right)."""
    with on_device("conv2d_forward", x=x, weight=weight, bias=bias, out=out):
        N, C, H, W = x.shape
        F, Cg, KH, KW = weight.shape
        Ho, Wo = _out_hw(H, W, KH, KW, stride, padding, dilation)
        y = out if out is not None else cupy.empty((N, F, Ho, Wo), dtype=x.dtype)
        if not _uses_gemm(weight.shape, groups):
            _direct_fwd(x, weight, bias, stride, padding, dilation, groups, y)
            return y
        P, K, Kg, Fg = Ho * Wo, C * KH * KW, Cg * KH * KW, F // groups
        pointwise = _is_pointwise(KH, KW, stride, padding)
        nb = _images_per_chunk("conv2d_forward", N,
                               0 if pointwise else K * P * x.dtype.itemsize)
        col = None if pointwise else cupy.empty((nb, K, P), dtype=x.dtype)
        for n0 in range(0, N, nb):
            b = min(N, n0 + nb) - n0
            if pointwise:                         # x is the chunk's columns
                src, s0 = x, n0 * K * P
            else:
                src, s0 = col, 0
                _im2col(x[n0:n0 + b], KH, KW, stride, padding, dilation, Ho, Wo, col[:b])
            for g in range(groups):
                # y[n, g] (Fg x P) = W[g] (Fg x Kg) @ col[n, g] (Kg x P), all n at once
                _gemm(False, False, Fg, P, Kg, weight, g * Fg * Kg, Kg, 0,
                      src, s0 + g * Kg * P, P, K * P, y, (n0 * F + g * Fg) * P, P, F * P, b)
        if bias is not None:
            y += bias.reshape(1, F, 1, 1)
        return y


def conv2d_backward(grad_y, x, weight, stride, padding, dilation, groups, needs_input_grad,
                    has_bias):
    """-> (grad_x or None, grad_weight, grad_bias or None)."""
    with on_device("conv2d_backward", grad_y=grad_y, x=x, weight=weight):
        gb = grad_y.sum(axis=(0, 2, 3)) if has_bias else None
        gx, gw = _backward("conv2d_backward", grad_y, x, x.shape, weight, stride, padding,
                           dilation, groups, needs_input_grad, True)
        return gx, gw, gb


def conv2d_grad_input(grad_y, weight, x_shape, stride, padding, dilation, groups):
    """grad_x (x_shape) of conv2d alone -- conv_transpose2d's forward."""
    with on_device("conv2d_grad_input", grad_y=grad_y, weight=weight):
        return _backward("conv2d_grad_input", grad_y, None, tuple(x_shape), weight, stride,
                         padding, dilation, groups, True, False)[0]


def _backward(op, grad_y, x, x_shape, weight, stride, padding, dilation, groups,
              needs_input_grad, needs_weight_grad):
    """-> (grad_x or None, grad_weight or None); x (None when not needs_weight_grad) has shape
    x_shape."""
    N, C, H, W = x_shape
    F, Cg, KH, KW = weight.shape
    Ho, Wo = grad_y.shape[2:]
    dt = grad_y.dtype
    if not _uses_gemm(weight.shape, groups):
        gw = _direct_bwd_weight(grad_y, x, weight.shape, stride, padding, dilation, groups) \
            if needs_weight_grad else None
        gx = None
        if needs_input_grad:
            gx = cupy.empty(x_shape, dtype=dt)
            _direct_bwd_data(grad_y, weight, x_shape, stride, padding, dilation, groups, gx)
        return gx, gw

    P, K, Kg, Fg = Ho * Wo, C * KH * KW, Cg * KH * KW, F // groups
    pointwise = _is_pointwise(KH, KW, stride, padding)
    cols = K * P * dt.itemsize if not pointwise else 0
    # per image: its columns and weight-gradient slot (F, Kg) for the weight gradient, the
    # columns' gradient for grad_x
    per_image = ((cols + F * Kg * dt.itemsize) if needs_weight_grad else 0) \
        + (cols if needs_input_grad else 0)
    nb = _images_per_chunk(op, N, per_image)
    col = cupy.empty((nb, K, P), dtype=dt) if needs_weight_grad and not pointwise else None
    gcol = cupy.empty((nb, K, P), dtype=dt) if needs_input_grad and not pointwise else None
    slots = cupy.empty((nb, F * Kg), dtype=dt) if needs_weight_grad else None
    gx = cupy.empty(x_shape, dtype=dt) if needs_input_grad else None
    for n0 in range(0, N, nb):
        b = min(N, n0 + nb) - n0
        if needs_weight_grad:
            if pointwise:
                src, s0 = x, n0 * K * P
            else:
                src, s0 = col, 0
                _im2col(x[n0:n0 + b], KH, KW, stride, padding, dilation, Ho, Wo, col[:b])
            for g in range(groups):
                # slot[n, g] (Fg x Kg) (+)= gy[n, g] (Fg x P) @ col[n, g]^T (P x Kg)
                _gemm(False, True, Fg, Kg, P, grad_y, (n0 * F + g * Fg) * P, P, F * P,
                      src, s0 + g * Kg * P, P, K * P, slots, g * Fg * Kg, Kg, F * Kg, b,
                      accumulate=n0 > 0)
        if needs_input_grad:
            dst, d0 = (gx, n0 * K * P) if pointwise else (gcol, 0)
            for g in range(groups):
                # gcol[n, g] (Kg x P) = W[g]^T (Kg x Fg) @ gy[n, g] (Fg x P)
                _gemm(True, False, Kg, P, Fg, weight, g * Fg * Kg, Kg, 0,
                      grad_y, (n0 * F + g * Fg) * P, P, F * P, dst, d0 + g * Kg * P, P, K * P, b)
            if not pointwise:
                _col2im(gcol[:b], (b, C, H, W), KH, KW, stride, padding, dilation, Ho, Wo,
                        gx[n0:n0 + b])
    gw = None
    if needs_weight_grad:       # the slots summed in a fixed order: deterministic bits
        gw = (slots[0] if nb == 1 else slots.sum(axis=0)).reshape(weight.shape)
    return gx, gw
