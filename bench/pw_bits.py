"""Bits of the own GEMM's narrow last panel, saved for one checkout and compared with another's:
the pointwise convs whose position counts leave a partial 48-column panel (pw_14: 196 = 4 x 48 +
4; rpn_cls1x1: 1900 = 39 x 48 + 28; odd counts 1 .. 49; since the twelfth session filter
counts of 6q, the 6-row tiles), forward, grad_x and grad_weight on 1, 2 and 16 threads, and raw
GEMMs (packed / in place, ta / tb, beta, prepacked A, rows at offsets).

    PYTHONPATH=<checkout A> python bench/pw_bits.py a.npz
    PYTHONPATH=<checkout B> python bench/pw_bits.py b.npz
    python bench/pw_bits.py --compare a.npz b.npz
"""
import sys

import numpy as np


def snapshot(path):
    import convkit as ck
    from convkit.cpu import _gemm as G
    rng = np.random.default_rng(11)
    out = {}
    convs = [(8, 256, 14, 14, 1024), (1, 512, 38, 50, 18), (2, 40, 7, 7, 100), (3, 24, 1, 47, 130),
             (2, 16, 7, 7, 9), (1, 33, 1, 1, 200), (2, 64, 5, 10, 96), (1, 20, 2, 26, 17),
             (1, 64, 19, 25, 36), (2, 30, 9, 11, 6), (1, 40, 7, 13, 90), (3, 12, 5, 5, 54)]
    for t in (1, 2, 16):
        ck.set_num_threads(t)
        for (N, C, H, W, F) in convs:
            x = rng.standard_normal((N, C, H, W)).astype(np.float32)
            w = (rng.standard_normal((F, C, 1, 1)) * 0.1).astype(np.float32)
            b = rng.standard_normal(F).astype(np.float32)
            with ck.use_backend("cpu"):
                y = ck.conv2d_forward(x, w, b)
                gy = rng.standard_normal(y.shape).astype(np.float32)
                gx, gw, gb = ck.conv2d_backward(gy, x, w)
            key = f"t{t}_{N}x{C}x{H}x{W}_{F}"
            out[key + "_y"], out[key + "_gx"], out[key + "_gw"] = y, gx, gw
    for m, n, k in [(1024, 196, 256), (256, 98, 1024), (18, 1900, 512), (100, 49, 300),
                    (96, 4, 200), (97, 3, 33), (7, 2, 500), (130, 52, 410), (40, 1, 9),
                    (18, 65, 512), (36, 130, 100), (6, 1029, 77), (90, 67, 200), (12, 5, 40)]:
        for ta in (False, True):
            for tb in (False, True):
                a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
                bb = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
                c0 = rng.standard_normal((m, n)).astype(np.float32)
                for beta in (0.0, 1.0, 0.25):
                    c = c0.copy()
                    G.gemm_into(ta, tb, 1.0 if beta != 0.25 else -0.5, a, bb, beta, c)
                    out[f"gemm{m}x{n}x{k}_{ta:d}{tb:d}_{beta}"] = c
        if G.packed_a_floats(m, k):
            a = rng.standard_normal((1, m, k)).astype(np.float32)
            apk = np.zeros((1, G.packed_a_floats(m, k)), np.float32)
            G.pack_a(a, apk)
            flat = rng.standard_normal(n + 3 * k + 64).astype(np.float32)
            boff = (np.arange(k) * 3 + rng.integers(0, 3, k)).astype(np.intp)
            bias = rng.standard_normal(m).astype(np.float32)
            c = np.empty((m, n), np.float32)
            G.gemm_rows_into(apk, flat, boff, 0.0, c, bias)
            out[f"rows{m}x{n}x{k}"] = c
    np.savez(path, **out)


def compare(a, b):
    A, B = np.load(a), np.load(b)
    assert sorted(A.files) == sorted(B.files), "different keys"
    bad = [k for k in A.files if A[k].tobytes() != B[k].tobytes()]
    print(f"{len(A.files)} arrays, {len(bad)} differ" + (": " + ", ".join(bad) if bad else ""))
    return not bad


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        sys.exit(0 if compare(sys.argv[2], sys.argv[3]) else 1)
    snapshot(sys.argv[1])
