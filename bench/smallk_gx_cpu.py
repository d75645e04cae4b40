"""One-thread CPU time of a pointwise conv's grad_x on the BLAS plans: OpenBLAS (the plan's
channel blocks, gemm_pk) against csrc/smallk.h (each output one chain over the filters;
--runs position runs per image), over a few filter counts K (thirteenth session, helper
pwx13).  Calls _conv_im2col.conv2d_backward_gemm directly (grad_x only), interleaved rounds in
one process, time.process_time of the least of --calls calls a round, medians over rounds.
Also checks the new path against float64 einsum and its bits over runs 1 / --runs.
Indicative only (a loaded 2-core host).

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=$PWD python bench/smallk_gx_cpu.py --dtype float64
    CONVKIT_DISABLE_AVX512=1 CONVKIT_DISABLE_FGEMM=1 OPENBLAS_NUM_THREADS=1 PYTHONPATH=$PWD \\
        python bench/smallk_gx_cpu.py --dtype float32
"""
import argparse
import time

import numpy as np

from convkit.cpu import _conv_im2col as im
from convkit.cpu import conv_plan as P

ap = argparse.ArgumentParser()
ap.add_argument("--dtype", default="float64")
ap.add_argument("--rounds", type=int, default=15)
ap.add_argument("--calls", type=int, default=5)
ap.add_argument("--runs", type=int, default=32, help="position runs per image (smallk)")
ap.add_argument("--ks", default="18,32,64,128")
ap.add_argument("--shape", default="1,512,38,50", help="N,C,H,W")
a = ap.parse_args()
dt = np.dtype(a.dtype)
N, C, H, W = map(int, a.shape.split(","))
rng = np.random.default_rng(0)
E1 = np.zeros(1, dt)
X = np.zeros((N, C, H, W), dt)        # (its shape only: grad_x reads none of x)
EG = np.zeros((1, 1, 1, 1), dt)


def call(gy, w, gx, chans, pos, smallk):
    im.conv2d_backward_gemm(gy, X, w, gx, EG, E1, 0, 1, H, chans, H, 1, 1, 0, 0, 1, 1, 1,
                            True, True, False, 1, 1, E1, 0, pos, False, 256, None, smallk)


print(f"{a.dtype}, N={N} C={C} {H}x{W}, one thread; ms (least of {a.calls}), medians of "
      f"{a.rounds} rounds; smallk {a.runs} runs/image")
for K in map(int, a.ks.split(",")):
    gy = rng.standard_normal((N, K, H, W)).astype(dt)
    w = rng.standard_normal((K, C, 1, 1)).astype(dt)
    gxa, gxb, gxc = (np.empty((N, C, H, W), dt) for _ in range(3))
    chans = P.grad_x_chans(C, 1, 1, 0)
    pos = -(-H * W // a.runs)
    ref = np.einsum("fc,nfp->ncp", w[:, :, 0, 0].astype(np.float64),
                    gy.reshape(N, K, -1).astype(np.float64)).reshape(N, C, H, W)
    call(gy, w, gxb, C, pos, True)
    call(gy, w, gxc, 7, 0, True)        # one run, channel blocks of 7: the same bits
    assert np.array_equal(gxb, gxc), "smallk bits follow the blocks"
    err = np.abs(gxb - ref).max() / np.abs(ref).max()
    ts = {"blas": [], "smallk": []}
    for r in range(a.rounds):
        for name in (("blas", "smallk") if r % 2 == 0 else ("smallk", "blas")):
            best = 1e9
            for _ in range(a.calls):
                t0 = time.process_time()
                if name == "blas":
                    call(gy, w, gxa, chans, 0, False)
                else:
                    call(gy, w, gxb, C, pos, True)
                best = min(best, time.process_time() - t0)
            ts[name].append(best)
    mb, ms = np.median(ts["blas"]), np.median(ts["smallk"])
    ratios = np.array(ts["smallk"]) / np.array(ts["blas"])
    print(f"K={K:4d}: blas (chans {chans}) {mb * 1e3:.3f} ms, smallk {ms * 1e3:.3f} ms, "
          f"new/old {ms / mb:.3f} (per-round ratio median {np.median(ratios):.3f}); "
          f"max rel err vs float64 {err:.1e}")
