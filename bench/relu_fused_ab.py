"""ReLU's forward and backward on the cpu backend: the fused passes (csrc/relu.h via
CpuBackend._relu_forward / _relu_backward) against the Backend defaults (np.maximum against a
zero array; relu_grad_bits, four numpy passes), interleaved, least thread CPU time per call over
the rounds (--threads 1) or wall time (--threads 2); checks the bits agree.

    python bench/relu_fused_ab.py [--threads N] [--rounds R]
"""
import argparse
import time

import numpy as np

import convkit
from convkit.backend import Backend, relu_grad_bits


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--repeat", type=int, default=50)
    args = p.parse_args()
    convkit.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    be = convkit.get_backend("cpu")
    rng = np.random.default_rng(0)
    print(f"# {args.threads} threads, least us per call over {args.rounds} x {args.repeat}")
    print("| shape | pass | default us | fused us | default/fused |")
    print("| --- | --- | --- | --- | --- |")
    for shape in [(64, 16, 8, 8), (128, 16, 8, 8), (128, 32, 4, 4), (128, 64, 2, 2)]:
        y = np.maximum(rng.standard_normal(shape).astype(np.float32), 0)
        g = rng.standard_normal(shape).astype(np.float32)
        x = rng.standard_normal(shape).astype(np.float32)
        assert Backend._relu_forward(be, x).tobytes() == be._relu_forward(x).tobytes()
        a = relu_grad_bits(np, y, g)
        b = be._relu_backward(y, g)
        assert b is not None and np.array_equal(a.view(np.uint32), b.view(np.uint32))
        for name, fs in (("fwd", (lambda: Backend._relu_forward(be, x),
                                  lambda: be._relu_forward(x))),
                         ("bwd", (lambda: Backend._relu_backward(be, y, g),
                                  lambda: be._relu_backward(y, g)))):
            best = [1e9, 1e9]
            for r in range(args.rounds):
                for k in ((0, 1) if r % 2 == 0 else (1, 0)):
                    t = clock()
                    for _ in range(args.repeat):
                        fs[k]()
                    best[k] = min(best[k], (clock() - t) / args.repeat)
            print(f"| {shape} | {name} | {best[0] * 1e6:.1f} | {best[1] * 1e6:.1f} | "
                  f"{best[0] / best[1]:.2f} |")

if __name__ == "__main__":
    main()
