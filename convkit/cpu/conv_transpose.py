"""Transposed convolution (conv_transpose2d), built on the conv family -- cpu backend.

The adjoint of conv2d (convkit/reference/conv_transpose.py explains the reading and the hook
arguments), run by convkit/cpu/conv.py's plans: the forward is conv2d's grad_x step alone
(``conv2d_grad_input``, which also adds the bias), grad_x is conv2d_forward(grad_y, weight),
grad_weight is conv2d_backward with x and grad_y swapped and no grad_x.  So the algorithms,
the workspace limit (MemoryError), the non-finite fallbacks and the thread-count independent
bits are conv2d's.
"""
from __future__ import annotations

import functools

import numpy as np

from .._config import get_num_threads
from ..reference.conv_transpose import adjoint_backward
from . import _conv_im2col, conv as _conv
from .conv_plan import threads_for


def _bias_grad(grad_y):
    """Sum over (N, Ho, Wo) per channel: conv2d's deterministic kernel (double accumulation,
    images in order)."""
    gb = np.empty(grad_y.shape[1], dtype=grad_y.dtype)
    _conv_im2col.bias_grad(grad_y, gb, threads_for(grad_y.size, get_num_threads()))
    return gb


def conv_transpose2d_forward(x, weight, bias, stride, padding, dilation, groups, out_hw):
    """adjoint_forward, with the bias added by conv2d_grad_input (the sub-pixel kernel adds it
    to each row as it writes it: no second pass over y on one thread)."""
    C_out = weight.shape[1] * groups
    return _conv.conv2d_grad_input(x, weight, (x.shape[0], C_out) + tuple(out_hw), stride,
                                   padding, dilation, groups, bias)


conv_transpose2d_backward = functools.partial(adjoint_backward, _conv, bias_grad=_bias_grad)
