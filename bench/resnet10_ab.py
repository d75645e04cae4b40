"""SmallResNet training steps on the digits, one thread, CPU time: this checkout's plans against
the same code with one plan rule switched off, alternately in one process (interleaved A/B:
process CPU time, fairly robust to load on cores without SMT siblings).

    python bench/resnet10_ab.py weight_winotiny --batch-size 64 128 --steps 20 --rounds 7

The rule named is switched off by making conv_plan's planner for it answer None (the plans are
cached per shape, so the cache is cleared at each switch); printed: the median and least ms per
step of each side over the rounds, and B / A (B: the rule off, A: on; > 1: the rule saves time).
Rules: weight_winotiny (conv_plan.plan_weight_winotiny).
"""
import argparse
import statistics
import time

import numpy as np

import convkit
import convkit.nn as nn
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P
from convkit.data import digits
from convkit.models import build_classifier

RULES = {"weight_winotiny": "plan_weight_winotiny"}

ap = argparse.ArgumentParser()
ap.add_argument("rule", choices=sorted(RULES))
ap.add_argument("--batch-size", type=int, nargs="+", default=[64, 128])
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--rounds", type=int, default=7)
a = ap.parse_args()

convkit.set_num_threads(1)
orig = getattr(P, RULES[a.rule])


def switch(on):
    setattr(P, RULES[a.rule], orig if on else (lambda *args, **kw: None))
    cc._plans.clear()


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
                t0 = time.process_time()
                steps(a.steps)
                t[on].append((time.process_time() - t0) / a.steps * 1e3)
        switch(True)
        ma, mb = statistics.median(t[True]), statistics.median(t[False])
        print(f"batch {bs}: A (rule on) median {ma:.3f} min {min(t[True]):.3f} ms/step, "
              f"B (off) median {mb:.3f} min {min(t[False]):.3f}, B/A {mb / ma:.3f}", flush=True)
