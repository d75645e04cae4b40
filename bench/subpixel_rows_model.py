"""The sub-pixel grad_x's lost share at 16 threads over its window rows per task (issue 16,
thirteenth session): bench/many_core_split.py's model of the plan's step with ``rows`` set to
1 .. the window starts, for the plain-BLAS caps' k4s2_56* / convt28_adj* (their grad_x on
BLAS is subpixel).  Pure arithmetic, no timing.

    PYTHONPATH=$PWD python bench/subpixel_rows_model.py [--threads 16]
"""
import argparse
import dataclasses
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import many_core_split as M                    # noqa: E402
from convkit.cpu import conv_plan as P         # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=16)
    a = ap.parse_args()
    for name, s, _ in M.shapes(True):
        if name.rstrip("*") not in ("k4s2_56", "convt28_adj"):
            continue
        st = P.plan_conv(s, np.float64, a.threads, M.CAPS["blas"], M.LIMIT).grad_x
        assert st.algo == "subpixel", st
        starts = P.subpixel_axis(s.H, s.KH, s.stride[0], s.padding[0], s.dilation[0])
        out = []
        for r in range(1, starts[2] - starts[1] + 1):
            res = M.analyse(dataclasses.replace(st, params=dict(st.params, rows=r)), s, False,
                            8, "x")
            out.append(f"{r}: {res['tasks']} {res['lost']:.0%}")
        print(f"{name} (plan: rows {st.params['rows']}; rows: tasks lost)\n  "
              + ", ".join(out))


if __name__ == "__main__":
    main()
