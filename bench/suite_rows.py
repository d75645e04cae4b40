"""Per-row cpu / torch ratios and geomeans of several `convkit bench` runs (bench/RESULTS.md's
suite tables):

    python -m convkit bench --backends cpu,torch --repeat 7 --no-progress --json run_K.json
    python bench/suite_rows.py run_1.json run_2.json run_3.json

Prints a markdown table (row, pass, each run's ratio, median) and each run's geomean over the
rows that have a torch ratio, with their median.
"""
import json
import math
import statistics
import sys


def main(paths):
    rows, gms = {}, []
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        rs = [(r["op"], r["pass"], r["ratios"].get("cpu", {}).get("torch"))
              for r in doc["results"]]
        rs = [r for r in rs if r[2]]
        gms.append(math.exp(sum(math.log(r[2]) for r in rs) / len(rs)))
        for op, pas, v in rs:
            rows.setdefault((op, pas), []).append(v)
    print("| row | pass | runs | median |")
    print("| --- | --- | --- | --- |")
    for (op, pas), v in rows.items():
        print(f"| {op} | {pas} | {' / '.join(f'{x:.2f}' for x in v)} | "
              f"{statistics.median(v):.2f} |")
    print("geomeans", " / ".join(f"{g:.2f}" for g in gms), "median",
          f"{statistics.median(gms):.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
