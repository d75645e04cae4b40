"""One-thread CPU time of a pointwise conv's grad_x on OpenBLAS (the BLAS plans) in channel
blocks of --chans (e.g. 256,128: one block per image against two), interleaved rounds in one
process, time.process_time of the least of --calls calls a round, medians over rounds and
the median of the per-round ratios (thirteenth session, helper pwx13; pw_14's 16 tasks).
Calls _conv_im2col.conv2d_backward_gemm directly (grad_x only).  Indicative only (a loaded
2-core host).

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=$PWD python bench/pw_gx_blocks_cpu.py --dtype float64
    CONVKIT_DISABLE_AVX512=1 CONVKIT_DISABLE_FGEMM=1 OPENBLAS_NUM_THREADS=1 PYTHONPATH=$PWD \\
        python bench/pw_gx_blocks_cpu.py --dtype float32
"""
import argparse
import time

import numpy as np

from convkit.cpu import _conv_im2col as im

ap = argparse.ArgumentParser()
ap.add_argument("--dtype", default="float64")
ap.add_argument("--rounds", type=int, default=15)
ap.add_argument("--calls", type=int, default=3)
ap.add_argument("--chans", default="256,128")
ap.add_argument("--shape", default="8,256,14,14,1024", help="N,C,H,W,F")
a = ap.parse_args()
dt = np.dtype(a.dtype)
N, C, H, W, F = map(int, a.shape.split(","))
rng = np.random.default_rng(0)
E1, EG, X = np.zeros(1, dt), np.zeros((1, 1, 1, 1), dt), np.zeros((N, C, H, W), dt)
gy = rng.standard_normal((N, F, H, W)).astype(dtype := dt)
w = rng.standard_normal((F, C, 1, 1)).astype(dt)
chans = [int(c) for c in a.chans.split(",")]
out = {c: np.empty((N, C, H, W), dt) for c in chans}


def call(c):
    im.conv2d_backward_gemm(gy, X, w, out[c], EG, E1, 0, 1, H, c, H, 1, 1, 0, 0, 1, 1, 1,
                            True, True, False, 1, 1, E1, 0, 0, False, 256, None, False)


ts = {c: [] for c in chans}
for r in range(a.rounds):
    for c in (chans if r % 2 == 0 else chans[::-1]):
        best = 1e9
        for _ in range(a.calls):
            t0 = time.process_time()
            call(c)
            best = min(best, time.process_time() - t0)
        ts[c].append(best)
ref = np.einsum("fc,nfp->ncp", w[:, :, 0, 0].astype(np.float64),
                gy.reshape(N, F, -1).astype(np.float64)).reshape(N, C, H, W)
base = np.median(ts[chans[0]])
print(f"{a.dtype} N={N} C={C} {H}x{W} F={F}, one thread, {a.rounds} rounds x {a.calls} calls")
for c in chans:
    err = np.abs(out[c] - ref).max() / np.abs(ref).max()
    rat = np.median(np.array(ts[c]) / np.array(ts[chans[0]]))
    print(f"chans {c:4d} ({-(-C // c)} blocks): {np.median(ts[c]) * 1e3:.3f} ms, "
          f"x{np.median(ts[c]) / base:.3f} (per-round ratio median x{rat:.3f}); "
          f"rel err {err:.1e}")
