"""The ratios bench/RESULTS.md's session sections quote, from bench/quiet_figures.sh's JSON:

    python bench/quiet_summary.py OUT_DIR

issue 14 (sets A and C): roi_max_align / roi_align, roi_max_align / roi_pool, roi_avg_pool /
roi_pool (cpu medians of one run), convt_28 torch / cpu, deform_conv numpy / cpu, per run and
their median; the suite's geomean of torch / cpu over its rows with both, and its lowest rows.
"""
import glob
import json
import math
import os
import statistics
import sys


def medians(path):
    with open(path) as f:
        doc = json.load(f)
    return {(r["op"], r["pass"]): r["medians_ms"] for r in doc["results"]}


FIGURES = [("roi_max_align / roi_align", lambda m, p: m[("roi_max_align", p)]["cpu"] / m[("roi_align", p)]["cpu"]),
           ("roi_max_align / roi_pool", lambda m, p: m[("roi_max_align", p)]["cpu"] / m[("roi_pool", p)]["cpu"]),
           ("roi_avg_pool / roi_pool", lambda m, p: m[("roi_avg_pool", p)]["cpu"] / m[("roi_pool", p)]["cpu"]),
           ("convt_28 torch / cpu", lambda m, p: m[("convt_28", p)]["torch"] / m[("convt_28", p)]["cpu"]),
           ("deform_conv numpy / cpu", lambda m, p: m[("deform_conv", p)]["numpy"] / m[("deform_conv", p)]["cpu"])]


def main(out):
    for tag, pattern in (("set A", "i14_*.json"), ("set C", "c_*.json")):
        runs = [medians(f) for f in sorted(glob.glob(os.path.join(out, pattern)))]
        if not runs:
            continue
        print(f"## issue 14, {tag} ({len(runs)} runs)")
        for name, fn in FIGURES:
            for p in ("forward", "forward+backward"):
                try:
                    v = [fn(m, p) for m in runs]
                except KeyError:
                    continue
                print(f"{name:26s} {p:17s} {' / '.join(f'{x:.2f}' for x in v)}"
                      f"  median {statistics.median(v):.2f}")
    suite = os.path.join(out, "suite.json")
    if os.path.exists(suite):
        m = medians(suite)
        r = sorted(((v["torch"] / v["cpu"], op, p) for (op, p), v in m.items()
                    if v.get("torch") and v.get("cpu")))
        g = math.exp(sum(math.log(x) for x, _, _ in r) / len(r))
        print(f"## the suite: geomean torch / cpu over {len(r)} rows {g:.3f}; lowest: "
              + ", ".join(f"{op} {p} {x:.2f}" for x, op, p in r[:8]))


if __name__ == "__main__":
    main(sys.argv[1])
