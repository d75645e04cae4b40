"""What a run adds up to: geometric means of the ratios to torch, and the per-layer targets the
project holds the ``cpu`` backend to (recorded in the JSON and Markdown reports, kept in
bench/RESULTS.md)."""
from __future__ import annotations

import math

from .adapters import TORCH_NAMES, torch_ref
from .cases import FB, FWD

# The issues' targets, evaluated for the ``cpu`` backend: (op, reference, minimum ratio, passes).
_BIG_CONVS = ("vgg_56", "res_28", "res_14", "pw_14", "rpn_3x3")
_EDGE_CONVS = ("lenet_c1", "stem_224", "rpn_cls1x1", "dw_56")
TARGETS = (
    *((op, "torch", 0.85, (FWD, FB)) for op in _BIG_CONVS),
    *((op, "torch", 1.0, (FWD, FB)) for op in _EDGE_CONVS),
    *((op, "torch", 2.0, (FWD, FB)) for op in ("maxpool_3x3s2", "maxpool_2x2s2", "avgpool_3x3s2")),
    ("bn_train", "torch", 1.0, (FB,)),
    *((op, "numpy", 20.0, (FWD, FB)) for op in ("roi_align", "roi_pool")),
    ("nms", "numpy", 20.0, (FWD,)),
)
GEOMEAN_TARGET = 1.0
MEMORY_TARGET = 2.0


def geomean(values):
    vals = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def summarize(rows, backends):
    """Per fast convkit backend (not numpy, the reference): geometric mean of
    torch_time/backend_time over every row with both."""
    out = {}
    for b in backends:
        if b in TORCH_NAMES or b == "numpy":
            continue
        ref = torch_ref(b)
        ratios = [r.ratio(ref, b) for r in rows]
        ratios = [v for v in ratios if v is not None]
        if ratios:
            out[b] = {"reference": ref, "geomean": geomean(ratios), "rows": len(ratios)}
    return out


def evaluate_targets(rows, summary, memory, backend="cpu"):
    """The issue's targets for ``backend``: list of dicts (what, want, got, met)."""
    by = {(r.op, r.pas): r for r in rows}
    res = []
    for op, ref, want, passes in TARGETS:
        for pas in passes:
            r = by.get((op, pas))
            if r is None:
                continue
            got = r.ratio(ref, backend)
            res.append({"what": f"{op} {pas}: {ref}/{backend}", "want": f">= {want:g}x",
                        "got": got, "quartiles": r.ratio_spread(ref, backend),
                        "met": got is not None and got >= want})
    if backend in summary:
        g = summary[backend]["geomean"]
        res.append({"what": f"geomean torch/{backend} over {summary[backend]['rows']} rows",
                    "want": f">= {GEOMEAN_TARGET:g}x", "got": g, "met": g >= GEOMEAN_TARGET})
    for m in memory or ():
        if m.get("backend") == backend and m.get("op") == "res_28" and "ratio" in m:
            res.append({"what": f"{m['op']} forward+backward peak RSS growth / tensor bytes "
                                f"({backend})", "want": f"<= {MEMORY_TARGET:g}x",
                        "got": m["ratio"], "met": m["ratio"] <= MEMORY_TARGET})
    return res
