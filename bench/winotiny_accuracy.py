"""Max error of the small ResNet's 3x3 stride-1 convs (forward, grad_x and grad_weight) against
torch in float64, relative to the largest output, for the checkout on PYTHONPATH (the tiny-map
Winograd of csrc/winotiny.h, or the batch GEMM before it) and for torch's float32 conv:

    PYTHONPATH=<checkout> python bench/winotiny_accuracy.py
"""
import numpy as np
import torch

import convkit

rng = np.random.default_rng(0)
print(convkit.__file__)
for N, C, H in ((64, 16, 8), (64, 32, 4), (128, 16, 8), (128, 32, 4)):
    errs = {"convkit fwd": [], "convkit grad_x": [], "convkit grad_w": [], "torch32 fwd": [],
            "torch32 grad_x": [], "torch32 grad_w": []}
    for trial in range(5):
        x = rng.standard_normal((N, C, H, H)).astype(np.float32)
        w = (rng.standard_normal((C, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
        gy = rng.standard_normal((N, C, H, H)).astype(np.float32)
        xt = torch.from_numpy(x).double().requires_grad_()
        wt = torch.from_numpy(w).double().requires_grad_()
        yt = torch.nn.functional.conv2d(xt, wt, padding=1)
        yt.backward(torch.from_numpy(gy).double())
        want_y, want_gx, want_gw = yt.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()
        x32 = torch.from_numpy(x).requires_grad_()
        w32 = torch.from_numpy(w).requires_grad_()
        y32 = torch.nn.functional.conv2d(x32, w32, padding=1)
        y32.backward(torch.from_numpy(gy))
        with convkit.use_backend("cpu"):
            y = convkit.conv2d_forward(x, w, None, padding=1)
            gx, gw = convkit.conv2d_backward(gy, x, w, padding=1, has_bias=False)[:2]

        def rel(a, b):
            return np.abs(a.astype(np.float64) - b).max() / np.abs(b).max()
        errs["convkit fwd"].append(rel(y, want_y))
        errs["convkit grad_x"].append(rel(gx, want_gx))
        errs["torch32 fwd"].append(rel(y32.detach().numpy(), want_y))
        errs["torch32 grad_x"].append(rel(x32.grad.numpy(), want_gx))
        errs["convkit grad_w"].append(rel(gw, want_gw))
        errs["torch32 grad_w"].append(rel(w32.grad.numpy(), want_gw))
    print(f"{N}x{C}x{H}x{H}: " + ", ".join(f"{k} {max(v):.2e}" for k, v in errs.items()))
