"""convt_28's polywino kernels, this checkout against another's build, interleaved in one
process, one thread's CPU time (twelfth session, helper poly12: issue 16's 16-thread splits).

    PYTHONPATH=. python bench/poly12_split_ab.py --old /work/main [--rounds 7] [--calls 5]
        [--threads 1]

Sides (each the least process CPU time of --calls calls, the median over rounds):
- fwd old / new: conv2d_grad_input_polywino (convt_28's forward), the 1-thread plan's tasks
  of 6 tile rows, the other build and this one;
- gx old / new: conv2d_forward_polywino (convt_28's grad_x) with the 1-thread plan (a whole
  image a task) in the other checkout's build and this one's;
- gx rows2 / run25: this build with the 16-thread plans' tasks, run on --threads threads
  (whole blocks of 2 tile rows as before; runs of 25 tiles across row ends): what the finer
  split costs in work, not what 16 threads gain;
- gw old / new: conv2d_grad_weight_polywino, groups of 2 images, 64 columns (the 1- and
  2-thread plan), the other build and this one (the transform tasks interleaved);
- gw 8img16: this build with the 16-thread plan's one group of 8 images and 16 columns.
The other build is loaded from <old>/convkit/cpu/_conv_winograd*.so under another name.
"""
import argparse
import glob
import importlib.util
import statistics
import time

import numpy as np

from convkit.cpu import conv as cc
from convkit.cpu import _conv_winograd as new


def _load(path):
    spec = importlib.util.spec_from_file_location("poly12_old._conv_winograd", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cpu(f, calls):
    f()
    best = float("inf")
    for _ in range(calls):
        t = time.process_time()
        f()
        best = min(best, time.process_time() - t)
    return best * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    old = _load(glob.glob(f"{a.old}/convkit/cpu/_conv_winograd*.so")[0])
    nt = a.threads
    rng = np.random.default_rng(0)      # convt_28: x 8x64x28x28, w 64x32x4x4, s 2, p 1
    x = rng.standard_normal((8, 64, 28, 28)).astype(np.float32)
    w = (rng.standard_normal((64, 32, 4, 4)) * 0.05).astype(np.float32)
    gy = rng.standard_normal((8, 32, 56, 56)).astype(np.float32)
    U = cc.polywino_filters(w)          # grad_x = conv2d(gy, w) forward
    gx = np.empty((8, 64, 28, 28), np.float32)
    b = np.zeros(64, np.float32)

    def fwd(mod, trows, run=0):
        per = new.polywino_floats(32, 64, trows, 7)
        ws = np.zeros(nt * per, np.float32)
        if run:
            return lambda: mod.conv2d_forward_polywino(gy, U, b, False, gx, ws, per, trows,
                                                       1, 1, nt, run)
        return lambda: mod.conv2d_forward_polywino(gy, U, b, False, gx, ws, per, trows, 1, 1,
                                                   nt)

    gw = np.empty((64, 32, 4, 4), np.float32)

    def wgr(mod, imgs, cols):
        a_, per = new.polywino_wgrad_floats(32, 64, 28, 28, imgs)
        ws = np.zeros(a_ + nt * per, np.float32)
        return lambda: mod.conv2d_grad_weight_polywino(x, gy, gw, ws, 1, 1, imgs, cols, nt)

    Ug = cc.polywino_grad_filters(w)    # convt_28's forward = conv2d_grad_input_polywino
    y = np.empty((8, 32, 56, 56), np.float32)
    bg = np.zeros(32, np.float32)

    def fwt(mod, trows):
        per = new.polywino_gx_floats(64, 32, trows, 8)
        ws = np.zeros(nt * per, np.float32)
        return lambda: mod.conv2d_grad_input_polywino(x, Ug, bg, False, y, ws, per, trows, 1, 1,
                                                      nt)

    sides = {"fwd old": fwt(old, 6), "fwd new": fwt(new, 6),
             "gx old": fwd(old, 7), "gx new": fwd(new, 7), "gx rows2": fwd(new, 2),
             "gx run25": fwd(new, 4, 25), "gw old": wgr(old, 2, 64), "gw new": wgr(new, 2, 64),
             "gw 8img16": wgr(new, 8, 16)}
    ref = {}
    for k, f in sides.items():          # (the bits: each side's output the same)
        f()
        out = {"gx": gx, "gw": gw, "fw": y}[k[:2]].copy()
        ref.setdefault(k[:2], out)
        assert np.array_equal(out.view(np.uint32), ref[k[:2]].view(np.uint32)), k
    res = {k: [] for k in sides}
    for _ in range(a.rounds):
        for k, f in sides.items():
            res[k].append(_cpu(f, a.calls))
    print(f"threads {nt}, CPU time ms, median of {a.rounds} rounds (min of {a.calls} calls):")
    for k, v in res.items():
        print(f"  {k:10s} {statistics.median(v):7.3f}  (rounds {min(v):.3f}-{max(v):.3f})")


if __name__ == "__main__":
    main()
