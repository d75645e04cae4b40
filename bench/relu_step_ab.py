"""SmallResNet training steps on the digits: the cpu backend's fused ReLU passes
(CpuBackend._relu_forward / _relu_backward, csrc/relu.h) against the Backend defaults (numpy),
alternately in one process (interleaved A/B).  --threads 1: process CPU time (fairly robust to
load on cores without SMT siblings); --threads 2: wall time (noise under load).

    python bench/relu_step_ab.py --batch-size 64 128 --steps 20 --rounds 7 [--threads 1]

Printed: median and least ms per step of each side over the rounds, and B / A (B: the numpy
defaults, A: fused; > 1: the fused passes save time).
"""
import argparse
import statistics
import time

import numpy as np

import convkit
import convkit.nn as nn
from convkit.backend import Backend
from convkit.cpu.backend import CpuBackend
from convkit.data import digits
from convkit.models import build_classifier

ap = argparse.ArgumentParser()
ap.add_argument("--batch-size", type=int, nargs="+", default=[64, 128])
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--rounds", type=int, default=7)
ap.add_argument("--threads", type=int, default=1)
a = ap.parse_args()

convkit.set_num_threads(a.threads)
clock = time.process_time if a.threads == 1 else time.perf_counter
fused = (CpuBackend._relu_forward, CpuBackend._relu_backward)


def switch(on):
    CpuBackend._relu_forward = fused[0] if on else Backend._relu_forward
    CpuBackend._relu_backward = fused[1] if on else Backend._relu_backward


d = digits(seed=0)
rng = np.random.default_rng(0)
with convkit.use_backend("cpu"):
    for bs in a.batch_size:
        idx = [rng.choice(len(d.y_train), bs) for _ in range(8)]
        xs = [np.ascontiguousarray(d.x_train[i]) for i in idx]
        ys = [d.y_train[i] for i in idx]
        model = build_classifier("resnet", dtype=np.float32, seed=0)
        opt = nn.SGD(model, lr=0.01, momentum=0.9)

        def steps(k):
            for s in range(k):
                j = s % 8
                _, g = nn.softmax_cross_entropy(model.forward(xs[j]), ys[j])
                model.zero_grad()
                model.backward(g)
                opt.step()

        t = {True: [], False: []}
        for on in (True, False):
            switch(on)
            steps(5)
        for r in range(a.rounds):
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                switch(on)
                steps(2)
                t0 = clock()
                steps(a.steps)
                t[on].append((clock() - t0) / a.steps * 1e3)
        switch(True)
        ma, mb = statistics.median(t[True]), statistics.median(t[False])
        print(f"batch {bs}, {a.threads} threads: A (fused) median {ma:.3f} min {min(t[True]):.3f}"
              f" ms/step, B (numpy) median {mb:.3f} min {min(t[False]):.3f}, B/A {mb / ma:.3f}",
              flush=True)
