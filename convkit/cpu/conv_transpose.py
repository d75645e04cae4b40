"""Transposed convolution (conv_transpose2d), built on the conv family -- cpu backend.

The adjoint of conv2d (convkit/reference/conv_transpose.py explains the reading and the hook
arguments), run by convkit/cpu/conv.py's plans: the forward is conv2d's grad_x step alone
(``conv2d_grad_input``), grad_x is conv2d_forward(grad_y, weight), grad_weight is
conv2d_backward with x and grad_y swapped and no grad_x.  So the algorithms, the workspace
limit (MemoryError), the non-finite fallbacks and the thread-count independent bits are
conv2d's.
"""
from __future__ import annotations

import functools

import numpy as np

from .._config import get_num_threads
from ..reference.conv_transpose import adjoint_backward, adjoint_forward
from . import _conv_im2col, conv as _conv
from .conv_plan import threads_for


def _bias_grad(grad_y):
    """Sum over (N, Ho, Wo) per channel: conv2d's deterministic kernel (double accumulation,
    images in order)."""
    gb = np.empty(grad_y.shape[1], dtype=grad_y.dtype)
    _conv_im2col.bias_grad(grad_y, gb, threads_for(grad_y.size, get_num_threads()))
    return gb


conv_transpose2d_forward = functools.partial(adjoint_forward, _conv)
conv_transpose2d_backward = functools.partial(adjoint_backward, _conv, bias_grad=_bias_grad)
