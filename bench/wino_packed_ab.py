"""F(4x4)'s packed filters (conv_plan.winograd_packed: csrc/wino4.h's ck_w4_gemm_pk) against the
plain layout on csrc/fgemm.h, through the public API in one process: forward and
forward+backward of the suite's 3x3 layers, float32, interleaved, the two plans alternating
call by call; prints the median and the best of each in ms, and packed / plain.

    python bench/wino_packed_ab.py [--layers res_14,res_28,vgg_56,rpn_3x3] [--reps 15]
        [--threads 2]

CPU time of the process (time.process_time: all threads; a shared host's other processes do
not count, their cache and memory traffic still does): only the comparison within a row means
anything.
"""
import argparse
import statistics
import time

import numpy as np

import convkit
from convkit.benchmark.cases import CASES
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P


def _plans(packed):
    P.winograd_packed = (lambda tile, fixed: tile == 4 and fixed) if packed else \
        (lambda tile, fixed: False)
    cc._plans.clear()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="res_14,res_28,vgg_56,rpn_3x3")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    convkit.set_num_threads(a.threads)
    cases = {c.name: c for c in CASES}
    rng = np.random.default_rng(0)
    rule = P.winograd_packed
    try:
        for name in a.layers.split(","):
            c = cases[name]
            x = rng.standard_normal((c.N, c.C, c.H, c.W)).astype(np.float32)
            w = rng.standard_normal((c.F, c.C, 3, 3)).astype(np.float32)
            b = rng.standard_normal(c.F).astype(np.float32)
            with convkit.use_backend("cpu"):
                y = convkit.conv2d_forward(x, w, b, padding=c.pad)
                gy = rng.standard_normal(y.shape).astype(np.float32)
                passes = {"forward": lambda: convkit.conv2d_forward(x, w, b, padding=c.pad),
                          "forward+backward": lambda: (
                              convkit.conv2d_forward(x, w, b, padding=c.pad),
                              convkit.conv2d_backward(gy, x, w, padding=c.pad, has_bias=True))}
                for pname, f in passes.items():
                    ts = {False: [], True: []}
                    for packed in (False, True):
                        _plans(packed)
                        f()                                     # warm: workspace, plan
                    for _ in range(a.reps):
                        for packed in (False, True):
                            _plans(packed)
                            t = time.process_time()
                            f()
                            ts[packed].append(time.process_time() - t)
                    m = {k: statistics.median(v) * 1e3 for k, v in ts.items()}
                    lo = {k: min(v) * 1e3 for k, v in ts.items()}
                    print(f"{name:8s} {pname:17s} plain {m[False]:7.2f} (best {lo[False]:7.2f})  "
                          f"packed {m[True]:7.2f} (best {lo[True]:7.2f})  packed/plain median "
                          f"{m[True] / m[False]:.3f} best {lo[True] / lo[False]:.3f}", flush=True)
    finally:
        P.winograd_packed = rule
        cc._plans.clear()


if __name__ == "__main__":
    main()
