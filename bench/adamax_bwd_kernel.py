"""The adaptive max backward's kernels on the suite's two rows, one thread, CPU time
(time.process_time, lowest of CALLS calls after a warm-up), interleaved in one process:
_pool.max_pool2d_backward (scratch planes streamed to memory past 4 MB; the adaptive backward
before the twelfth session) against _adaptive_pool.adaptive_max_backward (blocks of planes,
one memset a block, plain stores), and a plain fill of the same gradient for scale.

    PYTHONPATH=$PWD python bench/adamax_bwd_kernel.py [CALLS]
"""
import sys
import time

import numpy as np

import convkit
from convkit.cpu import _adaptive_pool, _pool
from convkit.cpu import adaptive_pool as ap

CALLS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
convkit.set_num_threads(1)


def cpu_us(f):
    f()
    best = float("inf")
    for _ in range(CALLS):
        t = time.process_time()
        f()
        best = min(best, time.process_time() - t)
    return best * 1e6


for shape, o in (((8, 512, 7, 7), 1), ((8, 64, 56, 56), 7)):
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    y, idx = ap.adaptive_max_pool2d_forward(x, (o, o))
    P, HW = shape[0] * shape[1], shape[2] * shape[3]
    gy, ix = np.ones_like(y).reshape(P, -1), idx.reshape(P, -1)
    gx = np.empty((P, HW), np.float32)
    rows = {"streamed (_pool)": [], "blocks (_adaptive_pool)": [], "fill 0": []}
    for _ in range(3):
        rows["streamed (_pool)"].append(cpu_us(lambda: _pool.max_pool2d_backward(gy, ix, gx, 1)))
        rows["blocks (_adaptive_pool)"].append(
            cpu_us(lambda: _adaptive_pool.adaptive_max_backward(gy, ix, gx, 1)))
        rows["fill 0"].append(cpu_us(lambda: gx.fill(0)))
    print(shape, "->", o, "  ".join(f"{k} {min(v):.1f} us" for k, v in rows.items()))
