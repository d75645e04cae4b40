"""Max error of conv_transpose2d on convt_28 (x (8, 64, 28, 28), w (64, 32, 4, 4), stride 2,
padding 1) -- forward and grad_x -- against torch in float64, relative to the largest output,
for the plan this checkout takes (polywino: Winograd F(4x4, 2x2) over the phase planes), for the
plan before it (POLYWINO_MIN_CHANNELS raised: subpixel / rowphases, direct sums), for torch's
float32, and beside them F(4x4, 3x3)'s (the "winograd" tile 4 plan) on a 3x3 stride-1 conv of
the same size (x (8, 64, 28, 28) -> 64 filters), 3 seeds each:

    PYTHONPATH=<checkout> python bench/polywino_accuracy.py
"""
import numpy as np
import torch

import convkit
from convkit.cpu import conv as cc
from convkit.cpu import tuning as T


def rel(a, b):
    return np.abs(a.astype(np.float64) - b).max() / np.abs(b).max()


def plans():
    gx_shape = np.empty((8, 32, 56, 56), np.float32)
    w = np.empty((64, 32, 4, 4), np.float32)
    p = cc._plan(gx_shape, w, (2, 2), (1,) * 4, (1, 1), 1)[3]
    return f"fwd {p.grad_x.algo}, gx {p.forward.algo}"


errs = {}
for seed in range(3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, 64, 28, 28)).astype(np.float32)
    w = (rng.standard_normal((64, 32, 4, 4)) / np.sqrt(16 * 16)).astype(np.float32)
    gy = rng.standard_normal((8, 32, 56, 56)).astype(np.float32)
    xt = torch.from_numpy(x).double().requires_grad_()
    yt = torch.nn.functional.conv_transpose2d(xt, torch.from_numpy(w).double(), stride=2,
                                              padding=1)
    yt.backward(torch.from_numpy(gy).double())
    want_y, want_gx = yt.detach().numpy(), xt.grad.numpy()
    x32 = torch.from_numpy(x).requires_grad_()
    y32 = torch.nn.functional.conv_transpose2d(x32, torch.from_numpy(w), stride=2, padding=1)
    y32.backward(torch.from_numpy(gy))
    errs.setdefault("torch32 fwd", []).append(rel(y32.detach().numpy(), want_y))
    errs.setdefault("torch32 gx", []).append(rel(x32.grad.numpy(), want_gx))
    for label, mins in (("convkit", T.POLYWINO_MIN_CHANNELS), ("before", 1 << 20)):
        old, T.POLYWINO_MIN_CHANNELS = T.POLYWINO_MIN_CHANNELS, mins
        cc._plans.clear()
        try:
            with convkit.use_backend("cpu"):
                y = convkit.conv_transpose2d_forward(x, w, None, stride=2, padding=1)
                gx = convkit.conv_transpose2d_backward(gy, x, w, stride=2, padding=1,
                                                       has_bias=False)[0]
            errs.setdefault(f"{label} fwd ({plans()})", []).append(rel(y, want_y))
            errs.setdefault(f"{label} gx", []).append(rel(gx, want_gx))
        finally:
            T.POLYWINO_MIN_CHANNELS = old
            cc._plans.clear()
    # F(4x4, 3x3) on a 3x3 stride-1 conv of the same size
    w3 = (rng.standard_normal((64, 64, 3, 3)) / np.sqrt(9 * 64)).astype(np.float32)
    p3 = cc._plan(x, w3, (1, 1), (1,) * 4, (1, 1), 1)[3].forward
    want3 = torch.nn.functional.conv2d(torch.from_numpy(x).double(),
                                       torch.from_numpy(w3).double(), padding=1).numpy()
    with convkit.use_backend("cpu"):
        y3 = convkit.conv2d_forward(x, w3, None, padding=1)
    errs.setdefault(f"3x3 conv, {p3.algo} tile {p3.params.get('tile')}", []).append(
        rel(y3, want3))
for k, v in errs.items():
    print(f"{k}: max {max(v):.2e}")
