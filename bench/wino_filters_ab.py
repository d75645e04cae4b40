"""F(4x4)'s packed filter transform (conv_plan "winograd", tile 4, float32 on csrc/fgemm.h):
written straight into U's 36 planes against through a task buffer copied plane by plane
(_conv_winograd.winograd4_stage_filters 0 / 1), interleaved, one thread, CPU time.

    python bench/wino_filters_ab.py [--shapes 64x64,128x128,256x256,512x512] [--rounds 9]

Prints per F x C (filters x channels) the median over the rounds of each mode's best-of-3 CPU
time per filter (ns) and staged / direct; checks both give the same bits.
"""
import argparse
import time

import numpy as np

from convkit.cpu import _conv_winograd as wg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="64x64,128x128,256x256,512x512")
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args()
    for shape in a.shapes.split(","):
        F, C = (int(v) for v in shape.split("x"))
        w = np.random.default_rng(0).standard_normal((F, C, 3, 3)).astype(np.float32)
        U = {m: np.empty((36, wg.winograd4_packed_rows(F), C), np.float32) for m in (0, 1)}
        t = {0: [], 1: []}
        old = wg.winograd4_stage_filters(0)
        try:
            for _ in range(a.rounds):
                for m in (0, 1):
                    wg.winograd4_stage_filters(m)
                    best = float("inf")
                    for _ in range(3):
                        t0 = time.process_time()
                        wg.winograd_filters(w, U[m], 1, False, True)
                        best = min(best, time.process_time() - t0)
                    t[m].append(best * 1e9 / (F * C))
        finally:
            wg.winograd4_stage_filters(old)
        same = np.array_equal(U[0].view(np.uint32), U[1].view(np.uint32))
        d, s = np.median(t[0]), np.median(t[1])
        print(f"{F}x{C}: direct {d:.1f} ns/filter, staged {s:.1f}, staged/direct {s / d:.2f}, "
              f"same bits {same}", flush=True)


if __name__ == "__main__":
    main()
