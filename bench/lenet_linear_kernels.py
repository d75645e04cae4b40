"""LeNet5's Linear GEMM shapes on one thread, least thread CPU us: numpy's BLAS NT forward
(x @ w.T, what Linear runs), NN on a fresh contiguous copy of w.T (copy included) and the copy
alone, and convkit's own fixed-order GEMM (gemm_rows: csrc/sgemm.h on AVX-512, fgemm.h on AVX2)
for the forward and the backward's two products against BLAS.  Run it also with
OPENBLAS_CORETYPE=Haswell to see OpenBLAS's AVX2 kernels on an AVX-512 host.

    python bench/lenet_linear_kernels.py
"""
import time, numpy as np
from convkit._config import blas_single_thread
from convkit.cpu import _conv_dense as D
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
            x = rng.standard_normal((B, i)).astype(np.float32)
            w = rng.standard_normal((o, i)).astype(np.float32)
            gy = rng.standard_normal((B, o)).astype(np.float32)
            y, gw, gx = (np.empty(s, np.float32) for s in ((B, o), (o, i), (B, i)))
            print(f"{B} {i}->{o}: fwd NT {best(lambda: x @ w.T):.1f} "
                  f"copy+NN {best(lambda: x @ np.ascontiguousarray(w.T)):.1f} "
                  f"copy {best(lambda: np.ascontiguousarray(w.T)):.1f} "
                  f"own {best(lambda: D.gemm_rows(False, True, x, w, y, i, 1)):.1f} | "
                  f"gw BLAS {best(lambda: gy.T @ x):.1f} "
                  f"own {best(lambda: D.gemm_rows(True, False, gy, x, gw, B, 1)):.1f} | "
                  f"gx BLAS {best(lambda: gy @ w):.1f} "
                  f"own {best(lambda: D.gemm_rows(False, False, gy, w, gx, o, 1)):.1f}",
                  flush=True)
