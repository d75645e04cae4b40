"""The half-rate rule (tuning.HALF_RATE_AVX2, ConvCaps.avx512_full_rate) per layer and pass:
the plan a full-rate AVX-512 CPU takes ("full": the own AVX-512 GEMM's plans) against the plan
of a CPU whose 512-bit FMA runs at the 256-bit rate ("half": the AVX2 algorithms named in
tuning.HALF_RATE_AVX2 beside the own GEMM), both run here, interleaved per round in one
process.  Prints each pass's algorithm under both and the medians over rounds.

    python bench/half_rate_ab.py [--layers stem_224,vgg_56,...] [--rounds 5] [--calls 3]
        [--threads 1] [--clock cpu|wall] [--passes fwd,gx,gw] [--algos a,b,...]

--clock cpu (default; for a loaded machine with --threads 1): per round, the process CPU time
of ``--calls`` calls after one warm-up, per call; wall: their median wall time; wallmin: their
least wall time (on a loaded machine the call least held up by other load).
--algos: the set "half" uses instead of tuning.HALF_RATE_AVX2 (to measure one algorithm alone).
--f4-own: "half"'s F(4x4) Winograd with its GEMMs on the own AVX-512 kernel (plain filters,
prepacked for it) instead of wino4.h's packed GEMMs on csrc/fgemm.h: the algorithm's gain
apart from the GEMM's.  --f4-gemm: instead of "full", "half" with --f4-own's F(4x4) (the
first column), against "half" as it is: the GEMMs' difference alone.
convt_28 is the conv2d under conv_transpose2d's suite layer (x (8, 32, 56, 56), w (64, 32, 4, 4),
stride 2, padding 1): its fwd is the transposed conv's grad_x, its gx the transposed forward,
its gw the transposed grad_weight.  Needs a CPU with AVX-512F and AVX2 (both plans run here).
"""
import argparse
import statistics
import time

import numpy as np

import convkit
from convkit.benchmark.cases import CASES
from convkit.cpu import conv as cc
from convkit.cpu import tuning as T

EXTRA = {"convt_28": (8, 32, 56, 56, 64, 4, 2, 1)}     # N, C, H, W, F, K, stride, pad


def layer(name):
    if name in EXTRA:
        return EXTRA[name] + (1,)
    c = {c.name: c for c in CASES}[name]
    return c.N, c.C, c.H, c.W, c.F, c.K, c.stride, c.pad, c.groups


def set_mode(half, algos, f4_gemm=None):
    """half: the half-rate rule on; f4_gemm: (for half False) the F(4x4) GEMM choice to set
    with the rule on (--f4-gemm)."""
    from convkit.cpu import conv_plan as P
    if f4_gemm is not None:
        P.winograd_gemm = f4_gemm[0] if not half else f4_gemm[1]
        half = True
    cc._FULL_RATE = not half
    T.HALF_RATE_AVX2 = algos
    cc._caps_by_level.clear()
    cc._plans.clear()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="stem_224,vgg_56,res_28,res_14,rpn_3x3,convt_28,"
                                        "lenet_c1,pw_14,rpn_cls1x1,dw_56")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", default="cpu")
    ap.add_argument("--passes", default="fwd,gx,gw")
    ap.add_argument("--algos", default=None)
    ap.add_argument("--f4-own", action="store_true")
    ap.add_argument("--f4-gemm", action="store_true")
    a = ap.parse_args()
    from convkit.cpu import conv_plan as P
    f4_fgemm, f4_own = P.winograd_gemm, (lambda tile, own, fixed: (own, fixed))
    if a.f4_own:
        P.winograd_gemm = f4_own
    convkit.set_num_threads(a.threads)
    algos = T.HALF_RATE_AVX2 if a.algos is None else frozenset(a.algos.split(","))
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    for name in a.layers.split(","):
        N, C, H, W, F, K, s, p, g = layer(name)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        w = (rng.standard_normal((F, C // g, K, K)) * 0.05).astype(np.float32)
        b = np.zeros(F, np.float32)
        st, pd, dl = (s, s), (p, p, p, p), (1, 1)
        y = cc.conv2d_forward(x, w, b, st, pd, dl, g)
        gy = rng.standard_normal(y.shape).astype(np.float32)
        run = {"fwd": lambda: cc.conv2d_forward(x, w, b, st, pd, dl, g),
               "gx": lambda: cc.conv2d_grad_input(gy, w, x.shape, st, pd, dl, g),
               "gw": lambda: cc.conv2d_backward(gy, x, w, st, pd, dl, g, False, True)}
        for q in a.passes.split(","):
            t = {False: [], True: []}
            algo = {}
            for half in (False, True):
                set_mode(half, algos, (f4_own, f4_fgemm) if a.f4_gemm else None)
                plan = cc._plan(x, w, st, pd, dl, g, q != "gw")[3]
                step = {"fwd": plan.forward, "gx": plan.grad_x, "gw": plan.grad_weight}[q]
                algo[half] = step.algo + (f"{step.params['tile']}" if "tile" in step.params
                                          else "")
            for _ in range(a.rounds):
                for half in (False, True):
                    set_mode(half, algos, (f4_own, f4_fgemm) if a.f4_gemm else None)
                    run[q]()
                    if a.clock == "cpu":
                        t0 = clock()
                        for _ in range(a.calls):
                            run[q]()
                        t[half].append((clock() - t0) / a.calls)
                    else:
                        ts = []
                        for _ in range(a.calls):
                            t0 = clock()
                            run[q]()
                            ts.append(clock() - t0)
                        t[half].append(min(ts) if a.clock == "wallmin" else
                                       statistics.median(ts))
            f, h = statistics.median(t[False]) * 1e3, statistics.median(t[True]) * 1e3
            r = [x0 / x1 for x0, x1 in zip(t[False], t[True])]
            print(f"{name:10s} {q:3s} full {algo[False]:16s} {f:8.2f} ms  half "
                  f"{algo[True]:16s} {h:8.2f} ms  full/half {statistics.median(r):.2f} "
                  f"({min(r):.2f}-{max(r):.2f})", flush=True)


if __name__ == "__main__":
    main()
