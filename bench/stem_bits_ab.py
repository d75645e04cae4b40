"""stem_224's outputs (forward y, grad_weight, grad_bias; plus an odd 61 x 53 map, whose rows are
not whole Winograd tiles) saved from one checkout and compared bit for bit with another's: a
change meant to keep the bits (csrc/stem.h, stem_wino.h, stem_wgrad.h) is checked against the
code before it, at any thread count.

    PYTHONPATH=/path/to/A python bench/stem_bits_ab.py save A.npz [--threads 2]
    PYTHONPATH=/path/to/B python bench/stem_bits_ab.py save B.npz [--threads 1]
    python bench/stem_bits_ab.py compare A.npz B.npz

(PYTHONPATH picks the checkout: the script's own folder comes first on sys.path, not the
working directory.)
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def save(path, threads):
    import convkit
    import convkit.functional as F

    convkit.set_num_threads(threads)
    rng = np.random.default_rng(1)
    out = {}
    for shape in [(8, 3, 224, 224), (2, 3, 61, 53)]:
        x = rng.standard_normal(shape).astype(np.float32)
        w = (rng.standard_normal((64, 3, 7, 7)) / 12).astype(np.float32)
        b = rng.standard_normal(64).astype(np.float32)
        with convkit.use_backend("cpu"):
            y = F.conv2d_forward(x, w, b, stride=2, padding=3)
            gy = rng.standard_normal(y.shape).astype(np.float32)
            _, gw, gb = F.conv2d_backward(gy, x, w, stride=2, padding=3,
                                          needs_input_grad=False, has_bias=True)
        h = shape[2]
        out[f"y{h}"], out[f"gw{h}"], out[f"gb{h}"] = y, gw, gb
    np.savez(path, **out)
    print(f"{convkit.__file__}: saved {sorted(out)} to {path}")


def compare(a_path, b_path):
    a, b = np.load(a_path), np.load(b_path)
    same = True
    for k in a.files:
        eq = np.array_equal(a[k], b[k])
        same &= eq
        print(f"{k} {a[k].shape}: {'same bits' if eq else 'DIFFERENT'}")
    return 0 if same else 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save")
    s.add_argument("path")
    s.add_argument("--threads", type=int, default=2)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args(argv)
    if args.cmd == "save":
        save(args.path, args.threads)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
