"""A 3x3 layer's forward through the public API, for instruction counts under callgrind (works on
a loaded host):

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p python bench/wino_callgrind.py \
        [--layer res_14] [--reps 2] [--threads 2]
    callgrind_annotate --inclusive=yes /tmp/cg.<pid> | grep -i "wino\\|fg_"

The per-function inclusive counts of conv2d_forward_winograd's parallel region (the transforms
and GEMMs) and winograd_filters' (the filter transform) are the figures to compare; the rest is
Python start-up.
"""
import argparse

import numpy as np

import convkit
from convkit.benchmark.cases import CASES


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layer", default="res_14")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    c = {c.name: c for c in CASES}[a.layer]
    convkit.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((c.N, c.C, c.H, c.W)).astype(np.float32)
    w = rng.standard_normal((c.F, c.C, 3, 3)).astype(np.float32)
    b = rng.standard_normal(c.F).astype(np.float32)
    with convkit.use_backend("cpu"):
        for _ in range(a.reps):
            y = convkit.conv2d_forward(x, w, b, padding=c.pad)
    print(float(y.astype(np.float64).sum()))


if __name__ == "__main__":
    main()
