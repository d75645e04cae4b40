"""One-thread CPU time of polywino's forward and grad_x per tile rows a task (issue 16: what
the many-thread splits conv_plan._polywino_tasks picks cost one core).  Interleaved rounds,
median ms of time.process_time per call, CONVKIT_NUM_THREADS-independent (n_threads=1 passed
to the kernels); AVX2 + FMA (csrc/polywino.h).

    PYTHONPATH=. python bench/polywino_trows_cpu.py [--rounds 9] [--trows 0,4,2,1]

trows 0: the whole image a task (th tile rows).  Layers: convt28_adj (convt_28's adjoint,
8 x 32 x 56 x 56 -> 64, 4x4 s2 p1) and k4s2_56 (64 -> 64)."""
import argparse
import time

import numpy as np

from convkit.cpu import _conv_winograd as W
from convkit.cpu import conv as cc

LAYERS = {"convt28_adj": (8, 32, 56, 56, 64), "k4s2_56": (8, 64, 56, 56, 64)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--trows", default="0,4,2,1")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    for name, (N, C, H, Wd, F) in LAYERS.items():
        x = rng.standard_normal((N, C, H, Wd), dtype=np.float32)
        w = rng.standard_normal((F, C, 4, 4), dtype=np.float32)
        Ho, Wo = H // 2, Wd // 2
        gy = rng.standard_normal((N, F, Ho, Wo), dtype=np.float32)
        U, Ug = cc.polywino_filters(w), cc.polywino_grad_filters(w)
        b, bx = np.zeros(F, np.float32), np.zeros(C, np.float32)
        th, tw = (Ho + 3) // 4, (Wo + 3) // 4
        thg, twg = ((H - 1 + 1) // 2 + 4) // 4, ((Wd - 1 + 1) // 2 + 4) // 4
        runs = {}
        for tr in [int(t) for t in a.trows.split(",")]:
            rf, rg = tr or th, tr or thg
            y = np.empty((N, F, Ho, Wo), np.float32)
            gx = np.empty((N, C, H, Wd), np.float32)
            wf = np.empty(W.polywino_floats(C, F, rf, tw), np.float32)
            wg = np.empty(W.polywino_gx_floats(F, C, rg, twg), np.float32)
            runs[f"fwd trows {rf}"] = lambda wf=wf, y=y, rf=rf: W.conv2d_forward_polywino(
                x, U, b, False, y, wf, wf.size, rf, 1, 1, 1)
            runs[f"grad_x trows {rg}"] = lambda wg=wg, gx=gx, rg=rg: \
                W.conv2d_grad_input_polywino(gy, Ug, bx, False, gx, wg, wg.size, rg, 1, 1, 1)
        t = {k: [] for k in runs}
        for _ in range(a.rounds):
            for k, f in runs.items():
                f()
                t0 = time.process_time()
                f()
                t[k].append(time.process_time() - t0)
        for k in sorted(t):
            print(f"{name:12s} {k:18s} {1e3 * np.median(t[k]):8.2f} ms")


if __name__ == "__main__":
    main()
