"""conv2d on the GPU: im2col / col2im kernels + cuBLAS GEMMs (``cupy.matmul``) for groups = 1,
direct kernels for grouped and depthwise convolutions.

groups = 1 goes through in chunks of whole images so that the column buffer (and, in the
backward, the per-image weight-gradient products) stays under
``convkit.get_workspace_limit()``; a 1x1 / stride 1 / unpadded convolution needs no columns
at all (x itself is the column matrix).  Every backward is deterministic: col2im and the
direct kernels gather, and the weight gradients are reduced in a fixed order.
"""
from __future__ import annotations

import contextlib

import cupy
import numpy as np

from convkit._config import get_allow_tf32, get_workspace_limit

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
    """cuBLAS compute type of the float32 GEMMs inside the block: TF32 under
    ``convkit.set_allow_tf32(True)``, else full FP32 (even when CUPY_TF32=1 is set), then
    CuPy's setting is put back.  CuPy keeps the compute type process-wide, so two threads
    running float32 convs with different settings at once may see each other's."""
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


def _images_per_chunk(op, N, per_image_bytes):
    limit = get_workspace_limit()
    if per_image_bytes > limit:
        raise MemoryError(f"{op}: the im2col workspace needs {per_image_bytes} bytes for one "
                          f"image, over the workspace limit of {limit} bytes; raise it with "
                          f"convkit.set_workspace_limit()")
    return max(1, min(N, limit // max(per_image_bytes, 1)))


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


def _im2col(x, KH, KW, stride, padding, dilation, Ho, Wo, col, transposed=False):
    """col (B, C*KH*KW, Ho*Wo) <- x (B, C, H, W), or with ``transposed`` the position-major
    col (B, Ho*Wo, C*KH*KW); writes all of col."""
    B, C = x.shape[:2]
    grid, block = grid_for(B * C * KH * KW * Ho * Wo)
    launch(STEM, "conv_im2col_t" if transposed else "conv_im2col", x.dtype, grid, block,
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
    with on_device("conv2d_forward", x=x, weight=weight, bias=bias, out=out), \
            _gemm_mode(x.dtype):
        N, C, H, W = x.shape
        F, Cg, KH, KW = weight.shape
        Ho, Wo = _out_hw(H, W, KH, KW, stride, padding, dilation)
        y = out if out is not None else cupy.empty((N, F, Ho, Wo), dtype=x.dtype)
        if groups != 1:
            _direct_fwd(x, weight, bias, stride, padding, dilation, groups, y)
            return y
        w2 = weight.reshape(F, C * KH * KW)
        y3 = y.reshape(N, F, Ho * Wo)
        if _is_pointwise(KH, KW, stride, padding):
            cupy.matmul(w2, x.reshape(N, C, H * W), out=y3)
        else:
            K = C * KH * KW
            nb = _images_per_chunk("conv2d_forward", N, K * Ho * Wo * x.dtype.itemsize)
            col = cupy.empty((nb, K, Ho * Wo), dtype=x.dtype)
            for n0 in range(0, N, nb):
                n1 = min(N, n0 + nb)
                c = col[: n1 - n0]
                _im2col(x[n0:n1], KH, KW, stride, padding, dilation, Ho, Wo, c)
                cupy.matmul(w2, c, out=y3[n0:n1])
        if bias is not None:
            y += bias.reshape(1, F, 1, 1)
        return y


def conv2d_backward(grad_y, x, weight, stride, padding, dilation, groups, needs_input_grad,
                    has_bias):
    """-> (grad_x or None, grad_weight, grad_bias or None)."""
    with on_device("conv2d_backward", grad_y=grad_y, x=x, weight=weight), \
            _gemm_mode(x.dtype):
        gb = grad_y.sum(axis=(0, 2, 3)) if has_bias else None
        gx, gw = _backward("conv2d_backward", grad_y, x, x.shape, weight, stride, padding,
                           dilation, groups, needs_input_grad, True)
        return gx, gw, gb


def conv2d_grad_input(grad_y, weight, x_shape, stride, padding, dilation, groups):
    """grad_x (x_shape) of conv2d alone -- conv_transpose2d's forward."""
    with on_device("conv2d_grad_input", grad_y=grad_y, weight=weight), \
            _gemm_mode(grad_y.dtype):
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
    if groups != 1:
        gw = _direct_bwd_weight(grad_y, x, weight.shape, stride, padding, dilation, groups) \
            if needs_weight_grad else None
        gx = None
        if needs_input_grad:
            gx = cupy.empty(x_shape, dtype=dt)
            _direct_bwd_data(grad_y, weight, x_shape, stride, padding, dilation, groups, gx)
        return gx, gw

    K = C * KH * KW
    w2 = weight.reshape(F, K)
    gy3 = grad_y.reshape(N, F, Ho * Wo)
    gx = cupy.empty(x_shape, dtype=dt) if needs_input_grad else None
    pointwise = _is_pointwise(KH, KW, stride, padding)
    item = dt.itemsize
    # per image: its position-major columns and (F, K) weight-gradient product (for the weight
    # gradient) and the columns' gradient (if needed, unless pointwise)
    per_image = ((K * Ho * Wo * item + F * K * item) if needs_weight_grad else 0) \
        + (K * Ho * Wo * item if needs_input_grad and not pointwise else 0)
    nb = _images_per_chunk(op, N, per_image)
    colT = cupy.empty((nb, Ho * Wo, K), dtype=dt) if needs_weight_grad else None
    gcol = cupy.empty((nb, K, Ho * Wo), dtype=dt) \
        if needs_input_grad and not pointwise else None
    gw = cupy.zeros((F, K), dtype=dt) if needs_weight_grad else None
    w2t = cupy.ascontiguousarray(w2.T)            # (K, F): small, copied once per call
    for n0 in range(0, N, nb):
        n1 = min(N, n0 + nb)
        g = gy3[n0:n1]
        if needs_weight_grad:
            cT = colT[: n1 - n0]
            _im2col(x[n0:n1], KH, KW, stride, padding, dilation, Ho, Wo, cT, transposed=True)
            # (b, F, HoWo) @ (b, HoWo, K) -> (b, F, K), both operands C-contiguous, summed
            # over b in order
            gw += cupy.matmul(g, cT).sum(axis=0)
        if needs_input_grad:
            if pointwise:
                cupy.matmul(w2t, g, out=gx[n0:n1].reshape(n1 - n0, C, H * W))
            else:
                gc = gcol[: n1 - n0]
                cupy.matmul(w2t, g, out=gc)
                _col2im(gc, (n1 - n0, C, H, W), KH, KW, stride, padding, dilation, Ho, Wo,
                        gx[n0:n1])
    return gx, (gw.reshape(weight.shape) if needs_weight_grad else None)
