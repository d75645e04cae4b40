"""What every demo shares: its common arguments, the backend it runs on (or one line saying why it
cannot), and the progress display of its training loop."""
from __future__ import annotations

import contextlib
import sys

from .._registry import get_backend, use_backend
from ..cli import Progress


def add_common_arguments(p, *, seed_help, out_help):
    """--backend, --seed, --dtype, --out, --no-progress: the same meaning in every demo."""
    p.add_argument("--backend", default=None,
                   help="numpy, cpu, cuda or auto (default: CONVKIT_BACKEND, else cpu)")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="dtype of the weights and the data")
    p.add_argument("--out", default=None, metavar="DIR", help=out_help)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress display (a bar is drawn only when stderr is a terminal)")


@contextlib.contextmanager
def on_backend(args, prog):
    """Run the body on the demo's backend (``--backend``, else the active one) and yield it, or
    yield None after printing one line -- "``prog``: why" -- when that backend is unknown or
    cannot run here (the caller then exits non-zero)."""
    try:
        be = get_backend(args.backend)    # None: CONVKIT_BACKEND, else the default
    except (ValueError, RuntimeError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        yield None
        return
    with use_backend(be.name):
        yield be


def epoch_progress(args, steps, epoch, epochs, log=None):
    """The progress display of one training epoch (``log``: plain lines when not on a
    terminal, see :class:`convkit.cli.Progress`)."""
    return Progress(steps, f"epoch {epoch + 1}/{epochs}", enabled=not args.no_progress, log=log,
                    unit="step")
