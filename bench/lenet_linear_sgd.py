"""LeNet5's three Linear layers, zero_grad and the SGD step at batch B, one thread, inside a
BLAS pin as a Sequential runs them: least thread CPU us per call (min of 9 rounds of 200) of
each layer's forward and forward+backward and of its GEMMs alone; then model.zero_grad,
opt.zero_grad and opt.step (momentum 0.9).  Compare checkouts alternately:

    python bench/lenet_linear_sgd.py 64
    PYTHONPATH=<other checkout> python bench/lenet_linear_sgd.py 64
"""
import sys, time, numpy as np, convkit, convkit.nn as nn
from convkit._config import blas_single_thread
from convkit.models import build_classifier
convkit.set_num_threads(1)
clock = time.thread_time
def best(f, reps=200, rounds=9):
    f()
    out = []
    for _ in range(rounds):
        t = clock()
        for _ in range(reps): f()
        out.append((clock() - t) / reps * 1e6)
    return min(out)
B = int(sys.argv[1]) if len(sys.argv) > 1 else 64
rng = np.random.default_rng(0)
with convkit.use_backend("cpu") as be, blas_single_thread:
    m = build_classifier("lenet5", dtype=np.float32, seed=0)
    for i in (7, 9, 11):
        l = m._layers[i]
        w = l.params["weight"]; b = l.params["bias"]
        x = rng.standard_normal((B, l.in_features)).astype(np.float32)
        gy = rng.standard_normal((B, l.out_features)).astype(np.float32)
        gw = l.grads["weight"]
        def fw(): l.forward(x); l._caches.clear()
        def fb(): l.forward(x); l.backward(gy)
        r = [f"L{i} {l.in_features}->{l.out_features}: fwd {best(fw):.1f} fwd+bwd {best(fb):.1f}",
             f"x@w.T {best(lambda: x @ w.T):.1f}",
             f"gy.T@x {best(lambda: gy.T @ x):.1f}",
             f"gy@w {best(lambda: gy @ w):.1f}",
             f"gw+= {best(lambda: gw.__iadd__(gy.T @ x)):.1f}",
             f"sum0 {best(lambda: gy.sum(axis=0)):.1f}",
             f"y+=b {best(lambda: (x @ w.T).__iadd__(b)):.1f}",
             ]
        print(" | ".join(r), flush=True)
    opt = nn.SGD(m, lr=0.01, momentum=0.9); opt.step()
    print(f"zero_grad {best(m.zero_grad):.1f}  opt.zero_grad {best(opt.zero_grad):.1f} sgd step {best(opt.step):.1f}")
