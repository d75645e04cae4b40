"""Max relative error of the cpu deform_conv2d (float32) against the numpy reference in
float64 on the bench's deform_conv case, forward and every gradient: max |got - want| over
max |want| per output.  For the bits that change where a path changes (e.g. the AVX-512
machines' GEMMs): run it with each checkout on PYTHONPATH.  python bench/deform_rel_error.py"""
import numpy as np

import convkit as ck
from convkit.benchmark.cases import CASES

case = next(c for c in CASES if c.name == "deform_conv")
d = case.inputs(np.random.default_rng(0))
x, off, m, w, b, gy = (d[k] for k in ("x", "offset", "mask", "w", "b", "gy"))
f64 = [a.astype(np.float64) for a in (x, off, m, w, b, gy)]
with ck.use_backend("cpu"):
    got = [ck.deform_conv2d_forward(x, off, w, b, 1, 1, 1, m)]
    got += list(ck.deform_conv2d_backward(gy, x, off, w, 1, 1, 1, m))
x6, o6, m6, w6, b6, g6 = f64
with ck.use_backend("numpy"):
    want = [ck.deform_conv2d_forward(x6, o6, w6, b6, 1, 1, 1, m6)]
    want += list(ck.deform_conv2d_backward(g6, x6, o6, w6, 1, 1, 1, m6))
names = ["y", "grad_x", "grad_offset", "grad_weight", "grad_bias", "grad_mask"]
print("  ".join(f"{n} {float(np.abs(g - v).max() / np.abs(v).max()):.2e}"
                for n, g, v in zip(names, got, want) if g is not None and v is not None))
