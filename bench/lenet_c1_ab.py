"""LeNet5's first conv (1 -> 6, 5x5, padding 2, digits' 8x8 maps) on the cpu backend, one
thread: least thread CPU us per call over 9 rounds of 100 calls of the forward (with bias) and
of the backward without grad_x (grad_weight and grad_bias), batch 64 and 128.  Alternate
checkouts:

    python bench/lenet_c1_ab.py
    PYTHONPATH=<other checkout> python bench/lenet_c1_ab.py
"""
import time

import numpy as np

import convkit
import convkit.functional as Fn

convkit.set_num_threads(1)
rng = np.random.default_rng(0)


def best(f, reps=100, rounds=9):
    f()
    out = []
    for _ in range(rounds):
        t = time.thread_time()
        for _ in range(reps):
            f()
        out.append((time.thread_time() - t) / reps * 1e6)
    return round(min(out), 1)


for N in (64, 128):
    x = rng.standard_normal((N, 1, 8, 8)).astype(np.float32)
    w = rng.standard_normal((6, 1, 5, 5)).astype(np.float32)
    b = np.zeros(6, np.float32)
    gy = rng.standard_normal((N, 6, 8, 8)).astype(np.float32)
    print(f"{convkit.__file__} batch {N}: c1 fwd {best(lambda: Fn.conv2d_forward(x, w, b, 1, 2))}"
          f" us, c1 bwd (no grad_x) "
          f"{best(lambda: Fn.conv2d_backward(gy, x, w, 1, 2, needs_input_grad=False))} us")
