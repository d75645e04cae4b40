"""convt_28's polywino kernels called directly, one thread, twice (for callgrind instruction
counts; twelfth session, helper poly12).

    PYTHONPATH=. valgrind --tool=callgrind --toggle-collect='*polywino*omp_fn*' \
        python bench/poly12_callgrind_kernels.py KIND

KIND: fwd (conv2d_grad_input_polywino: convt_28's forward, tasks of 6 tile rows), gx / gxR
(conv2d_forward_polywino: its grad_x, tasks of R tile rows, 7 = whole images), run25 (runs of
25 tiles: the 16-thread plan's tasks), gwIxC (conv2d_grad_weight_polywino, groups of I images,
C GEMM columns).  The kernels' signatures are main's too (run25 needs this branch).
"""
import numpy as np, sys
from convkit.cpu import conv as cc
from convkit.cpu import _conv_winograd as W
which = sys.argv[1]
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 64, 28, 28)).astype(np.float32)
w = (rng.standard_normal((64, 32, 4, 4)) * 0.05).astype(np.float32)
gy = rng.standard_normal((8, 32, 56, 56)).astype(np.float32)
if which == "fwd":
    Ug = cc.polywino_grad_filters(w); y = np.empty((8, 32, 56, 56), np.float32); b = np.zeros(32, np.float32)
    per = W.polywino_gx_floats(64, 32, 6, 8); ws = np.zeros(per, np.float32)
    f = lambda: W.conv2d_grad_input_polywino(x, Ug, b, False, y, ws, per, 6, 1, 1, 1)
elif which.startswith("gx"):
    tr = int(which[2:]) if len(which) > 2 else 7
    U = cc.polywino_filters(w); gx = np.empty((8, 64, 28, 28), np.float32); b = np.zeros(64, np.float32)
    per = W.polywino_floats(32, 64, tr, 7); ws = np.zeros(per, np.float32)
    f = lambda: W.conv2d_forward_polywino(gy, U, b, False, gx, ws, per, tr, 1, 1, 1)
elif which == "run25":
    U = cc.polywino_filters(w); gx = np.empty((8, 64, 28, 28), np.float32); b = np.zeros(64, np.float32)
    per = W.polywino_floats(32, 64, 4, 7); ws = np.zeros(per, np.float32)
    f = lambda: W.conv2d_forward_polywino(gy, U, b, False, gx, ws, per, 4, 1, 1, 1, 25)
else:
    imgs, cols = map(int, which[2:].split("x"))
    gw = np.empty((64, 32, 4, 4), np.float32)
    a_, per = W.polywino_wgrad_floats(32, 64, 28, 28, imgs); ws = np.zeros(a_ + per, np.float32)
    f = lambda: W.conv2d_grad_weight_polywino(x, gy, gw, ws, 1, 1, imgs, cols, 1)
f(); f()
