"""The own AVX-512 GEMM (csrc/sgemm.h) on pw_14's shapes, one thread, GFLOP/s by CPU time
(time.process_time over 40 calls, 5 interleaved rounds, median and best): the forward's
1024 x n x 256 on prepacked A for n = 192 / 196 (4 x 48 + a 4-column panel) / 208 / 240, and
grad_x's 256 x n x 1024 for n = 96 / 98 (a grad_x task: 2 x 48 + 2) / 112 / 196, with A
packed in each call (ta, gemm_fixed) and prepacked (w^T packed once per conv call).

    OMP_NUM_THREADS=1 PYTHONPATH=<checkout> python bench/pw_gemm_tail.py
"""
import time

import numpy as np

from convkit.cpu import _gemm as G

rng = np.random.default_rng(0)


def fwd(m, n, k):
    a = rng.standard_normal((1, m, k)).astype(np.float32)
    apk = np.empty((1, G.packed_a_floats(m, k)), np.float32)
    G.pack_a(a, apk)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = np.empty((m, n), np.float32)
    return lambda: G.gemm_packed_into(apk, False, b, 0.0, c, k)


def gx(m, n, k, prepacked):
    a = rng.standard_normal((k, m)).astype(np.float32)          # stored k x m (w, ta)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c = np.empty((m, n), np.float32)
    if not prepacked:
        return lambda: G.gemm_fixed_into(True, False, a, b, 0.0, c)
    apk = np.empty((1, G.packed_a_floats(m, k)), np.float32)
    G.pack_a(np.ascontiguousarray(a.T)[None], apk)
    return lambda: G.gemm_packed_into(apk, False, b, 0.0, c, k)


cases = [(f"fwd 1024 x {n} x 256", fwd(1024, n, 256), 2 * 1024 * n * 256)
         for n in (192, 196, 208, 240)]
cases += [(f"grad_x 256 x {n} x 1024{' prepacked' if pk else ''}", gx(256, n, 1024, pk),
           2 * 256 * n * 1024) for pk in (False, True) for n in (96, 98, 112, 196)]
res = {name: [] for name, _, _ in cases}
for _ in range(5):
    for name, f, flop in cases:
        f()
        t = time.process_time()
        for _ in range(40):
            f()
        res[name].append(40 * flop / (time.process_time() - t) / 1e9)
for name, v in res.items():
    v.sort()
    print(f"{name:36s} GFLOP/s median {v[2]:6.1f} best {v[-1]:6.1f}")
