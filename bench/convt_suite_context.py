"""convt_28's forward+backward, convkit cpu and torch interleaved as `convkit bench` times them
(benchmark.timing.measure, 7 rounds), first alone and then again after each other case of the
suite has run in the same process: does an earlier case leave state (heap, pages, threads) that
slows convt_28, or does its time move with the host alone?

    python bench/convt_suite_context.py [cpu,torch]

Prints one line per point: convkit's and torch's medians (ms) and torch/convkit.
"""
import sys

import numpy as np
import torch

import convkit
from convkit.benchmark.adapters import make_runner
from convkit.benchmark.cases import CASES
from convkit.benchmark.probe import core_probe
from convkit.benchmark.timing import measure, set_mallopt


def main():
    set_mallopt()
    torch.set_num_threads(convkit.get_num_threads())
    bk = sys.argv[1].split(",") if len(sys.argv) > 1 else ["cpu", "torch"]
    ct = next(c for c in CASES if c.name == "convt_28")

    def convt(tag):
        data = ct.inputs(np.random.default_rng(0))
        m = measure(ct, "forward+backward", [make_runner(ct, b, data) for b in bk], 7, 1,
                    False).medians_ms
        print(f"{tag:26s} " + " ".join(f"{b} {m[b]:6.2f}" for b in bk) +
              (f"  torch/cpu {m['torch'] / m['cpu']:.2f}" if "torch" in m else ""), flush=True)

    print("probe", core_probe())
    convt("start")
    for c in CASES:
        if c.name == "convt_28":
            continue
        data = c.inputs(np.random.default_rng(0))
        rs = []
        for b in bk:
            try:
                rs.append(make_runner(c, b, data))
            except Exception:       # no torchvision: the RoI cases run convkit alone
                pass
        for p in c.passes:
            measure(c, p, rs, 7, 1, False)
        del rs, data
        convt("after " + c.name)
    print("probe", core_probe())


if __name__ == "__main__":
    main()
