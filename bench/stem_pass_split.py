"""stem_224 per pass on the cpu backend, and what the boundary adds: conv2d_forward against its
kernel alone (conv._FORWARD[algo]), conv2d_backward (first layer: needs_input_grad=False, with
grad_bias) against its weight kernel alone (_bwd_weight_stem_wino), the finite check of w and x,
and torch's forward / forward+backward; interleaved rounds, median.

    python bench/stem_pass_split.py [THREADS=1] [ROUNDS=7]

One thread: process CPU time; more: wall time (a loaded machine's wall clock is not a measure).
Needs a machine where the plan picks stem_wino / weight_stem_wino.
"""
import statistics
import sys
import time

import numpy as np, torch
import convkit
from convkit.cpu import conv as cc
th = int(sys.argv[1]) if len(sys.argv) > 1 else 1
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
convkit.set_num_threads(th); torch.set_num_threads(th)
rng = np.random.default_rng(0)
x = rng.standard_normal((8,3,224,224)).astype(np.float32)
w = (rng.standard_normal((64,3,7,7))/np.sqrt(147)).astype(np.float32)
b = rng.standard_normal(64).astype(np.float32)
gy = rng.standard_normal((8,64,112,112)).astype(np.float32)
y = np.empty_like(gy)
tx, tw, tb, tg = (torch.from_numpy(a) for a in (x, w, b, gy))
tw.requires_grad_(True); tb.requires_grad_(True)
import torch.nn.functional as tF
geo = ((2,2),(3,3,3,3),(1,1),1)
s, Ho, Wo, plan = cc._plan(x, w, *geo, needs_input_grad=False)
print(plan.forward.algo, plan.grad_weight.algo, plan.grad_bias, plan.forward.threads, plan.grad_weight.threads)
def t_fwd():
    with torch.no_grad(): tF.conv2d(tx, tw, tb, 2, 3)
def t_fb():
    torch.autograd.grad(tF.conv2d(tx, tw, tb, 2, 3), [tw, tb], tg)
def c_fwd(): convkit.conv2d_forward(x, w, b, 2, 3, out=y)
def c_bwd(): convkit.conv2d_backward(gy, x, w, 2, 3, needs_input_grad=False, has_bias=True)
gw = np.empty_like(w); gb = np.empty(64, np.float32); gx = np.empty((1,1,1,1), np.float32)
def c_wk(): cc._bwd_weight_stem_wino(gy, x, w, gx, gw, gb, s, plan.grad_weight, False, True)
def c_fin_x(): cc._finite(w, x)
def c_isf(): np.isfinite(gw).all() and np.isfinite(gb).all()
def c_fk():
    cc._FORWARD[plan.forward.algo](x, w, b, True, y, s, plan.forward)
fns = dict(t_fwd=t_fwd, t_fb=t_fb, c_fwd=c_fwd, c_bwd=c_bwd, c_fwdkernel=c_fk, c_wkernel=c_wk, fin_wx=c_fin_x)
for f in fns.values(): f()
res = {k: [] for k in fns}
clock = time.process_time if th == 1 else time.perf_counter
for r in range(rounds):
    for k, f in fns.items():
        t0 = clock(); f(); res[k].append((clock()-t0)*1e3)
med = {k: statistics.median(v) for k, v in res.items()}
for k, v in res.items():
    print(f"{k:12s} median {med[k]:7.2f} ms  " + " ".join(f"{a:.2f}" for a in sorted(v)))
print(f"fwd ratio torch/ck {med['t_fwd']/med['c_fwd']:.2f}; fb ratio {med['t_fb']/(med['c_fwd']+med['c_bwd']):.2f}; torch bwd ~{med['t_fb']-med['t_fwd']:.2f}")
