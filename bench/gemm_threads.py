"""How much a second thread adds to a GEMM-bound op on this machine: float32 BLAS sgemm of
pw_14's shape (1024 x 256 times 256 x 1568, the 1x1 conv as one GEMM) on 1 and 2 threads.

    python bench/gemm_threads.py [--rounds 20]

Prints the median time and GFLOP/s per thread count.  On the 2-vCPU EPYC used since the
sixth session the two read about the same (the vCPUs share one core's FMA units), so an op
both libraries run as such a GEMM cannot be much faster in one than the other
(bench/RESULTS.md, "The suite")."""
import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1024, 256)).astype(np.float32)
    b = rng.standard_normal((256, 1568)).astype(np.float32)
    c = np.empty((1024, 1568), np.float32)
    flop = 2.0 * 1024 * 256 * 1568
    for threads in (1, 2):
        with threadpool_limits(threads):
            for _ in range(3):
                np.matmul(a, b, out=c)
            times = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                np.matmul(a, b, out=c)
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"{threads} thread(s): {med * 1e3:.2f} ms, {flop / med / 1e9:.1f} GFLOP/s "
              f"(quartiles {np.percentile(times, 25) * 1e3:.2f}-{np.percentile(times, 75) * 1e3:.2f} ms)")


if __name__ == "__main__":
    main()
