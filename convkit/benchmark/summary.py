"""What a run adds up to: geometric means of the ratios to torch (overall and per op family), and
the targets.

Two kinds of target: the two a user of the ``cpu`` backend can hold it to -- as fast as torch
over the whole suite (:data:`GEOMEAN_TARGET`) and a forward+backward that needs at most
:data:`MEMORY_TARGET` times its tensors' bytes -- which ``--summary`` prints; and the per-layer
goals the developers track in bench/RESULTS.md (:data:`TARGETS`), which the JSON and Markdown
reports list row by row and ``--summary`` only counts."""
from __future__ import annotations

import math

from .adapters import TORCH_NAMES, torch_ref
from .cases import FAMILIES, FB, FWD

# Per-layer development goals for the ``cpu`` backend: (op, reference, minimum ratio, passes).
_BIG_CONVS = ("vgg_56", "res_28", "res_14", "pw_14", "rpn_3x3")
_EDGE_CONVS = ("lenet_c1", "stem_224", "rpn_cls1x1", "dw_56")
TARGETS = (
    *((op, "torch", 0.85, (FWD, FB)) for op in _BIG_CONVS),
    *((op, "torch", 1.0, (FWD, FB)) for op in _EDGE_CONVS),
    *((op, "torch", 2.0, (FWD, FB)) for op in ("maxpool_3x3s2", "maxpool_2x2s2", "avgpool_3x3s2")),
    ("bn_train", "torch", 1.0, (FB,)),
    *((op, "numpy", 20.0, (FWD, FB)) for op in ("roi_align", "roi_pool")),
    *((op, "numpy", 20.0, (FWD, FB)) for op in ("roi_avg_pool", "roi_max_align")),
    ("nms", "numpy", 20.0, (FWD,)),
    ("convt_28", "torch", 1.0, (FWD, FB)),
    ("deform_conv", "numpy", 20.0, (FWD, FB)),
)
# position-sensitive RoI ops (issue 14): cpu against the numpy reference
TARGETS += tuple((op, "numpy", 20.0, (FWD, FB)) for op in ("ps_roi_align", "ps_roi_pool"))
# adaptive pooling (issue 14): at least torch's speed, forward and forward+backward
TARGETS += tuple((f"adaptive_{k}_{n}", "torch", 1.0, (FWD, FB))
                 for n in ("head", "56to7") for k in ("avg", "max"))
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
    """Every target for ``backend``: the per-layer goals, then the user targets; a list of
    dicts (what, want, got, met; per-layer goals also quartiles)."""
    return layer_targets(rows, backend) + user_targets(summary, memory, backend)


def layer_targets(rows, backend="cpu"):
    """The per-layer development goals of :data:`TARGETS` that ``rows`` measured."""
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
    return res


def user_targets(summary, memory, backend="cpu"):
    """What a user can hold ``backend`` to: as fast as torch over the suite (geometric mean of
    the ratios), and res_28's forward+backward within a small multiple of its tensors' bytes."""
    res = []
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


FAMILY_TITLES = {"conv": "convolution layers", "pool": "pooling", "bn": "batch norm (training)",
                 "roi": "RoI align / RoI pool", "nms": "NMS", "deform": "deformable convolution"}
FAMILY_TITLES["adaptive"] = "adaptive pooling"


def family_summaries(rows, backend):
    """Per op family and reference (torch first, then numpy): the geometric mean of
    reference_time / backend_time over the family's rows, and its slowest row."""
    out = []
    for fam in FAMILIES:
        for ref in (torch_ref(backend), "numpy"):
            got = [(r.ratio(ref, backend), r) for r in rows if r.family == fam]
            got = [(v, r) for v, r in got if v is not None]
            if not got:
                continue
            low, r = min(got, key=lambda vr: vr[0])
            out.append({"family": fam, "title": FAMILY_TITLES[fam], "reference": ref,
                        "rows": len(got), "geomean": geomean([v for v, _ in got]),
                        "slowest": f"{r.op} {r.pas}", "slowest_ratio": low})
    return out

