"""The reports of a run: the text table and notes printed to the terminal, and the Markdown
tables written with ``--markdown``."""
from __future__ import annotations

import sys

from .adapters import TORCH_NAMES, torch_ref
from .cases import FWD
from .summary import family_summaries


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}g}"


def _size(nbytes):
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


def _table(header, lines):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    # op, pass and the last column (the shapes) read left to right; the numbers align right
    last = len(widths) - 1
    fmt = "  ".join(("{:<%d}" if i < 2 or i == last else "{:>%d}") % w
                    for i, w in enumerate(widths))
    return [fmt.format(*ln).rstrip() for ln in [header, *lines]]


def result_columns(rows, backends):
    """Header and lines of the results table (shared by the text and markdown output); the last
    column says what was timed (input and weight shapes, stride, padding...)."""
    conv = [b for b in backends if b not in TORCH_NAMES and b != "numpy"]   # numpy: a reference
    ran = [b for b in backends if any(b in r.medians_ms for r in rows)]
    header = ["op", "pass"] + [f"{b} ms" for b in ran] + [f"{b} thrpt" for b in ran]
    ratio_cols = []
    for b in conv:
        for ref in (torch_ref(b), "numpy"):
            if ref != b and any(r.ratio(ref, b) is not None for r in rows):
                ratio_cols.append((ref, b))
    header += [f"{ref}/{b}" for ref, b in ratio_cols]
    gpu = any(r.ratio("cpu", "cuda") is not None for r in rows)
    if gpu:
        header.append("cuda speed-up vs cpu")
    header.append("shapes")
    lines = []
    for r in rows:
        ln = [r.op, "fwd" if r.pas == FWD else "fwd+bwd"]
        ln += [_fmt(r.medians_ms.get(b)) if b in r.medians_ms else
               ("error" if b in r.errors else "-") for b in ran]
        ln += [f"{_fmt(r.throughput(b))} {r.unit}" if r.throughput(b) else "-" for b in ran]
        for ref, b in ratio_cols:
            v, q = r.ratio(ref, b), r.ratio_spread(ref, b)
            ln.append("-" if v is None else f"{_fmt(v)}x" + (
                f" ({_fmt(q[0], 2)}-{_fmt(q[1], 2)})" if q else ""))
        if gpu:
            ln.append(_fmt(r.ratio("cpu", "cuda")))
        ln.append(r.shape)
        lines.append(ln)
    return header, lines


def print_report(rows, backends, summary, memory, show_summary, file=sys.stdout):
    header, lines = result_columns(rows, backends)
    print("\n".join(_table(header, lines)), file=file)
    print("medians of the timed calls; thrpt = GFLOP/s (conv) or GB/s (pool, bn); "
          "ref/b = ref median / b median (> 1: b faster), in brackets the quartiles of the "
          "per-round ratios", file=file)
    slow_first = []
    for r in rows:
        for b, ms in r.first_call_ms.items():
            med = r.medians_ms.get(b)
            if med and ms > 5 * med and ms - med > 1.0:
                slow_first.append(f"{b} {r.op} {'fwd' if r.pas == FWD else 'fwd+bwd'}: "
                                  f"{_fmt(ms)} ms (median {_fmt(med)})")
    if slow_first:
        print("first-call latency (compile / first touch), where > 5x the median:", file=file)
        for s in slow_first:
            print("  " + s, file=file)
    checks = [c for r in rows for b, c in r.check.items() if b != "reference"]
    if checks:
        bad = sum(c != "ok" for c in checks)
        print(f"results checked against torch (numpy where torch has no such op): "
              f"{len(checks) - bad} agree, {bad} differ", file=file)
    for r in rows:
        for b, e in r.errors.items():
            print(f"ERROR {b} {r.op} {r.pas}: {e}", file=file)
        for b, c in r.check.items():
            if b != "reference" and c != "ok":
                print(f"MISMATCH {b} {r.op} {r.pas} vs {r.check['reference']}: {c}", file=file)
    for m in memory or ():
        if "error" in m:
            print(f"memory {m['op']} {m['backend']}: error: {m['error']}", file=file)
        else:
            print(f"memory {m['op']} forward+backward on {m['backend']}: peak RSS growth "
                  f"{_size(m['peak_rss_growth_bytes'])} = {m['ratio']:.2f}x the "
                  f"{_size(m['tensor_bytes'])} of its tensors (x, w, b, y, grads)", file=file)
    if show_summary:
        for b, s in summary.items():
            print(f"summary: geometric mean of {s['reference']}/{b} over {s['rows']} rows = "
                  f"{s['geomean']:.3f}x (> 1: {b} faster)", file=file)
        if not summary:
            print("summary: no row has both torch and a convkit backend", file=file)


def markdown_report(rows, backends, summary, targets, memory):
    header, lines = result_columns(rows, backends)
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(ln) + " |" for ln in lines]
    if summary:
        out.append("")
        for b, s in summary.items():
            out.append(f"Geometric mean of {s['reference']}/{b} over {s['rows']} rows: "
                       f"**{s['geomean']:.3f}x**.")
    if targets:
        out += ["", "| target | want | got | per-round quartiles | met? |", "|---|---|---|---|---|"]
        for t in targets:
            got = "not measured" if t["got"] is None else f"{_fmt(t['got'])}x"
            q = t.get("quartiles")
            q = f"{_fmt(q[0], 2)}-{_fmt(q[1], 2)}" if q else ""
            out.append(f"| {t['what']} | {t['want']} | {got} | {q} | "
                       f"{'met' if t['met'] else '**not met**'} |")
    if memory:
        out += ["", "| memory: forward+backward | backend | peak RSS growth | tensors (x, w, b, "
                "y, grads) | ratio |", "|---|---|---|---|---|"]
        for m in memory:
            if "error" in m:
                out.append(f"| {m['op']} | {m['backend']} | error: {m['error']} | | |")
            else:
                out.append(f"| {m['op']} | {m['backend']} | {_size(m['peak_rss_growth_bytes'])} "
                           f"| {_size(m['tensor_bytes'])} | {m['ratio']:.2f}x |")
    return "\n".join(out) + "\n"


def print_summary(rows, backends, user, layer, file=sys.stdout):
    """``--summary``: per op family, how each fast convkit backend compares with torch (and the
    numpy reference); then the ``user`` targets, one line each, and how many of the per-layer
    development goals ``layer`` were met."""
    for b in backends:
        if b in TORCH_NAMES or b == "numpy":
            continue
        fams = family_summaries(rows, b)
        if not fams:
            continue
        print(f"{b} backend on this machine, per op family (ratio = reference time / {b} time; "
              f"> 1x: {b} faster):", file=file)
        width = max(len(f["title"]) for f in fams)
        for i, f in enumerate(fams):
            title = "" if i and fams[i - 1]["family"] == f["family"] else f["title"]
            n = f["rows"]
            detail = (f" (geometric mean; slowest {f['slowest']} {_fmt(f['slowest_ratio'])}x)"
                      if n > 1 else "")
            print(f"  {title:{width}s}  {f['reference']}/{b} {_fmt(f['geomean'])}x over {n} "
                  f"row{'s' * (n > 1)}{detail}", file=file)
    if user:
        print("targets for the cpu backend:", file=file)
        for t in user:
            got = "not measured" if t["got"] is None else f"{_fmt(t['got'])}x"
            print(f"  {'met    ' if t['met'] else 'NOT MET'}  {t['what']}: {got}, want "
                  f"{t['want']}", file=file)
    measured = [t for t in layer if t["got"] is not None]
    if measured:
        print(f"per-layer development goals (bench/RESULTS.md): {sum(t['met'] for t in measured)} "
              f"of {len(measured)} measured met; --markdown FILE or --json FILE lists each",
              file=file)
