"""lenet_c1's forward on the full-rate plans (cc._FULL_RATE, as CONVKIT_AVX512_FULL_RATE=1):
"wide" (own AVX-512 GEMM; tuning.DIRECT_FULL_RATE off) against "direct" (csrc/wdirect.h,
level 3 = AVX-512; DIRECT_FULL_RATE on) -- one thread, time.process_time per call,
interleaved A/B, medians; and whether the two give the same bits.  On this Zen 4 both run
512-bit FMAs at half rate, so the ratio is indicative of instruction / FMA efficiency, not a
full-rate CPU's timing.

    PYTHONPATH=$PWD CONVKIT_NUM_THREADS=1 python bench/direct_fullrate_cpu.py [--rounds 21]
"""
import argparse
import time

import numpy as np

import convkit
from convkit.cpu import conv as cc
from convkit.cpu import tuning as T


def use(direct):
    T.DIRECT_FULL_RATE = bool(direct)
    cc._plans.clear()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    cc._FULL_RATE = True
    cc._caps_by_level.clear()
    convkit.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 1, 28, 28)).astype(np.float32)
    w = rng.standard_normal((6, 1, 5, 5)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    times, ys, algos = {0: [], 1: []}, {}, {}
    with convkit.use_backend("cpu"):
        for r in range(args.rounds + 1):
            for k in ((0, 1) if r % 2 else (1, 0)):
                use(k)
                st = cc._plan(x, w, (1, 1), (2,) * 4, (1, 1), 1)[3].forward
                algos[k] = (st.algo, st.params.get("level"))
                t0 = time.process_time()
                for _ in range(5):
                    ys[k] = convkit.conv2d_forward(x, w, b, stride=1, padding=2)
                if r:
                    times[k].append((time.process_time() - t0) / 5)
    a, d = (np.median(times[k]) * 1e3 for k in (0, 1))
    print(f"lenet_c1 N={args.batch} forward, one thread: {algos[0]} {a:.3f} ms, "
          f"{algos[1]} {d:.3f} ms, direct/wide {d / a:.3f}; same bits: "
          f"{ys[0].tobytes() == ys[1].tobytes()}")


if __name__ == "__main__":
    main()
