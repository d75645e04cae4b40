"""``convkit.show_config()`` / ``convkit info`` and ``convkit.precompile()``."""
from __future__ import annotations

import platform
import sys

from . import _config, _registry


def config_lines() -> list[str]:
    import numpy as np

    from . import __version__

    lines = [f"convkit {__version__}", f"python {platform.python_version()} ({sys.executable})",
             f"numpy {np.__version__}"]
    try:
        name, why = _registry.active_backend_reason()
        lines.append(f"backend in use: {name} ({why})")
    except (RuntimeError, ValueError) as e:
        lines.append(f"backend in use: none ({e})")
    try:
        nt = _config.get_num_threads()
    except ValueError as e:   # a bad CONVKIT_NUM_THREADS is reported, not a traceback
        nt = f"invalid setting: {e}"
    lines.append(f"threads: {nt} (set_num_threads / CONVKIT_NUM_THREADS / "
                 f"OMP_NUM_THREADS / physical cores)")
    lines.append(f"im2col workspace limit: {_config.get_workspace_limit() / 2**20:.0f} MiB")
    try:
        from threadpoolctl import threadpool_info

        for p in threadpool_info():
            lines.append(f"threadpool: {p.get('user_api')} {p.get('internal_api')} "
                         f"{p.get('version')} threads={p.get('num_threads')}")
    except ImportError:  # pragma: no cover
        pass
    lines.append("backends:")
    for n in _registry.known_backends():
        ok, why = _registry.backend_status(n)
        lines.append(f"  {n:8s} {'ok' if ok else 'unavailable'}" + ("" if ok else f": {why}"))
        if ok:
            try:
                facts = _registry.get_backend(n).info()
            except Exception as e:  # a backend's facts must never break `convkit info`
                facts = {"info": f"unavailable ({type(e).__name__}: {e})"}
            for k, v in facts.items():
                lines.append(f"      {k}: {v}")
    return lines


def show_config() -> None:
    """Print version, backend in use and why, threads, BLAS, and every backend's status."""
    print("\n".join(config_lines()))


def precompile(backend: str | None = None) -> dict:
    """Warm up a backend's lazily compiled kernels (the GPU ones); returns what it reports."""
    return _registry.get_backend(backend).precompile()
