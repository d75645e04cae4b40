"""LeNet5 training steps on the digits (batch 64, cpu backend, one thread), for instruction counts
under callgrind: instrumentation starts after 20 warm-up steps, so imports and first calls are
not counted.  Compare two checkouts by Ir per step (PROGRAM TOTALS / steps; instrumentation stops before the
interpreter's exit):

    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=cg.out \\
        python bench/lenet_steps.py 200          # (second argument: another classifier, e.g. resnet)
    PYTHONPATH=<other checkout> valgrind ... python bench/lenet_steps.py 200
    callgrind_annotate cg.out | head -25

`python bench/lenet_steps.py 20 resnet cputime` prints CPU time per step instead (one thread).

Instruction counts do not move with the host's load, so this A/B works on a busy machine where
bench_train.py's wall-clock ratios cannot.
"""
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import convkit
import convkit.nn as nn
from convkit.data import digits
from convkit.models import build_classifier

convkit.set_num_threads(1)
d = digits(seed=0)
rng = np.random.default_rng(0)
idx = [rng.choice(len(d.y_train), 64) for _ in range(8)]
xs = [np.ascontiguousarray(d.x_train[i]) for i in idx]
ys = [d.y_train[i] for i in idx]
with convkit.use_backend("cpu"):
    model = build_classifier(sys.argv[2] if len(sys.argv) > 2 else "lenet5", dtype=np.float32,
                             seed=0)
    opt = nn.SGD(model, lr=0.01, momentum=0.9)

    def steps(k):
        for s in range(k):
            j = s % 8
            _, g = nn.softmax_cross_entropy(model.forward(xs[j]), ys[j])
            model.zero_grad()
            model.backward(g)
            opt.step()

    steps(20)
    if len(sys.argv) > 3 and sys.argv[3] == "cputime":
        # outside callgrind: process CPU time per step, the median and the lowest of 5 blocks of
        # argv[1] steps (less distorted by other processes than wall time; A/B alternately)
        per = []
        for _ in range(5):
            t0 = time.process_time()
            steps(int(sys.argv[1]))
            per.append((time.process_time() - t0) / int(sys.argv[1]) * 1e3)
        print(f"{convkit.__file__}: ms/step CPU median {statistics.median(per):.3f} "
              f"min {min(per):.3f}")
        sys.exit(0)
    try:    # (outside callgrind this finds no process, or no callgrind_control, and does nothing)
        subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], capture_output=True)
    except OSError:
        pass
    steps(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
    try:    # (the interpreter's exit and its garbage collection are not counted)
        subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], capture_output=True)
    except OSError:
        pass
