"""One-thread CPU time (least of 15 calls, time.process_time) of polywino's pieces on convt_28:
the filter transforms (conv.polywino_filters / polywino_grad_filters, numpy float64) and the
kernels alone (conv2d_forward_polywino: conv_transpose2d's grad_x; conv2d_grad_input_polywino:
its forward) for several tile rows per task, then the whole calls through the API:

    PYTHONPATH=<checkout> python bench/polywino_parts.py
"""
import time

import numpy as np

import convkit
from convkit.cpu import conv as C, _conv_winograd as W

convkit.set_num_threads(1)
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 64, 28, 28)).astype(np.float32)
gy = rng.standard_normal((8, 32, 56, 56)).astype(np.float32)
w = rng.standard_normal((64, 32, 4, 4)).astype(np.float32)
b = np.zeros(1, np.float32)


def best(f, n=15):
    t = []
    for _ in range(n):
        t0 = time.process_time()
        f()
        t.append(time.process_time() - t0)
    return min(t) * 1e3


print(f"filters (grad_x of convt) {best(lambda: C.polywino_filters(w)):.3f} ms, "
      f"grad filters (forward) {best(lambda: C.polywino_grad_filters(w)):.3f} ms")
U, Ug = C.polywino_filters(w), C.polywino_grad_filters(w)
y = np.empty((8, 64, 28, 28), np.float32)
gx = np.empty((8, 32, 56, 56), np.float32)
for tr in (7, 4, 2):
    per = W.polywino_floats(32, 64, tr, 7)
    ws = np.empty(per, np.float32)
    t = best(lambda: W.conv2d_forward_polywino(gy, U, b, False, y, ws, per, tr, 1, 1, 1))
    print(f"convt grad_x kernel, {tr} tile rows a task ({per * 4 // 1024} KiB): {t:.3f} ms")
for tr in (8, 6, 4, 2):
    per = W.polywino_gx_floats(64, 32, tr, 8)
    ws = np.empty(per, np.float32)
    t = best(lambda: W.conv2d_grad_input_polywino(x, Ug, b, False, gx, ws, per, tr, 1, 1, 1))
    print(f"convt forward kernel, {tr} tile rows a task ({per * 4 // 1024} KiB): {t:.3f} ms")
with convkit.use_backend("cpu"):
    print(f"API: convt forward {best(lambda: convkit.conv_transpose2d_forward(x, w, None, stride=2, padding=1)):.3f} ms, "
          f"grad_x {best(lambda: convkit.conv2d_forward(gy, w, None, stride=2, padding=1)):.3f} ms")
