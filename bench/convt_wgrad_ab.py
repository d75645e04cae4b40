"""convt_28's grad_weight on csrc/rowgemm.h (_conv_phases.conv2d_grad_weight_rowgemm), two
builds of the module in one process, interleaved: OLD, a .so whose kernel takes the whole
batch's channels-last x and grad_y panels (before the ninth session's convt9), and this
checkout's, which takes one image's at a time.  One thread; per round each side's least
thread CPU time of --calls calls; prints the medians and checks the two give the same bits.

    python bench/convt_wgrad_ab.py OLD.so [--rounds 9] [--calls 10]
"""
import argparse
import importlib.util
import statistics
import time

import numpy as np

from convkit.cpu import _conv_phases as new
from convkit.cpu import conv as cc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=10)
    a = ap.parse_args()
    spec = importlib.util.spec_from_file_location("convkit.cpu._conv_phases", a.old)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    rng = np.random.default_rng(0)
    gy = rng.standard_normal((8, 64, 28, 28)).astype(np.float32)      # the adjoint conv's
    x = rng.standard_normal((8, 32, 56, 56)).astype(np.float32)       # grad_y and input
    N, C, F, Ho, Wo, Hp, Wp = 8, 32, 64, 28, 28, 58, 58
    gws = [np.empty((F, C, 4, 4), np.float32) for _ in range(2)]
    out = np.empty(F * 16 * C, np.float32)
    xo, go = np.empty(N * Hp * Wp * C, np.float32), np.empty(F * N * Ho * Wo, np.float32)
    xn, gn = np.empty(Hp * Wp * C, np.float32), np.empty(F * Ho * Wo, np.float32)
    bo = cc._rowgemm_w_offsets(N, Ho, Wo, 2, 2, Hp, Wp, C)
    bn = cc._rowgemm_w_offsets(1, Ho, Wo, 2, 2, Hp, Wp, C)
    runs = {"old": lambda: old.conv2d_grad_weight_rowgemm(gy, x, gws[0], xo, go, out, bo, 2, 2,
                                                          1, 1, 64, 2, 64, 1),
            "new": lambda: new.conv2d_grad_weight_rowgemm(gy, x, gws[1], xn, gn, out, bn, 2, 2,
                                                          1, 1, 64, 2, 64, 1)}
    res = {k: [] for k in runs}
    for _ in range(a.rounds):
        for k, f in runs.items():
            f()
            best = float("inf")
            for _ in range(a.calls):
                t = time.thread_time()
                f()
                best = min(best, time.thread_time() - t)
            res[k].append(best * 1e3)
    print("same bits:", gws[0].tobytes() == gws[1].tobytes())
    for k, v in res.items():
        print(f"{k}: median {statistics.median(v):.3f} ms (rounds {min(v):.3f}-{max(v):.3f})")


if __name__ == "__main__":
    main()
