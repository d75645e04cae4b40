"""convt_28's grad_weight on csrc/rowgemm.h (_conv_phases.conv2d_grad_weight_rowgemm) at a
team of threads, two builds of the module in one process, interleaved: OLD, a .so whose kernel
runs three parallel regions per image on one shared xcl and panel buffer (before the tenth
session's convtpar10), and this checkout's, one region per call, each thread its own xcl rows
and panels.  Per round each side's least wall time and the process CPU time of that call, over
--calls calls; prints the medians, the load average, and checks the two give the same bits.

    python bench/convt_wgrad_team_ab.py OLD.so [--threads 2] [--rounds 9] [--calls 10]
"""
import argparse
import importlib.util
import os
import statistics
import time

import numpy as np

from convkit.cpu import _conv_phases as new
from convkit.cpu import conv as cc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=10)
    a = ap.parse_args()
    spec = importlib.util.spec_from_file_location("convkit.cpu._conv_phases", a.old)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    rng = np.random.default_rng(0)
    gy = rng.standard_normal((8, 64, 28, 28)).astype(np.float32)      # the adjoint conv's
    x = rng.standard_normal((8, 32, 56, 56)).astype(np.float32)       # grad_y and input
    C, F, Ho, Wo, Hp, Wp, nt = 32, 64, 28, 28, 58, 58, a.threads
    team = new.weight_rowgemm_team(F, 4, 2, 64, 2, nt)
    gws = [np.empty((F, C, 4, 4), np.float32) for _ in range(2)]
    out = np.empty(F * 16 * C, np.float32)
    xo, go = np.empty(Hp * Wp * C, np.float32), np.empty(F * Ho * Wo, np.float32)
    xn, gn = np.empty(team * Hp * Wp * C, np.float32), np.empty(team * F * Ho * Wo, np.float32)
    bo = cc._rowgemm_w_offsets(1, Ho, Wo, 2, 2, Hp, Wp, C)
    runs = {"old": lambda: old.conv2d_grad_weight_rowgemm(gy, x, gws[0], xo, go, out, bo, 2, 2,
                                                          1, 1, 64, 2, 64, nt),
            "new": lambda: new.conv2d_grad_weight_rowgemm(gy, x, gws[1], xn, gn, out, bo, 2, 2,
                                                          1, 1, 64, 2, 64, nt)}
    res = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    for _ in range(a.rounds):
        for k, f in runs.items():
            f()
            best, bc = float("inf"), 0.0
            for _ in range(a.calls):
                c0, t0 = time.process_time(), time.perf_counter()
                f()
                t, c = time.perf_counter() - t0, time.process_time() - c0
                if t < best:
                    best, bc = t, c
            res[k].append(best * 1e3)
            cpu[k].append(bc * 1e3)
    print(f"threads {nt}, load {os.getloadavg()}")
    print("same bits:", gws[0].tobytes() == gws[1].tobytes())
    for k, v in res.items():
        print(f"{k}: wall median {statistics.median(v):.3f} ms (rounds {min(v):.3f}-{max(v):.3f}),"
              f" CPU of those calls median {statistics.median(cpu[k]):.3f} ms")


if __name__ == "__main__":
    main()
