"""Transposed convolution (conv_transpose2d), built on the conv family -- cpu backend.

The adjoint of conv2d (convkit/reference/conv_transpose.py explains the reading and the hook
arguments), run by convkit/cpu/conv.py's plans: the forward is conv2d's grad_x step alone
(``conv2d_grad_input``), grad_x is conv2d_forward(grad_y, weight), grad_weight is
conv2d_backward with x and grad_y swapped and no grad_x.  So the algorithms, the workspace
limit (MemoryError), the non-finite fallbacks and the thread-count independent bits are
conv2d's.
"""
from __future__ import annotations

import numpy as np

from .._config import get_num_threads
from . import _conv_im2col, conv as _conv
from .conv_plan import threads_for


def conv_transpose2d_forward(x, weight, bias, stride, padding, dilation, groups, out_hw):
    """-> y (array[N, C_out, Ho, Wo]) = conv2d's grad_x of grad_y = x, plus bias."""
    C_out = weight.shape[1] * groups
    y = _conv.conv2d_grad_input(x, weight, (x.shape[0], C_out) + tuple(out_hw), stride,
                                padding, dilation, groups)
    if bias is not None:
        y += bias.reshape(1, C_out, 1, 1)
    return y


def conv_transpose2d_backward(grad_y, x, weight, stride, padding, dilation, groups,
                              needs_input_grad, has_bias):
    """-> (grad_x (array[N, C_in, Hc, Wc]) or None, grad_weight, grad_bias or None)."""
    gx = _conv.conv2d_forward(grad_y, weight, None, stride, padding, dilation, groups) \
        if needs_input_grad else None
    gw = _conv.conv2d_backward(x, grad_y, weight, stride, padding, dilation, groups, False,
                               False)[1]
    gb = None
    if has_bias:
        gb = np.empty(grad_y.shape[1], dtype=grad_y.dtype)
        _conv_im2col.bias_grad(grad_y, gb, threads_for(grad_y.size, get_num_threads()))
    return gx, gw, gb
