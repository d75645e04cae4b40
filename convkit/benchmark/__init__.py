"""``convkit bench``: the layer-shape suite, timed on convkit backends next to torch.

The shape table (:data:`CASES`, tiny twins in :data:`QUICK_CASES`) is the one shape table of the
project: ``bench/shapes.py`` re-exports it for ``pytest bench/``.  Every op runs "forward" and
"forward+backward" (NMS: forward only).

One module per concern: ``cases`` (the shape table, inputs, counted work), ``adapters`` (how a
convkit backend or torch runs a case; result checks), ``timing`` (allocator settings, one timed
call, the interleaved measurement), ``memory`` (peak RSS in a fresh process), ``probe`` (the
one-core probe and machine facts), ``summary`` (geometric means, targets), ``report`` and
``plot`` (text, Markdown, PNG), ``cli`` (arguments and the run).  ``bench/`` imports from here,
never the reverse.

What is counted
---------------
* conv: ``2*N*F*Ho*Wo*(C/groups)*K*K`` flops per forward (bias ignored); forward+backward counts
  3x (forward, grad_x, grad_weight).  stem_224 is a first layer: its backward skips grad_x
  (``needs_input_grad=False``; torch's input does not require grad), so it counts 2x.
* pool / batch norm: compulsory bytes, each tensor read or written once -- forward x + y
  (+ int64 indices for max pool), backward grad_y (+ indices; + x for batch norm) + grad_x.
* RoI ops and NMS: milliseconds only.

How it is timed (shared/BENCHMARKING.md)
----------------------------------------
Inputs are made once per op from a seeded generator; forwards reuse one output buffer (``out=``).
Each backend's first call is timed on its own and reported as first-call latency (lazily
compiled GPU kernels, first-touch page faults); then ``--warmup`` untimed rounds, then
``--repeat`` timed rounds, backends interleaved in the same process (order rotated each round),
and the median of each backend's times is what is compared.  Ratios are ``reference_time /
backend_time``: > 1 means the convkit backend is faster.  torch runs with
``torch.set_num_threads(convkit.get_num_threads())``; forwards under ``torch.no_grad()``,
forward+backward through autograd.  torchvision is used for the RoI ops and NMS where it is
importable (it is reported under the ``torch`` column); the ``numpy`` backend is the other
reference for those.  GPU calls are synchronised before the clock is read (``--device-sync``,
on by default when a GPU backend runs), with CUDA events where CuPy / torch.cuda provide them.
"""
from __future__ import annotations

from .adapters import (TORCH_NAMES, Runner, _has_torchvision, _torch, compare_outputs,
                       is_gpu_backend, make_runner, reference_outputs, to_host, torch_ref)
from .cases import (CASES, F32, FAMILIES, FB, FWD, QUICK_CASES, BatchNormCase, ConvCase, NmsCase,
                    PoolCase, RoiCase, clustered_boxes, random_rois, select_cases)
from .cli import add_arguments, default_backends, parse_backends, parse_only, run
from .memory import measure_memory
from .probe import core_probe, machine_info
from .report import markdown_report, print_report, print_summary, result_columns
from .summary import (GEOMEAN_TARGET, MEMORY_TARGET, TARGETS, evaluate_targets, family_summaries,
                      geomean, layer_targets, summarize, user_targets)
from .timing import Row, measure, set_mallopt, time_call

__all__ = [
    "CASES", "QUICK_CASES", "FAMILIES", "FWD", "FB", "F32", "ConvCase", "PoolCase",
    "BatchNormCase", "RoiCase", "NmsCase", "select_cases", "random_rois", "clustered_boxes",
    "TORCH_NAMES", "Runner", "make_runner", "is_gpu_backend", "to_host", "compare_outputs",
    "reference_outputs", "torch_ref", "Row", "measure", "time_call", "set_mallopt",
    "measure_memory", "core_probe", "machine_info", "TARGETS", "GEOMEAN_TARGET", "MEMORY_TARGET",
    "geomean", "summarize", "evaluate_targets", "layer_targets", "user_targets",
    "family_summaries", "result_columns", "print_report", "print_summary", "markdown_report",
    "add_arguments", "default_backends", "parse_backends", "parse_only", "run",
]
