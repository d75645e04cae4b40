"""convt_28 forward and backward (convkit cpu, in one process) with x and grad_y starting at
several offsets within a 4 KiB page: does the inputs' placement move its time?  Prints the
median ms of 7 calls per offset, after 3 untimed.

    python bench/convt_align.py
"""
import time, numpy as np, convkit
rng = np.random.default_rng(0)
def shifted(shape, off):
    n = int(np.prod(shape)); raw = np.empty(n + 4096, np.float32)
    k = ((off - raw.ctypes.data) % 4096) // 4
    a = raw[k:k+n].reshape(shape); a[...] = rng.standard_normal(shape); return a
w = rng.standard_normal((64,32,4,4)).astype(np.float32); b = rng.standard_normal(32).astype(np.float32)
res = []
for off in [0, 64, 1024, 2048, 3072, 4032]:
    x = shifted((8,64,28,28), off); gy = shifted((8,32,56,56), off)
    for _ in range(3):
        convkit.conv_transpose2d_forward(x, w, b, stride=2, padding=1); convkit.conv_transpose2d_backward(gy, x, w, stride=2, padding=1)
    ts=[]
    for _ in range(7):
        t0=time.perf_counter(); convkit.conv_transpose2d_forward(x, w, b, stride=2, padding=1)
        t1=time.perf_counter(); convkit.conv_transpose2d_backward(gy, x, w, stride=2, padding=1); t2=time.perf_counter()
        ts.append((t1-t0, t2-t1))
    f = np.median([t[0] for t in ts])*1e3; g = np.median([t[1] for t in ts])*1e3
    res.append(f"off {off}: fwd {f:.2f} bwd {g:.2f}")
print("\n".join(res))
