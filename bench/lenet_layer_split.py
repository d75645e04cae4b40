"""Per layer of a LeNet5 step (digits' shapes, batch B, one thread): least thread CPU us of
each layer's forward and forward+backward, of the convs' and pools' functional ops and the
convs' backend hooks below them, and of the loss, zero_grad and the SGD step.  Compare
checkouts alternately:

    python bench/lenet_layer_split.py 64
    PYTHONPATH=<other checkout> python bench/lenet_layer_split.py 64
"""
import sys, time, numpy as np, convkit, convkit.nn as nn
from convkit import functional as F
from convkit.models import build_classifier
B = int(sys.argv[1]) if len(sys.argv) > 1 else 64
convkit.set_num_threads(1)
clock = time.thread_time
def best(f, reps=50, rounds=7):
    f()
    out = []
    for _ in range(rounds):
        t = clock()
        for _ in range(reps): f()
        out.append((clock() - t) / reps * 1e6)
    return min(out)
rng = np.random.default_rng(0)
with convkit.use_backend("cpu") as be:
    m = build_classifier("lenet5", dtype=np.float32, seed=0)
    x = rng.standard_normal((B, 1, 8, 8)).astype(np.float32)
    acts = [x]
    for l in m._layers:
        acts.append(l.forward(acts[-1]))
    gys = [None] * len(acts)
    gys[-1] = rng.standard_normal(acts[-1].shape).astype(np.float32)
    for i in reversed(range(len(m._layers))):
        gys[i] = m._layers[i].backward(gys[i + 1])
    for i, l in enumerate(m._layers):
        xi, gi = acts[i], gys[i + 1]
        def fw(): 
            l.forward(xi); l._caches.clear()
        def bw():
            l.forward(xi); l.backward(gi)
        row = f"{i:2d} {type(l).__name__:9s} fwd {best(fw):7.1f} fwd+bwd {best(bw):7.1f}"
        if isinstance(l, nn.Conv2d):
            w, b = l.params["weight"], l.params["bias"]
            row += (f" | F.fwd {best(lambda: F.conv2d_forward(xi, w, b, 1, 2)):6.1f}"
                    f" hook {best(lambda: be._conv2d_forward(xi, w, b, (1,1), (2,2,2,2), (1,1), 1)):6.1f}"
                    f" | F.bwd {best(lambda: F.conv2d_backward(gi, xi, w, 1, 2, needs_input_grad=l.needs_input_grad)):6.1f}"
                    f" hook {best(lambda: be._conv2d_backward(gi, xi, w, (1,1), (2,2,2,2), (1,1), 1, l.needs_input_grad, True)):6.1f}")
        if isinstance(l, nn.MaxPool2d):
            y, idx = F.max_pool2d_forward(xi, 2)
            row += (f" | F.fwd {best(lambda: F.max_pool2d_forward(xi, 2)):6.1f}"
                    f" | F.bwd {best(lambda: F.max_pool2d_backward(gi, idx, xi.shape)):6.1f}")
        print(row, flush=True)
    labels = rng.integers(0, 10, B)
    lg = acts[-1]
    print(f"loss {best(lambda: nn.softmax_cross_entropy(lg, labels)):.1f}")
    opt = nn.SGD(m, lr=0.01, momentum=0.9); opt.step()
    print(f"zero_grad {best(m.zero_grad):.1f}  sgd step {best(opt.step):.1f}")
