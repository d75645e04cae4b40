"""One-thread CPU time of the batch grad_weight (conv2d_backward without grad_x) under forced
(channel block, filter block) sizes, full-rate plans (cc._FULL_RATE, cc._WINOTINY off),
float32, tiny_16_8x8 (default) or tiny_32_4x4 (argument 32): the fit behind
tuning.BATCH_W_COPY_MACS / BATCH_W_MAX_EXTRA.  Variants interleaved, 15 rounds of 3 calls,
medians in ms; a loaded 2-core host: indicative.

    PYTHONPATH=$PWD CONVKIT_NUM_THREADS=1 python bench/batch_w_blocks_cpu.py [32]
"""
import sys
import time

import numpy as np

import convkit
from convkit.cpu import conv as cc
from convkit.cpu import conv_plan as P
cc._FULL_RATE, cc._WINOTINY = True, False
cc._caps_by_level.clear(); convkit.set_num_threads(1)
xs, ws = (64,16,8,8),(16,16,3,3)
if sys.argv[1:] and sys.argv[1]=='32': xs, ws = (64,32,4,4),(32,32,3,3)
rng=np.random.default_rng(0)
x=rng.standard_normal(xs).astype(np.float32); w=rng.standard_normal(ws).astype(np.float32)
gy=rng.standard_normal((xs[0],ws[0],xs[2],xs[3])).astype(np.float32)
Fg=ws[0]
variants={'old':(None,(16,Fg)),'imgs4':(4,(16,Fg)),'c3f16':(None,(3,Fg)),'c7f16':(None,(7,Fg)),'c4f8':(None,(4,8)),'c8f8':(None,(8,8)),'c16f8':(None,(16,8)),'c4f16':(None,(4,Fg)),'c8f16':(None,(8,Fg)),'c2f16':(None,(2,Fg))}
def use(v):
    im,(c,f)=variants[v]
    P.batch_even_images=lambda N,imgs,HoWo,nt: imgs if im is None else im
    P.batch_weight_blocks=lambda *a: (c,f)
    cc._plans.clear()
T={v:[] for v in variants}
with convkit.use_backend("cpu"):
  for r in range(16):
    for v in variants:
        use(v)
        cc._plan(x,w,(1,1),(1,)*4,(1,1),1)
        t0=time.process_time()
        for _ in range(3):
            convkit.conv2d_backward(gy,x,w,stride=1,padding=1,has_bias=True,needs_input_grad=False)
        if r: T[v].append((time.process_time()-t0)/3)
for v in variants: print(v, round(np.median(T[v])*1e3,3))
