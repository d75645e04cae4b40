"""Layers: explicit forward/backward over the public ops of :mod:`convkit.functional`.

Each layer keeps in ``self._cache`` exactly what its backward needs and calls only
``convkit.functional`` ops and its backend's ``xp`` -- never a backend-specific branch.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .._config import blas_single_thread
from .init import INITS, make_rng
from .module import Module, Sequential, check_float_input

__all__ = ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "AvgPool2d", "Linear", "Flatten",
           "Dropout", "ToFloat", "Normalize", "Identity", "ResidualBlock"]


def _small_matmul(a, b):
    """a @ b, on one BLAS thread when small: waking BLAS's threads costs more than a small GEMM
    computes, and on a busy machine a lot more ((64, 120) @ (120, 84) float32 took 16 ms on
    OpenBLAS's 2 threads against 18 us on one, bench/RESULTS_classify.md).  Above _SMALL_MACS
    BLAS threads pay for themselves.  Device GEMMs (CuPy) are not affected by the pin."""
    if a.shape[0] * a.shape[1] * b.shape[1] > _SMALL_MACS:
        return a @ b
    with blas_single_thread:
        return a @ b


_SMALL_MACS = 1 << 22


def _init(name):
    try:
        return INITS[name]
    except KeyError:
        raise ValueError(f"unknown init {name!r}; choose one of {sorted(INITS)}") from None


def _dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"layer dtype must be float32 or float64, got {dt}")
    return dt


class Conv2d(Module):
    """2-D convolution (cross-correlation), torch's ``nn.Conv2d`` layout.

    weight (array[F, C/groups, KH, KW]) initialised with ``init`` (Kaiming normal by default) from
    ``np.random.default_rng(seed)``; bias (array[F]) zero.  ``needs_input_grad=False`` makes
    backward skip grad_x and return None (a first layer: the image needs no gradient).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, needs_input_grad=True, dtype=np.float32, seed=None,
                 init="kaiming"):
        super().__init__()
        k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, k
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.has_bias, self.needs_input_grad = bool(bias), bool(needs_input_grad)
        dt = _dtype(dtype)
        w = _init(init)((out_channels, in_channels // groups) + k, make_rng(seed), dt)
        self.add_param("weight", self.backend.asarray(w))
        if self.has_bias:
            self.add_param("bias", self.xp.zeros(out_channels, dt))

    def forward(self, x):
        check_float_input("Conv2d", x)
        with self._pinned():
            y = F.conv2d_forward(x, self.params["weight"], self.params.get("bias"), self.stride,
                                 self.padding, self.dilation, self.groups)
        self._cache = (x,)
        return y

    def backward(self, grad_y):
        (x,) = self._cache
        with self._pinned():
            gx, gw, gb = F.conv2d_backward(grad_y, x, self.params["weight"], self.stride,
                                           self.padding, self.dilation, self.groups,
                                           needs_input_grad=self.needs_input_grad,
                                           has_bias=self.has_bias)
        self.grads["weight"] += gw
        if self.has_bias:
            self.grads["bias"] += gb
        return gx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class BatchNorm2d(Module):
    """Spatial batch norm (torch's ``nn.BatchNorm2d``): params weight (ones) and bias (zeros),
    buffers running_mean (zeros) and running_var (ones), updated in training with ``momentum``
    (running_var from the unbiased batch variance).  eval() normalises with the running stats."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, dtype=np.float32):
        super().__init__()
        dt = _dtype(dtype)
        self.num_features, self.affine = num_features, affine
        self.eps, self.momentum = eps, momentum
        if affine:
            self.add_param("weight", self.xp.ones(num_features, dt))
            self.add_param("bias", self.xp.zeros(num_features, dt))
        self.add_buffer("running_mean", self.xp.zeros(num_features, dt))
        self.add_buffer("running_var", self.xp.ones(num_features, dt))

    def forward(self, x):
        check_float_input("BatchNorm2d", x)
        with self._pinned():
            y, mean, invstd = F.batch_norm_forward(
                x, self.params.get("weight"), self.params.get("bias"),
                self.buffers["running_mean"], self.buffers["running_var"], self.training,
                self.momentum, self.eps)
        self._cache = (x, mean, invstd, self.training)
        return y

    def backward(self, grad_y):
        x, mean, invstd, training = self._cache
        with self._pinned():
            gx, gw, gb = F.batch_norm_backward(grad_y, x, self.params.get("weight"), mean, invstd,
                                               training)
        if self.affine:
            self.grads["weight"] += gw
            self.grads["bias"] += gb
        return gx

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class ReLU(Module):
    """max(x, 0); the gradient at 0 is 0 (torch)."""

    def forward(self, x):
        check_float_input("ReLU", x)
        y = self.xp.maximum(x, 0)    # NaN stays NaN, as in torch
        self._cache = (y,)
        return y

    def backward(self, grad_y):
        (y,) = self._cache
        return grad_y * (y != 0)    # y >= 0 or NaN; NaN passes the gradient, as in torch


class MaxPool2d(Module):
    """Max pooling (torch's ``nn.MaxPool2d``); stride None = kernel_size."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode

    def forward(self, x):
        check_float_input("MaxPool2d", x)
        with self._pinned():
            y, idx = F.max_pool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                          self.dilation, self.ceil_mode)
        self._cache = (idx, x.shape)
        return y

    def backward(self, grad_y):
        idx, shape = self._cache
        with self._pinned():
            return F.max_pool2d_backward(grad_y, idx, shape)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    """Average pooling (torch's ``nn.AvgPool2d``, no divisor_override)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x):
        check_float_input("AvgPool2d", x)
        with self._pinned():
            y = F.avg_pool2d_forward(x, self.kernel_size, self.stride, self.padding,
                                     self.ceil_mode, self.count_include_pad)
        self._cache = (x.shape,)
        return y

    def backward(self, grad_y):
        (shape,) = self._cache
        with self._pinned():
            return F.avg_pool2d_backward(grad_y, shape, self.kernel_size, self.stride,
                                         self.padding, self.ceil_mode, self.count_include_pad)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class Linear(Module):
    """y = x @ weight.T + bias; weight (array[out, in]) as torch, x (array[N, in])."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, seed=None,
                 init="kaiming"):
        super().__init__()
        dt = _dtype(dtype)
        self.in_features, self.out_features, self.has_bias = in_features, out_features, bool(bias)
        w = _init(init)((out_features, in_features), make_rng(seed), dt)
        self.add_param("weight", self.backend.asarray(w))
        if self.has_bias:
            self.add_param("bias", self.xp.zeros(out_features, dt))

    def forward(self, x):
        check_float_input("Linear", x)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear: x must be 2-D (N, {self.in_features}), got shape "
                             f"{tuple(x.shape)} (use Flatten() after a conv stack)")
        w = self.params["weight"]
        if x.dtype != w.dtype:
            raise TypeError(f"Linear: x is {x.dtype} but the layer is {w.dtype}")
        y = _small_matmul(x, w.T)
        if self.has_bias:
            y += self.params["bias"]
        self._cache = (x,)
        return y

    def backward(self, grad_y):
        (x,) = self._cache
        w = self.params["weight"]
        self.grads["weight"] += _small_matmul(grad_y.T, x)
        if self.has_bias:
            self.grads["bias"] += grad_y.sum(axis=0)
        return _small_matmul(grad_y, w)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}"


class Flatten(Module):
    """(N, ...) -> (N, prod(...))."""

    def forward(self, x):
        self._cache = (x.shape,)
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_y):
        (shape,) = self._cache
        return grad_y.reshape(shape)


class Identity(Module):
    def forward(self, x):
        return x

    def backward(self, grad_y):
        return grad_y


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability p and scale the rest by
    1/(1-p); identity in eval.  Masks come from ``np.random.default_rng(seed)`` on the host (the
    same masks on every backend), moved to the backend with asarray."""

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = make_rng(seed)

    def forward(self, x):
        check_float_input("Dropout", x)
        if not self.training or self.p == 0.0:
            self._cache = (None,)
            return x
        keep = self.rng.random(x.shape) >= self.p
        scale = (keep / (1.0 - self.p)).astype(x.dtype)
        scale = self.backend.asarray(scale)
        self._cache = (scale,)
        return x * scale

    def backward(self, grad_y):
        (scale,) = self._cache
        return grad_y if scale is None else grad_y * scale

    def extra_repr(self):
        return f"p={self.p}"


class ToFloat(Module):
    """The explicit integer -> float step: uint8 images (0..255) become ``dtype`` times ``scale``
    (default 1/255, as torchvision's ToTensor).  Float input is only cast and scaled too.  No
    gradient flows into integer images: backward returns None."""

    def __init__(self, dtype=np.float32, scale=1.0 / 255.0):
        super().__init__()
        self.dtype = _dtype(dtype)
        self.scale = float(scale)

    def forward(self, x):
        x = self.xp.asarray(x)
        y = x.astype(self.dtype)
        if self.scale != 1.0:
            y *= self.dtype.type(self.scale)
        return y

    def backward(self, grad_y):
        return None

    def extra_repr(self):
        return f"dtype={self.dtype}, scale={self.scale:g}"


class Normalize(Module):
    """Per-channel (x - mean) / std on (N, C, H, W) float input (torchvision's Normalize)."""

    def __init__(self, mean, std, dtype=np.float32):
        super().__init__()
        dt = _dtype(dtype)
        mean = np.asarray(mean, dt).reshape(1, -1, 1, 1)
        std = np.asarray(std, dt).reshape(1, -1, 1, 1)
        if np.any(std <= 0):
            raise ValueError("Normalize: std must be positive")
        self.mean, self.inv_std = self.backend.asarray(mean), self.backend.asarray(1.0 / std)

    def forward(self, x):
        check_float_input("Normalize", x)
        return (x - self.mean) * self.inv_std

    def backward(self, grad_y):
        return grad_y * self.inv_std


class ResidualBlock(Module):
    """ResNet basic block (He et al. 2016): conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the shortcut
    (identity, or conv1x1(stride)-BN when the shape changes), then ReLU.

    Children: conv1, bn1, relu1, conv2, bn2, shortcut (Sequential; empty for identity), relu2.
    """

    def __init__(self, in_channels, out_channels, stride=1, dtype=np.float32, seed=None):
        super().__init__()
        rng = make_rng(seed)
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride, 1, bias=False, dtype=dtype,
                            seed=rng)
        self.bn1 = BatchNorm2d(out_channels, dtype=dtype)
        self.relu1 = ReLU()
        self.conv2 = Conv2d(out_channels, out_channels, 3, 1, 1, bias=False, dtype=dtype, seed=rng)
        self.bn2 = BatchNorm2d(out_channels, dtype=dtype)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = Sequential(Conv2d(in_channels, out_channels, 1, stride, 0, bias=False,
                                              dtype=dtype, seed=rng),
                                       BatchNorm2d(out_channels, dtype=dtype))
        else:
            self.shortcut = Sequential()
        self.relu2 = ReLU()

    def forward(self, x):
        h = self.relu1.forward(self.bn1.forward(self.conv1.forward(x)))
        h = self.bn2.forward(self.conv2.forward(h))
        return self.relu2.forward(h + self.shortcut.forward(x))

    def backward(self, grad_y):
        g = self.relu2.backward(grad_y)
        gs = self.shortcut.backward(g)
        gm = self.conv1.backward(self.bn1.backward(self.relu1.backward(
            self.conv2.backward(self.bn2.backward(g)))))
        return gm + gs
