"""stem_224's forward on the cpu backend: the 1-D Winograd stem (conv_plan "stem_wino",
csrc/stem_wino.h) against the direct stem (conv_plan "stem", csrc/stem.h): the float32 error of
each (and of torch's own float32 conv) against torch float64, then their CPU times of one thread,
interleaved (a loaded machine's wall clock is not a measure).

    python bench/stem_wino_ab.py [--rounds 7] [--threads 1] [--batch 8] [--seeds 3]
    python bench/stem_wino_ab.py --sweep STEM_WINO_ROWS=4,8,16,28 [--rounds 5]

Error: the largest |y - y64| over the largest |y64| (the suite's tolerance is 2e-5 of it) and
the RMS error over the RMS value, for standard normal x, weights / sqrt(147), normal bias, the
worst of --seeds seeds.  --sweep NAME=v1,...: the stem_wino CPU times for each value of the
tuning constant NAME instead.  Needs a machine where the plan picks stem_wino (float32 GEMMs on
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


def _inputs(batch, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
    w = (rng.standard_normal((64, 3, 7, 7)) / np.sqrt(147)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    return x, w, b


def _use(x, w, wino):
    """Plan the direct stem (wino False) or stem_wino; returns the forward's algorithm."""
    tuning.STEM_WINO_MIN_FILTERS = _KEEP if wino else 10**9
    cc._plans.clear()
    return cc._plan(x, w, *GEO, needs_input_grad=False)[3].forward.algo


_KEEP = tuning.STEM_WINO_MIN_FILTERS


def _cpu_ms(fn):
    t = time.process_time()
    fn()
    return 1e3 * (time.process_time() - t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sweep", default=None, help="NAME=v1,v2,... (a tuning constant)")
    args = ap.parse_args(argv)
    convkit.set_num_threads(args.threads)
    x, w, b = _inputs(args.batch, 0)
    fwd = lambda: cc.conv2d_forward(x, w, b, *GEO)                          # noqa: E731
    if args.sweep:
        name, vals = args.sweep.split("=")
        vals = [int(v) for v in vals.split(",")]
        keep, res = getattr(tuning, name), {v: [] for v in vals}
        for _ in range(args.rounds):
            for v in vals:
                setattr(tuning, name, v)
                assert _use(x, w, True) == "stem_wino"
                fwd()
                res[v].append(_cpu_ms(fwd))
        setattr(tuning, name, keep)
        for v in vals:
            print(f"{name}={v}: median {statistics.median(res[v]):.1f} ms  "
                  f"({' '.join('%.1f' % t for t in sorted(res[v]))})")
        return
    import torch
    print("| path | max err / max | rms err / rms |")
    print("| --- | --- | --- |")
    errs = {"stem_wino": [], "stem": [], "torch f32": []}
    for seed in range(args.seeds):
        xs, ws, bs = _inputs(1, 100 + seed)
        y64 = torch.nn.functional.conv2d(torch.tensor(xs).double(), torch.tensor(ws).double(),
                                         torch.tensor(bs).double(), 2, 3).numpy()
        got = {"torch f32": torch.nn.functional.conv2d(torch.tensor(xs), torch.tensor(ws),
                                                       torch.tensor(bs), 2, 3).numpy()}
        for wino, key in ((True, "stem_wino"), (False, "stem")):
            assert _use(xs, ws, wino) == key
            got[key] = cc.conv2d_forward(xs, ws, bs, *GEO)
        for key, y in got.items():
            e = y.astype(np.float64) - y64
            errs[key].append((np.abs(e).max() / np.abs(y64).max(),
                              np.sqrt((e ** 2).mean() / (y64 ** 2).mean())))
    for key, v in errs.items():
        print(f"| {key} | {max(a for a, _ in v):.2e} | {max(r for _, r in v):.2e} |")
    res = {True: [], False: []}
    for _ in range(args.rounds):
        for wino in (True, False):
            _use(x, w, wino)
            fwd()
            res[wino].append(_cpu_ms(fwd))
    _use(x, w, True)
    for wino, key in ((False, "stem"), (True, "stem_wino")):
        print(f"{key}: CPU time of {args.threads} thread(s), median "
              f"{statistics.median(res[wino]):.1f} ms  "
              f"({' '.join('%.1f' % t for t in sorted(res[wino]))})")


if __name__ == "__main__":
    main()
