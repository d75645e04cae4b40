"""CPU time per training step (one thread, process CPU time: less distorted by other processes
than wall time) of a classifier on the digits, batch 64 -- for A/B between checkouts on a busy
machine, run alternately:

    python bench/train_step_cpu.py resnet [steps]
    PYTHONPATH=<other checkout> python bench/train_step_cpu.py resnet [steps]

Prints the median and the lowest of 5 blocks of ``steps`` steps, in ms per step.
"""
import statistics
import sys
import time

import numpy as np

import convkit
import convkit.nn as nn
from convkit.data import digits
from convkit.models import build_classifier

convkit.set_num_threads(1)
name = sys.argv[1] if len(sys.argv) > 1 else "resnet"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
d = digits(seed=0)
rng = np.random.default_rng(0)
idx = [rng.choice(len(d.y_train), 64) for _ in range(8)]
xs = [np.ascontiguousarray(d.x_train[i]) for i in idx]
ys = [d.y_train[i] for i in idx]
with convkit.use_backend("cpu"):
    model = build_classifier(name, dtype=np.float32, seed=0)
    opt = nn.SGD(model, lr=0.01, momentum=0.9)

    def run(k):
        for s in range(k):
            j = s % 8
            _, g = nn.softmax_cross_entropy(model.forward(xs[j]), ys[j])
            model.zero_grad()
            model.backward(g)
            opt.step()

    run(10)
    per = []
    for _ in range(5):
        t0 = time.process_time()
        run(steps)
        per.append((time.process_time() - t0) / steps * 1e3)
print(f"{convkit.__file__}: {name} ms/step CPU median {statistics.median(per):.3f} "
      f"min {min(per):.3f}")
