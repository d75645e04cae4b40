"""One-thread CPU time of the BLAS plans' many-core splits (thirteenth session, helper
blasmisc13): each tuning constant at its old value (the plan before) against the new ones, on
the layers of bench/many_core_split.py's rows that the constant changes, interleaved rounds in
one process, time.process_time per call (the least of --calls) on ONE thread
(convkit.set_num_threads(1); --threads 2: both threads' CPU time), medians over the rounds.
Indicative only: a loaded 2-core host.

    PYTHONPATH=$PWD python bench/blas_split_cpu.py --dtype float64 [--rounds 9] [--only NAME]
    CONVKIT_DISABLE_AVX512=1 CONVKIT_DISABLE_FGEMM=1 PYTHONPATH=$PWD \\
        python bench/blas_split_cpu.py --dtype float32

(float32 with those switches runs every GEMM on OpenBLAS: the "blas" caps; float64 is on
BLAS on every machine.)  The pass timed: "gw" conv2d_backward without grad_x and bias, "gx"
conv2d_grad_input, "f" conv2d_forward (no bias).
"""
import argparse
import time

import numpy as np

import convkit
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P
from convkit.cpu import tuning as T

BIG = 1 << 40
# (name, x shape, w shape, pad, pass, constant, values -- the first is the old plan's; a value
# may be a dict of constants)
CASES = [
    ("dense_2x2", (128, 64, 2, 2), (64, 64, 3, 3), 1, "gw", "BLAS_DENSE_W_BLOCKS", (4, 8, 16)),
    ("resnet_2x2_b64", (64, 64, 2, 2), (64, 64, 3, 3), 1, "gw", "BLAS_DENSE_W_BLOCKS",
     (4, 8, 16)),
    ("lenet_c3_4x4", (64, 6, 4, 4), (16, 6, 5, 5), 2, "gw", "BLAS_DENSE_W_BLOCKS", (4, 6, 8, 16)),
    ("tiny_16_8x8", (64, 16, 8, 8), (16, 16, 3, 3), 1, "gw", "BLAS_BATCH_W_TASKS", (2, 8, 16)),
    ("tiny_32_4x4", (64, 32, 4, 4), (32, 32, 3, 3), 1, "gw", "",
     ({"BLAS_BATCH_W_TASKS": 2}, {"BLAS_BATCH_W_TASKS": 16},     # (4 parts then; 8 since last13)
      {"BLAS_BATCH_W_TASKS": 16, "BLAS_BATCH_W_PART_MIN_K": 1})),    # (8 parts)
    # (helper pwx13: 4 parts -- PART_MIN_K 256, blasmisc13's -- against 8, PART_MIN_K 128;
    # float64 had its own constant from pwx13 to last13, now one for both)
    ("tiny_32_4x4_parts", (64, 32, 4, 4), (32, 32, 3, 3), 1, "gw", "PART_MIN_K", (256, 128)),
    ("small_16_8x8", (128, 16, 8, 8), (16, 16, 3, 3), 1, "gw", "BLAS_BATCH_W_TASKS",
     (2, 8, 16)),
    # (grad_x, not taken: GX_RUNS -- a stand-in, not a tuning constant -- cuts each image's
    # positions into that many runs; BLAS_GRAD_X_MIN_ROWS / _TASKS cut its channels finer)
    ("pw_14", (8, 256, 14, 14), (1024, 256, 1, 1), 0, "gx", "",
     ({"GX_RUNS": 1}, {"GX_RUNS": 2}, {"BLAS_GRAD_X_MIN_ROWS": 128})),
    ("rpn_cls1x1", (1, 512, 38, 50), (18, 512, 1, 1), 0, "gx", "",
     ({"GX_RUNS": 1}, {"GX_RUNS": 4}, {"GX_RUNS": 8}, {"GX_RUNS": 16}, {"GX_RUNS": 32},
      {"GX_RUNS": 16, "BLAS_GRAD_X_MIN_ROWS": 512}, {"GX_RUNS": 32, "BLAS_GRAD_X_MIN_ROWS": 512},
      {"BLAS_GRAD_X_TASKS": 16, "BLAS_GRAD_X_MIN_ROWS": 32})),
    ("pw_14", (8, 256, 14, 14), (1024, 256, 1, 1), 0, "gw", "",
     ({"BLAS_PW_W_TASKS": 0},
      {"BLAS_PW_W_TASKS": 16, "BLAS_PW_MIN_FILTERS": BIG},     # (parts alone: 2)
      {"BLAS_PW_W_TASKS": 16})),
    ("rpn_cls1x1", (1, 512, 38, 50), (18, 512, 1, 1), 0, "gw", "BLAS_PW_W_TASKS", (0, 16)),
    # (helper last13: float64's pointwise grad_x in two channel blocks where one was left --
    # BIG: the plan before; float32 takes none, whatever the constant)
    # (helper last13, not taken: float64's pointwise forward in runs of 98 positions, as
    # float32's -- pw_14's 2 MiB float64 weight makes one run an image by BLAS_POSITION_BYTES)
    ("pw_14_fwd", (8, 256, 14, 14), (1024, 256, 1, 1), 0, "f", "BLAS_POSITION_BYTES",
     (16 * 2**10, 32 * 2**10)),
    # (helper pwf13: the pointwise forward's filter blocks where an image keeps few runs --
    # BLAS_PW_FWD_TASKS 1: the plan before; 2 / 4: up to that many tasks an image)
    ("pw_14_fb", (8, 256, 14, 14), (1024, 256, 1, 1), 0, "f", "",
     ({"BLAS_PW_FWD_TASKS": 1}, {"BLAS_PW_FWD_TASKS": 2}, {"BLAS_PW_FWD_TASKS": 4})),
    ("pw_512_2048_7_fb", (8, 512, 7, 7), (2048, 512, 1, 1), 0, "f", "",
     ({"BLAS_PW_FWD_TASKS": 1}, {"BLAS_PW_FWD_TASKS": 2}, {"BLAS_PW_FWD_TASKS": 4})),
    ("pw_256_1024_28_fb", (8, 256, 28, 28), (1024, 256, 1, 1), 0, "f", "",
     ({"BLAS_PW_FWD_TASKS": 1}, {"BLAS_PW_FWD_TASKS": 8})),
    ("pw_1024_256_14_fb", (8, 1024, 14, 14), (256, 1024, 1, 1), 0, "f", "",
     ({"BLAS_PW_FWD_TASKS": 1}, {"BLAS_PW_FWD_TASKS": 2, "BLAS_PW_FWD_MIN_FILTERS": 128})),
    ("pw_14_halves", (8, 256, 14, 14), (1024, 256, 1, 1), 0, "gx", "BLAS_PW_GX_HALF_MIN_C",
     (BIG, 128)),
    ("pw_256_14_halves", (8, 256, 14, 14), (256, 256, 1, 1), 0, "gx",
     "BLAS_PW_GX_HALF_MIN_C", (BIG, 128)),
    ("pw_256_28_halves", (8, 256, 28, 28), (64, 256, 1, 1), 0, "gx",
     "BLAS_PW_GX_HALF_MIN_C", (BIG, 128)),
]


_PLAN_BWD = P.plan_im2col_backward


def gx_runs(runs):
    """The pointwise BLAS grad_x's positions per task: each image's in ``runs`` runs."""
    def plan(*a, **k):
        out = _PLAN_BWD(*a, **k)
        HoWo = a[6] * a[7]
        return out[:-1] + (-(-HoWo // runs),)
    P.plan_im2col_backward = plan if runs > 1 else _PLAN_BWD


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=3, help="calls per round (the least counts)")
    ap.add_argument("--only", default="", help="a layer name or a pass (gw, gx)")
    ap.add_argument("--threads", type=int, default=1, help="2: the team's CPU time, spin "
                    "included")
    args = ap.parse_args()
    dt = np.dtype(args.dtype)
    cc._WINOTINY = False            # (the batch path on the tiny maps: the "blas" caps)
    cc._caps_by_level.clear()
    convkit.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    for name, xs, ws, pad, which, const, values in CASES:
        if args.only and args.only not in (name, which):
            continue
        x = rng.standard_normal(xs).astype(dt)
        w = (rng.standard_normal(ws) * 0.05).astype(dt)
        Ho = xs[2] + 2 * pad - ws[2] + 1
        Wo = xs[3] + 2 * pad - ws[3] + 1
        gy = rng.standard_normal((xs[0], ws[0], Ho, Wo)).astype(dt)
        if const == "PART_MIN_K":
            const = "BLAS_BATCH_W_PART_MIN_K"   # (one constant for both dtypes since last13)
        values = [v if isinstance(v, dict) else {const: v} for v in values]
        keys = sorted({k for v in values for k in v})
        old = {k: getattr(T, k) if k != "GX_RUNS" else 1 for k in keys}
        label = {i: " ".join(f"{k}={v[k]}" for k in sorted(v)) for i, v in enumerate(values)}
        times = {i: [] for i in range(len(values))}
        steps, outs = {}, {}

        def call():
            if which == "gw":
                return cc.conv2d_backward(gy, x, w, (1, 1), (pad,) * 4, (1, 1), 1, False,
                                          False)[1]
            if which == "f":
                return cc.conv2d_forward(x, w, None, (1, 1), (pad,) * 4, (1, 1), 1)
            return cc.conv2d_grad_input(gy, w, xs, (1, 1), (pad,) * 4, (1, 1), 1)

        try:
            for r in range(args.rounds + 1):
                for v in (range(len(values)) if r % 2 else range(len(values))[::-1]):
                    for k in keys:          # (a key the variant leaves out: its old value)
                        if k == "GX_RUNS":
                            gx_runs(values[v].get(k, 1))
                        else:
                            setattr(T, k, values[v].get(k, old[k]))
                    cc._plans.clear()
                    plan = cc._plan(x, w, (1, 1), (pad,) * 4, (1, 1), 1, which == "gx")[3]
                    steps[v] = (plan.grad_weight if which == "gw" else plan.forward
                                if which == "f" else plan.grad_x)
                    best = float("inf")
                    for _ in range(args.calls):
                        t0 = time.process_time()
                        out = call()
                        best = min(best, time.process_time() - t0)
                    outs[v] = out
                    if r:
                        times[v].append(best)
        finally:
            for k, val in old.items():
                if k != "GX_RUNS":
                    setattr(T, k, val)
            gx_runs(1)
            cc._plans.clear()
        base = np.median(times[0])
        print(f"{name} {args.dtype} {which}")
        for v in range(len(values)):
            m = np.median(times[v])
            err = np.abs(outs[v] - outs[0]).max() / np.abs(outs[0]).max()
            p = {k: steps[v].params[k] for k in ("row_blocks", "nsplit", "chans_w", "kimgs",
                                                 "units_w", "rows_w", "filters_w",
                                                 "chans_x", "pos_x", "rows", "fblocks")
                 if k in steps[v].params}
            print(f"  {label[v]:>52s}: {m * 1e3:8.3f} ms  x{m / base:.3f}  "
                  f"(max rel diff vs old {err:.1e})  {steps[v].algo} {p}")


if __name__ == "__main__":
    main()
