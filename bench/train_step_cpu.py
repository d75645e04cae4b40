"""SmallResNet (or LeNet5) training steps on the digits, process CPU time per step, two
checkouts alternately: a one-thread step's time is robust to other processes' load (the cores
have no SMT siblings), so it compares Python-side and kernel changes under load.

    python bench/train_step_cpu.py --a /work/main --b . --pairs 6 --batch-size 64 128

Each pair runs A then B (or B then A, alternating) in fresh processes with
CONVKIT_NUM_THREADS=1; each process times ``--rounds`` blocks of ``--steps`` steps after a
warm-up and reports the least and the median block (ms per step).  The summary gives, per
batch size, the medians over the pairs of A's and B's median blocks and B/A.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = r"""
import os, sys, time
import numpy as np
import convkit, convkit.nn as nn
from convkit.data import digits
from convkit.models import build_classifier
model_name, B, steps, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
d = digits(seed=0)
rng = np.random.default_rng(0)
idx = [rng.choice(len(d.y_train), B) for _ in range(8)]
xs = [np.ascontiguousarray(d.x_train[i]) for i in idx]
ys = [d.y_train[i] for i in idx]
with convkit.use_backend("cpu"):
    model = build_classifier(model_name, dtype=np.float32, seed=0)
    opt = nn.SGD(model, lr=0.01, momentum=0.9)
    def run(k):
        for s in range(k):
            j = s % 8
            _, g = nn.softmax_cross_entropy(model.forward(xs[j]), ys[j])
            model.zero_grad()
            model.backward(g)
            opt.step()
    run(10)
    r = []
    for _ in range(rounds):
        t = time.process_time()
        run(steps)
        r.append((time.process_time() - t) / steps * 1e3)
print(min(r), statistics.median(r))
""".replace("import os, sys, time", "import os, sys, time, statistics")


def one(path, model, batch, steps, rounds):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(path), CONVKIT_NUM_THREADS="1",
               OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHILD, model, str(batch), str(steps),
                          str(rounds)], env=env, capture_output=True, text=True, check=True)
    lo, med = map(float, out.stdout.split())
    return lo, med


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", default=".")
    ap.add_argument("--model", default="resnet")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    print(f"# A={a.a} B={a.b} model={a.model} one thread, process CPU ms/step, load "
          f"{os.getloadavg()[0]:.2f}")
    for batch in a.batch_size:
        ra, rb = [], []
        for i in range(a.pairs):
            order = [("A", a.a, ra), ("B", a.b, rb)]
            if i % 2:
                order.reverse()
            for _, path, acc in order:
                acc.append(one(path, a.model, batch, a.steps, a.rounds))
        ma = statistics.median(m for _, m in ra)
        mb = statistics.median(m for _, m in rb)
        print(f"batch {batch}: A " + " ".join(f"{m:.3f}" for _, m in ra))
        print(f"batch {batch}: B " + " ".join(f"{m:.3f}" for _, m in rb))
        print(f"batch {batch}: median A {ma:.3f} B {mb:.3f} ms, B/A {mb / ma:.3f}; least A "
              f"{min(l for l, _ in ra):.3f} B {min(l for l, _ in rb):.3f}")
    print(f"# load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
