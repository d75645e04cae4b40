"""The Linear layers' GEMM shapes on numpy's BLAS (one thread): x @ w.T (what Linear's forward
runs: BLAS's NT case), (w @ x.T).T and x @ wt with a contiguous copy of w.T (the NN case), and
the backward's two products and their transposed forms -- least thread CPU us, and whether each
variant gives the same bits.  On this session's Zen 4 (OpenBLAS SkylakeX kernels) the NN form
took ~2/3 of the NT form's time, with other bits.

    python bench/linear_gemm_orient.py
"""
import time, numpy as np
from convkit._config import blas_single_thread
clock = time.thread_time
def best(f, reps=300, rounds=9):
    f(); out = []
    for _ in range(rounds):
        t = clock()
        for _ in range(reps): f()
        out.append((clock() - t) / reps * 1e6)
    return min(out)
rng = np.random.default_rng(0)
with blas_single_thread:
  for B in (64, 128):
    for i, o in ((64, 120), (120, 84), (84, 10)):
        x = rng.standard_normal((B, i)).astype(np.float32); w = rng.standard_normal((o, i)).astype(np.float32)
        wt = np.ascontiguousarray(w.T); gy = rng.standard_normal((B, o)).astype(np.float32)
        a = x @ w.T; b = (w @ x.T).T; c = x @ wt
        gw1 = gy.T @ x; gw2 = (x.T @ gy).T
        gx1 = gy @ w; gx2 = (w.T @ gy.T).T
        print(B, i, o, "fwd same", np.array_equal(a, b), np.array_equal(a, c),
              f"x@w.T {best(lambda: x @ w.T):.1f} (w@x.T).T {best(lambda: (w @ x.T).T):.1f} x@wt {best(lambda: x @ wt):.1f}",
              "| gw same", np.array_equal(gw1, gw2), f"gy.T@x {best(lambda: gy.T @ x):.1f} (x.T@gy).T {best(lambda: (x.T @ gy).T):.1f}",
              "| gx same", np.array_equal(gx1, gx2), f"gy@w {best(lambda: gy @ w):.1f} (w.T@gy.T).T {best(lambda: (w.T @ gy.T).T):.1f}", flush=True)
