"""F(4x4) on BLAS (per_image: the float64 plans everywhere, float32 without csrc/fgemm.h): the
one-region tasks (tile rows of one image, each its input transform, 36 GEMMs and output
transform) against the staged three-region split of the same GEMM calls (conv2d_forward_winograd's
staged: input transforms, (point, block) GEMM tasks, output transforms), interleaved, on the
suite's F(4x4) layers, the plan's tile rows (conv_plan._plan_winograd4's want).

    python bench/wino4_staged_ab.py [--layers res_14,rpn_3x3] [--dtype float64] [--threads 1]
        [--rounds 9] [--lead 0]
    CONVKIT_DISABLE_AVX512=1 CONVKIT_DISABLE_FGEMM=1 python bench/wino4_staged_ab.py \
        --dtype float32           # float32's GEMMs on OpenBLAS's sgemm

Each round runs both once per layer in turn (after two warm-up rounds); printed: the median
over the rounds of the call's CPU time (time.process_time: with --threads > 1 the team's,
waits included), its spread, the wall median, and staged / one-region.  --lead k: the first k
blocks stay one-region tasks (the plan's lead); then also printed, the staged blocks' cost
over their one-region share (blocks equal in tiles assumed).  Both must give the
same bits (checked).  The filter transform is done once, outside the timing.  On a shared
2-core machine only the relative figures mean anything: the split's own cost on one core.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from convkit.cpu import _conv_winograd as wg
from convkit.cpu import conv_plan as P

LAYERS = {"vgg_56": (8, 64, 56, 56, 64), "res_28": (8, 128, 28, 28, 128),
          "res_14": (8, 256, 14, 14, 256), "rpn_3x3": (1, 512, 38, 50, 512)}
_NO_PACK = np.zeros((0, 1), np.float32)


def setup(N, C, H, W, F, dtype, staged, threads, lead=0):
    """(call, y) for the one-region (staged False) or staged plan of one layer."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = (rng.standard_normal((F, C, 3, 3)) / np.sqrt(9 * C)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    U = np.empty((36, F, C), dtype)
    wg.winograd_filters(w, U, 1, False)
    th, tw = -(-H // 4), -(-W // 4)
    trows = min(th, -(-64 // tw))                  # (tuning.WINOGRAD4_TASK_TILES, equal tasks)
    trows = -(-th // -(-th // trows))
    if staged:
        shared, per = wg.winograd4_staged_floats(N, C, F, H, W, trows, lead)
    if not staged or lead:
        shared = shared if staged else 0
        per = 36 * (C + F) * trows * tw + P.winograd_scratch(4, trows, tw) + \
            P.winograd_plane_pad(4)
    ws = np.zeros(shared + threads * per, dtype)
    y = np.empty((N, F, H, W), dtype)

    def call():
        wg.conv2d_forward_winograd(x, U, b, True, y, ws, per, trows, 1, 1, threads, _NO_PACK,
                                   4, True, False, 0, False, staged, lead)
    return call, y, trows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="res_14,rpn_3x3")
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--lead", type=int, default=0)
    args = ap.parse_args(argv)
    dtype = np.dtype(args.dtype)
    for name in args.layers.split(","):
        N, C, H, W, F = LAYERS[name]
        calls, ys = {}, {}
        for staged in (False, True):
            calls[staged], ys[staged], trows = setup(N, C, H, W, F, dtype, staged, args.threads,
                                                     args.lead)
            calls[staged]()
        if ys[False].tobytes() != ys[True].tobytes():
            raise SystemExit(f"{name}: staged gives other bits than one region")
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
        print(f"{name} ({N}x{C}x{H}x{W} -> {F}) {dtype.name}, trows {trows}, "
              f"{args.threads} thread(s), {args.rounds} rounds")
        for k, v in cpu.items():
            print(f"  {'staged    ' if k else 'one region'}: cpu {np.median(v):8.2f} ms "
                  f"({min(v):.2f}-{max(v):.2f})  wall {np.median(wall[k]):8.2f} ms")
        one, st = np.median(cpu[False]), np.median(cpu[True])
        print(f"  staged / one region (cpu medians): {st / one:.3f}")
        if args.lead:
            nb = N * -(-(-(-H // 4)) // trows)
            part = one * (nb - args.lead) / nb
            print(f"  lead {args.lead} of {nb} blocks: the staged blocks "
                  f"{(st - one + part) / part:.3f}x their one-region share")


if __name__ == "__main__":
    main()
