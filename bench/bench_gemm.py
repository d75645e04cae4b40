"""float32 GEMM rate on the conv shapes: convkit's own AVX-512 kernel (the GEMM under every cpu
conv), scipy's OpenBLAS (what convkit used before, and still uses for float64 or without
AVX-512), "fixed" (the forwards' and grad_x's GEMM, _blas.gemm_fixed: the own kernel, or
csrc/fgemm.h's fixed-order AVX2 kernel, or BLAS) and torch.mm, one thread each, interleaved,
medians.

    python bench/bench_gemm.py [--rounds 15]

Row-major C (m x n) = op(A) (m x k) @ op(B) (k x n); "tb": B stored n x k (a grad_weight GEMM),
"ta": A stored k x m (a grad_x GEMM).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from convkit.benchmark.cases import CASES  # noqa: E402

_CONVS = {c.name: c for c in CASES}


def conv_gemm(op, kind, rows=None):
    """(m, k, n) of one image's GEMM in conv ``op`` of the shape table: "fwd" weights @ im2col,
    "grad_w" grad_y @ im2col^T, "grad_x" weights^T @ grad_y; ``rows``: that many output rows."""
    c = _CONVS[op]
    Ho, Wo = c.out_hw
    taps, pixels = c.C // c.groups * c.K * c.K, (rows or Ho) * Wo
    return {"fwd": (c.F, taps, pixels), "grad_w": (c.F, pixels, taps),
            "grad_x": (taps, c.F, pixels)}[kind]


SHAPES = [  # (name, m, k, n, ta, tb)
    ("vgg_56 fwd im2col (per image)", *conv_gemm("vgg_56", "fwd"), False, False),
    # Winograd's GEMMs are sized by its tiling (filters x channels x tiles per block)
    ("vgg_56 Winograd (56 tiles)", 64, 64, 56, False, False),
    ("res_14 Winograd (batch)", 256, 256, 392, False, False),
    ("res_14 Winograd F(4x4) task (64 tiles)", 256, 256, 64, False, False),
    ("LeNet5 c2 dense (batch 64)", 64, 96, 256, False, False),
    ("LeNet5 c1 batch (8 images)", 6, 25, 512, False, False),
    ("res_28 fwd im2col", *conv_gemm("res_28", "fwd"), False, False),
    ("stem_224 fwd (7 rows)", *conv_gemm("stem_224", "fwd", rows=7), False, False),
    ("res_14 grad_w (tb)", *conv_gemm("res_14", "grad_w"), False, True),
    ("res_14 grad_x (ta)", *conv_gemm("res_14", "grad_x"), True, False),
    ("rpn_3x3 grad_w (tb)", *conv_gemm("rpn_3x3", "grad_w"), False, True),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)

    from scipy.linalg import blas
    from threadpoolctl import threadpool_limits

    from convkit.cpu import _gemm
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    threadpool_limits(1)
    print(f"own float32 GEMM active: {_gemm.own_sgemm_active()}; 1 thread each; "
          f"{args.rounds} interleaved rounds; GFLOP/s from the median")
    print("| shape | m x k x n | convkit | fixed | scipy OpenBLAS | torch.mm | convkit/scipy | "
          "fixed/scipy | convkit/torch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    for name, m, k, n, ta, tb in SHAPES:
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
        c = np.empty((m, n), np.float32)
        # scipy's sgemm is column-major: C^T = op(B)^T op(A)^T on the transposed (F-order) views
        fns = {"convkit": lambda: _gemm.gemm_into(ta, tb, 1.0, a, b, 0.0, c),
               "fixed": lambda: _gemm.gemm_fixed_into(ta, tb, a, b, 0.0, c),
               "scipy": lambda: blas.sgemm(1.0, b.T, a.T, trans_a=tb, trans_b=ta)}
        if torch is not None:
            ta_, tb_ = torch.from_numpy(a), torch.from_numpy(b)
            fns["torch"] = lambda: torch.mm(ta_.t() if ta else ta_, tb_.t() if tb else tb_)
        times = {key: [] for key in fns}
        for f in fns.values():
            f()
        for r in range(args.rounds):
            order = list(fns.items())
            if r % 2:
                order.reverse()
            for key, f in order:
                t0 = time.perf_counter()
                f()
                times[key].append(time.perf_counter() - t0)
        rate = {key: 2 * m * k * n / statistics.median(v) / 1e9 for key, v in times.items()}
        tr = rate.get("torch")
        print(f"| {name} | {m} x {k} x {n} | {rate['convkit']:.0f} | {rate['fixed']:.0f} | "
              f"{rate['scipy']:.0f} | {'-' if tr is None else f'{tr:.0f}'} | "
              f"{rate['convkit'] / rate['scipy']:.2f}x | {rate['fixed'] / rate['scipy']:.2f}x | "
              f"{'-' if tr is None else format(rate['convkit'] / tr, '.2f') + 'x'} |")


if __name__ == "__main__":
    main()
