"""One-core work of F(2x2)'s two-region split (issue 16; conv_plan.winograd2_split) against the
one-region split, on the full-rate (Xeon) plans: the suite layer's forward kernel
(_conv_winograd.conv2d_forward_winograd, float32, own AVX-512 GEMM) run on ONE thread with the
tile rows / filter blocks the plan gives ``--plan-threads`` threads (default 16), so the
process CPU time is the total work those tasks cost (a team of that size shares it out; their
idle share is bench/many_core_split.py's arithmetic).  Configs, interleaved per round, median
of the rounds' minimum-of-calls CPU ms:

  one1   the 1-thread plan's one region (the baseline work)
  oneT   the one-region tasks the plan gave T threads before the split (tuning rule alone)
  splitT the T-thread plan (the split where it takes one)

    CONVKIT_AVX512_FULL_RATE=1 python bench/wino2_split_cpu.py [--layers res_14,rpn_3x3,res_28]
        [--plan-threads 16] [--rounds 7] [--calls 3] [--only CONFIG]

--only CONFIG runs that config's kernel once per call, --calls times, with no timing (for
valgrind --tool=callgrind instruction counts of one config).  The filter transform and packing
are outside the timed call (the same in every config).
"""
import argparse
import statistics
import time

import numpy as np

from convkit.benchmark.cases import CASES
from convkit.cpu import _conv_winograd as W
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P

CAPS = P.ConvCaps(own_sgemm=True, depthwise3x3_level=3)      # the full-rate AVX-512 plans


def setup(name, plan_threads):
    c = {c.name: c for c in CASES}[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((c.N, c.C, c.H, c.W)).astype(np.float32)
    w = (rng.standard_normal((c.F, c.C, 3, 3)) * 0.05).astype(np.float32)
    b = np.zeros(c.F, np.float32)
    s = P.ConvShape.of(x.shape, w.shape, (1, 1), (1,) * 4, (1, 1), 1)
    U = np.zeros((16, c.F, c.C), np.float32)
    W.winograd_filters(w, U, 1, False)
    y = np.zeros((c.N, c.F, c.H, c.W), np.float32)
    steps = {"one1": P.plan_conv(s, np.float32, 1, CAPS, 256 * 2**20).forward,
             "split%d" % plan_threads:
                 P.plan_conv(s, np.float32, plan_threads, CAPS, 256 * 2**20).forward}
    keep = P.winograd2_split
    P.winograd2_split = lambda *a: None
    try:
        steps["one%d" % plan_threads] = P.plan_conv(s, np.float32, plan_threads, CAPS,
                                                    256 * 2**20).forward
    finally:
        P.winograd2_split = keep
    calls = {}
    for key, st in steps.items():
        p = st.params
        assert st.algo == "winograd" and p["tile"] == 2, st
        fp = p.get("fparts", 0)
        apk = cc._packed_a_blocks(U, fp or 1, 1).copy()
        ws = np.zeros(p.get("shared", 0) + p["per_thread"], np.float32)

        def run(p=p, fp=fp, apk=apk, ws=ws):
            W.conv2d_forward_winograd(x, U, b, False, y, ws, p["per_thread"], p["trows"], 1, 1,
                                      1, apk, 2, False, False, fp)
        calls[key] = (run, "trows %d fparts %d" % (p["trows"], fp))
    return calls


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", default="res_14,rpn_3x3,res_28")
    ap.add_argument("--plan-threads", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--only", default=None)
    a = ap.parse_args()
    for name in a.layers.split(","):
        calls = setup(name, a.plan_threads)
        if a.only:
            fn = calls[a.only][0]
            for _ in range(a.calls):
                fn()
            continue
        ms = {k: [] for k in calls}
        for _ in range(a.rounds):
            for k, (fn, _) in calls.items():
                fn()
                best = float("inf")
                for _ in range(a.calls):
                    t = time.process_time()
                    fn()
                    best = min(best, time.process_time() - t)
                ms[k].append(best * 1e3)
        base = statistics.median(ms["one1"])
        for k, (_, what) in calls.items():
            m = statistics.median(ms[k])
            print(f"{name:8s} {k:8s} {what:22s} {m:8.2f} ms  x{m / base:.3f} of one1")


if __name__ == "__main__":
    main()
