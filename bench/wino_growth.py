"""How far can a Winograd transform grow its operands?  The bound behind convkit/cpu/
_conv_im2col.pyx's all_moderate (the fast conv algorithms run only on operands finite and below
2**35 in magnitude, 2**480 in float64): every value a Winograd algorithm forms is at most
|input|max * |filter|max * (reduction length) * growth, where growth is the product of the
transforms' largest row sums of absolute values (squared for a 2-D transform).

    python bench/wino_growth.py

Prints each algorithm's growth and its log2 (for the Cook-Toom matrices; the code's row scalings
move factors between B^T and G).  With operands below 2**35, a reduction under 2**34 terms (64 GB
of float32 operand) and a growth under 2**18, no intermediate reaches 2**122 < float32's 2**128.
"""
import math
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from wino_points import mats           # noqa: E402  (F(4x4)'s Cook-Toom matrices)

HERE = os.path.dirname(os.path.abspath(__file__))


def row_sum(m):
    return float(np.abs(np.asarray(m, dtype=float)).sum(axis=1).max())


def stem_wino_matrices():
    """csrc/stem_wino.h's 1-D F(4, 4) matrices: G and B^T read from the header, A^T as its
    output transform computes (points 0, 1, -1, 1/2, -1/2, 2, inf)."""
    src = open(os.path.join(HERE, "..", "convkit", "cpu", "csrc", "stem_wino.h")).read()

    def table(name):
        body = re.search(name + r"\[\d+\]\[\d+\] = \{(.*?)\};", src, re.S).group(1)
        rows = re.findall(r"\{([^{}]*)\}", body)
        return [[eval(v) for v in r.split(",")] for r in rows]
    at = [[1, 1, 1, 1, 1, 1, 0], [0, 1, -1, .5, -.5, 2, 0], [0, 1, 1, .25, .25, 4, 0],
          [0, 1, -1, .125, -.125, 8, 1]]
    return table("ck_sw_g4"), table("ck_sw_b4"), at


def main():
    rows = []
    AT, G, BT = mats([0, 1, -1, "1/2", -2])
    rows.append(("F(4x4, 3x3) (csrc/wino4.h, points 0, 1, -1, 1/2, -2, inf)",
                 row_sum(BT) ** 2 * row_sum(G) ** 2 * row_sum(AT) ** 2))
    BT2 = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G2 = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]
    AT2 = [[1, 1, 1, 0], [0, 1, -1, -1]]
    rows.append(("F(2x2, 3x3) (_conv_winograd.pyx)",
                 row_sum(BT2) ** 2 * row_sum(G2) ** 2 * row_sum(AT2) ** 2))
    g4, b4, at = stem_wino_matrices()
    rows.append(("stem_wino 1-D F(4, 4) (csrc/stem_wino.h)", row_sum(b4) * row_sum(g4) * row_sum(at)))
    for name, g in rows:
        print(f"{name}: growth {g:.1f} = 2**{math.log2(g):.1f}")


if __name__ == "__main__":
    main()
