"""stem_224's forward (conv_plan "stem_wino") with and without non-temporal stores of y
(csrc/stem_wino.h, tuning.STEM_STREAM_BYTES), interleaved in one process: CPU time of one thread
(a loaded machine's wall clock is not a measure), per pass, and the same bits either way.

    python bench/stem_stream_ab.py [--rounds 9] [--batch 8] [--threads 1] [--align 16]
        [--clock cpu|wall]

--clock wall: wall-clock time (a quiet machine, several threads); cpu: the process's CPU time.

--align: y's start modulo 64 bytes (numpy's large arrays: 16; 0 or 32 take the 256-bit stores).
Prints the median ms (and sorted rounds) of the forward, the backward (conv2d_backward
without grad_x: the bench's first layer) and the two, for plain / streamed stores; and "fwd+pool":
the forward then ResNet's next read of y (a 3x3 stride-2 max pool), which finds a plainly
stored y partly in the L3 and a streamed one in memory.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import convkit
from convkit.cpu import conv as cc
from convkit.cpu import tuning

GEO = ((2, 2), (3, 3, 3, 3), (1, 1), 1)


def _aligned(shape, off):
    n = int(np.prod(shape))
    raw = np.empty(n + 32, np.float32)
    k = ((off - raw.ctypes.data) % 64) // 4
    return raw[k:k + n].reshape(shape)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--align", type=int, default=16)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = ap.parse_args(argv)
    convkit.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    w = (rng.standard_normal((64, 3, 7, 7)) / np.sqrt(147)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    gy = rng.standard_normal((args.batch, 64, 112, 112)).astype(np.float32)
    y = _aligned(gy.shape, args.align)
    keep = tuning.STEM_STREAM_BYTES

    def use(stream):
        tuning.STEM_STREAM_BYTES = 0 if stream else 1 << 62
        cc._plans.clear()
        step = cc._plan(x, w, *GEO)[3].forward
        assert step.algo == "stem_wino" and step.params["stream"] == stream, step
    outs = {}
    for stream in (False, True):
        use(stream)
        outs[stream] = cc.conv2d_forward(x, w, b, *GEO, out=y).copy()
    same = np.array_equal(outs[False].view(np.uint32), outs[True].view(np.uint32))
    print(f"y at {y.ctypes.data % 64} mod 64 bytes; same bits plain / streamed: {same}")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    passes = ("fwd", "bwd", "fwd+bwd", "fwd+pool")
    t = {(s, p): [] for s in (False, True) for p in passes}
    for _ in range(args.rounds):
        for stream in (False, True):
            use(stream)
            t0 = clock()
            cc.conv2d_forward(x, w, b, *GEO, out=y)
            t1 = clock()
            cc.conv2d_backward(gy, x, w, *GEO, False, True)
            t2 = clock()
            t[stream, "fwd"].append((t1 - t0) * 1e3)
            t[stream, "bwd"].append((t2 - t1) * 1e3)
            t[stream, "fwd+bwd"].append((t2 - t0) * 1e3)
            t3 = clock()
            cc.conv2d_forward(x, w, b, *GEO, out=y)
            convkit.max_pool2d_forward(y, 3, 2, 1)
            t[stream, "fwd+pool"].append((clock() - t3) * 1e3)
    tuning.STEM_STREAM_BYTES = keep
    cc._plans.clear()
    for p in passes:
        a, s = statistics.median(t[False, p]), statistics.median(t[True, p])
        print(f"{p:8s} plain {a:6.2f} ms  streamed {s:6.2f} ms  plain/streamed {a / s:.3f}   "
              f"plain {' '.join(f'{v:.1f}' for v in sorted(t[False, p]))} | "
              f"streamed {' '.join(f'{v:.1f}' for v in sorted(t[True, p]))}")


if __name__ == "__main__":
    main()
