"""stem_224's weight gradient (conv_plan "weight_stem_wino", or with --direct "weight_stem") once,
for an instruction count under callgrind: the kernel's instructions on all threads, whatever the
machine's load.

    [OMP_WAIT_POLICY=passive] valgrind --tool=callgrind --collect-atstart=no \\
        --toggle-collect='*conv2d_grad_weight_stem*omp_fn*' --callgrind-out-file=/tmp/cg.%p \\
        python bench/stem_w_callgrind.py [--threads 2] [--groups 16] [--direct]
    callgrind_annotate /tmp/cg.<pid> | head

(the pattern matches both kernels' parallel regions: conv2d_grad_weight_stem and
conv2d_grad_weight_stem_wino).  --groups sets tuning.STEM_W_TASKS (8: stem_224's split before
the slab groups, whole images).  --direct: the direct weight_stem (tuning.STEM_WINO_MIN_FILTERS
raised past the layer's 64 filters).
OMP_WAIT_POLICY=passive on more than one thread: valgrind runs one thread at a time, and an
OpenMP thread spinning at a barrier would run (and be counted) until the other's turn.
Needs a machine where the plan picks the stem paths (float32 GEMMs on BLAS, AVX2).
"""
from __future__ import annotations

import argparse

import numpy as np

import convkit
from convkit.cpu import conv as cc
from convkit.cpu import tuning


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--groups", type=int, default=tuning.STEM_W_TASKS)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--direct", action="store_true", help="weight_stem, not weight_stem_wino")
    args = ap.parse_args(argv)
    tuning.STEM_W_TASKS = args.groups
    if args.direct:
        tuning.STEM_WINO_MIN_FILTERS = 10**9
    convkit.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    w = (rng.standard_normal((64, 3, 7, 7)) / np.sqrt(147)).astype(np.float32)
    gy = rng.standard_normal((args.batch, 64, 112, 112)).astype(np.float32)
    geo = ((2, 2), (3, 3, 3, 3), (1, 1), 1)
    plan = cc._plan(x, w, *geo, needs_input_grad=False)[3]
    assert plan.grad_weight.algo == ("weight_stem" if args.direct else "weight_stem_wino"), plan
    print(plan.grad_weight)
    cc.conv2d_backward(gy, x, w, *geo, False, True)


if __name__ == "__main__":
    main()
