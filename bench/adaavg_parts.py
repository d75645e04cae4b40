"""Per-part timings of the adaptive average rows (issue 16, helper adaavg12): the cpu module's
forward / backward of adaptive_avg_head (8,512,7,7) -> 1x1 and adaptive_avg_56to7
(8,64,56,56) -> 7x7, and the bare kernels, by one-thread process CPU time (min over CALLS
calls after a warm-up; robust to other processes on a loaded machine) and wall time (min).

    CONVKIT_NUM_THREADS=1 PYTHONPATH=<checkout> python bench/adaavg_parts.py [CALLS] [THREADS]

Prints one line per part: name, CPU us (min), wall us (min); the suite's rows (public ops,
forward and forward+backward as convkit/benchmark/adapters.py runs them) for convkit and for
torch on the same number of threads.
"""
import sys
import time

import numpy as np

import convkit
from convkit.cpu import adaptive_pool as ap

calls = int(sys.argv[1]) if len(sys.argv) > 1 else 300
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
convkit.set_num_threads(threads)
rng = np.random.default_rng(0)
xh = rng.standard_normal((8, 512, 7, 7)).astype(np.float32)
x5 = rng.standard_normal((8, 64, 56, 56)).astype(np.float32)
gh = rng.standard_normal((8, 512, 1, 1)).astype(np.float32)
g5 = rng.standard_normal((8, 64, 7, 7)).astype(np.float32)
yh = np.empty(4096, np.float32)
parts = {
    "head fwd (cpu module)": lambda: ap.adaptive_avg_pool2d_forward(xh, (1, 1)),
    "head fwd kernel": lambda: ap._adaptive_pool.global_avg_forward(xh.reshape(4096, 49), yh,
                                                                    threads),
    "head bwd (cpu module)": lambda: ap.adaptive_avg_pool2d_backward(gh, xh.shape),
    "56to7 fwd (cpu module)": lambda: ap.adaptive_avg_pool2d_forward(x5, (7, 7)),
    "56to7 bwd (cpu module)": lambda: ap.adaptive_avg_pool2d_backward(g5, x5.shape),
    "head fwd (public)": lambda: convkit.adaptive_avg_pool2d_forward(xh, 1),
    "head bwd (public)": lambda: convkit.adaptive_avg_pool2d_backward(gh, xh.shape),
    "56to7 fwd (public)": lambda: convkit.adaptive_avg_pool2d_forward(x5, 7),
    "56to7 bwd (public)": lambda: convkit.adaptive_avg_pool2d_backward(g5, x5.shape),
    "head fwd+bwd (public)": lambda: (convkit.adaptive_avg_pool2d_forward(xh, 1),
                                      convkit.adaptive_avg_pool2d_backward(gh, xh.shape)),
    "56to7 fwd+bwd (public)": lambda: (convkit.adaptive_avg_pool2d_forward(x5, 7),
                                       convkit.adaptive_avg_pool2d_backward(g5, x5.shape)),
}
try:
    import torch
    import torch.nn.functional as tF
    torch.set_num_threads(threads)
    for nm, x, g, o in (("head", xh, gh, 1), ("56to7", x5, g5, 7)):
        tx, tg = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(g)

        def tfwd(tx=tx, o=o):
            with torch.no_grad():
                return tF.adaptive_avg_pool2d(tx, o)
        parts[f"torch {nm} fwd"] = tfwd
        parts[f"torch {nm} fwd+bwd"] = (lambda tx=tx, tg=tg, o=o: torch.autograd.grad(
            tF.adaptive_avg_pool2d(tx, o), [tx], tg))
except ImportError:
    pass
for name, f in parts.items():
    f()
    bc = bw = float("inf")
    for _ in range(calls):
        t, w = time.process_time(), time.perf_counter()
        f()
        bw = min(bw, time.perf_counter() - w)
        bc = min(bc, time.process_time() - t)
    print(f"{name:26s} cpu {bc * 1e6:8.1f} us  wall {bw * 1e6:8.1f} us")
