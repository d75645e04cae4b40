"""CNN classifiers built from :mod:`convkit.nn`: LeNet5, a small VGG-style and a small
ResNet-style network (both with batch norm).

All three are :class:`convkit.nn.Sequential` subclasses, so their state dict keys are those of
the same layers in a torch ``nn.Sequential`` ("0.weight", "3.conv1.weight", ...).  Each takes
``dtype`` (float32 or float64) and ``seed`` (weights are drawn from one
``np.random.default_rng(seed)`` layer after layer).  The first convolution is built with
``needs_input_grad=False``: the images need no gradient.
"""
from __future__ import annotations

import numpy as np

from ..nn import (AvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU,
                  ResidualBlock, Sequential)
from ..nn.init import make_rng

__all__ = ["LeNet5", "SmallVGG", "SmallResNet", "build_classifier", "CLASSIFIERS"]


class LeNet5(Sequential):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling:
    conv5x5 6 -> ReLU -> pool 2 -> conv5x5 16 -> ReLU -> pool 2 -> fc 120 -> ReLU -> fc 84 ->
    ReLU -> fc num_classes.

    For the 8x8 digits both convolutions use ``padding=2`` (size-preserving), so the maps go
    8x8 -> pool 4x4 -> 4x4 -> pool 2x2 and the first fc layer sees 16*2*2 = 64 features.  The
    1998 layout is ``LeNet5(input_size=32, padding=0)`` (32 -> 28 -> 14 -> 10 -> 5, fc 400).
    """

    def __init__(self, num_classes=10, in_channels=1, input_size=8, padding=2,
                 dtype=np.float32, seed=0):
        rng = make_rng(seed)
        s = input_size + 2 * padding - 4
        s = (s // 2 + 2 * padding - 4) // 2
        if s < 1:
            raise ValueError(f"LeNet5: input_size={input_size} with padding={padding} is too "
                             f"small (feature map would be {s}x{s})")
        super().__init__(
            Conv2d(in_channels, 6, 5, padding=padding, needs_input_grad=False, dtype=dtype,
                   seed=rng), ReLU(), MaxPool2d(2),
            Conv2d(6, 16, 5, padding=padding, dtype=dtype, seed=rng), ReLU(), MaxPool2d(2),
            Flatten(),
            Linear(16 * s * s, 120, dtype=dtype, seed=rng), ReLU(),
            Linear(120, 84, dtype=dtype, seed=rng), ReLU(),
            Linear(84, num_classes, dtype=dtype, seed=rng),
        )


def _conv_bn_relu(cin, cout, dtype, rng, first=False):
    return [Conv2d(cin, cout, 3, padding=1, bias=False, needs_input_grad=not first, dtype=dtype,
                   seed=rng), BatchNorm2d(cout, dtype=dtype), ReLU()]


class SmallVGG(Sequential):
    """VGG-style (Simonyan & Zisserman 2015): per stage two conv3x3-BN-ReLU then max pool 2,
    widths ``widths`` (default 32, 64), then flatten and one linear layer.  For 8x8 inputs the
    maps go 8 -> 4 -> 2 (fc sees widths[-1] * 2 * 2)."""

    def __init__(self, num_classes=10, in_channels=1, input_size=8, widths=(32, 64),
                 dtype=np.float32, seed=0):
        rng = make_rng(seed)
        layers, cin, s = [], in_channels, input_size
        for i, w in enumerate(widths):
            layers += _conv_bn_relu(cin, w, dtype, rng, first=(i == 0))
            layers += _conv_bn_relu(w, w, dtype, rng)
            layers.append(MaxPool2d(2))
            cin, s = w, s // 2
        if s < 1:
            raise ValueError(f"SmallVGG: input_size={input_size} is too small for "
                             f"{len(widths)} pooling stages")
        layers += [Flatten(), Linear(cin * s * s, num_classes, dtype=dtype, seed=rng)]
        super().__init__(*layers)


class SmallResNet(Sequential):
    """ResNet-style (He et al. 2016): stem conv3x3-BN-ReLU (widths[0]), then one basic
    :class:`~convkit.nn.ResidualBlock` per width (stride 1 for the first, 2 after), global
    average pooling, linear.  Default widths (16, 32, 64): 8x8 -> 8 -> 4 -> 2 -> pool 1."""

    def __init__(self, num_classes=10, in_channels=1, input_size=8, widths=(16, 32, 64),
                 dtype=np.float32, seed=0):
        rng = make_rng(seed)
        layers = _conv_bn_relu(in_channels, widths[0], dtype, rng, first=True)
        cin, s = widths[0], input_size
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(ResidualBlock(cin, w, stride, dtype=dtype, seed=rng))
            cin, s = w, (s - 1) // stride + 1
        layers += [AvgPool2d(s), Flatten(), Linear(cin, num_classes, dtype=dtype, seed=rng)]
        super().__init__(*layers)


CLASSIFIERS = {"lenet5": LeNet5, "vgg": SmallVGG, "resnet": SmallResNet}


def build_classifier(name, **kwargs):
    """``"lenet5" | "vgg" | "resnet"`` -> the model, built on the active backend."""
    try:
        cls = CLASSIFIERS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown classifier {name!r}; choose one of {sorted(CLASSIFIERS)}") \
            from None
    return cls(**kwargs)
