"""deform_conv2d forward on cpu timed right after each numpy reference call, with the reference's
BLAS free and pinned to one thread (bench/RESULTS.md, fourth session: the bench's bimodal deform
forward).  python bench/deform_after_reference.py"""
import time, numpy as np, convkit, sys
from convkit._config import blas_single_thread
r = np.random.default_rng(0)
x = r.standard_normal((4,64,28,28)).astype(np.float32); w = (r.standard_normal((64,64,3,3))*0.05).astype(np.float32)
off = r.standard_normal((4,18,28,28)).astype(np.float32); m = r.random((4,9,28,28)).astype(np.float32)
b = np.zeros(64, np.float32)
for pin in (False, True, False, True):
    ts=[]
    for i in range(12):
        with convkit.use_backend("numpy"):
            if pin:
                with blas_single_thread: convkit.deform_conv2d_forward(x, off, w, b, 1, 1, 1, mask=m)
            else:
                convkit.deform_conv2d_forward(x, off, w, b, 1, 1, 1, mask=m)
        with convkit.use_backend("cpu"):
            t=time.perf_counter(); convkit.deform_conv2d_forward(x, off, w, b, 1, 1, 1, mask=m); ts.append((time.perf_counter()-t)*1e3)
    print('pin' if pin else 'free', ' '.join(f'{t:.1f}' for t in ts))
