"""stem_224 as the bench runs it (first layer: conv2d_forward, then conv2d_backward with
needs_input_grad=False, has_bias=True) in two checkouts, interleaved by rounds, and torch beside
them: CPU time of one thread (a loaded machine's wall clock is not a measure), least of --calls
calls per round, median over rounds (--context bench: each call after torch's forward+backward
on the same grad_y, as the suite runs them; the median of the calls).

    python bench/stem_cpu_ab.py --a /path/A --b /path/B [--rounds 5] [--calls 5] [--threads 1]
        [--context warm|bench]

Each round runs a subprocess per checkout (PYTHONPATH the checkout) that times forward,
backward and torch's forward / forward+backward (torch.autograd.grad wrt weight and bias).
On more than one thread the process CPU time counts the team's spinning too.
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
calls, threads = int(sys.argv[1]), int(sys.argv[2])
convkit.set_num_threads(threads); torch.set_num_threads(threads)
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 3, 224, 224)).astype(np.float32)
w = (rng.standard_normal((64, 3, 7, 7)) / np.sqrt(147)).astype(np.float32)
b = rng.standard_normal(64).astype(np.float32)
gy = rng.standard_normal((8, 64, 112, 112)).astype(np.float32)
y = np.empty_like(gy)
tx, tw, tb, tg = (torch.from_numpy(a) for a in (x, w, b, gy))
tw.requires_grad_(True); tb.requires_grad_(True)
F = torch.nn.functional
def fwd(): convkit.conv2d_forward(x, w, b, 2, 3, out=y)
def bwd(): convkit.conv2d_backward(gy, x, w, 2, 3, needs_input_grad=False, has_bias=True)
def tfwd():
    with torch.no_grad(): F.conv2d(tx, tw, tb, 2, 3)
def tfb(): torch.autograd.grad(F.conv2d(tx, tw, tb, 2, 3), [tw, tb], tg)
out = {}
if sys.argv[3] == "bench":
    # the bench's order: convkit's forward then backward, then torch's forward+backward (which
    # reads the same grad_y and x) -- each pass finds the caches as the suite leaves them
    ts = {"fwd": [], "bwd": [], "torch_fb": []}
    for i in range(calls + 1):
        for name, f in (("fwd", fwd), ("bwd", bwd), ("torch_fb", tfb)):
            t = time.process_time(); f(); t = time.process_time() - t
            if i:
                ts[name].append(t)
    import statistics
    out = {k: statistics.median(v) * 1e3 for k, v in ts.items()}
    best = float("inf")
    for _ in range(calls):
        t = time.process_time(); tfwd(); best = min(best, time.process_time() - t)
    out["torch_fwd"] = best * 1e3
else:
    for name, f in (("fwd", fwd), ("bwd", bwd), ("torch_fwd", tfwd), ("torch_fb", tfb)):
        f()
        best = float("inf")
        for _ in range(calls):
            t = time.process_time(); f(); best = min(best, time.process_time() - t)
        out[name] = best * 1e3
print(json.dumps(out))
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--context", choices=("warm", "bench"), default="warm",
                    help="warm: least of --calls back-to-back calls per pass; bench: median of "
                         "--calls rounds of forward, backward, torch's forward+backward")
    args = ap.parse_args()
    res = {"A": [], "B": []}
    for _ in range(args.rounds):
        for k, path in (("A", args.a), ("B", args.b)):
            env = dict(os.environ, PYTHONPATH=os.path.abspath(path), PYTHONDONTWRITEBYTECODE="1")
            r = subprocess.run([sys.executable, "-c", _CHILD, str(args.calls), str(args.threads),
                                args.context],
                               env=env, capture_output=True, text=True, check=True, cwd="/tmp")
            res[k].append(json.loads(r.stdout.strip().splitlines()[-1]))
    med = {k: {n: statistics.median(r[n] for r in v) for n in v[0]} for k, v in res.items()}
    for n in ("fwd", "bwd", "torch_fwd", "torch_fb"):
        print(f"{n:10s} A {med['A'][n]:7.2f} ms  B {med['B'][n]:7.2f} ms  A/B "
              f"{med['A'][n] / med['B'][n]:.3f}   A {' '.join(f'{r[n]:.1f}' for r in res['A'])}"
              f" | B {' '.join(f'{r[n]:.1f}' for r in res['B'])}")
    for k in ("A", "B"):
        m = med[k]
        print(f"{k}: fwd+bwd {m['fwd'] + m['bwd']:.2f} ms; torch/convkit (one-thread CPU time) "
              f"fwd {m['torch_fwd'] / m['fwd']:.2f}, fwd+bwd {m['torch_fb'] / (m['fwd'] + m['bwd']):.2f}")


if __name__ == "__main__":
    main()
