"""csrc/fgemm.h with B read in place (m <= CK_FG_DIRECT_M): GFLOP/s at a B row stride of a
power of two floats (the batch path's L = images x 64 columns) against one 16 floats longer,
interleaved, least thread CPU time per call over the rounds, one thread.

    python bench/fgemm_stride_ab.py [m] [k] [n] [rounds]
"""
import sys
import time

import numpy as np

from convkit.cpu import _gemm

m, k, n = (int(v) for v in (sys.argv[1:4] if len(sys.argv) > 3 else (16, 144, 1024)))
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 15
rng = np.random.default_rng(0)
a = rng.standard_normal((m, k)).astype(np.float32)
out = {}
for nn in (n, n + 16):
    b = rng.standard_normal((k, nn)).astype(np.float32)
    out[nn] = (b, np.empty((m, nn), np.float32))
best = {nn: 1e9 for nn in out}
for r in range(rounds):
    for nn, (b, c) in out.items():
        t = time.thread_time()
        for _ in range(50):
            _gemm.fgemm_into(False, False, a, b, 0.0, c)
        best[nn] = min(best[nn], (time.thread_time() - t) / 50)
for nn, t in best.items():
    print(f"m {m} k {k} n {nn} (row stride {nn * 4} bytes): {t * 1e6:.1f} us, "
          f"{2 * m * k * nn / t / 1e9:.1f} GFLOP/s")
