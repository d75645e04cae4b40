"""pw_14 / rpn_cls1x1 per pass on one thread: forward, grad_weight alone (needs_input_grad=False)
and grad_x + grad_weight, convkits and torchs CPU time (time.process_time, minimum of 7 calls
after a warm-up) and GFLOP/s.  Run it for two checkouts in turn (PYTHONPATH=<checkout>) for an
A/B by CPU time.

    PYTHONPATH=<checkout> python bench/pw_passes_cpu.py pw_14,rpn_cls1x1
"""
import sys, time, os
import numpy as np, torch, convkit
from convkit.benchmark.cases import CASES
threads = int(os.environ.get("T", "1"))
convkit.set_num_threads(threads); torch.set_num_threads(threads)
cases = {c.name: c for c in CASES}
def cpu(f, calls=7):
    f(); best = 1e9
    for _ in range(calls):
        t = time.process_time(); f(); best = min(best, time.process_time() - t)
    return best
for name in sys.argv[1].split(","):
    c = cases[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((c.N, c.C, c.H, c.W)).astype(np.float32)
    w = (rng.standard_normal((c.F, c.C // c.groups, c.K, c.K)) * 0.05).astype(np.float32)
    b = np.zeros(c.F, np.float32)
    y = convkit.conv2d_forward(x, w, b)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    fl = 2 * y.size * c.C * c.K * c.K
    xt = torch.from_numpy(x).requires_grad_(); wt = torch.from_numpy(w).requires_grad_()
    gyt = torch.from_numpy(gy)
    r = {}
    r["fwd"] = (cpu(lambda: convkit.conv2d_forward(x, w, b)),
                cpu(lambda: torch.nn.functional.conv2d(xt.detach(), wt.detach())))
    r["gw"] = (cpu(lambda: convkit.conv2d_backward(gy, x, w, needs_input_grad=False, has_bias=False)),
               cpu(lambda: torch.ops.aten.convolution_backward(gyt, xt.detach(), wt.detach(), None, [1,1],[0,0],[1,1],False,[0,0],1,[False,True,False])))
    r["gx+gw"] = (cpu(lambda: convkit.conv2d_backward(gy, x, w, has_bias=False)),
               cpu(lambda: torch.ops.aten.convolution_backward(gyt, xt.detach(), wt.detach(), None, [1,1],[0,0],[1,1],False,[0,0],1,[True,True,False])))
    for k, (a, t) in r.items():
        mult = 2 if k == "gx+gw" else 1
        print(f"{name} {k}: convkit {a*1e3:.2f} ms ({mult*fl/a/1e9:.0f} GF/s)  torch {t*1e3:.2f} ms ({mult*fl/t/1e9:.0f})  torch/ck {t/a:.2f}")
