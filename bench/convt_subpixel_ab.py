"""conv_transpose2d's forward on convt_28 (cpu, one thread) with the sub-pixel step's
parameters set per variant, in one process, interleaved: each variant's least process CPU
time of --calls calls, median over --rounds rounds.  srows=0 runs the common windows (the
layout before the shifted one), srows=R the shifted layout at R phase rows per task (at
most what the plan's workspace holds: more is refused), skc its taps per rowgemm pass.

    python bench/convt_subpixel_ab.py "[dict(srows=0), dict(srows=14, skc=256)]"
    python bench/convt_subpixel_ab.py "dict(srows=0)" --once 4   # 4 calls, no timing
        (under valgrind --tool=callgrind: instruction counts per variant)
"""
import argparse
import statistics
import time

import numpy as np

import convkit
from convkit.cpu import conv as cc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("variants")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--once", type=int, default=0)
    a = ap.parse_args()
    convkit.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 64, 28, 28)).astype(np.float32)
    w = (rng.standard_normal((64, 32, 4, 4)) * 0.05).astype(np.float32)
    b = np.zeros(32, np.float32)

    def f():
        return convkit.conv_transpose2d_forward(x, w, b, 2, 1, 0)

    f()

    def setp(d):
        for hit in cc._plans.values():
            st = hit[3].grad_x
            if st is not None and st.algo == "subpixel":
                st.params.update(d)

    variants = eval(a.variants)         # (a command-line literal of ours)
    if a.once:
        setp(variants)
        for _ in range(a.once):
            f()
        return

    def cpu():
        best = float("inf")
        for _ in range(a.calls):
            t = time.process_time()
            f()
            best = min(best, time.process_time() - t)
        return best

    res = {str(v): [] for v in variants}
    for _ in range(a.rounds):
        for v in variants:
            setp(v)
            res[str(v)].append(cpu())
    for k, v in res.items():
        print(f"{k}: {statistics.median(v) * 1e3:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
