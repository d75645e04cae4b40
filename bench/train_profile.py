"""Where a training step's time goes, convkit vs torch, per layer and per phase, in CPU time.

Both sides train the same model (bench_train.py's torch mirror, same weights, same batches) in one
process, interleaved step by step.  Each leaf layer's forward and backward is timed with the
calling thread's CPU time (``time.thread_time``; with ``--threads 1`` all the work runs on that
thread, so time spent waiting for a core under load is not counted), and so are the step's
phases: forward, loss, zero_grad, backward, optimiser step.  convkit layers are timed by
wrapping each leaf module's forward/backward; torch layers by forward (pre-)hooks and full
backward (pre-)hooks on the same leaves (the names match: the mirror has convkit's state dict
keys).  Medians over the timed steps; ``ratio`` is torch time / convkit time (> 1: convkit
faster).  Minor page faults per step (getrusage) are counted for each side.

    python bench/train_profile.py --models lenet5 resnet --batch-size 64 128 --steps 40

What it cannot see: the hooks' own cost (torch's full backward hooks add autograd nodes, so the
torch side's total is a little higher than in bench_train.py), and time a leaf's backward spends
in autograd between hooks (torch's "+" of the residual blocks, the loss's backward) shows in
``(rest)``.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import warnings
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import torch_mirror  # noqa: E402

clock = time.thread_time


def _faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _leaves_ck(model):
    return [(n, m) for n, m in model.named_modules() if not list(m.children()) and n]


def _wrap_ck(name, m, acc):
    fwd, bwd = m.forward, m.backward

    def forward(x):
        t = clock()
        y = fwd(x)
        acc[name, "fwd"].append(clock() - t)
        return y

    def backward(g):
        t = clock()
        y = bwd(g)
        acc[name, "bwd"].append(clock() - t)
        return y

    m.forward, m.backward = forward, backward


def _hook_torch(name, m, acc):
    t0 = {}

    def fpre(mod, inp):
        t0["f"] = clock()

    def fpost(mod, inp, out):
        acc[name, "fwd"].append(clock() - t0["f"])

    def bpre(mod, gout):
        t0["b"] = clock()

    def bpost(mod, gin, gout):
        acc[name, "bwd"].append(clock() - t0["b"])

    m.register_forward_pre_hook(fpre)
    m.register_forward_hook(fpost)
    m.register_full_backward_pre_hook(bpre)
    m.register_full_backward_hook(bpost)


_PHASES = ("forward", "loss", "zero_grad", "backward", "opt step")


def _phases(acc, t):
    """Record a step's phase times from its clock readings t (one before each phase, one after
    the last)."""
    for k, ph in enumerate(_PHASES):
        acc["(phase)", ph].append(t[k + 1] - t[k])
    acc["(phase)", "step"].append(t[-1] - t[0])


def profile(name, batch, steps, torch, convkit):
    import convkit.nn as nn
    from convkit.data import digits
    from convkit.models import build_classifier

    d = digits(seed=0)
    rng = np.random.default_rng(0)
    idx = [rng.choice(len(d.y_train), batch, replace=len(d.y_train) < batch) for _ in range(8)]
    xs = [np.ascontiguousarray(d.x_train[i]) for i in idx]
    ys = [d.y_train[i] for i in idx]
    ck_acc, th_acc = defaultdict(list), defaultdict(list)
    with convkit.use_backend("cpu"):
        model = build_classifier(name, dtype=np.float32, seed=0)
        opt = nn.SGD(model, lr=0.01, momentum=0.9)
        tmodel = torch_mirror(torch, name)
        tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()},
                               strict=False)
        topt = torch.optim.SGD(tmodel.parameters(), lr=0.01, momentum=0.9)
        lossf = torch.nn.functional.cross_entropy
        tx = [torch.from_numpy(x) for x in xs]
        ty = [torch.from_numpy(y) for y in ys]
        names = []
        for n, m in _leaves_ck(model):
            names.append((n, type(m).__name__))
            _wrap_ck(n, m, ck_acc)
        tleaves = dict(tmodel.named_modules())
        for n, _ in names:
            if n in tleaves:
                _hook_torch(n, tleaves[n], th_acc)

        def ck_step(j, acc):
            t = [clock()]
            out = model.forward(xs[j])
            t.append(clock())
            _, g = nn.softmax_cross_entropy(out, ys[j])
            t.append(clock())
            model.zero_grad()
            t.append(clock())
            model.backward(g)
            t.append(clock())
            opt.step()
            t.append(clock())
            _phases(acc, t)

        def th_step(j, acc):
            t = [clock()]
            out = tmodel(tx[j])
            t.append(clock())
            loss = lossf(out, ty[j])
            t.append(clock())
            topt.zero_grad()
            t.append(clock())
            loss.backward()
            t.append(clock())
            topt.step()
            t.append(clock())
            _phases(acc, t)

        for j in range(5):      # warm-up, then drop what it recorded
            ck_step(j % 8, ck_acc)
            th_step(j % 8, th_acc)
        ck_acc.clear()
        th_acc.clear()
        flt = {"ck": 0, "th": 0}
        for s in range(steps):
            for side in (("ck", "th") if s % 2 == 0 else ("th", "ck")):
                f0 = _faults()
                (ck_step if side == "ck" else th_step)(s % 8, ck_acc if side == "ck" else th_acc)
                flt[side] += _faults() - f0
    med = lambda v: statistics.median(v) * 1e6 if v else float("nan")  # noqa: E731
    print(f"\n## {name}, batch {batch}: median thread CPU us per step ({steps} steps), "
          f"minor faults/step convkit {flt['ck'] / steps:.1f}, torch {flt['th'] / steps:.1f}")
    print("| layer | kind | pass | convkit us | torch us | torch/convkit | convkit - torch |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    sums = {"ck": 0.0, "th": 0.0}
    rows = []
    for n, kind in names:
        for ps in ("fwd", "bwd"):
            c, t = med(ck_acc.get((n, ps), [])), med(th_acc.get((n, ps), []))
            if np.isnan(c):
                continue
            sums["ck"] += c
            sums["th"] += 0.0 if np.isnan(t) else t
            rows.append((n, kind, ps, c, t))
    for n, kind, ps, c, t in rows:
        print(f"| {n} | {kind} | {ps} | {c:.1f} | {t:.1f} | {t / c:.2f} | {c - t:+.1f} |")
    ck_step_t, th_step_t = med(ck_acc["(phase)", "step"]), med(th_acc["(phase)", "step"])
    print(f"| (leaves) | | | {sums['ck']:.1f} | {sums['th']:.1f} | {sums['th'] / sums['ck']:.2f} "
          f"| {sums['ck'] - sums['th']:+.1f} |")
    rest_c, rest_t = ck_step_t - sums["ck"], th_step_t - sums["th"]
    print(f"| (rest) | | | {rest_c:.1f} | {rest_t:.1f} | {rest_t / rest_c:.2f} | "
          f"{rest_c - rest_t:+.1f} |")
    for ph in _PHASES + ("step",):
        c, t = med(ck_acc["(phase)", ph]), med(th_acc["(phase)", ph])
        print(f"| ({ph}) | phase | | {c:.1f} | {t:.1f} | {t / c:.2f} | {c - t:+.1f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet5", "resnet"])
    p.add_argument("--batch-size", nargs="+", type=int, default=[64, 128])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import torch

    import convkit

    # (the first conv's input needs no gradient: its hook fires on the output's, as documented)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    torch.set_num_threads(args.threads)
    convkit.set_num_threads(args.threads)
    print(f"# convkit {convkit.__file__}, torch {torch.__version__}, {args.threads} threads, "
          f"load {os.getloadavg()[0]:.2f}")
    for name in args.models:
        for b in args.batch_size:
            profile(name, b, args.steps, torch, convkit)


if __name__ == "__main__":
    main()
