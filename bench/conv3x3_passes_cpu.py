"""Per-pass one-thread CPU time (time.process_time, best of 3 calls, median over rounds) of the
suite's 3x3 layers, convkit cpu against torch (1 thread each): forward, grad_x alone, grad_weight
alone (+ grad_bias); torch_ms / convkit_ms (> 1: convkit faster).  A CPU-time companion of
bench/conv3x3_passes.py for loaded hosts.

    [CONVKIT_DISABLE_AVX512=1] python bench/conv3x3_passes_cpu.py res_14[,res_28] [rounds]
"""
import sys, time, statistics, ctypes, numpy as np, torch, convkit
m = ctypes.CDLL(None).mallopt; m.argtypes = (ctypes.c_int, ctypes.c_int); m(-3, 32 << 20); m(-1, 64 << 20)
from convkit.benchmark.cases import CASES
from convkit.cpu import conv as cc
layers = sys.argv[1].split(","); rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
convkit.set_num_threads(1); torch.set_num_threads(1)
cases = {c.name: c for c in CASES}
def cpu(f, calls=3):
    f(); best = 1e9
    for _ in range(calls):
        t = time.process_time(); f(); best = min(best, time.process_time() - t)
    return best
for name in layers:
    c = cases[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((c.N, c.C, c.H, c.W)).astype(np.float32)
    w = (rng.standard_normal((c.F, c.C, 3, 3)) * 0.05).astype(np.float32)
    b = np.zeros(c.F, np.float32); s, p = c.stride, c.pad
    y = convkit.conv2d_forward(x, w, b, stride=s, padding=p)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    xt, wt, gyt, bt = map(torch.from_numpy, (x, w, gy, b))
    run = {"fwd": (lambda: convkit.conv2d_forward(x, w, b, stride=s, padding=p), lambda: torch.nn.functional.conv2d(xt, wt, bt, stride=s, padding=p)),
           "gx": (lambda: cc.conv2d_grad_input(gy, w, x.shape, (s, s), (p, p, p, p), (1, 1), 1), lambda: torch.nn.grad.conv2d_input(xt.shape, wt, gyt, stride=s, padding=p)),
           "gw": (lambda: convkit.conv2d_backward(gy, x, w, stride=s, padding=p, needs_input_grad=False, has_bias=True), lambda: torch.nn.grad.conv2d_weight(xt, wt.shape, gyt, stride=s, padding=p))}
    res = {q: ([], []) for q in run}
    with torch.no_grad():
        for _ in range(rounds):
            for q in run:
                res[q][0].append(cpu(run[q][0])); res[q][1].append(cpu(run[q][1]))
    for q in run:
        k, t = statistics.median(res[q][0]), statistics.median(res[q][1])
        print(f"{name:8s} {q:4s} convkit {k*1e3:7.2f} ms  torch {t*1e3:7.2f} ms  t/c {t/k:.2f}", flush=True)
