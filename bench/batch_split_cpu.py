"""One-thread CPU time of the batch path's 16-thread blocks against the old blocks (issue 16).

The full-rate caps' plans (cc._FULL_RATE, no tiny-map Winograd: cc._WINOTINY off) on the
tiny maps of bench/many_core_split.py's EXTRA, float32, run on ONE thread either with the old
blocks (conv_plan.batch_even_images / batch_weight_blocks as identities: the 1-thread plan) or
with the blocks the 16-thread plan takes (the rules asked for 16 threads), interleaved A/B,
time.process_time per call, medians.  Indicative: a loaded 2-core host, CPU time of one thread.

    PYTHONPATH=$PWD CONVKIT_NUM_THREADS=1 python bench/batch_split_cpu.py [--rounds 15]
"""
import argparse
import time

import numpy as np

import convkit
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P

SHAPES = [("tiny_16_8x8", (64, 16, 8, 8), (16, 16, 3, 3)),
          ("tiny_32_4x4", (64, 32, 4, 4), (32, 32, 3, 3)),
          ("small_16_8x8", (128, 16, 8, 8), (16, 16, 3, 3))]
_IMGS, _BLOCKS = P.batch_even_images, P.batch_weight_blocks


def use(blocks16):
    if blocks16:
        P.batch_even_images = lambda N, imgs, HoWo, nt: _IMGS(N, imgs, HoWo, 16)
        P.batch_weight_blocks = lambda *a: _BLOCKS(*a[:9], 16)
    else:
        P.batch_even_images = lambda N, imgs, HoWo, nt: imgs
        P.batch_weight_blocks = lambda *a: (a[7], a[3])
    cc._plans.clear()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    cc._FULL_RATE, cc._WINOTINY = True, False
    cc._caps_by_level.clear()
    convkit.set_num_threads(1)
    rng = np.random.default_rng(0)
    for name, xs, ws in SHAPES:
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        b = rng.standard_normal(ws[0]).astype(np.float32)
        gy = rng.standard_normal((xs[0], ws[0], xs[2], xs[3])).astype(np.float32)
        times = {(k, p): [] for k in (0, 1) for p in ("fwd", "bwd")}
        plans = {}
        with convkit.use_backend("cpu"):
            for r in range(args.rounds + 1):
                for k in ((0, 1) if r % 2 else (1, 0)):
                    use(k)
                    plans[k] = cc._plan(x, w, (1, 1), (1,) * 4, (1, 1), 1)[3]
                    t0 = time.process_time()
                    convkit.conv2d_forward(x, w, b, stride=1, padding=1)
                    t1 = time.process_time()
                    convkit.conv2d_backward(gy, x, w, stride=1, padding=1, has_bias=True)
                    t2 = time.process_time()
                    if r:       # (round 0 warms up)
                        times[k, "fwd"].append(t1 - t0)
                        times[k, "bwd"].append(t2 - t1)
        for k in (0, 1):
            p = plans[k]
            print(f"{name} {'16-thread blocks' if k else 'old blocks      '} "
                  f"fwd imgs {p.forward.params['imgs']:3d}  gw {p.grad_weight.params}")
        for ph in ("fwd", "bwd"):
            a, b_ = (np.median(times[k, ph]) * 1e3 for k in (0, 1))
            print(f"  {ph}: old {a:7.3f} ms  new {b_:7.3f} ms  new/old {b_ / a:.3f}")


if __name__ == "__main__":
    main()
