"""One-thread CPU time of the suite's pooling forwards (maxpool_3x3s2, maxpool_2x2s2,
avgpool_3x3s2 on (8, 64, 112, 112)), least of 15 calls, ms, as one JSON line -- for A/B of two
checkouts on a loaded or noisy host, run alternately from each checkout:

    for c in A B A B A B; do (cd $c && PYTHONPATH=$c python /path/bench/pool_cpu_time.py); done
"""
import json
import time

import numpy as np

import convkit

convkit.set_num_threads(1)
x = np.random.default_rng(0).standard_normal((8, 64, 112, 112)).astype(np.float32)


def cpu(f, calls=15):
    f()
    best = float("inf")
    for _ in range(calls):
        t = time.process_time()
        f()
        best = min(best, time.process_time() - t)
    return round(best * 1e3, 3)


print(json.dumps({"maxpool_3x3s2": cpu(lambda: convkit.max_pool2d_forward(x, 3, 2, 1)),
                  "maxpool_2x2s2": cpu(lambda: convkit.max_pool2d_forward(x, 2, 2, 0)),
                  "avgpool_3x3s2": cpu(lambda: convkit.avg_pool2d_forward(x, 3, 2, 1))}))
