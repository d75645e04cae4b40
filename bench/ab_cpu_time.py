"""Interleaved A/B of two checkouts by CPU time (for decisions on a loaded machine, where wall
times follow the other processes): each round runs, for checkout A then B, a subprocess (cwd the
checkout, so its convkit is imported) that times the suite layers' forward and
forward+backward on ``--threads`` threads (default 1: process CPU time then counts no
spinning team), and torch's the same way, minimum of ``--calls`` calls after a warm-up.
Prints per layer and pass the median over rounds of convkit's CPU ms for A and B, B/A, and
torch_cpu_ms / convkit_cpu_ms for each.

    python bench/ab_cpu_time.py --a /path/A --b /path/B [--layers vgg_56,res_28,res_14,rpn_3x3]
        [--rounds 3] [--calls 3] [--threads 1]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = r'''
import json, sys, time
import numpy as np, torch
import convkit
from convkit.benchmark.cases import CASES
layers, calls, threads = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
convkit.set_num_threads(threads)
torch.set_num_threads(threads)
cases = {c.name: c for c in CASES}
def cpu(f):
    f()
    best = float("inf")
    for _ in range(calls):
        t = time.process_time()
        f()
        best = min(best, time.process_time() - t)
    return best
out = {}
for name in layers:
    c = cases[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((c.N, c.C, c.H, c.W)).astype(np.float32)
    w = (rng.standard_normal((c.F, c.C // c.groups, c.K, c.K)) * 0.05).astype(np.float32)
    b = np.zeros(c.F, np.float32)
    s, p = c.stride, c.pad
    y = convkit.conv2d_forward(x, w, b, stride=s, padding=p)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    def fwd():
        convkit.conv2d_forward(x, w, b, stride=s, padding=p)
    def fb():
        convkit.conv2d_forward(x, w, b, stride=s, padding=p)
        convkit.conv2d_backward(gy, x, w, stride=s, padding=p, has_bias=True)
    xt = torch.from_numpy(x).requires_grad_()
    wt = torch.from_numpy(w).requires_grad_()
    bt = torch.from_numpy(b).requires_grad_()
    gyt = torch.from_numpy(gy)
    def tfwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, wt, bt, stride=s, padding=p)
    def tfb():
        torch.nn.functional.conv2d(xt, wt, bt, stride=s, padding=p).backward(gyt)
    out[name] = {"forward": [cpu(fwd), cpu(tfwd)], "forward+backward": [cpu(fb), cpu(tfb)]}
print(json.dumps(out))
'''


def _python(checkout):
    venv = os.path.join(checkout, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def _run(checkout, a):
    r = subprocess.run([_python(checkout), "-c", _CHILD, a.layers, str(a.calls), str(a.threads)],
                       cwd=checkout, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--layers", default="vgg_56,res_28,res_14,rpn_3x3")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    runs = {"A": [], "B": []}
    for r in range(a.rounds):
        for side in ("A", "B"):
            runs[side].append(_run(a.a if side == "A" else a.b, a))
            with open("/proc/loadavg") as f:
                print(f"round {r} {side} done, load {f.read().split()[0]}", flush=True)
    print(f"{'row':26s} {'A ms':>8s} {'B ms':>8s} {'B/A':>6s} {'torch/A':>8s} {'torch/B':>8s}")
    for name in a.layers.split(","):
        for q in ("forward", "forward+backward"):
            med = {s: statistics.median(x[name][q][0] for x in runs[s]) for s in runs}
            tr = {s: statistics.median(x[name][q][1] / x[name][q][0] for x in runs[s])
                  for s in runs}
            print(f"{name + ' ' + q:26s} {med['A'] * 1e3:8.1f} {med['B'] * 1e3:8.1f} "
                  f"{med['B'] / med['A']:6.3f} {tr['A']:8.2f} {tr['B']:8.2f}")


if __name__ == "__main__":
    main()
