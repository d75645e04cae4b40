"""convt_28's polywino kernels (conv2d_forward_polywino: conv_transpose2d's grad_x;
conv2d_grad_input_polywino: its forward) from two builds of _conv_winograd in one process,
interleaved: OLD.so (staging that zeroes the whole block first) and this checkout's (zeroes
only what it does not write).  Per round each side's least process CPU time of --calls calls
(one thread); prints the medians and whether the two give the same bits.

    python bench/polywino_stage_ab.py OLD.so [--rounds 9] [--calls 7] [--threads 1]
"""
import argparse
import importlib.util
import statistics
import time

import numpy as np

from convkit.cpu import _conv_winograd as new
from convkit.cpu import conv as cc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    spec = importlib.util.spec_from_file_location("convkit.cpu._conv_winograd", a.old)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    rng = np.random.default_rng(0)
    gy = rng.standard_normal((8, 32, 56, 56)).astype(np.float32)     # the adjoint conv's input
    x = rng.standard_normal((8, 64, 28, 28)).astype(np.float32)      # and its output's size
    w = (rng.standard_normal((64, 32, 4, 4)) * 0.05).astype(np.float32)
    nt, b = a.threads, np.zeros(64, np.float32)
    U, Ug = cc.polywino_filters(w), cc.polywino_grad_filters(w)
    pf, pg = new.polywino_floats(32, 64, 7, 7), new.polywino_gx_floats(64, 32, 8, 8)
    ws = np.zeros(nt * max(pf, pg), np.float32)
    outs = {k: (np.empty((8, 64, 28, 28), np.float32), np.empty((8, 32, 56, 56), np.float32))
            for k in ("old", "new")}
    mods = {"old": old, "new": new}

    def fwd(k):     # conv2d forward of gy: conv_transpose2d's grad_x
        return lambda: mods[k].conv2d_forward_polywino(gy, U, b, False, outs[k][0], ws, pf, 7,
                                                       1, 1, nt)

    def gxk(k):     # conv2d grad_x from x: conv_transpose2d's forward
        return lambda: mods[k].conv2d_grad_input_polywino(x, Ug, b, False, outs[k][1], ws, pg,
                                                          8, 1, 1, nt)
    res = {(p, k): [] for p in ("convt gx", "convt fwd") for k in ("old", "new")}
    for _ in range(a.rounds):
        for p, mk in (("convt gx", fwd), ("convt fwd", gxk)):
            for k in ("old", "new"):
                f = mk(k)
                f()
                best = float("inf")
                for _ in range(a.calls):
                    t = time.process_time()
                    f()
                    best = min(best, time.process_time() - t)
                res[p, k].append(best * 1e3)
    for p in ("convt gx", "convt fwd"):
        print(f"{p}: old {statistics.median(res[p, 'old']):.2f} ms  new "
              f"{statistics.median(res[p, 'new']):.2f} ms")
    same = all(np.array_equal(outs["old"][i].view(np.uint32), outs["new"][i].view(np.uint32))
               for i in (0, 1))
    print("same bits:", same)


if __name__ == "__main__":
    main()
