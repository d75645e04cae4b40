"""Dump conv_transpose2d's forward and backward (cpu, float32) on a few shapes to an .npz, so two
checkouts' bits can be compared (a change meant to keep the bits: the same file from both).

    python bench/convt_bits.py OUT.npz [--threads 1,2]
"""
import argparse

import numpy as np

import convkit

SHAPES = {    # x shape, C_out, kernel, stride, padding, output_padding
    "convt_28": ((8, 64, 28, 28), 32, 4, 2, 1),
    "op1": ((2, 16, 9, 7), 8, 4, 2, 1, 1),                 # odd output rows and columns
    "odd": ((3, 20, 13, 11), 12, 4, 2, 1),
    "k2s2": ((2, 16, 9, 10), 8, 2, 2, 0),
    "k6s2p2": ((2, 24, 10, 9), 16, 6, 2, 2),
    "k4s2p3": ((2, 12, 15, 17), 20, 4, 2, 3),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--threads", default="1,2")
    a = ap.parse_args()
    res = {}
    for t in (int(v) for v in a.threads.split(",")):
        convkit.set_num_threads(t)
        for name, (xs, co, k, s, p, *op) in SHAPES.items():
            rng = np.random.default_rng(7)
            x = rng.standard_normal(xs).astype(np.float32)
            w = rng.standard_normal((xs[1], co, k, k)).astype(np.float32)
            b = rng.standard_normal(co).astype(np.float32)
            op = op[0] if op else 0
            y = convkit.conv_transpose2d_forward(x, w, b, s, p, op)
            gy = rng.standard_normal(y.shape).astype(np.float32)
            gx, gw, gb = convkit.conv_transpose2d_backward(gy, x, w, s, p, op)
            for key, v in (("y", y), ("gx", gx), ("gw", gw), ("gb", gb)):
                res[f"{name}/{key}/t{t}"] = v
    np.savez(a.out, **res)


if __name__ == "__main__":
    main()
