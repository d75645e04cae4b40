"""Whole LeNet5 training steps on the digits, convkit (cpu backend) against its torch mirror in
one process, blocks of 10 steps interleaved (which side goes first alternates): least and median
microseconds per step and torch / convkit.  With one thread the clock is the calling thread's
CPU time (waiting for a core under load is not counted), with more the wall clock.

    python bench/lenet_step_cpu.py THREADS BATCH [ROUNDS]
    PYTHONPATH=<other checkout> python bench/lenet_step_cpu.py 1 64 15
"""
import sys, time, statistics, os
sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
import numpy as np, torch, convkit, convkit.nn as nn
from bench_train import torch_mirror
from convkit.data import digits
from convkit.models import build_classifier
thr = int(sys.argv[1]); B = int(sys.argv[2]); rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 15
torch.set_num_threads(thr); convkit.set_num_threads(thr)
clock = time.thread_time if thr == 1 else time.perf_counter
d = digits(seed=0); rng = np.random.default_rng(0)
idx = [rng.choice(len(d.y_train), B) for _ in range(8)]
xs = [np.ascontiguousarray(d.x_train[i]) for i in idx]; ys = [d.y_train[i] for i in idx]
with convkit.use_backend("cpu"):
    model = build_classifier("lenet5", dtype=np.float32, seed=0)
    opt = nn.SGD(model, lr=0.01, momentum=0.9)
    tm = torch_mirror(torch, "lenet5"); tm.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
    tx = [torch.from_numpy(x) for x in xs]; ty = [torch.from_numpy(y) for y in ys]
    def ck(k):
        for s in range(k):
            j = s % 8
            _, g = nn.softmax_cross_entropy(model.forward(xs[j]), ys[j]); model.zero_grad(); model.backward(g); opt.step()
    def th(k):
        for s in range(k):
            j = s % 8
            loss = torch.nn.functional.cross_entropy(tm(tx[j]), ty[j]); topt.zero_grad(); loss.backward(); topt.step()
    ck(10); th(10)
    a, b = [], []
    for r in range(rounds):
        for f, acc in ((ck, a), (th, b)) if r % 2 == 0 else ((th, b), (ck, a)):
            t = clock(); f(10); acc.append((clock() - t) / 10 * 1e6)
    print(f"{convkit.__file__} thr {thr} B {B}: convkit us min {min(a):.0f} med {statistics.median(a):.0f}; torch min {min(b):.0f} med {statistics.median(b):.0f}; ratio min {min(b)/min(a):.2f} med {statistics.median(b)/statistics.median(a):.2f}  load {os.getloadavg()[0]:.1f}")
