"""One float32 roi_max_align backward (the suite's RoI case, 1 thread) for callgrind:
PYTHONPATH=<checkout> valgrind --tool=callgrind --toggle-collect=ck_max_align_bwd_blk_f \
    .venv/bin/python bench/roi_max_align_bwd_callgrind.py
(the scatter's instructions, inclusive of the operand prep)."""
import numpy as np, convkit
import convkit.functional as F
from convkit.benchmark import cases
convkit.set_num_threads(1)
c = [c for c in cases.CASES if c.name == "roi_align"][0]
inp = c.inputs(np.random.default_rng(0))
x, rois = inp["x"], inp["rois"]
y, am = F.roi_max_align_forward(x, rois, (7, 7), 1/16, 2, False, backend="cpu")
g = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
F.roi_max_align_backward(g, am, rois, x.shape, (7, 7), 1/16, 2, False, backend="cpu")
