"""convkit: forward/backward kernels for CNNs and detectors behind one backend interface.

Pick a backend with ``CONVKIT_BACKEND`` (numpy, cpu, cuda, auto), ``convkit.set_backend`` or
``with convkit.use_backend(...)``.  ``import convkit`` loads no plugin and does no GPU work.
"""
from __future__ import annotations

__version__ = "0.1.0"

from ._config import (get_allow_tf32, get_deterministic, get_num_threads, get_workspace_limit,
                      set_allow_tf32, set_deterministic, set_num_threads, set_workspace_limit)
from ._registry import (available_backends, backend_status, get_backend, known_backends,
                        set_backend, use_backend)
from .backend import Backend
from . import functional as _functional
from ._info import precompile, show_config

# every public op of convkit.functional (its __all__ is the one list of them), as convkit.<op>
globals().update({_op: getattr(_functional, _op) for _op in _functional.__all__})

__all__ = [
    "Backend", "get_backend", "set_backend", "use_backend", "available_backends",
    "known_backends", "backend_status", "show_config", "precompile",
    "set_num_threads", "get_num_threads", "set_workspace_limit", "get_workspace_limit",
    "set_deterministic", "get_deterministic", "set_allow_tf32", "get_allow_tf32",
    *_functional.__all__,
]
