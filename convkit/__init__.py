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
from .functional import (asarray, avg_pool2d_backward, avg_pool2d_forward, batch_norm_backward,
                         batch_norm_forward, batched_nms, box_iou, conv2d_backward,
                         conv2d_forward, max_pool2d_backward, max_pool2d_forward, nms,
                         roi_align_backward, roi_align_forward, roi_pool_backward,
                         roi_pool_forward, to_numpy)
from ._info import precompile, show_config

__all__ = [
    "Backend", "get_backend", "set_backend", "use_backend", "available_backends",
    "known_backends", "backend_status", "show_config", "precompile",
    "set_num_threads", "get_num_threads", "set_workspace_limit", "get_workspace_limit",
    "set_deterministic", "get_deterministic", "set_allow_tf32", "get_allow_tf32",
    "conv2d_forward", "conv2d_backward", "max_pool2d_forward", "max_pool2d_backward",
    "avg_pool2d_forward", "avg_pool2d_backward", "batch_norm_forward", "batch_norm_backward",
    "roi_pool_forward", "roi_pool_backward", "roi_align_forward", "roi_align_backward",
    "nms", "batched_nms", "box_iou", "asarray", "to_numpy",
]
