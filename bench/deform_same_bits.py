"""Whether two checkouts' cpu deform_conv2d give the same bits: bench's deform_conv case
(forward and backward) and a grouped case (3 weight groups, 2 offset groups, backward), on
1, 2 and 3 threads.  Save with one checkout, compare with the other:

    PYTHONPATH=<a> python bench/deform_same_bits.py save /tmp/bits.pkl
    PYTHONPATH=<b> python bench/deform_same_bits.py compare /tmp/bits.pkl
"""
import pickle
import sys

import numpy as np

import convkit as ck
from convkit.benchmark.cases import CASES

case = next(c for c in CASES if c.name == "deform_conv")
d = case.inputs(np.random.default_rng(0))
x, off, m, w, b, gy = (d[k] for k in ("x", "offset", "mask", "w", "b", "gy"))
rng = np.random.default_rng(5)
x2 = rng.standard_normal((3, 24, 9, 11)).astype(np.float32)
off2 = rng.standard_normal((3, 36, 9, 11)).astype(np.float32)
w2 = rng.standard_normal((12, 8, 3, 3)).astype(np.float32)
m2 = rng.random((3, 18, 9, 11)).astype(np.float32)
gy2 = rng.standard_normal((3, 12, 9, 11)).astype(np.float32)
outs = []
with ck.use_backend("cpu"):
    for n in (1, 2, 3):
        ck.set_num_threads(n)
        outs.append([ck.deform_conv2d_forward(x, off, w, b, 1, 1, 1, m)]
                    + list(ck.deform_conv2d_backward(gy, x, off, w, 1, 1, 1, m)))
        outs.append(list(ck.deform_conv2d_backward(gy2, x2, off2, w2, 1, 1, 1, m2)))
outs = [[a for a in o if a is not None] for o in outs]
if sys.argv[1] == "save":
    with open(sys.argv[2], "wb") as f:
        pickle.dump(outs, f)
else:
    with open(sys.argv[2], "rb") as f:
        ref = pickle.load(f)
    same = all(a.tobytes() == c.tobytes() for o, r in zip(outs, ref) for a, c in zip(o, r))
    for i, (o, r) in enumerate(zip(outs, ref)):
        print(f"threads {i // 2 + 1} {'bench case' if i % 2 == 0 else 'grouped  '}: max |diff| "
              f"{max(float(np.abs(a - c).max()) for a, c in zip(o, r))}")
    print("same bits" if same else "DIFFERENT bits")
