"""Interleaved A/B of `convkit bench` between two checkouts of convkit on one machine.

    python bench/ab_commits.py --a /path/to/checkout_A --b /path/to/checkout_B --rounds 3 \
        --out /tmp/ab [-- extra convkit bench arguments]

Each round runs A then B (`python -m convkit bench --backends cpu,torch --json ...` with the
checkout as the working directory, so its own convkit and built extensions are imported) and
reads the one-core probe just before each run with B's probe (checkout A may predate the probe).
Prints, per layer row, the median over rounds of torch/cpu for A and for B, their quotient, the
geometric means, and the probe readings, so a reader can compare runs taken under similar host
conditions (bench/RESULTS.md explains why that matters).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys


def _python(checkout):
    venv = os.path.join(checkout, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def _probe(checkout):
    code = "from convkit.benchmark.probe import core_probe; print(core_probe())"
    out = subprocess.run([_python(checkout), "-c", code], cwd=checkout, capture_output=True,
                         text=True, check=True).stdout.strip()
    return None if out == "None" else float(out)


def _run(checkout, out_json, extra, ref):
    cmd = [_python(checkout), "-m", "convkit", "bench", "--backends", f"cpu,{ref}", "--no-progress",
           "--json", out_json, *extra]
    subprocess.run(cmd, cwd=checkout, check=True, stdout=subprocess.DEVNULL)
    with open(out_json) as f:
        return json.load(f)


def _ratios(doc, ref):
    """{(op, pass): ref median / cpu median} from one run's JSON."""
    return {(r["op"], r["pass"]): r["medians_ms"][ref] / r["medians_ms"]["cpu"]
            for r in doc["results"]
            if r["medians_ms"].get("cpu") and r["medians_ms"].get(ref)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="checkout A (before)")
    ap.add_argument("--b", required=True, help="checkout B (after)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="ab_out", help="folder for the runs' JSON")
    ap.add_argument("--ref", default="torch",
                    help="the backend cpu is compared with (torch; numpy for deform_conv, with "
                         "-- --ops deform_conv --only numpy=deform_conv)")
    ap.add_argument("extra", nargs="*", help="more convkit bench arguments (after --)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    runs = {"A": [], "B": []}
    probes = {"A": [], "B": []}
    for i in range(args.rounds):
        for tag, checkout in (("A", args.a), ("B", args.b)):
            probes[tag].append(_probe(args.b if tag == "A" else checkout))
            path = os.path.join(os.path.abspath(args.out), f"{tag}{i}.json")
            runs[tag].append(_ratios(_run(checkout, path, args.extra, args.ref), args.ref))
            print(f"round {i} {tag}: probe {probes[tag][-1]} GFLOP/s, geomean "
                  f"{math.exp(statistics.fmean(math.log(v) for v in runs[tag][-1].values())):.3f}",
                  flush=True)
    rows = sorted(set(runs["A"][0]) & set(runs["B"][0]))
    q = f"{args.ref}/cpu"
    print(f"\n{'row':<24}{'A ' + q:>14}{'B ' + q:>14}{'B/A':>8}")
    for row in rows:
        a = statistics.median(r[row] for r in runs["A"])
        b = statistics.median(r[row] for r in runs["B"])
        print(f"{row[0] + ' ' + row[1]:<24}{a:>14.3f}{b:>14.3f}{b / a:>8.3f}")
    for tag in ("A", "B"):
        gms = [math.exp(statistics.fmean(math.log(r[row]) for row in rows)) for r in runs[tag]]
        print(f"{tag}: geomean {q} per round {', '.join(f'{g:.3f}' for g in gms)} "
              f"(median {statistics.median(gms):.3f}); probe {probes[tag]}")


if __name__ == "__main__":
    main()
