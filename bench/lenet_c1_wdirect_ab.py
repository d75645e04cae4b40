"""LeNet5's first layer ((B, 1, 8, 8) * (6, 1, 5, 5), padding 2, the training step's c1) on a
half-rate AVX-512 CPU (Zen 4): the plan without and with "weight_direct" in
tuning.HALF_RATE_AVX2 (the AVX-512 batch path against csrc/wdirect.h), alternated in one
process, least thread CPU us per call on one thread: the forward hook (whether its bits are
the batch path's) and the backward without grad_x (grad_weight's largest error against torch
float64 relative to its largest magnitude).

    python bench/lenet_c1_wdirect_ab.py 64
"""
import sys, time, numpy as np, torch, convkit
from convkit.cpu import tuning as T, conv as cc
convkit.set_num_threads(1)
clock = time.thread_time


def best(f, reps=100, rounds=9):
    f(); out = []
    for _ in range(rounds):
        t = clock()
        for _ in range(reps): f()
        out.append((clock() - t) / reps * 1e6)
    return min(out)


B = int(sys.argv[1]) if len(sys.argv) > 1 else 64
rng = np.random.default_rng(0)
x = rng.standard_normal((B, 1, 8, 8)).astype(np.float32)
w = rng.standard_normal((6, 1, 5, 5)).astype(np.float32)
gy = rng.standard_normal((B, 6, 8, 8)).astype(np.float32)
ref = torch.nn.grad.conv2d_weight(torch.from_numpy(x).double(), w.shape,
                                  torch.from_numpy(gy).double(), padding=2).numpy()
base = T.HALF_RATE_AVX2 - {"weight_direct"}
sets = (("without", base), ("with", base | {"weight_direct"}))
b = rng.standard_normal(6).astype(np.float32)
with convkit.use_backend("cpu") as be:
    def fwd():
        return be._conv2d_forward(x, w, b, (1, 1), (2, 2, 2, 2), (1, 1), 1)

    def f():
        return be._conv2d_backward(gy, x, w, (1, 1), (2, 2, 2, 2), (1, 1), 1, False, True)
    for r in range(2):
        for name, s in sets:
            T.HALF_RATE_AVX2 = s
            cc._plans.clear()
            plan = cc._plan(x, w, (1, 1), (2, 2, 2, 2), (1, 1), 1, False)[3].grad_weight.algo
            err = float(np.abs(f()[1] - ref).max() / np.abs(ref).max())
            y = fwd()
            same = "" if name == "without" else f" (same bits: {np.array_equal(y, y0)})"
            y0 = y
            print(f"B {B} {name:7s} weight_direct: forward {best(fwd):6.1f} us{same}; backward "
                  f"{plan:14s} {best(f):7.1f} us  err {err:.2e}", flush=True)
T.HALF_RATE_AVX2 = base | {"weight_direct"}
