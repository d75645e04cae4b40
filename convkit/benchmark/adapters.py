"""How each backend runs a case: convkit backends through the public ops, torch through
``torch.nn.functional`` (torchvision for the RoI ops, NMS and deform_conv2d), and the checks of one result
against another.

:func:`make_runner` turns a case and its inputs into a :class:`Runner`: one callable per pass,
the context to enter around it, and how to wait for a GPU.  Forwards write into one reused output
buffer (``out=``); torch forwards run under ``torch.no_grad()``, forward+backward through
autograd.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

import convkit as ck
from convkit._config import blas_single_thread

from .cases import F32, FB, FWD, ConvTransposeCase


def _conv_convkit(case, be, d):
    if isinstance(case, ConvTransposeCase):
        return _conv_transpose_convkit(case, be, d)
    x, w, b, gy = (be.asarray(d[k]) for k in ("x", "w", "b", "gy"))
    y = be.xp.empty(gy.shape, F32)
    s, p, g = case.stride, case.pad, case.groups

    def fwd():
        return ck.conv2d_forward(x, w, b, s, p, 1, g, out=y)

    def fwd_bwd():
        ck.conv2d_forward(x, w, b, s, p, 1, g, out=y)
        gx, gw, gb = ck.conv2d_backward(gy, x, w, s, p, 1, g,
                                        needs_input_grad=not case.first_layer, has_bias=True)
        return (gw, gb) if case.first_layer else (gx, gw, gb)
    return {FWD: fwd, FB: fwd_bwd}


def _conv_torch(case, torch, dev, d):
    import torch.nn.functional as tF

    if isinstance(case, ConvTransposeCase):
        return _conv_transpose_torch(case, torch, dev, d)

    x = torch.from_numpy(d["x"]).to(dev).requires_grad_(not case.first_layer)
    w = torch.from_numpy(d["w"]).to(dev).requires_grad_(True)
    b = torch.from_numpy(d["b"]).to(dev).requires_grad_(True)
    gy = torch.from_numpy(d["gy"]).to(dev)
    s, p, g = case.stride, case.pad, case.groups
    wrt = [w, b] if case.first_layer else [x, w, b]

    def fwd():
        with torch.no_grad():
            return tF.conv2d(x, w, b, s, p, 1, g)

    def fwd_bwd():
        return torch.autograd.grad(tF.conv2d(x, w, b, s, p, 1, g), wrt, gy)
    return {FWD: fwd, FB: fwd_bwd}


# conv_transpose2d: a "conv" family case (ConvTransposeCase) with its own runners
def _conv_transpose_convkit(case, be, d):
    x, w, b, gy = (be.asarray(d[k]) for k in ("x", "w", "b", "gy"))
    s, p, op = case.stride, case.pad, case.output_padding

    def fwd():
        return ck.conv_transpose2d_forward(x, w, b, s, p, op)

    def fwd_bwd():
        ck.conv_transpose2d_forward(x, w, b, s, p, op)
        return ck.conv_transpose2d_backward(gy, x, w, s, p, op)
    return {FWD: fwd, FB: fwd_bwd}


def _conv_transpose_torch(case, torch, dev, d):
    import torch.nn.functional as tF

    x, w, b = (torch.from_numpy(d[k]).to(dev).requires_grad_(True) for k in ("x", "w", "b"))
    gy = torch.from_numpy(d["gy"]).to(dev)
    s, p, op = case.stride, case.pad, case.output_padding

    def fwd():
        with torch.no_grad():
            return tF.conv_transpose2d(x, w, b, s, p, op)

    def fwd_bwd():
        return torch.autograd.grad(tF.conv_transpose2d(x, w, b, s, p, op), [x, w, b], gy)
    return {FWD: fwd, FB: fwd_bwd}


def _pool_convkit(case, be, d):
    x, gy = be.asarray(d["x"]), be.asarray(d["gy"])
    y = be.xp.empty(case.out_shape, F32)
    k, s, p = case.k, case.s, case.p
    if case.kind == "max":
        def fwd():
            return ck.max_pool2d_forward(x, k, s, p, out=y)

        def fwd_bwd():
            _, idx = ck.max_pool2d_forward(x, k, s, p, out=y)
            return ck.max_pool2d_backward(gy, idx, x.shape)
    else:
        def fwd():
            return ck.avg_pool2d_forward(x, k, s, p, out=y)

        def fwd_bwd():
            ck.avg_pool2d_forward(x, k, s, p, out=y)
            return ck.avg_pool2d_backward(gy, x.shape, k, s, p)
    return {FWD: fwd, FB: fwd_bwd}


def _pool_torch(case, torch, dev, d):
    import torch.nn.functional as tF

    x = torch.from_numpy(d["x"]).to(dev).requires_grad_(True)
    gy = torch.from_numpy(d["gy"]).to(dev)
    k, s, p = case.k, case.s, case.p
    if case.kind == "max":
        def fwd():   # with indices: the same result convkit's forward returns
            with torch.no_grad():
                return tF.max_pool2d(x, k, s, p, return_indices=True)

        def fwd_bwd():
            return torch.autograd.grad(tF.max_pool2d(x, k, s, p), [x], gy)
    else:
        def fwd():
            with torch.no_grad():
                return tF.avg_pool2d(x, k, s, p)

        def fwd_bwd():
            return torch.autograd.grad(tF.avg_pool2d(x, k, s, p), [x], gy)
    return {FWD: fwd, FB: fwd_bwd}


def _bn_convkit(case, be, d):
    x, w, b, gy = (be.asarray(d[k]) for k in ("x", "w", "b", "gy"))
    C = case.shape[1]
    rm, rv = be.xp.zeros(C, F32), be.xp.ones(C, F32)
    y = be.xp.empty(case.shape, F32)

    def fwd():
        return ck.batch_norm_forward(x, w, b, rm, rv, True, out=y)[0]

    def fwd_bwd():
        _, mean, invstd = ck.batch_norm_forward(x, w, b, rm, rv, True, out=y)
        return ck.batch_norm_backward(gy, x, w, mean, invstd, True)
    return {FWD: fwd, FB: fwd_bwd}


def _bn_torch(case, torch, dev, d):
    import torch.nn.functional as tF

    x = torch.from_numpy(d["x"]).to(dev).requires_grad_(True)
    w = torch.from_numpy(d["w"]).to(dev).requires_grad_(True)
    b = torch.from_numpy(d["b"]).to(dev).requires_grad_(True)
    gy = torch.from_numpy(d["gy"]).to(dev)
    C = case.shape[1]
    rm = torch.zeros(C, device=dev)
    rv = torch.ones(C, device=dev)

    def fwd():
        with torch.no_grad():
            return tF.batch_norm(x, rm, rv, w, b, training=True)

    def fwd_bwd():
        return torch.autograd.grad(tF.batch_norm(x, rm, rv, w, b, training=True), [x, w, b], gy)
    return {FWD: fwd, FB: fwd_bwd}


def _roi_convkit(case, be, d):
    x, rois, gy = (be.asarray(d[k]) for k in ("x", "rois", "gy"))
    if case.kind in ("ps_align", "ps_pool"):
        return _psroi_convkit(case, x, rois, gy)
    y = be.xp.empty(case.out_shape, F32)
    o, sc, sr = case.out, case.scale, case.sampling_ratio
    if case.kind == "align":
        def fwd():
            return ck.roi_align_forward(x, rois, o, sc, sr, False, out=y)

        def fwd_bwd():
            ck.roi_align_forward(x, rois, o, sc, sr, False, out=y)
            return ck.roi_align_backward(gy, rois, x.shape, o, sc, sr, False)
    elif case.kind == "avg_pool":
        def fwd():
            return ck.roi_avg_pool_forward(x, rois, o, sc)

        def fwd_bwd():
            ck.roi_avg_pool_forward(x, rois, o, sc)
            return ck.roi_avg_pool_backward(gy, rois, x.shape, o, sc)
    elif case.kind == "max_align":
        def fwd():
            return ck.roi_max_align_forward(x, rois, o, sc, sr, False)

        def fwd_bwd():
            _, argmax = ck.roi_max_align_forward(x, rois, o, sc, sr, False)
            return ck.roi_max_align_backward(gy, argmax, rois, x.shape, o, sc, sr, False)
    else:
        def fwd():   # y only: torchvision's roi_pool returns no argmax to compare
            return ck.roi_pool_forward(x, rois, o, sc, out=y)[0]

        def fwd_bwd():
            _, argmax = ck.roi_pool_forward(x, rois, o, sc, out=y)
            return ck.roi_pool_backward(gy, argmax, x.shape, rois=rois)
    return {FWD: fwd, FB: fwd_bwd}


def _roi_torch(case, torch, dev, d):
    import torchvision.ops as tvo   # ImportError: the caller reports torchvision missing

    x = torch.from_numpy(d["x"]).to(dev).requires_grad_(True)
    rois = torch.from_numpy(d["rois"]).to(dev)
    gy = torch.from_numpy(d["gy"]).to(dev)
    o, sc, sr = case.out, case.scale, case.sampling_ratio
    if case.kind == "align":
        def op():
            return tvo.roi_align(x, rois, o, sc, sr, False)
    elif case.kind in ("ps_align", "ps_pool"):
        op = _psroi_torch(case, tvo, x, rois)
    elif case.kind != "pool":       # the cli notes it; the numpy backend is the oracle
        raise NotImplementedError(f"torchvision has no {case.name}")
    else:
        def op():
            return tvo.roi_pool(x, rois, o, sc)

    def fwd():
        with torch.no_grad():
            return op()

    def fwd_bwd():
        return torch.autograd.grad(op(), [x], gy)
    return {FWD: fwd, FB: fwd_bwd}


# ---- position-sensitive RoI ops (issue 14)
def _psroi_convkit(case, x, rois, gy):
    o, sc, sr = case.out, case.scale, case.sampling_ratio
    if case.kind == "ps_align":
        def fwd():
            return ck.ps_roi_align_forward(x, rois, o, sc, sr)

        def fwd_bwd():
            ck.ps_roi_align_forward(x, rois, o, sc, sr)
            return ck.ps_roi_align_backward(gy, rois, x.shape, o, sc, sr)
    else:
        def fwd():
            return ck.ps_roi_pool_forward(x, rois, o, sc)

        def fwd_bwd():
            ck.ps_roi_pool_forward(x, rois, o, sc)
            return ck.ps_roi_pool_backward(gy, rois, x.shape, o, sc)
    return {FWD: fwd, FB: fwd_bwd}


def _psroi_torch(case, tvo, x, rois):
    o, sc, sr = case.out, case.scale, case.sampling_ratio
    if case.kind == "ps_align":
        return lambda: tvo.ps_roi_align(x, rois, o, sc, sr)
    return lambda: tvo.ps_roi_pool(x, rois, o, sc)


def _nms_convkit(case, be, d):
    boxes, scores = be.asarray(d["boxes"]), be.asarray(d["scores"])
    return {FWD: lambda: ck.nms(boxes, scores, case.iou)}


def _nms_torch(case, torch, dev, d):
    import torchvision.ops as tvo

    boxes = torch.from_numpy(d["boxes"]).to(dev)
    scores = torch.from_numpy(d["scores"]).to(dev)
    return {FWD: lambda: tvo.nms(boxes, scores, case.iou)}


def _deform_convkit(case, be, d):
    x, off, m, w, b, gy = (be.asarray(d[k]) for k in ("x", "offset", "mask", "w", "b", "gy"))
    s, p = case.stride, case.pad

    def fwd():
        return ck.deform_conv2d_forward(x, off, w, b, s, p, 1, m)

    def fwd_bwd():
        ck.deform_conv2d_forward(x, off, w, b, s, p, 1, m)
        return ck.deform_conv2d_backward(gy, x, off, w, s, p, 1, m)
    return {FWD: fwd, FB: fwd_bwd}


def _deform_torch(case, torch, dev, d):
    import torchvision.ops as tvo

    x, off, m, w, b = (torch.from_numpy(d[k]).to(dev).requires_grad_(True)
                       for k in ("x", "offset", "mask", "w", "b"))
    gy = torch.from_numpy(d["gy"]).to(dev)
    s, p = case.stride, case.pad

    def fwd():
        with torch.no_grad():
            return tvo.deform_conv2d(x, off, w, b, s, p, 1, m)

    def fwd_bwd():   # the order of convkit's backward: x, offset, weight, bias, mask
        return torch.autograd.grad(tvo.deform_conv2d(x, off, w, b, s, p, 1, m),
                                   [x, off, w, b, m], gy)
    return {FWD: fwd, FB: fwd_bwd}


# One pair per family: ``(case, backend, inputs) -> {pass: callable}``.
_CONVKIT = {"conv": _conv_convkit, "pool": _pool_convkit, "bn": _bn_convkit, "roi": _roi_convkit,
            "nms": _nms_convkit, "deform": _deform_convkit}
_TORCH = {"conv": _conv_torch, "pool": _pool_torch, "bn": _bn_torch, "roi": _roi_torch,
          "nms": _nms_torch, "deform": _deform_torch}


# ---- adaptive pooling (issue 14)
def _adaptive_convkit(case, be, d):
    x, gy = be.asarray(d["x"]), be.asarray(d["gy"])
    o = case.out
    if case.kind == "max":
        def fwd():
            return ck.adaptive_max_pool2d_forward(x, o)

        def fwd_bwd():
            _, idx = ck.adaptive_max_pool2d_forward(x, o)
            return ck.adaptive_max_pool2d_backward(gy, idx, x.shape)
    else:
        def fwd():
            return ck.adaptive_avg_pool2d_forward(x, o)

        def fwd_bwd():
            ck.adaptive_avg_pool2d_forward(x, o)
            return ck.adaptive_avg_pool2d_backward(gy, x.shape)
    return {FWD: fwd, FB: fwd_bwd}


def _adaptive_torch(case, torch, dev, d):
    import torch.nn.functional as tF

    x = torch.from_numpy(d["x"]).to(dev).requires_grad_(True)
    gy = torch.from_numpy(d["gy"]).to(dev)
    o = case.out
    if case.kind == "max":
        def fwd():   # with indices: the same result convkit's forward returns
            with torch.no_grad():
                return tF.adaptive_max_pool2d(x, o, return_indices=True)

        def fwd_bwd():
            return torch.autograd.grad(tF.adaptive_max_pool2d(x, o), [x], gy)
    else:
        def fwd():
            with torch.no_grad():
                return tF.adaptive_avg_pool2d(x, o)

        def fwd_bwd():
            return torch.autograd.grad(tF.adaptive_avg_pool2d(x, o), [x], gy)
    return {FWD: fwd, FB: fwd_bwd}


_CONVKIT["adaptive"] = _adaptive_convkit
_TORCH["adaptive"] = _adaptive_torch


TORCH_NAMES = ("torch", "torch-cuda")


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _has_torchvision() -> bool:
    try:
        import torchvision.ops  # noqa: F401
    except Exception:   # absent, or built for another torch
        return False
    return True


@dataclass
class Runner:
    """One backend's callables for one case: ``fns[pass]()`` runs the op once."""
    backend: str
    fns: dict
    context: object               # () -> context manager entered around each call
    sync: object                  # () -> None: wait for queued device work
    events: object = None         # () -> (start, stop, elapsed_ms) CUDA event triple, or None
    gpu: bool = False


def is_gpu_backend(name: str) -> bool:
    if name == "torch-cuda":
        return True
    if name in TORCH_NAMES:
        return False
    return ck.get_backend(name).xp is not np


def make_runner(case, backend: str, data: dict) -> Runner:
    """Build ``backend``'s callables for ``case`` on inputs ``data`` (NumPy arrays from
    ``case.inputs``).  Raises ImportError when torchvision is needed and missing."""
    if backend in TORCH_NAMES:
        torch = _torch()
        dev = "cuda" if backend == "torch-cuda" else "cpu"
        fns = _TORCH[case.family](case, torch, dev, data)
        if dev == "cuda":
            def events():
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                return a, b, a.elapsed_time
            return Runner(backend, fns, contextlib.nullcontext, torch.cuda.synchronize, events,
                          gpu=True)
        return Runner(backend, fns, contextlib.nullcontext, lambda: None)
    be = ck.get_backend(backend)
    fns = _CONVKIT[case.family](case, be, data)
    gpu = be.xp is not np
    events = None
    if gpu and getattr(be.xp, "__name__", "") == "cupy":
        cupy = be.xp

        def events():
            a, b = cupy.cuda.Event(), cupy.cuda.Event()
            return a, b, lambda stop: cupy.cuda.get_elapsed_time(a, stop)
    context = (lambda: ck.use_backend(backend))
    if backend == "numpy":
        context = _pinned_reference
    return Runner(backend, fns, context, be.synchronize, events, gpu=gpu)


@contextlib.contextmanager
def _pinned_reference():
    """The numpy reference runs with every BLAS pinned to one thread: its GEMMs would otherwise
    wake OpenBLAS's threads, which keep spinning after the call and take the cores from the op
    timed next (the cpu op's OpenMP team; bench/RESULTS.md, deform_conv's bimodal forward).
    The reference's GEMMs are a small part of its time (~6% in deform_conv)."""
    with ck.use_backend("numpy"), blas_single_thread:
        yield


def torch_ref(backend: str) -> str:
    """The torch runner a convkit backend is compared with (same device)."""
    return "torch-cuda" if backend == "cuda" else "torch"


def to_host(out):
    """Outputs of any runner as a list of NumPy arrays (None entries dropped)."""
    if out is None:
        return []
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in to_host(o)]
    if hasattr(out, "detach"):   # torch tensor
        return [out.detach().cpu().numpy()]
    if hasattr(out, "get") and hasattr(out, "__cuda_array_interface__"):
        return [out.get()]
    return [np.array(out)]   # a copy: forwards write into reused out= buffers


def compare_outputs(got, want, rtol=1e-3):
    """None when ``got`` matches ``want`` (floats within ``rtol`` of the largest reference
    magnitude, integers exactly), else a short description of the difference."""
    if len(got) != len(want):
        return f"{len(got)} outputs, reference has {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        if g.shape != w.shape:
            return f"output {i}: shape {g.shape}, reference {w.shape}"
        if w.dtype.kind in "iu":
            if not np.array_equal(g, w):
                return f"output {i}: {int(np.sum(g != w))} of {w.size} integers differ"
            continue
        scale = max(float(np.max(np.abs(w))) if w.size else 0.0, 1e-6)
        err = float(np.max(np.abs(g.astype(np.float64) - w))) if w.size else 0.0
        if not err <= rtol * scale:   # NaN fails too
            return f"output {i}: max abs error {err:.3g} (reference max {scale:.3g})"
    return None


_REFERENCE_CACHE: dict = {}


def reference_outputs(case, pas, exclude, seed=0):
    """(name, host outputs) of the oracle for ``case``/``pas`` on ``case.inputs(seed)``: torch
    (torchvision for RoI ops and NMS) where importable, else the numpy backend; None when the
    only oracle would be ``exclude``, the backend under test.  Cached per process."""
    order = ["torch"] if (case.family not in ("roi", "nms", "deform")
                          or _has_torchvision()) else []
    if getattr(case, "kind", None) in ("avg_pool", "max_align"):    # not in torchvision
        order = []
    order.append("numpy")
    for name in order:
        if name == exclude or (name == "torch" and _torch() is None):
            continue
        key = (case, pas, name, seed)
        if key not in _REFERENCE_CACHE:
            runner = make_runner(case, name, case.inputs(np.random.default_rng(seed)))
            with runner.context():
                _REFERENCE_CACHE[key] = to_host(runner.fns[pas]())
        return name, _REFERENCE_CACHE[key]
    return None


