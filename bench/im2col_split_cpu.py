"""One-core work of the im2col forward's many-thread split (issue 16; conv_plan.im2col_rows)
against the rule before it: the forward kernel (_conv_im2col.conv2d_forward_gemm, float32) run
on ONE thread with the rows per task the plan gives ``--plan-threads`` threads (default 16), so
the process CPU time is the total work those tasks cost (the team's idle share is
bench/many_core_split.py's arithmetic).  Configs, interleaved per round, median of the rounds'
minimum-of-calls CPU ms:

  one1   the 1-thread plan (the whole image per task where the piece holds it)
  oldT   the rows the T-thread plan took before the split (tuning.IM2COL_SPLIT_MIN_THREADS off)
  newT   the T-thread plan (rows/blocks: blocks > 0 is an even split of the image in that many)

    python bench/im2col_split_cpu.py [--caps avx512|epyc] [--shapes strided_14,convt28_adj,k4s2_56]
        [--plan-threads 16] [--rounds 7] [--calls 3] [--only CONFIG]

--caps avx512 (default): the full-rate plans on the own AVX-512 GEMM (this process must have
it); --caps epyc: the AVX2 plans on csrc/fgemm.h (run with CONVKIT_DISABLE_AVX512=1).  --only
CONFIG runs that config once per call, --calls times, untimed (for valgrind --tool=callgrind).
"""
import argparse
import statistics
import time

import numpy as np

from convkit.cpu import _conv_im2col as I
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P
from convkit.cpu import tuning as T

CAPS = {"avx512": P.ConvCaps(own_sgemm=True, depthwise3x3_level=3),
        "epyc": P.ConvCaps(own_sgemm=False, depthwise3x3_level=2, rowgemm=True,
                           fixed_sgemm=True)}
# many_core_split.py's EXTRA shapes: (N, C, H, W), (F, C, K, K), stride, padding
SHAPES = {"strided_14": ((8, 64, 28, 28), (128, 64, 3, 3), 2, 1),
          "convt28_adj": ((8, 32, 56, 56), (64, 32, 4, 4), 2, 1),
          "k4s2_56": ((8, 64, 56, 56), (64, 64, 4, 4), 2, 1)}


def setup(name, caps, plan_threads):
    xs, wsh, st, pad = SHAPES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(np.float32)
    w = (rng.standard_normal(wsh) * 0.05).astype(np.float32)
    b = np.zeros(wsh[0], np.float32)
    s = P.ConvShape.of(xs, wsh, (st, st), (pad,) * 4, (1, 1), 1)
    y = np.zeros((xs[0], wsh[0]) + tuple(s.out), np.float32)

    def fw(nt):
        return P.plan_conv(s, np.float32, nt, caps, 256 * 2**20).forward
    steps = {"one1": fw(1), "new%d" % plan_threads: fw(plan_threads)}
    keep = T.IM2COL_SPLIT_MIN_THREADS
    T.IM2COL_SPLIT_MIN_THREADS = 1 << 30
    try:
        steps["old%d" % plan_threads] = fw(plan_threads)
    finally:
        T.IM2COL_SPLIT_MIN_THREADS = keep
    apk = cc._packed_a(w.reshape(1, wsh[0], -1)).copy()
    calls = {}
    for key, step in steps.items():
        p = step.params
        assert step.algo == "im2col", step
        ws = np.zeros(p["per_thread"], np.float32)

        def call(p=p, ws=ws):
            I.conv2d_forward_gemm(x, w, b, False, y, ws, p["per_thread"], p["rows"], st, st,
                                  pad, pad, 1, 1, 1, False, 1, apk, p.get("blocks", 0))
        calls[key] = (call, "%d/%d" % (p["rows"], p.get("blocks", 0)))
    return calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--caps", default="avx512", choices=list(CAPS))
    ap.add_argument("--shapes", default="strided_14,convt28_adj,k4s2_56")
    ap.add_argument("--plan-threads", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--only")
    a = ap.parse_args()
    assert cc._OWN_SGEMM == (a.caps == "avx512"), "--caps epyc wants CONVKIT_DISABLE_AVX512=1"
    for name in a.shapes.split(","):
        calls = setup(name, CAPS[a.caps], a.plan_threads)
        if a.only:
            for _ in range(a.calls):
                calls[a.only][0]()
            continue
        times = {k: [] for k in calls}
        for _ in range(a.rounds):
            for k, (call, _) in calls.items():
                best = float("inf")
                for _ in range(a.calls):
                    t0 = time.process_time()
                    call()
                    best = min(best, time.process_time() - t0)
                times[k].append(best * 1e3)
        base = statistics.median(times["one1"])
        for k, (call, rows) in calls.items():
            m = statistics.median(times[k])
            print(f"{a.caps} {name:12s} {k:6s} rows/blocks {rows:5s} {m:8.2f} ms  x{m / base:.3f}")


if __name__ == "__main__":
    main()
