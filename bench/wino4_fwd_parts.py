"""A suite layer's forward through the public API at one thread, CPU time (time.process_time),
with the Winograd filter transform and the conv kernel (transforms + GEMMs) timed inside it:

    [CONVKIT_DISABLE_AVX512=1] python bench/wino4_fwd_parts.py res_14

Prints the medians of calls 3-9: the whole call, winograd_filters, conv2d_forward_winograd (ms).
glibc's mmap threshold raised as the suite's bench does (no page faults per call).
"""
import sys, time, ctypes, numpy as np, convkit
m = ctypes.CDLL(None).mallopt; m.argtypes = (ctypes.c_int, ctypes.c_int); m(-3, 32 << 20); m(-1, 64 << 20)
from convkit.cpu import conv as cc, _conv_winograd as wg
from convkit.benchmark.cases import CASES
convkit.set_num_threads(1)
c = {c.name: c for c in CASES}[sys.argv[1]]
rng = np.random.default_rng(0)
x = rng.standard_normal((c.N, c.C, c.H, c.W)).astype(np.float32)
w = (rng.standard_normal((c.F, c.C, 3, 3)) * 0.05).astype(np.float32)
b = np.zeros(c.F, np.float32)
seen = {}
of, oc = wg.winograd_filters, wg.conv2d_forward_winograd
def tf(*a):
    t = time.process_time(); r = of(*a); seen.setdefault("filt", []).append(time.process_time() - t); return r
def tc(*a):
    t = time.process_time(); r = oc(*a); seen.setdefault("conv", []).append(time.process_time() - t); return r
cc._winograd.winograd_filters = tf; cc._winograd.conv2d_forward_winograd = tc
tot = []
for _ in range(9):
    t = time.process_time(); convkit.conv2d_forward(x, w, b, stride=1, padding=1); tot.append(time.process_time() - t)
med = lambda v: 1e3 * float(np.median(v[2:]))
print(f"{c.name} fwd total {med(tot):.2f} filt {med(seen['filt']):.2f} conv {med(seen['conv']):.2f} ms")
