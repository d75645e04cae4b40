"""The dense conv path's GEMM row blocks on a fixed-order GEMM (csrc/fgemm.h / the own AVX-512
GEMM): tuning.BATCH_BLOCKS blocks (BLAS's split, kept for fixed-order GEMMs before) against one
block per thread (what the own GEMM used).  Both give the same bits (each output one FMA chain
over k whatever the split: checked here); the figure is the least calling-thread CPU time per
call (``--threads 1``, immune to load) or wall time, over interleaved rounds, per LeNet5 /
SmallResNet dense layer at the training batch sizes.

    python bench/dense_blocks_ab.py --threads 1
"""
import argparse
import time

import numpy as np

import convkit
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P
from convkit.cpu import tuning as T

LAYERS = [("lenet c2 6->16 5x5 4x4", 6, 4, 16, 5, 2), ("resnet 64->64 3x3 2x2", 64, 2, 64, 3, 1)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--repeat", type=int, default=50)
    args = p.parse_args()
    convkit.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    orig = P.dense_params
    variants = {"BATCH_BLOCKS": lambda own, fixed=False: {**orig(own, fixed),
                                                          "row_blocks": T.BATCH_BLOCKS},
                "per thread": lambda own, fixed=False: {**orig(own, fixed), "row_blocks": 0}}
    caps = cc._caps()
    print(f"# {args.threads} threads, fixed-order GEMM active: "
          f"{caps.fixed_sgemm or caps.own_sgemm}")
    print("| layer | batch | pass | BATCH_BLOCKS us | per thread us | ratio | same bits |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    for name, C, H, F, K, pad in LAYERS:
        for N in (64, 128):
            x = rng.standard_normal((N, C, H, H)).astype(np.float32)
            w = (rng.standard_normal((F, C, K, K)) * 0.1).astype(np.float32)
            b = np.zeros(F, np.float32)
            g = rng.standard_normal((N, F, H, H)).astype(np.float32)
            calls = {"fwd": lambda: convkit.conv2d_forward(x, w, b, 1, pad),
                     "bwd": lambda: convkit.conv2d_backward(g, x, w, 1, pad)}
            for ps, fn in calls.items():
                res, outs = {k: [] for k in variants}, {}
                for r in range(args.rounds):
                    for k in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
                        P.dense_params = variants[k]
                        cc._plans.clear()
                        assert cc._plan(x, w, (1, 1), (pad,) * 4, (1, 1), 1)[3].forward.algo \
                            == "dense"
                        w[0, 0, 0, 0] += np.float32(1e-3)     # a training step's new weight
                        t = clock()
                        for _ in range(args.repeat):
                            fn()
                        res[k].append((clock() - t) / args.repeat)
                for k in variants:      # the bits, both at the same weight
                    P.dense_params = variants[k]
                    cc._plans.clear()
                    outs[k] = fn()
                P.dense_params = orig
                cc._plans.clear()
                a, bb = (min(v) * 1e6 for v in res.values())
                o1, o2 = (outs[k] if isinstance(outs[k], tuple) else (outs[k],) for k in variants)
                same = all(u.tobytes() == v.tobytes() for u, v in zip(o1, o2) if u is not None)
                print(f"| {name} | {N} | {ps} | {a:.1f} | {bb:.1f} | {a / bb:.2f} | {same} |")


if __name__ == "__main__":
    main()
