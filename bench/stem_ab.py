"""stem_224 on the cpu backend: the plan's stem path (conv_plan "stem" / "weight_stem", csrc/stem.h)
against im2col on BLAS (the plan before it), interleaved, in CPU time of one thread (a loaded
machine's wall clock is not a measure; CPU time of one thread is less disturbed), and the
float32 error of each against torch float64.

    python bench/stem_ab.py [--rounds 7] [--threads 1] [--batch 8]
    python bench/stem_ab.py --sweep STEM_W_ROWS=1,2,4,8 [--rounds 5]

Prints, per pass, the CPU times of every round (ms, sorted) and their medians; forward is
conv2d_forward (bias), backward conv2d_backward without grad_x, with grad_bias (the bench's
first layer).  Needs a machine where the plan picks the stem path (float32 GEMMs on BLAS, AVX2).
--sweep NAME=v1,v2,...: instead, the stem path's CPU times for each value of the constant NAME of
convkit/cpu/tuning.py, interleaved (the pass it shapes: forward for STEM_ROWS, else backward).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import convkit
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P
from convkit.cpu import tuning


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sweep", default=None, help="NAME=v1,v2,... (a tuning constant)")
    args = ap.parse_args(argv)
    convkit.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    w = (rng.standard_normal((64, 3, 7, 7)) / np.sqrt(147)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    gy = rng.standard_normal((args.batch, 64, 112, 112)).astype(np.float32)
    geo = ((2, 2), (3, 3, 3, 3), (1, 1), 1)
    stem_ok = P.stem_ok

    def use(stem):
        P.stem_ok = stem_ok if stem else (lambda *a: False)
        cc._plans.clear()
        return cc._plan(x, w, *geo, needs_input_grad=False)[3]

    fwd = lambda: cc.conv2d_forward(x, w, b, *geo)                          # noqa: E731
    bwd = lambda: cc.conv2d_backward(gy, x, w, *geo, False, True)           # noqa: E731
    if args.sweep:
        name, vals = args.sweep.split("=")
        vals = [int(v) for v in vals.split(",")]
        fn = fwd if name == "STEM_ROWS" else bwd
        keep, res = getattr(tuning, name), {v: [] for v in vals}
        for _ in range(args.rounds):
            for v in vals:
                setattr(tuning, name, v)
                use(True)
                t0 = time.process_time()
                fn()
                res[v].append((time.process_time() - t0) * 1e3)
        setattr(tuning, name, keep)
        cc._plans.clear()
        for v in vals:
            print(f"{name}={v}: median {statistics.median(res[v]):6.1f} ms CPU   "
                  + " ".join(f"{a:.1f}" for a in sorted(res[v])))
        return
    out = {}
    for name in ("im2col", "stem"):
        plan = use(name == "stem")
        print(f"{name}: forward {plan.forward.algo}, grad_weight {plan.grad_weight.algo}, "
              f"grad_bias {plan.grad_bias}")
        out[name] = (fwd(), bwd())
    try:
        import torch
        t = [torch.tensor(a, dtype=torch.float64) for a in (x, w, b, gy)]
        t[1].requires_grad_(True)
        t[2].requires_grad_(True)
        ty = torch.nn.functional.conv2d(t[0], t[1], t[2], 2, 3)
        ty.backward(t[3])
        want = (ty.detach().numpy(), t[1].grad.numpy(), t[2].grad.numpy())
        for name, (y, (_, gw, gb)) in out.items():
            errs = [np.abs(g - r).max() / np.abs(r).max() for g, r in zip((y, gw, gb), want)]
            print(f"{name}: max |error| / max |torch float64|: forward {errs[0]:.2e}, "
                  f"grad_weight {errs[1]:.2e}, grad_bias {errs[2]:.2e}")
    except ImportError:
        print("torch absent: no error figures")
    times = {(n, p): [] for n in ("im2col", "stem") for p in ("forward", "backward")}
    for _ in range(args.rounds):
        for name in ("im2col", "stem"):
            use(name == "stem")
            for p, fn in (("forward", fwd), ("backward", bwd)):
                t0 = time.process_time()
                fn()
                times[name, p].append((time.process_time() - t0) * 1e3)
    P.stem_ok = stem_ok
    cc._plans.clear()
    for (name, p), v in times.items():
        print(f"{name:7s} {p:8s} median {statistics.median(v):6.1f} ms CPU   "
              + " ".join(f"{a:.1f}" for a in sorted(v)))
    for p in ("forward", "backward"):
        print(f"{p}: im2col / stem = "
              f"{statistics.median(times['im2col', p]) / statistics.median(times['stem', p]):.2f}")


if __name__ == "__main__":
    main()
