"""In-process interleaved A/B of the cpu backend's Winograd variants against torch, through the
public API, on the suite's 3x3 layers: forward and forward+backward (grad_x, grad_weight,
grad_bias), wall time, convkit.get_num_threads() threads (torch the same).

    python bench/wino_ab.py [--layers vgg_56,res_28,res_14,rpn_3x3] [--rounds 5] \
        [--variants "F2:tile=2" "F4:tile=4" "F4/32:tile=4,tiles=32"]

A variant forces the plan's tile (convkit.cpu.conv_plan.winograd_tile) and optionally
tuning.WINOGRAD4_TASK_TILES.  Each round times every variant and torch once per pass, in turn
(median of 5 calls after a warm-up); prints per layer and pass the median over rounds of
torch_ms / variant_ms (> 1: convkit faster) and the spread.
"""
import argparse
import statistics
import time

import numpy as np
import torch

import convkit
from convkit.benchmark.cases import CASES
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P
from convkit.cpu import tuning as T


def _variant(spec):
    name, _, opts = spec.partition(":")
    kv = dict(o.split("=") for o in opts.split(",") if o)
    return name, int(kv.get("tile", 4)), int(kv.get("tiles", T.WINOGRAD4_TASK_TILES))


def _med(f, n=5):
    f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="vgg_56,res_28,res_14,rpn_3x3")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", nargs="+", default=["F2:tile=2", "F4:tile=4"])
    a = ap.parse_args()
    variants = [_variant(v) for v in a.variants]
    torch.set_num_threads(convkit.get_num_threads())
    cases = {c.name: c for c in CASES}
    rule, tiles0 = P.winograd_tile, T.WINOGRAD4_TASK_TILES
    print(f"threads {convkit.get_num_threads()}, rounds {a.rounds}; torch_ms / convkit_ms, "
          "median (min-max)")
    for lname in a.layers.split(","):
        c = cases[lname]
        rng = np.random.default_rng(0)
        x = rng.standard_normal((c.N, c.C, c.H, c.W)).astype(np.float32)
        w = rng.standard_normal((c.F, c.C, 3, 3)).astype(np.float32)
        b = rng.standard_normal(c.F).astype(np.float32)
        y0 = np.empty((c.N, c.F) + c.out_hw, np.float32)
        gy = rng.standard_normal(y0.shape).astype(np.float32)
        xt, wt, bt = (torch.from_numpy(v).requires_grad_() for v in (x, w, b))
        gyt = torch.from_numpy(gy)

        def t_fwd():
            with torch.no_grad():
                torch.nn.functional.conv2d(xt, wt, bt, padding=c.pad)

        def t_fb():
            y = torch.nn.functional.conv2d(xt, wt, bt, padding=c.pad)
            torch.autograd.grad(y, (xt, wt, bt), gyt)

        def k_fwd():
            convkit.conv2d_forward(x, w, b, padding=c.pad, out=y0)

        def k_fb():
            convkit.conv2d_forward(x, w, b, padding=c.pad, out=y0)
            convkit.conv2d_backward(gy, x, w, padding=c.pad, has_bias=True)

        ratios = {}
        with convkit.use_backend("cpu"):
            for _ in range(a.rounds):
                for pas, tf, kf in (("forward", t_fwd, k_fwd), ("forward+backward", t_fb, k_fb)):
                    tt = _med(tf)
                    for name, tile, tiles in variants:
                        P.winograd_tile = lambda *args, _t=tile: _t
                        T.WINOGRAD4_TASK_TILES = tiles
                        cc._plans.clear()
                        try:
                            kt = _med(kf)
                        finally:
                            P.winograd_tile, T.WINOGRAD4_TASK_TILES = rule, tiles0
                            cc._plans.clear()
                        ratios.setdefault((pas, name), []).append(tt / kt)
        for (pas, name), r in ratios.items():
            print(f"{lname:8s} {pas:17s} {name:8s} {statistics.median(r):.3f} "
                  f"({min(r):.3f}-{max(r):.3f})", flush=True)


if __name__ == "__main__":
    main()
