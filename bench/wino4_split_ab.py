"""F(4x4)'s two task splits on csrc/fgemm.h, interleaved (issue 16, "many cores"): the one-region
split (tasks of tile rows, each its input transform and all filters' GEMMs) against the
two-region one (a shared input transform, then tasks of tile rows x blocks of 6-filter strips:
conv2d_forward_winograd's fparts), on the suite's F(4x4) layers, float32, the packed filters.

    python bench/wino4_split_ab.py [--layers res_14,rpn_3x3] [--threads 1] [--rounds 9]
        [--configs "16:0,8:0,8:4,8:8,4:8"]

A config is "trows:fparts" (fparts 0: the one-region split).  Each round runs every config
once per layer in turn (a few warm-up calls first); printed: the median over the rounds of
the call's CPU time (time.process_time: with --threads > 1 the team's, waits included) and of
its wall time, ms, and the spread (min-max) of the CPU times.  The filter transform is done
once, outside the timing.  On this shared 2-core machine only the relative figures of one run
mean anything: the work a split adds on one core (its dup), not its gain on 16.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from convkit.cpu import _conv_winograd as wg

LAYERS = {"vgg_56": (8, 64, 56, 56, 64), "res_28": (8, 128, 28, 28, 128),
          "res_14": (8, 256, 14, 14, 256), "rpn_3x3": (1, 512, 38, 50, 512)}
_NO_PACK = np.zeros((0, 1), np.float32)


def setup(N, C, H, W, F, trows, fparts, threads):
    """(call, y) for one config: x, the packed U and the workspace made once."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((F, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    b = np.zeros(F, np.float32)
    U = np.empty((36, wg.winograd4_packed_rows(F), C), np.float32)
    wg.winograd_filters(w, U, 1, False, True)
    th, tw = -(-H // 4), -(-W // 4)
    if fparts:
        rows = 6 * -(-(-(-F // 6)) // fparts)
        per = 36 * rows * trows * tw + wg.winograd4_scratch(trows, tw)
        ws = np.zeros(36 * C * N * th * tw + threads * per, np.float32)
    else:
        per = 36 * (C + F) * trows * tw + wg.winograd4_scratch(trows, tw)
        ws = np.zeros(threads * per, np.float32)
    y = np.empty((N, F, H, W), np.float32)

    def call():
        wg.conv2d_forward_winograd(x, U, b, False, y, ws, per, trows, 1, 1, threads, _NO_PACK,
                                   4, False, True, fparts)
    return call, y


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="res_14,rpn_3x3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--configs", default="16:0,8:0,8:4,8:8,4:8")
    args = ap.parse_args(argv)
    if not wg.winograd4_packed_ok():
        raise SystemExit("csrc/fgemm.h's kernel does not run here (no AVX2 + FMA)")
    configs = [tuple(int(v) for v in c.split(":")) for c in args.configs.split(",")]
    for name in args.layers.split(","):
        N, C, H, W, F = LAYERS[name]
        th = -(-H // 4)
        calls, ref = {}, None
        for tr, fp in configs:
            tr = min(tr, N * th)
            call, y = setup(N, C, H, W, F, tr, fp, args.threads)
            call()
            if ref is None:
                ref = y.copy()
            elif not np.array_equal(ref.view(np.uint32), y.view(np.uint32)):
                raise SystemExit(f"{name} {tr}:{fp}: other bits than the first config")
            calls[(tr, fp)] = call
        cpu = {k: [] for k in calls}
        wall = {k: [] for k in calls}
        for _ in range(2):
            for call in calls.values():
                call()
        for _ in range(args.rounds):
            for k, call in calls.items():
                c0, w0 = time.process_time(), time.perf_counter()
                call()
                cpu[k].append(1e3 * (time.process_time() - c0))
                wall[k].append(1e3 * (time.perf_counter() - w0))
        tw = -(-W // 4)
        print(f"{name} ({N}x{C}x{H}x{W} -> {F}), {args.threads} thread(s), {args.rounds} rounds")
        for (tr, fp), v in cpu.items():
            tasks = -(-N * th // tr) * (fp or 1)
            print(f"  trows {tr:3d} ({tr * tw:4d} tiles) fparts {fp:3d}: {tasks:4d} tasks  "
                  f"cpu {np.median(v):7.2f} ms ({min(v):.2f}-{max(v):.2f})  wall "
                  f"{np.median(wall[(tr, fp)]):7.2f} ms")


if __name__ == "__main__":
    main()
