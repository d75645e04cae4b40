"""stem_224's weight gradient on the cpu backend: the transposed 1-D Winograd (conv_plan
"weight_stem_wino", csrc/stem_wgrad.h) against the direct dot products (conv_plan "weight_stem",
csrc/stem.h): the float32 error of each (and of torch's own float32 backward) against torch
float64, then their CPU times (and wall times), interleaved.

    python bench/stem_wgrad_ab.py [--rounds 7] [--threads 1] [--batch 8] [--seeds 3]
    python bench/stem_wgrad_ab.py --sweep STEM_WINO_W_ROWS=4,8,16 [--rounds 5]

The pass is conv2d_backward without grad_x, with grad_bias (the bench's first layer).  Error:
the largest |g - g64| over the largest |g64| (the suite's tolerance is 2e-5 of it) and the RMS
error over the RMS value, for standard normal x and grad_y, the worst of --seeds seeds, grad_weight
and grad_bias.  Times: CPU time of the process (on more than one thread it counts the team's
waits too) and wall time, median and sorted rounds; on a loaded machine read the CPU times of one
thread.  --sweep NAME=v1,...: the weight_stem_wino CPU times for each value of the tuning
constant NAME instead.  Needs a machine where the plan picks the stem paths (float32 GEMMs on
BLAS, AVX2 + FMA).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import convkit
from convkit.cpu import conv as cc
from convkit.cpu import tuning

GEO = ((2, 2), (3, 3, 3, 3), (1, 1), 1)
_KEEP = tuning.STEM_WINO_MIN_FILTERS


def _inputs(batch, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
    w = (rng.standard_normal((64, 3, 7, 7)) / np.sqrt(147)).astype(np.float32)
    gy = rng.standard_normal((batch, 64, 112, 112)).astype(np.float32)
    return x, w, gy


def _use(x, w, wino):
    """Plan weight_stem (wino False) or weight_stem_wino; returns the grad_weight algorithm."""
    tuning.STEM_WINO_MIN_FILTERS = _KEEP if wino else 10**9
    cc._plans.clear()
    return cc._plan(x, w, *GEO, needs_input_grad=False)[3].grad_weight.algo


def _times(fn):
    t, t0 = time.process_time(), time.perf_counter()
    fn()
    return 1e3 * (time.process_time() - t), 1e3 * (time.perf_counter() - t0)


def _row(v):
    return f"median {statistics.median(v):.1f} ms  ({' '.join('%.1f' % t for t in sorted(v))})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sweep", default=None, help="NAME=v1,v2,... (a tuning constant)")
    args = ap.parse_args(argv)
    convkit.set_num_threads(args.threads)
    x, w, gy = _inputs(args.batch, 0)
    bwd = lambda: cc.conv2d_backward(gy, x, w, *GEO, False, True)          # noqa: E731
    if args.sweep:
        name, vals = args.sweep.split("=")
        vals = [int(v) for v in vals.split(",")]
        keep, res = getattr(tuning, name), {v: [] for v in vals}
        for _ in range(args.rounds):
            for v in vals:
                setattr(tuning, name, v)
                assert _use(x, w, True) == "weight_stem_wino"
                bwd()
                res[v].append(_times(bwd)[0])
        setattr(tuning, name, keep)
        cc._plans.clear()
        for v in vals:
            print(f"{name}={v}: CPU {_row(res[v])}")
        return
    if args.seeds:
        import torch
        print("| path | grad_weight max err / max | rms err / rms | grad_bias max err / max |")
        print("| --- | --- | --- | --- |")
        errs = {"weight_stem_wino": [], "weight_stem": [], "torch f32": []}
        for seed in range(args.seeds):
            xs, ws, gys = _inputs(args.batch, 100 + seed)
            want, got = {}, {}
            for dt, key in ((torch.float64, "f64"), (torch.float32, "torch f32")):
                tx, tw = torch.tensor(xs, dtype=dt), torch.tensor(ws, dtype=dt).requires_grad_()
                tb = torch.zeros(64, dtype=dt, requires_grad=True)
                torch.nn.functional.conv2d(tx, tw, tb, 2, 3).backward(torch.tensor(gys, dtype=dt))
                (want if key == "f64" else got)[key] = (tw.grad.numpy(), tb.grad.numpy())
            for wino, key in ((True, "weight_stem_wino"), (False, "weight_stem")):
                assert _use(xs, ws, wino) == key
                _, gw_, gb_ = cc.conv2d_backward(gys, xs, ws, *GEO, False, True)
                got[key] = (gw_, gb_)
            gw64, gb64 = want["f64"]
            for key, (gw_, gb_) in got.items():
                e, eb = gw_.astype(np.float64) - gw64, gb_.astype(np.float64) - gb64
                errs[key].append((np.abs(e).max() / np.abs(gw64).max(),
                                  np.sqrt((e ** 2).mean() / (gw64 ** 2).mean()),
                                  np.abs(eb).max() / np.abs(gb64).max()))
        for key, v in errs.items():
            print(f"| {key} | {max(a[0] for a in v):.2e} | {max(a[1] for a in v):.2e} | "
                  f"{max(a[2] for a in v):.2e} |")
    res = {True: [], False: []}
    for _ in range(args.rounds):
        for wino in (True, False):
            _use(x, w, wino)
            bwd()
            res[wino].append(_times(bwd))
    _use(x, w, True)
    for wino, key in ((False, "weight_stem"), (True, "weight_stem_wino")):
        print(f"{key}, {args.threads} thread(s): CPU {_row([c for c, _ in res[wino]])}; "
              f"wall {_row([t for _, t in res[wino]])}")
    print(f"weight_stem / weight_stem_wino, medians: CPU "
          f"{statistics.median(c for c, _ in res[False]) / statistics.median(c for c, _ in res[True]):.2f}, "
          f"wall {statistics.median(t for _, t in res[False]) / statistics.median(t for _, t in res[True]):.2f}")


if __name__ == "__main__":
    main()
