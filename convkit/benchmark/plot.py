"""``--plot``: a bar chart of the ratios per op and pass (needs matplotlib)."""
from __future__ import annotations

from .adapters import TORCH_NAMES, torch_ref
from .cases import FWD


def save_plot(path, rows, backends):
    """Bar chart of the ratios (log scale, 1x line) per op and pass; needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conv = [b for b in backends if b not in TORCH_NAMES and b != "numpy"]   # numpy: the reference
    series = []
    for b in conv:
        for ref in (torch_ref(b), "numpy"):
            vals = [r.ratio(ref, b) for r in rows]
            if ref != b and any(v is not None for v in vals):
                series.append((f"{ref}/{b}", vals))
    if not series:
        raise ValueError("no ratio to plot (run a convkit backend next to torch or numpy)")
    labels = [f"{r.op} {'fwd' if r.pas == FWD else 'fwd+bwd'}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows)), 5.5))
    width = 0.8 / max(len(series), 1)
    for i, (name, vals) in enumerate(series):
        xs = [j + i * width for j, v in enumerate(vals) if v is not None]
        ax.bar(xs, [v for v in vals if v is not None], width, label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], labels, fontsize=7,
                  rotation=60, ha="right")
    ax.set_ylabel("reference time / backend time (> 1: backend faster)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
