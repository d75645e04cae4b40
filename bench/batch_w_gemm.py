"""The batch grad_weight GEMMs of SmallResNet (batch 64): BLAS against csrc/fgemm.h straight
(grad_y @ cols^T) and transposed (cols @ grad_y^T), one thread, thread CPU time (less
distorted by other processes than wall time), best of the rounds, interleaved:

    python bench/batch_w_gemm.py [rounds]

Rows: filters x columns (channels x taps) x positions (images x Ho*Wo); GFLOP/s.
(tuning.BATCH_W_FGEMM_RATIO is set from this table.)
"""
import sys
import time

import numpy as np
from scipy.linalg import blas
from threadpoolctl import threadpool_limits

from convkit.cpu import _gemm

SHAPES = [(16, 144, 4096), (32, 144, 1024), (32, 288, 1024), (32, 16, 1024), (64, 288, 256),
          (64, 16, 256), (16, 9, 4096)]


def main(rounds):
    threadpool_limits(1)
    rng = np.random.default_rng(0)
    print("| filters x columns x positions | BLAS | fgemm | fgemm transposed |")
    print("| --- | --- | --- | --- |")
    for fg, nck, n in SHAPES:
        gy = rng.standard_normal((fg, n)).astype(np.float32)
        cols = rng.standard_normal((nck, n)).astype(np.float32)
        c = np.empty((fg, nck), np.float32)
        ct = np.empty((nck, fg), np.float32)
        fns = {"blas": lambda: blas.sgemm(1.0, cols.T, gy.T, trans_a=1),  # (column-major)
               "fgemm": lambda: _gemm.fgemm_into(False, True, gy, cols, 0.0, c),
               "transposed": lambda: _gemm.fgemm_into(False, True, cols, gy, 0.0, ct)}
        best = {k: float("inf") for k in fns}
        for r in range(rounds):
            for k, f in (list(fns.items()) if r % 2 else list(fns.items())[::-1]):
                t0 = time.thread_time()
                f()
                f()
                f()
                best[k] = min(best[k], (time.thread_time() - t0) / 3)
        np.testing.assert_allclose(c, ct.T, rtol=1e-4, atol=1e-3)
        rate = {k: 2 * fg * nck * n / v / 1e9 for k, v in best.items()}
        print(f"| {fg} x {nck} x {n} | {rate['blas']:.0f} | {rate['fgemm']:.0f} | "
              f"{rate['transposed']:.0f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
