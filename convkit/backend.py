"""The Backend interface: the whole contract a backend (built-in or plugin) implements.

The public functions in :mod:`convkit.functional` validate and normalise their
arguments once and then call these methods, so a backend method receives:

* arrays of the backend's own kind (``numpy.ndarray`` for ``numpy``/``cpu``,
  ``cupy.ndarray`` for ``cuda``), C-contiguous, all of one dtype
  (float32 or float64) -- integer arrays (indices, argmax) are int64;
* every "int or pair" argument as a tuple of Python ints;
* conv padding as a 4-tuple ``(top, bottom, left, right)`` (``"same"`` can be
  asymmetric for even kernels, as in torch), pooling padding as ``(ph, pw)``;
* output sizes already computed by :mod:`convkit._shapes` (``out_hw``), so no
  kernel re-derives them (ceil_mode is folded into ``out_hw``);
* rois as an ``(K, 5)`` array ``[batch_index, x1, y1, x2, y2]`` with every
  coordinate finite and every batch index an integer in ``[0, N)``
  (rows with non-finite coordinates are zeroed by the boundary, and the
  boundary zeroes their outputs/gradients afterwards).

Zero-size inputs (N = 0, K = 0, no boxes) are handled by the boundary too:
backend methods are only called with non-empty work.

Backends must not keep references to their inputs and must not modify them,
except ``running_mean``/``running_var`` in ``batch_norm_forward`` (updated in
place in training mode) and ``out=`` buffers.
"""
from __future__ import annotations

import abc
from types import ModuleType
from typing import Any, ClassVar


class Backend(abc.ABC):
    """Abstract backend.  Subclasses missing an op cannot be instantiated."""

    name: ClassVar[str]
    xp: ModuleType

    # ------------------------------------------------------------ arrays
    def asarray(self, a: Any, dtype=None):
        """Convert ``a`` (any array-like of this backend's device) to ``xp.ndarray``."""
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a: Any):
        """Return ``a`` as a ``numpy.ndarray`` (a copy from device memory where needed)."""
        import numpy as np

        return np.asarray(a)

    def synchronize(self) -> None:
        """Wait until all queued work is finished (no-op on the CPU)."""

    def is_native(self, a: Any) -> bool:
        """True when ``a`` is an array this backend's ops accept without conversion."""
        return isinstance(a, self.xp.ndarray)

    def info(self) -> dict:
        """Free-form facts for ``convkit info`` (threads, devices, versions)."""
        return {}

    # ------------------------------------------------------------ conv
    @abc.abstractmethod
    def conv2d_forward(self, x, weight, bias, stride, padding, dilation, groups, out=None):
        """x (N,C,H,W), weight (F,C/groups,KH,KW), bias (F,) or None -> y (N,F,Ho,Wo).

        stride/dilation: (sh, sw)/(dh, dw); padding: (top, bottom, left, right).
        ``out``: optional preallocated C-contiguous y to write into (returned).
        """

    @abc.abstractmethod
    def conv2d_backward(self, grad_y, x, weight, stride, padding, dilation, groups,
                        needs_input_grad, has_bias):
        """-> (grad_x or None, grad_weight, grad_bias or None)."""

    # ------------------------------------------------------------ pooling
    @abc.abstractmethod
    def max_pool2d_forward(self, x, kernel_size, stride, padding, dilation, out_hw, out=None):
        """-> (y (N,C,Ho,Wo), indices int64 (N,C,Ho,Wo)): flat h*W+w into the unpadded plane.

        Padding counts as -inf (never selected unless the whole window is padding,
        which the boundary rules out).  NaN propagates: a NaN in the window wins
        (torch).  Ties: the first maximum in row-major window order wins.
        """

    @abc.abstractmethod
    def max_pool2d_backward(self, grad_y, indices, input_shape):
        """-> grad_x of ``input_shape`` (scatter-add of grad_y at indices)."""

    @abc.abstractmethod
    def avg_pool2d_forward(self, x, kernel_size, stride, padding, out_hw, count_include_pad,
                           out=None):
        """-> y (N,C,Ho,Wo).  Divisor as torch: with count_include_pad, the window clipped
        to the padded extent [-p, H+p); without, the number of in-image elements."""

    @abc.abstractmethod
    def avg_pool2d_backward(self, grad_y, input_shape, kernel_size, stride, padding,
                            count_include_pad):
        """-> grad_x of ``input_shape``.  Output size is grad_y.shape[2:]."""

    # ------------------------------------------------------------ batch norm
    @abc.abstractmethod
    def batch_norm_forward(self, x, weight, bias, running_mean, running_var, training,
                           momentum, eps, out=None):
        """-> (y, save_mean (C,), save_invstd (C,)).

        training: batch mean/biased var over (N,H,W); save_invstd = 1/sqrt(var+eps);
        running_mean/var (if not None) updated in place:
        r = (1-momentum)*r + momentum*stat, with the unbiased variance for running_var.
        eval: uses running_mean/var; save_mean = running_mean copy,
        save_invstd = 1/sqrt(running_var+eps).  weight/bias None = no affine.
        """

    @abc.abstractmethod
    def batch_norm_backward(self, grad_y, x, weight, save_mean, save_invstd, training):
        """-> (grad_x, grad_weight or None, grad_bias or None).  weight None -> no affine:
        grad_weight and grad_bias are None."""

    # ------------------------------------------------------------ roi
    @abc.abstractmethod
    def roi_pool_forward(self, x, rois, output_size, spatial_scale, out=None):
        """-> (y (K,C,oh,ow), argmax int64 (K,C,oh,ow): flat h*W+w, -1 for an empty bin)."""

    @abc.abstractmethod
    def roi_pool_backward(self, grad_y, rois, argmax, input_shape):
        """-> grad_x of ``input_shape``; rois (K,5) give each RoI's batch index."""

    @abc.abstractmethod
    def roi_align_forward(self, x, rois, output_size, spatial_scale, sampling_ratio, aligned,
                          out=None):
        """-> y (K,C,oh,ow), torchvision's roi_align semantics."""

    @abc.abstractmethod
    def roi_align_backward(self, grad_y, rois, input_shape, output_size, spatial_scale,
                           sampling_ratio, aligned):
        """-> grad_x of ``input_shape``."""

    # ------------------------------------------------------------ boxes
    @abc.abstractmethod
    def nms(self, boxes, scores, iou_threshold):
        """boxes (N,4) xyxy, scores (N,) -> keep int64 indices by decreasing score
        (stable: ties keep the lower index first).  IoU > thr suppresses; a union of 0 -> IoU 0."""

    @abc.abstractmethod
    def box_iou(self, boxes1, boxes2):
        """(N,4), (M,4) xyxy -> (N,M) IoU; area = (x2-x1)*(y2-y1); union 0 -> 0."""
