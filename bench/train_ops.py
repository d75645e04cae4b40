"""The ops of a LeNet5 / SmallResNet training step on the digits' shapes, convkit vs torch, one
op at a time in one process: the convs' forward and backward (torch: aten.convolution_backward,
what autograd runs), batch norm (aten.native_batch_norm and its backward), and ReLU.

Each op is timed ``--repeat`` times in interleaved rounds (convkit, torch alternately); the
figure is the least time per call over the rounds, by the calling thread's CPU time with
``--threads 1`` (immune to waiting for a core under load), wall time otherwise.  ``ratio`` is
torch / convkit (> 1: convkit faster).

    python bench/train_ops.py --batch-size 64 128
    python bench/train_ops.py --batch-size 64 --threads 2 --match conv
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

# (name, kind, input shape without N, conv: (F, KH, stride, pad))
LAYERS = [
    ("lenet c1 5x5 1->6 8x8", "conv", (1, 8, 8), (6, 5, 1, 2), False),
    ("lenet c2 5x5 6->16 4x4", "conv", (6, 4, 4), (16, 5, 1, 2), True),
    ("resnet stem 3x3 1->16 8x8", "conv", (1, 8, 8), (16, 3, 1, 1), False),
    ("resnet 3x3 16->16 8x8", "conv", (16, 8, 8), (16, 3, 1, 1), True),
    ("resnet 3x3 s2 16->32 8x8", "conv", (16, 8, 8), (32, 3, 2, 1), True),
    ("resnet 1x1 s2 16->32 8x8", "conv", (16, 8, 8), (32, 1, 2, 0), True),
    ("resnet 3x3 32->32 4x4", "conv", (32, 4, 4), (32, 3, 1, 1), True),
    ("resnet 3x3 s2 32->64 4x4", "conv", (32, 4, 4), (64, 3, 2, 1), True),
    ("resnet 1x1 s2 32->64 4x4", "conv", (32, 4, 4), (64, 1, 2, 0), True),
    ("resnet 3x3 64->64 2x2", "conv", (64, 2, 2), (64, 3, 1, 1), True),
    ("bn 16 8x8", "bn", (16, 8, 8), None, True),
    ("bn 32 4x4", "bn", (32, 4, 4), None, True),
    ("bn 64 2x2", "bn", (64, 2, 2), None, True),
    ("relu 16 8x8", "relu", (16, 8, 8), None, True),
]


def make_ops(kind, N, shape, conv, gx, torch, convkit, nn):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N,) + shape).astype(np.float32)
    tx = torch.from_numpy(x)
    if kind == "conv":
        F, K, s, p = conv
        w = (rng.standard_normal((F, shape[0], K, K)) * 0.1).astype(np.float32)
        y = convkit.conv2d_forward(x, w, None, s, p)
        g = rng.standard_normal(y.shape).astype(np.float32)
        tw, tg = torch.from_numpy(w), torch.from_numpy(g)
        return {
            "fwd": (lambda: convkit.conv2d_forward(x, w, None, s, p),
                    lambda: torch.nn.functional.conv2d(tx, tw, None, s, p)),
            "bwd": (lambda: convkit.conv2d_backward(g, x, w, s, p, needs_input_grad=gx,
                                                    has_bias=False),
                    lambda: torch.ops.aten.convolution_backward(
                        tg, tx, tw, None, [s, s], [p, p], [1, 1], False, [0, 0], 1,
                        [gx, True, False])),
        }
    if kind == "bn":
        C = shape[0]
        w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
        rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
        trm, trv = torch.zeros(C), torch.ones(C)
        tw, tb = torch.ones(C), torch.zeros(C)
        y, m, istd = convkit.batch_norm_forward(x, w, b, rm, rv, True)
        g = rng.standard_normal(y.shape).astype(np.float32)
        tg = torch.from_numpy(g)
        _, tm, tistd = torch.ops.aten.native_batch_norm(tx, tw, tb, trm, trv, True, 0.1, 1e-5)
        return {
            "fwd": (lambda: convkit.batch_norm_forward(x, w, b, rm, rv, True),
                    lambda: torch.ops.aten.native_batch_norm(tx, tw, tb, trm, trv, True, 0.1,
                                                             1e-5)),
            "bwd": (lambda: convkit.batch_norm_backward(g, x, w, m, istd, True),
                    lambda: torch.ops.aten.native_batch_norm_backward(
                        tg, tx, tw, trm, trv, tm, tistd, True, 1e-5, [True, True, True])),
        }
    relu = nn.ReLU()
    y = np.maximum(x, 0)
    g = rng.standard_normal(y.shape).astype(np.float32)
    ty, tg = torch.from_numpy(y), torch.from_numpy(g)

    def ck_bwd():
        relu._push(y)
        return relu.backward(g)
    def ck_fwd():
        y = relu.forward(x)
        relu._caches.pop()
        return y
    return {
        "fwd": (ck_fwd, lambda: torch.relu(tx)),
        "bwd": (ck_bwd, lambda: torch.ops.aten.threshold_backward(tg, ty, 0)),
    }


def best(fn, clock, reps):
    t = clock()
    for _ in range(reps):
        fn()
    return (clock() - t) / reps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", nargs="+", type=int, default=[64, 128])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--match", default="")
    args = p.parse_args(argv)
    import torch

    import convkit
    import convkit.nn as nn

    torch.set_num_threads(args.threads)
    convkit.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    print(f"# convkit {convkit.__file__}, {args.threads} threads "
          f"({'thread CPU' if args.threads == 1 else 'wall'} time), load "
          f"{os.getloadavg()[0]:.2f}; least us per call over {args.rounds} rounds x "
          f"{args.repeat} calls")
    print("| layer | batch | pass | convkit us | torch us | torch/convkit |")
    print("| --- | --- | --- | --- | --- | --- |")
    for N in args.batch_size:
        for name, kind, shape, conv, gx in LAYERS:
            if args.match not in name:
                continue
            ops = make_ops(kind, N, shape, conv, gx, torch, convkit, nn)
            for ps, (ck, th) in ops.items():
                ck(), th()
                tc, tt = [], []
                for r in range(args.rounds):
                    for fn, acc in ((ck, tc), (th, tt)) if r % 2 == 0 else ((th, tt), (ck, tc)):
                        acc.append(best(fn, clock, args.repeat))
                c, t = min(tc) * 1e6, min(tt) * 1e6
                print(f"| {name} | {N} | {ps} | {c:.1f} | {t:.1f} | {t / c:.2f} |")


if __name__ == "__main__":
    main()
