# cython: language_level=3
"""conv2d kernels for the ``cpu`` backend, one module per algorithm (convkit/cpu/conv_plan.py
chooses among them, convkit/cpu/conv.py runs them):

    _conv_im2col.pyx     im2col + GEMM (the general path, 1x1 in place), bias_grad, and the
                         plane kernels im2col_plane / col2im_plane / plane_sum
    _conv_winograd.pyx   Winograd F(2x2, 3x3) for 3x3 stride-1 convs
    _conv_depthwise.pyx  depthwise convs: plane kernels, stride-1 register blocks, 3x3 kernels
    _conv_phases.pyx     strided forwards by stride-phase planes (own float32 GEMM)
    _conv_dot.pyx        weight gradients as dot products in the phase planes (own float32 GEMM)
    _conv_batch.pyx      batch-wide GEMMs for small maps, and the stride-1 wide-row forward
    _conv_dense.pyx      planes no bigger than the kernel as one dense GEMM
    _conv_wdirect.pyx    one-channel stride-1 weight gradients as direct dot products,
                         their batch forward with the batch GEMM's bits, and their forward on
                         larger maps along the flat output positions ("direct"; AVX2/AVX-512)
    _conv_common.pxd     inline nogil helpers they share; _conv_csrc.pxd their C (csrc/*.h)

This module re-exports their Python-level entry points, and _conv.pxd the nogil kernels others
may ``cimport`` (``from convkit.cpu._conv cimport im2col_plane``), so both keep their old home.

Every loop runs without the GIL.  Each parallel region is a set of independent tasks (an image's
block of output rows, a block of grad_weight columns, an image's block of channels) taken by the
OpenMP team with dynamic scheduling and no barrier inside: a thread slowed down by other load on
the machine simply takes fewer tasks.  A task writes a part of the output no other task writes,
and every sum runs in an order fixed by the task, never by the thread that ran it, so results --
backward included -- are the same bits every run.  The GEMMs call BLAS from inside the team; the
Python wrapper (convkit/cpu/conv.py) pins BLAS to one thread around the call so the two thread
pools do not oversubscribe the cores.

cdivision is on in the kernel modules: every ``//`` and ``%`` has non-negative operands (see
_wo_range), except the one stride-phase remainder in _im2col_taps, which corrects C's truncation
explicitly.
"""
from ._conv_im2col import conv2d_forward_gemm, conv2d_backward_gemm, bias_grad
from ._conv_winograd import winograd_filters, conv2d_forward_winograd
from ._conv_depthwise import (depthwise3x3_level, depthwise3x3_cap, conv2d_forward_depthwise,
                              conv2d_backward_depthwise, conv2d_forward_depthwise3x3,
                              conv2d_backward_depthwise3x3)
from ._conv_phases import conv2d_forward_phases
from ._conv_dot import conv2d_backward_weight_dot, weight_dot_floats
from ._conv_batch import (shift_available, conv2d_forward_batch, conv2d_backward_batch,
                          conv2d_forward_wide)
from ._conv_dense import dense_weight, dense_fold, gemm_rows
