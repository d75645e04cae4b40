"""Training throughput (images/s) of LeNet5 and the small ResNet: convkit vs the same model in
torch (CPU), interleaved in one process, medians.

One training step = forward, softmax cross-entropy, backward, SGD-momentum update, on a batch of
real digits (8x8, float32).  Both sides start from the same weights and see the same batches.
Rounds alternate which side goes first; each round times ``--steps`` steps per side; the ratio
is convkit images/s over torch images/s (> 1: convkit is faster).

    python bench/bench_train.py --backend cpu --batch-size 64 128 --rounds 15
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np


def torch_mirror(torch, name, widths=(16, 32, 64)):
    """The torch twin of convkit.models.LeNet5 / SmallResNet (same state dict keys)."""
    tnn = torch.nn
    if name == "lenet5":
        return tnn.Sequential(
            tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(6, 16, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
            tnn.Linear(64, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(), tnn.Linear(84, 10))

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.relu1 = tnn.ReLU()
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.shortcut = (tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                            tnn.BatchNorm2d(cout))
                             if stride != 1 or cin != cout else tnn.Sequential())
            self.relu2 = tnn.ReLU()

        def forward(self, x):
            h = self.relu1(self.bn1(self.conv1(x)))
            return self.relu2(self.bn2(self.conv2(h)) + self.shortcut(x))

    layers = [tnn.Conv2d(1, widths[0], 3, padding=1, bias=False), tnn.BatchNorm2d(widths[0]),
              tnn.ReLU()]
    cin = widths[0]
    for i, w in enumerate(widths):
        layers.append(Block(cin, w, 1 if i == 0 else 2))
        cin = w
    layers += [tnn.AvgPool2d(2), tnn.Flatten(), tnn.Linear(cin, 10)]
    return tnn.Sequential(*layers)


def bench_model(name, batch, backend, rounds, steps, torch, convkit):
    import convkit.nn as nn
    from convkit.data import digits
    from convkit.models import build_classifier

    d = digits(seed=0)
    rng = np.random.default_rng(0)
    n_batches = 8
    idx = [rng.choice(len(d.y_train), batch, replace=len(d.y_train) < batch)
           for _ in range(n_batches)]
    xs = [np.ascontiguousarray(d.x_train[i]) for i in idx]
    ys = [d.y_train[i] for i in idx]

    with convkit.use_backend(backend) as be:
        model = build_classifier(name, dtype=np.float32, seed=0)
        opt = nn.SGD(model, lr=0.01, momentum=0.9)
        cx = [be.asarray(x) for x in xs]
        cy = [be.asarray(y) for y in ys]

        def ck_steps(k, start):
            for s in range(k):
                j = (start + s) % n_batches
                _, g = nn.softmax_cross_entropy(model.forward(cx[j]), cy[j])
                model.zero_grad()
                model.backward(g)
                opt.step()
            be.synchronize()

        tmodel = torch_mirror(torch, name)
        tmodel.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()},
                               strict=False)
        topt = torch.optim.SGD(tmodel.parameters(), lr=0.01, momentum=0.9)
        tx = [torch.from_numpy(x) for x in xs]
        ty = [torch.from_numpy(y) for y in ys]
        lossf = torch.nn.functional.cross_entropy

        def torch_steps(k, start):
            for s in range(k):
                j = (start + s) % n_batches
                loss = lossf(tmodel(tx[j]), ty[j])
                topt.zero_grad()
                loss.backward()
                topt.step()

        ck_steps(3, 0)      # warm-up, untimed
        torch_steps(3, 0)
        t_ck, t_torch = [], []
        for r in range(rounds):
            order = [(ck_steps, t_ck), (torch_steps, t_torch)]
            if r % 2:
                order.reverse()
            for fn, acc in order:
                t0 = time.perf_counter()
                fn(steps, r * steps)
                acc.append((time.perf_counter() - t0) / steps)
    ck = batch / statistics.median(t_ck)
    th = batch / statistics.median(t_torch)
    return ck, th


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="cpu")
    p.add_argument("--models", nargs="+", default=["lenet5", "resnet"])
    p.add_argument("--batch-size", nargs="+", type=int, default=[64, 128])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=5, help="steps per side per round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steady-allocator", action="store_true",
                   help="mallopt: keep freed memory in the process (both sides)")
    args = p.parse_args(argv)
    if args.steady_allocator:
        from convkit.benchmark.timing import set_mallopt

        print("# " + set_mallopt())
    import torch

    import convkit

    torch.set_num_threads(args.threads)
    convkit.set_num_threads(args.threads)
    print(f"# convkit {convkit.__version__} backend {args.backend}, torch {torch.__version__}, "
          f"{args.threads} threads, python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.2f}, allocator "
          f"{'steady (mallopt)' if args.steady_allocator else 'default'}")
    print(f"# {args.rounds} rounds x {args.steps} steps per side, interleaved; medians")
    print("| model | batch | convkit img/s | torch img/s | ratio (convkit/torch) |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.models:
        for b in args.batch_size:
            ck, th = bench_model(name, b, args.backend, args.rounds, args.steps, torch, convkit)
            print(f"| {name} | {b} | {ck:,.0f} | {th:,.0f} | {ck / th:.2f}x |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
