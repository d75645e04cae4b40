"""SmallResNet training steps with the boundary memo of batch norm and avg_pool2d switched on
and off in one process (interleaved blocks, process CPU time, one thread by default): what the
remembered checks save per step.  "off" makes their lookups miss (the full checks run, as
before the memo; conv and max-pool keep theirs).

    python bench/train_memo_ab.py --batch-size 64 128 --rounds 9 --steps 20
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

ap = argparse.ArgumentParser()
ap.add_argument("--batch-size", type=int, nargs="+", default=[64, 128])
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--rounds", type=int, default=9)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--model", default="resnet")
a = ap.parse_args()
os.environ["CONVKIT_NUM_THREADS"] = str(a.threads)

import numpy as np  # noqa: E402

import convkit  # noqa: E402
import convkit.nn as nn  # noqa: E402
from convkit import functional as F  # noqa: E402
from convkit.data import digits  # noqa: E402
from convkit.models import build_classifier  # noqa: E402

convkit.set_num_threads(a.threads)
_get = F._memo_get
NEW = ("batch_norm_forward", "batch_norm_backward", "avg_pool2d_forward", "avg_pool2d_backward")


def _off(key):
    return None if key is not None and key[0] in NEW else _get(key)


clock = time.process_time if a.threads == 1 else time.perf_counter
d = digits(seed=0)
rng = np.random.default_rng(0)
print(f"# {a.model}, {a.threads} thread(s), {'process CPU' if a.threads == 1 else 'wall'} ms "
      f"per step, medians of {a.rounds} interleaved blocks of {a.steps}; load "
      f"{os.getloadavg()[0]:.2f}")
for B in a.batch_size:
    idx = [rng.choice(len(d.y_train), B) for _ in range(8)]
    xs = [np.ascontiguousarray(d.x_train[i]) for i in idx]
    ys = [d.y_train[i] for i in idx]
    with convkit.use_backend("cpu"):
        model = build_classifier(a.model, dtype=np.float32, seed=0)
        opt = nn.SGD(model, lr=0.01, momentum=0.9)

        def run(k):
            for s in range(k):
                j = s % 8
                _, g = nn.softmax_cross_entropy(model.forward(xs[j]), ys[j])
                model.zero_grad()
                model.backward(g)
                opt.step()
        run(10)
        res = {"on": [], "off": []}
        for r in range(a.rounds):
            for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
                F._memo_get = _get if mode == "on" else _off
                t = clock()
                run(a.steps)
                res[mode].append((clock() - t) / a.steps * 1e3)
        F._memo_get = _get
    on, off = statistics.median(res["on"]), statistics.median(res["off"])
    print(f"batch {B}: on {on:.3f} off {off:.3f} ms, on/off {on / off:.3f} (saved "
          f"{(off - on) * 1e3:.0f} us); least on {min(res['on']):.3f} off {min(res['off']):.3f}")
