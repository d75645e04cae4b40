"""``convkit bench``: the layer-shape suite, timed on convkit backends next to torch.

The table below (:data:`CASES`, tiny twins in :data:`QUICK_CASES`) is the one shape table of the
project: ``bench/shapes.py`` re-exports it for ``pytest bench/``.  Every op runs "forward" and
"forward+backward" (NMS: forward only).

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

import argparse
import contextlib
import ctypes
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

FWD = "forward"
FB = "forward+backward"
FAMILIES = ("conv", "pool", "bn", "roi", "nms")
F32 = np.float32


# ============================================================================ the shape table
def _conv_out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


@dataclass(frozen=True)
class ConvCase:
    """conv2d, float32 NCHW, square kernel, symmetric padding, bias, dilation 1."""
    name: str
    N: int
    C: int
    H: int
    W: int
    F: int
    K: int
    stride: int = 1
    pad: int = 0
    groups: int = 1
    first_layer: bool = False     # backward without grad_x (the input needs no gradient)
    family: str = "conv"
    passes: tuple = (FWD, FB)

    @property
    def out_hw(self):
        return (_conv_out(self.H, self.K, self.stride, self.pad),
                _conv_out(self.W, self.K, self.stride, self.pad))

    def describe(self):
        s = (f"x({self.N},{self.C},{self.H},{self.W}) w({self.F},{self.C // self.groups},"
             f"{self.K},{self.K}) s{self.stride} p{self.pad}")
        return s + (f" g{self.groups}" if self.groups > 1 else "") + (
            " no-dx" if self.first_layer else "")

    def flops_forward(self):
        Ho, Wo = self.out_hw
        return 2 * self.N * self.F * Ho * Wo * (self.C // self.groups) * self.K * self.K

    def work(self, pas):
        f = self.flops_forward()
        return "GFLOP/s", f if pas == FWD else f * (2 if self.first_layer else 3)

    def inputs(self, rng):
        Ho, Wo = self.out_hw
        scale = 1.0 / math.sqrt(self.C // self.groups * self.K * self.K)
        return {"x": rng.standard_normal((self.N, self.C, self.H, self.W), F32),
                "w": (rng.standard_normal((self.F, self.C // self.groups, self.K, self.K), F32)
                      * F32(scale)),
                "b": rng.standard_normal(self.F, F32),
                "gy": rng.standard_normal((self.N, self.F, Ho, Wo), F32)}

    def convkit_fns(self, be, d):
        import convkit as ck

        x, w, b, gy = (be.asarray(d[k]) for k in ("x", "w", "b", "gy"))
        y = be.xp.empty(gy.shape, F32)
        s, p, g = self.stride, self.pad, self.groups

        def fwd():
            return ck.conv2d_forward(x, w, b, s, p, 1, g, out=y)

        def fwd_bwd():
            ck.conv2d_forward(x, w, b, s, p, 1, g, out=y)
            gx, gw, gb = ck.conv2d_backward(gy, x, w, s, p, 1, g,
                                            needs_input_grad=not self.first_layer, has_bias=True)
            return (gw, gb) if self.first_layer else (gx, gw, gb)
        return {FWD: fwd, FB: fwd_bwd}

    def torch_fns(self, torch, dev, d):
        import torch.nn.functional as tF

        x = torch.from_numpy(d["x"]).to(dev).requires_grad_(not self.first_layer)
        w = torch.from_numpy(d["w"]).to(dev).requires_grad_(True)
        b = torch.from_numpy(d["b"]).to(dev).requires_grad_(True)
        gy = torch.from_numpy(d["gy"]).to(dev)
        s, p, g = self.stride, self.pad, self.groups
        wrt = [w, b] if self.first_layer else [x, w, b]

        def fwd():
            with torch.no_grad():
                return tF.conv2d(x, w, b, s, p, 1, g)

        def fwd_bwd():
            return torch.autograd.grad(tF.conv2d(x, w, b, s, p, 1, g), wrt, gy)
        return {FWD: fwd, FB: fwd_bwd}


@dataclass(frozen=True)
class PoolCase:
    """max or avg pooling (avg: count_include_pad=True, torch's default), float32 NCHW."""
    name: str
    kind: str          # "max" | "avg"
    shape: tuple
    k: int
    s: int
    p: int = 0
    family: str = "pool"
    passes: tuple = (FWD, FB)

    @property
    def out_shape(self):
        N, C, H, W = self.shape
        return (N, C, _conv_out(H, self.k, self.s, self.p), _conv_out(W, self.k, self.s, self.p))

    def describe(self):
        return f"{self.kind} {self.k}x{self.k}/s{self.s}/p{self.p} on {self.shape}"

    def work(self, pas):
        nx, ny = math.prod(self.shape) * 4, math.prod(self.out_shape) * 4
        idx = 2 * ny if self.kind == "max" else 0   # int64 indices: twice a float32 output
        fwd = nx + ny + idx
        bwd = ny + idx + nx
        return "GB/s", fwd if pas == FWD else fwd + bwd

    def inputs(self, rng):
        return {"x": rng.standard_normal(self.shape, F32),
                "gy": rng.standard_normal(self.out_shape, F32)}

    def convkit_fns(self, be, d):
        import convkit as ck

        x, gy = be.asarray(d["x"]), be.asarray(d["gy"])
        y = be.xp.empty(self.out_shape, F32)
        k, s, p = self.k, self.s, self.p
        if self.kind == "max":
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

    def torch_fns(self, torch, dev, d):
        import torch.nn.functional as tF

        x = torch.from_numpy(d["x"]).to(dev).requires_grad_(True)
        gy = torch.from_numpy(d["gy"]).to(dev)
        k, s, p = self.k, self.s, self.p
        if self.kind == "max":
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


@dataclass(frozen=True)
class BatchNormCase:
    """Spatial batch norm in training mode (batch statistics, running stats updated), affine."""
    name: str
    shape: tuple
    family: str = "bn"
    passes: tuple = (FWD, FB)

    def describe(self):
        return f"train on {self.shape}"

    def work(self, pas):
        n = math.prod(self.shape) * 4
        return "GB/s", 2 * n if pas == FWD else 2 * n + 3 * n

    def inputs(self, rng):
        C = self.shape[1]
        return {"x": rng.standard_normal(self.shape, F32) * F32(2) + F32(0.5),
                "w": rng.uniform(0.5, 1.5, C).astype(F32),
                "b": rng.standard_normal(C, F32),
                "gy": rng.standard_normal(self.shape, F32)}

    def convkit_fns(self, be, d):
        import convkit as ck

        x, w, b, gy = (be.asarray(d[k]) for k in ("x", "w", "b", "gy"))
        C = self.shape[1]
        rm, rv = be.xp.zeros(C, F32), be.xp.ones(C, F32)
        y = be.xp.empty(self.shape, F32)

        def fwd():
            return ck.batch_norm_forward(x, w, b, rm, rv, True, out=y)[0]

        def fwd_bwd():
            _, mean, invstd = ck.batch_norm_forward(x, w, b, rm, rv, True, out=y)
            return ck.batch_norm_backward(gy, x, w, mean, invstd, True)
        return {FWD: fwd, FB: fwd_bwd}

    def torch_fns(self, torch, dev, d):
        import torch.nn.functional as tF

        x = torch.from_numpy(d["x"]).to(dev).requires_grad_(True)
        w = torch.from_numpy(d["w"]).to(dev).requires_grad_(True)
        b = torch.from_numpy(d["b"]).to(dev).requires_grad_(True)
        gy = torch.from_numpy(d["gy"]).to(dev)
        C = self.shape[1]
        rm = torch.zeros(C, device=dev)
        rv = torch.ones(C, device=dev)

        def fwd():
            with torch.no_grad():
                return tF.batch_norm(x, rm, rv, w, b, training=True)

        def fwd_bwd():
            return torch.autograd.grad(tF.batch_norm(x, rm, rv, w, b, training=True), [x, w, b], gy)
        return {FWD: fwd, FB: fwd_bwd}


def random_rois(rng, K, N, image_hw, min_size=16):
    """(K, 5) float32 rois [batch_index, x1, y1, x2, y2] lying inside an image of ``image_hw``:
    sizes log-uniform between ``min_size`` and half the image, positions uniform."""
    ih, iw = image_hw
    w = np.exp(rng.uniform(np.log(min_size), np.log(iw / 2), K))
    h = np.exp(rng.uniform(np.log(min_size), np.log(ih / 2), K))
    x1 = rng.uniform(0, iw - w)
    y1 = rng.uniform(0, ih - h)
    bi = rng.integers(0, N, K)
    return np.stack([bi, x1, y1, x1 + w, y1 + h], axis=1).astype(F32)


@dataclass(frozen=True)
class RoiCase:
    """roi_align (sampling_ratio 2, aligned=False: torchvision's Faster R-CNN setting) or
    roi_pool, on a stride-16 feature map of an ``image_hw`` image."""
    name: str
    kind: str            # "align" | "pool"
    shape: tuple         # feature map (N, C, H, W)
    K: int
    image_hw: tuple
    out: int = 7
    scale: float = 1.0 / 16
    sampling_ratio: int = 2
    family: str = "roi"
    passes: tuple = (FWD, FB)

    @property
    def out_shape(self):
        return (self.K, self.shape[1], self.out, self.out)

    def describe(self):
        return (f"{self.kind} {self.out}x{self.out} scale 1/{round(1 / self.scale)} on "
                f"{self.shape}, {self.K} boxes in {self.image_hw[0]}x{self.image_hw[1]}")

    def work(self, pas):
        return None, None

    def inputs(self, rng):
        return {"x": rng.standard_normal(self.shape, F32),
                "rois": random_rois(rng, self.K, self.shape[0], self.image_hw),
                "gy": rng.standard_normal(self.out_shape, F32)}

    def convkit_fns(self, be, d):
        import convkit as ck

        x, rois, gy = (be.asarray(d[k]) for k in ("x", "rois", "gy"))
        y = be.xp.empty(self.out_shape, F32)
        o, sc, sr = self.out, self.scale, self.sampling_ratio
        if self.kind == "align":
            def fwd():
                return ck.roi_align_forward(x, rois, o, sc, sr, False, out=y)

            def fwd_bwd():
                ck.roi_align_forward(x, rois, o, sc, sr, False, out=y)
                return ck.roi_align_backward(gy, rois, x.shape, o, sc, sr, False)
        else:
            def fwd():   # y only: torchvision's roi_pool returns no argmax to compare
                return ck.roi_pool_forward(x, rois, o, sc, out=y)[0]

            def fwd_bwd():
                _, argmax = ck.roi_pool_forward(x, rois, o, sc, out=y)
                return ck.roi_pool_backward(gy, argmax, x.shape, rois=rois)
        return {FWD: fwd, FB: fwd_bwd}

    def torch_fns(self, torch, dev, d):
        import torchvision.ops as tvo   # ImportError: the caller reports torchvision missing

        x = torch.from_numpy(d["x"]).to(dev).requires_grad_(True)
        rois = torch.from_numpy(d["rois"]).to(dev)
        gy = torch.from_numpy(d["gy"]).to(dev)
        o, sc, sr = self.out, self.scale, self.sampling_ratio
        if self.kind == "align":
            def op():
                return tvo.roi_align(x, rois, o, sc, sr, False)
        else:
            def op():
                return tvo.roi_pool(x, rois, o, sc)

        def fwd():
            with torch.no_grad():
                return op()

        def fwd_bwd():
            return torch.autograd.grad(op(), [x], gy)
        return {FWD: fwd, FB: fwd_bwd}


def clustered_boxes(rng, n, image_hw, n_objects):
    """``n`` xyxy float32 boxes jittered around ``n_objects`` objects (what an RPN proposes
    before NMS: many heavily overlapping boxes per object) and uniform scores."""
    ih, iw = image_hw
    ow = np.exp(rng.uniform(np.log(24), np.log(iw / 3), n_objects))
    oh = ow * np.exp(rng.uniform(np.log(0.5), np.log(2.0), n_objects))
    cx = rng.uniform(0, iw, n_objects)
    cy = rng.uniform(0, ih, n_objects)
    obj = rng.integers(0, n_objects, n)
    w = ow[obj] * np.exp(rng.normal(0, 0.15, n))
    h = oh[obj] * np.exp(rng.normal(0, 0.15, n))
    x = cx[obj] + rng.normal(0, 0.1, n) * ow[obj]
    y = cy[obj] + rng.normal(0, 0.1, n) * oh[obj]
    boxes = np.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], axis=1)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, iw)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, ih)
    return boxes.astype(F32), rng.random(n).astype(F32)


@dataclass(frozen=True)
class NmsCase:
    name: str
    n: int
    iou: float
    image_hw: tuple
    n_objects: int
    family: str = "nms"
    passes: tuple = (FWD,)

    def describe(self):
        return (f"{self.n} boxes ({self.n_objects} clusters) in {self.image_hw[0]}x"
                f"{self.image_hw[1]}, IoU {self.iou}")

    def work(self, pas):
        return None, None

    def inputs(self, rng):
        boxes, scores = clustered_boxes(rng, self.n, self.image_hw, self.n_objects)
        return {"boxes": boxes, "scores": scores}

    def convkit_fns(self, be, d):
        import convkit as ck

        boxes, scores = be.asarray(d["boxes"]), be.asarray(d["scores"])
        return {FWD: lambda: ck.nms(boxes, scores, self.iou)}

    def torch_fns(self, torch, dev, d):
        import torchvision.ops as tvo

        boxes = torch.from_numpy(d["boxes"]).to(dev)
        scores = torch.from_numpy(d["scores"]).to(dev)
        return {FWD: lambda: tvo.nms(boxes, scores, self.iou)}


_BIG = (8, 64, 112, 112)
CASES = (
    ConvCase("lenet_c1", 64, 1, 28, 28, 6, 5, 1, 2, 1),
    ConvCase("vgg_56", 8, 64, 56, 56, 64, 3, 1, 1, 1),
    ConvCase("res_28", 8, 128, 28, 28, 128, 3, 1, 1, 1),
    ConvCase("res_14", 8, 256, 14, 14, 256, 3, 1, 1, 1),
    ConvCase("pw_14", 8, 256, 14, 14, 1024, 1, 1, 0, 1),
    ConvCase("stem_224", 8, 3, 224, 224, 64, 7, 2, 3, 1, first_layer=True),
    ConvCase("rpn_3x3", 1, 512, 38, 50, 512, 3, 1, 1, 1),
    ConvCase("rpn_cls1x1", 1, 512, 38, 50, 18, 1, 1, 0, 1),
    ConvCase("dw_56", 8, 128, 56, 56, 128, 3, 1, 1, 128),
    PoolCase("maxpool_3x3s2", "max", _BIG, 3, 2, 1),
    PoolCase("maxpool_2x2s2", "max", _BIG, 2, 2, 0),
    PoolCase("avgpool_3x3s2", "avg", _BIG, 3, 2, 1),
    BatchNormCase("bn_train", _BIG),
    RoiCase("roi_align", "align", (2, 256, 50, 68), 512, (800, 1088)),
    RoiCase("roi_pool", "pool", (2, 256, 50, 68), 512, (800, 1088)),
    NmsCase("nms", 6000, 0.7, (800, 1088), 300),
)
"""The layer suite (float32 NCHW).  Names are stable: ``--ops``, JSON and RESULTS.md use them."""

_TINY = (2, 4, 12, 12)
QUICK_CASES = (
    ConvCase("lenet_c1", 2, 1, 12, 12, 3, 5, 1, 2, 1),
    ConvCase("vgg_56", 2, 4, 10, 10, 4, 3, 1, 1, 1),
    ConvCase("res_28", 2, 8, 7, 7, 8, 3, 1, 1, 1),
    ConvCase("res_14", 2, 8, 6, 6, 8, 3, 1, 1, 1),
    ConvCase("pw_14", 2, 8, 6, 6, 16, 1, 1, 0, 1),
    ConvCase("stem_224", 2, 3, 16, 16, 4, 7, 2, 3, 1, first_layer=True),
    ConvCase("rpn_3x3", 1, 8, 6, 7, 8, 3, 1, 1, 1),
    ConvCase("rpn_cls1x1", 1, 8, 6, 7, 6, 1, 1, 0, 1),
    ConvCase("dw_56", 2, 8, 10, 10, 8, 3, 1, 1, 8),
    PoolCase("maxpool_3x3s2", "max", _TINY, 3, 2, 1),
    PoolCase("maxpool_2x2s2", "max", _TINY, 2, 2, 0),
    PoolCase("avgpool_3x3s2", "avg", _TINY, 3, 2, 1),
    BatchNormCase("bn_train", _TINY),
    RoiCase("roi_align", "align", (2, 8, 12, 17), 16, (192, 272)),
    RoiCase("roi_pool", "pool", (2, 8, 12, 17), 16, (192, 272)),
    NmsCase("nms", 300, 0.7, (192, 272), 20),
)
"""Tiny twins of :data:`CASES` (same names, same structure) for tests: ``--quick``."""

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


def select_cases(spec: str | None, quick: bool = False):
    """Cases named by ``spec`` ("res_28,pool,nms": op names and/or families; None: all)."""
    table = QUICK_CASES if quick else CASES
    if not spec:
        return list(table)
    want = [s.strip() for s in spec.split(",") if s.strip()]
    names = {c.name for c in table}
    bad = [w for w in want if w not in names and w not in FAMILIES]
    if bad:
        raise ValueError(f"unknown op(s) {', '.join(bad)}; ops: {', '.join(c.name for c in table)}"
                         f"; families: {', '.join(FAMILIES)}")
    return [c for c in table if c.name in want or c.family in want]


# ============================================================================ runners
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
    import convkit

    return convkit.get_backend(name).xp is not np


def make_runner(case, backend: str, data: dict) -> Runner:
    """Build ``backend``'s callables for ``case`` on inputs ``data`` (NumPy arrays from
    ``case.inputs``).  Raises ImportError when torchvision is needed and missing."""
    if backend in TORCH_NAMES:
        torch = _torch()
        dev = "cuda" if backend == "torch-cuda" else "cpu"
        fns = case.torch_fns(torch, dev, data)
        if dev == "cuda":
            def events():
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                return a, b, a.elapsed_time
            return Runner(backend, fns, contextlib.nullcontext, torch.cuda.synchronize, events,
                          gpu=True)
        return Runner(backend, fns, contextlib.nullcontext, lambda: None)
    import convkit

    be = convkit.get_backend(backend)
    fns = case.convkit_fns(be, data)
    gpu = be.xp is not np
    events = None
    if gpu and getattr(be.xp, "__name__", "") == "cupy":
        cupy = be.xp

        def events():
            a, b = cupy.cuda.Event(), cupy.cuda.Event()
            return a, b, lambda stop: cupy.cuda.get_elapsed_time(a, stop)
    return Runner(backend, fns, lambda: convkit.use_backend(backend), be.synchronize, events,
                  gpu=gpu)


def time_call(runner: Runner, fn, device_sync: bool):
    """Run ``fn`` once; return (milliseconds, result).  With ``device_sync`` queued GPU work is
    waited for before starting and before reading the clock (CUDA events when available)."""
    with runner.context():
        if device_sync and runner.events is not None:
            runner.sync()
            start, stop, elapsed = runner.events()
            start.record()
            out = fn()
            stop.record()
            stop.synchronize()
            return float(elapsed(stop)), out
        if device_sync:
            runner.sync()
        t0 = time.perf_counter()
        out = fn()
        if device_sync:
            runner.sync()
        return (time.perf_counter() - t0) * 1e3, out


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
    order = ["torch"] if (case.family not in ("roi", "nms") or _has_torchvision()) else []
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


# ============================================================================ measuring
@dataclass
class Row:
    op: str
    family: str
    pas: str
    shape: str
    unit: str | None
    work: float | None
    medians_ms: dict = field(default_factory=dict)
    times_ms: dict = field(default_factory=dict)
    first_call_ms: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    check: dict = field(default_factory=dict)
    load_avg: float | None = None       # 1-minute load average when the row started

    def throughput(self, b):
        if self.unit is None or b not in self.medians_ms:
            return None
        return self.work / 1e9 / (self.medians_ms[b] / 1e3)

    def ratio(self, ref, b):
        """ref's median / b's median (> 1: b is faster), None when either did not run."""
        m = self.medians_ms
        if ref not in m or b not in m or ref == b:
            return None
        return m[ref] / m[b]

    def ratio_spread(self, ref, b):
        """Quartiles (q1, q3) of the per-round ratios ref_i / b_i (the two calls of a round run
        back to back, so drift cancels); None with fewer than 2 rounds."""
        t = self.times_ms
        if ref == b or ref not in t or b not in t or min(len(t[ref]), len(t[b])) < 2:
            return None
        q = statistics.quantiles([x / y for x, y in zip(t[ref], t[b])], n=4)
        return q[0], q[2]

    def to_json(self, backends):
        conv = [b for b in backends if b not in TORCH_NAMES]
        ratios = {}
        for b in conv:
            r = {ref: self.ratio(ref, b) for ref in (torch_ref(b), "numpy")}
            r = {k: v for k, v in r.items() if v is not None}
            if r:
                ratios[b] = r
        return {
            "op": self.op, "family": self.family, "pass": self.pas, "shape": self.shape,
            "unit": self.unit, "work": self.work,
            "medians_ms": self.medians_ms, "times_ms": self.times_ms,
            "first_call_ms": self.first_call_ms,
            "throughput": {b: self.throughput(b) for b in self.medians_ms} if self.unit else {},
            "ratios": ratios,
            "ratio_quartiles": {b: {ref: self.ratio_spread(ref, b) for ref in refs}
                                for b, refs in ratios.items()},
            "gpu_cpu_speedup": self.ratio("cpu", "cuda"),
            "errors": self.errors, "check": self.check, "load_avg_1min": self.load_avg,
        }


def torch_ref(backend: str) -> str:
    """The torch runner a convkit backend is compared with (same device)."""
    return "torch-cuda" if backend == "cuda" else "torch"


def measure(case, pas, runners, repeat, warmup, device_sync, reference=None):
    """Time ``case``/``pas`` on every runner, interleaved; returns a :class:`Row`."""
    unit, work = case.work(pas)
    row = Row(case.name, case.family, pas, case.describe(), unit, work)
    try:
        row.load_avg = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    outs = {}
    active = []
    for r in runners:
        try:
            ms, out = time_call(r, r.fns[pas], device_sync)   # first call, on its own
            outs[r.backend] = to_host(out)
        except Exception as e:   # report and keep going: one missing kernel must not stop a run
            row.errors[r.backend] = f"{type(e).__name__}: {e}"[:300]
            continue
        row.first_call_ms[r.backend] = ms
        active.append(r)
    ref = reference if reference in outs else next(
        (n for n in ("torch", "torch-cuda", "numpy") if n in outs), None)
    if ref is not None:
        row.check["reference"] = ref
        for b, got in outs.items():
            if b != ref:
                row.check[b] = compare_outputs(got, outs[ref]) or "ok"
    del outs
    for _ in range(warmup):
        for r in active:
            time_call(r, r.fns[pas], device_sync)
    times = {r.backend: [] for r in active}
    for i in range(repeat):
        k = i % len(active) if active else 0
        for r in active[k:] + active[:k]:    # interleaved, order rotated each round
            times[r.backend].append(time_call(r, r.fns[pas], device_sync)[0])
    row.times_ms = times
    row.medians_ms = {b: statistics.median(t) for b, t in times.items() if t}
    return row


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


# ============================================================================ memory (subprocess)
def _proc_status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _memory_child(op, backend, quick, threads):
    """Body of the fresh process: peak RSS growth of one forward+backward of ``op``."""
    import gc

    case = next(c for c in (QUICK_CASES if quick else CASES) if c.name == op)
    data = case.inputs(np.random.default_rng(0))
    import convkit

    convkit.set_num_threads(threads)
    if backend in TORCH_NAMES:
        _torch().set_num_threads(threads)
    # One call on the tiny twin first, so that one-time library set-up (thread pools, JIT
    # caches: tens of MiB for torch) is not charged to the op.
    twin = next(c for c in QUICK_CASES if c.name == op)
    warm = make_runner(twin, backend, twin.inputs(np.random.default_rng(0)))
    with warm.context():
        warm.fns[FB]()
    del warm
    runner = make_runner(case, backend, data)
    nbytes_in = sum(a.nbytes for k, a in data.items() if k != "gy")
    gc.collect()
    try:   # "5" resets the peak (VmHWM) to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        how = "VmHWM after /proc/self/clear_refs reset"
    except OSError:
        how = "VmHWM (not reset: clear_refs not writable; an overestimate)"
    base = _proc_status_kb("VmRSS")
    with runner.context():
        out = runner.fns[FB]()
        runner.sync()
    peak = _proc_status_kb("VmHWM")
    outs = to_host(out)
    # + the forward's output y, which has gy's shape
    nbytes_out = data["gy"].nbytes + sum(a.nbytes for a in outs)
    growth = (peak - base) * 1024
    tensors = nbytes_in + nbytes_out
    print(json.dumps({"op": op, "backend": backend, "peak_rss_growth_bytes": growth,
                      "tensor_bytes": tensors, "ratio": growth / tensors, "method": how}))


def measure_memory(op, backend, quick, threads, timeout=600):
    """Run :func:`_memory_child` in a fresh interpreter (default allocator settings)."""
    code = ("import sys; from convkit.benchmark import _memory_child; "
            f"_memory_child({op!r}, {backend!r}, {bool(quick)!r}, {int(threads)})")
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"op": op, "backend": backend, "error": f"timed out after {timeout} s"}
    if p.returncode != 0:
        return {"op": op, "backend": backend,
                "error": (p.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ============================================================================ environment
_MALLOPT_DONE = None
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MALLOPT_BYTES = 1 << 30


def set_mallopt():
    """Raise glibc's mmap and trim thresholds to 1 GiB, once per process, so freed large buffers
    stay mapped and neither convkit nor torch pays first-touch page faults on every call
    (shared/BENCHMARKING.md).  Returns a sentence saying what was done."""
    global _MALLOPT_DONE
    if _MALLOPT_DONE is not None:
        return _MALLOPT_DONE
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, MALLOPT_BYTES) == 1,
              libc.mallopt(_M_TRIM_THRESHOLD, MALLOPT_BYTES) == 1)
    except (OSError, AttributeError) as e:
        _MALLOPT_DONE = f"allocator: mallopt not available ({e}); default allocator settings"
        return _MALLOPT_DONE
    if all(ok):
        _MALLOPT_DONE = ("allocator: glibc mallopt M_MMAP_THRESHOLD = M_TRIM_THRESHOLD = 1 GiB set "
                         "once for this process (convkit and torch both run under it; "
                         "--no-mallopt to skip)")
    else:
        _MALLOPT_DONE = f"allocator: mallopt refused (mmap ok={ok[0]}, trim ok={ok[1]})"
    return _MALLOPT_DONE


def core_probe(rounds=7, calls=40):
    """GFLOP/s of one core on a fixed float32 GEMM (64 x 147 x 784: the stem_224 forward's GEMM
    for 7 output rows) on convkit's own kernel, best of ``rounds``; None where that kernel is not
    built or the CPU lacks AVX-512F (BLAS's own threads would blur it).

    Printed at the start and the end of a run: on shared machines the arithmetic a core gives
    changes from minute to minute (a busy SMT sibling took this one from ~150 to ~106 on
    2026-11-28), and FMA-bound kernels lose more of it than slower ones, so ratios to torch
    from such a spell read low (bench/RESULTS.md, "stem_224: met, and how")."""
    try:
        from convkit.cpu import _gemm
    except ImportError:
        return None
    if not _gemm.own_sgemm_active():
        return None
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 147)).astype(np.float32)
    b = rng.standard_normal((147, 784)).astype(np.float32)
    c = np.empty((64, 784), np.float32)
    _gemm.gemm_into(False, False, 1.0, a, b, 0.0, c)     # the thread's packing buffers, warm
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            _gemm.gemm_into(False, False, 1.0, a, b, 0.0, c)
        best = min(best, time.perf_counter() - t)
    return round(2 * 64 * 147 * 784 * calls / best / 1e9, 1)


def machine_info():
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "numpy": np.__version__, "cpu_model": None, "logical_cpus": os.cpu_count(),
            "load_avg": None}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() == "Model name":
                info["cpu_model"] = v.strip()
            elif k.strip() in ("Core(s) per socket", "Socket(s)", "Thread(s) per core"):
                info[k.strip()] = v.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        info["load_avg"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    import convkit

    info["convkit"] = convkit.__version__
    info["threads"] = convkit.get_num_threads()
    import importlib.metadata as md

    for dist in ("torch", "torchvision", "cupy"):   # versions without importing them
        try:
            info[dist] = md.version(dist)
        except md.PackageNotFoundError:
            info[dist] = None
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [f"{p.get('internal_api')} {p.get('version')} "
                               f"({p.get('user_api')}, {p.get('num_threads')} threads)"
                               for p in threadpool_info()]
    except ImportError:
        pass
    return info


# ============================================================================ output
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
    fmt = "  ".join(("{:<%d}" if i < 2 else "{:>%d}") % w for i, w in enumerate(widths))
    return [fmt.format(*header)] + [fmt.format(*ln) for ln in lines]


def result_columns(rows, backends):
    """Header and lines of the results table (shared by the text and markdown output)."""
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


class _Progress:
    """tqdm on stderr when installed, else a plain "[i/n] op pass" line."""

    def __init__(self, total, enabled=True):
        self.total, self.i, self.bar = total, 0, None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=sys.stderr, unit="op", leave=False)
            except ImportError:
                pass

    def start(self, label):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description_str(label)
        else:
            print(f"\r[{self.i + 1}/{self.total}] {label:40s}", end="", file=sys.stderr,
                  flush=True)

    def done(self):
        self.i += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.i:
            print(file=sys.stderr)


# ============================================================================ CLI
def add_arguments(p: argparse.ArgumentParser):
    p.description = __doc__.split("\n\n")[0]
    p.add_argument("--backends", default=None,
                   help="comma list of numpy, cpu, cuda, torch, torch-cuda (default: the usable "
                        "convkit backends except numpy, plus torch when importable)")
    p.add_argument("--ops", default=None,
                   help="comma list of op names and/or families (conv, pool, bn, roi, nms); "
                        "default all. Ops: " + ", ".join(c.name for c in CASES))
    p.add_argument("--only", action="append", default=[], metavar="BACKEND=OPS",
                   help="restrict one backend to some ops or families, e.g. "
                        "numpy=pool,bn,roi,nms (repeatable)")
    p.add_argument("--repeat", type=int, default=7, help="timed calls per backend (default 7)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed rounds after the first call (default 1)")
    p.add_argument("--quick", action="store_true", help="tiny shapes (for tests)")
    p.add_argument("--json", metavar="FILE", help="write every measurement as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    p.add_argument("--plot", metavar="FILE.png", help="bar chart of the ratios (matplotlib)")
    p.add_argument("--summary", action="store_true",
                   help="print the geometric mean of the ratio to torch and the issue targets")
    p.add_argument("--memory", action="store_true",
                   help="also measure peak RSS growth of forward+backward in a fresh process "
                        "(res_28, or the conv ops named in --ops) against its tensors' bytes")
    sync = p.add_mutually_exclusive_group()
    sync.add_argument("--device-sync", dest="device_sync", action="store_true", default=None,
                      help="synchronise GPU work before reading the clock (default: on when a "
                           "GPU backend runs)")
    sync.add_argument("--no-device-sync", dest="device_sync", action="store_false")
    p.add_argument("--no-mallopt", action="store_true",
                   help="leave glibc's allocator thresholds at their defaults")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--seed", type=int, default=0, help="seed of the input generator")


def default_backends():
    import convkit

    names = [b for b in convkit.available_backends() if b != "numpy"]
    if not names:
        print("note: no compiled convkit backend is usable here; timing the numpy backend",
              file=sys.stderr)
        names = ["numpy"]
    t = _torch()
    if t is not None:
        names.append("torch")
        if "cuda" in names and t.cuda.is_available():
            names.append("torch-cuda")
    return names


def parse_backends(spec):
    import convkit

    if not spec:
        return default_backends()
    names = []
    for n in (s.strip().lower() for s in spec.split(",")):
        if not n or n in names:
            continue
        if n in TORCH_NAMES:
            t = _torch()
            if t is None:
                raise ValueError(f"backend {n!r}: torch is not importable")
            if n == "torch-cuda" and not t.cuda.is_available():
                raise ValueError("backend 'torch-cuda': torch.cuda.is_available() is False")
        elif n in convkit.known_backends():
            ok, why = convkit.backend_status(n)
            if not ok:
                raise ValueError(why)
        else:
            raise ValueError(f"unknown backend {n!r}; known: "
                             f"{', '.join(convkit.known_backends() + list(TORCH_NAMES))}")
        names.append(n)
    return names


def parse_only(specs, backends, quick):
    """``["numpy=pool,bn"]`` -> {"numpy": {op names}}: the ops each restricted backend runs."""
    only = {}
    for spec in specs:
        b, sep, ops = spec.partition("=")
        b = b.strip().lower()
        if not sep or b not in backends:
            raise ValueError(f"--only {spec!r}: expected BACKEND=OPS with BACKEND one of "
                             f"{', '.join(backends)}")
        only[b] = {c.name for c in select_cases(ops, quick)}
    return only


def run(args) -> int:
    import convkit

    try:
        backends = parse_backends(args.backends)
        cases = select_cases(args.ops, args.quick)
        only = parse_only(args.only, backends, args.quick)
    except ValueError as e:
        print(f"convkit bench: {e}", file=sys.stderr)
        return 2
    if args.repeat < 1 or args.warmup < 0:
        print("convkit bench: --repeat must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    print(set_mallopt() if not args.no_mallopt else
          "allocator: default glibc settings (--no-mallopt)")
    threads = convkit.get_num_threads()
    torch = _torch()
    if torch is not None and any(b in TORCH_NAMES for b in backends):
        torch.set_num_threads(threads)
    gpu = any(is_gpu_backend(b) for b in backends)
    device_sync = gpu if args.device_sync is None else args.device_sync
    if gpu and not device_sync:
        print("warning: --no-device-sync with a GPU backend times kernel launches, not kernels",
              file=sys.stderr)
    if "numpy" in backends and not args.quick and any(
            c.family == "conv" and c.name in only.get("numpy", {c.name}) for c in cases):
        print("warning: numpy is the readable reference, not a fast path: full-size conv layers "
              "can take seconds per call there (time them with --ops conv --repeat 3, or give "
              "numpy only --ops pool,bn,roi,nms)", file=sys.stderr)
    tv = _has_torchvision()
    info = machine_info()
    torch_threads = (f" (torch.set_num_threads({threads}))"
                     if any(b in TORCH_NAMES for b in backends) else "")
    print(f"convkit bench: backends {', '.join(backends)}; {threads} threads{torch_threads}; "
          f"{args.repeat} timed calls after "
          f"{1 + args.warmup} untimed; device sync {'on' if device_sync else 'off'}; "
          f"torchvision {'present' if tv else 'absent (RoI/NMS compared with numpy only)'}")
    probe = [core_probe()]
    print(f"machine: {info.get('cpu_model')}, {info.get('logical_cpus')} logical CPUs, "
          f"load {info.get('load_avg')}"
          + (f"; one-core probe {probe[0]} GFLOP/s (own float32 GEMM 64x147x784)"
             if probe[0] is not None else ""))

    steps = sum(len(c.passes) for c in cases)
    progress = _Progress(steps, enabled=not args.no_progress)
    rows = []
    notes = set()
    try:
        for case in cases:
            data = case.inputs(np.random.default_rng(args.seed))
            runners = []
            for b in backends:
                if case.name not in only.get(b, {case.name}):
                    continue
                if b in TORCH_NAMES and case.family in ("roi", "nms") and not tv:
                    notes.add(f"{b}: torchvision is not importable, so no {b} timing for "
                              f"RoI ops and NMS")
                    continue
                try:
                    runners.append(make_runner(case, b, data))
                except Exception as e:
                    notes.add(f"{b} {case.name}: could not set up ({type(e).__name__}: {e})")
            for pas in case.passes:
                progress.start(f"{case.name} {pas}")
                rows.append(measure(case, pas, runners, args.repeat, args.warmup, device_sync))
                progress.done()
            del runners, data
    finally:
        progress.close()

    memory = []
    if args.memory:
        mem_ops = [c.name for c in cases if c.family == "conv"] if args.ops else ["res_28"]
        for op in mem_ops:
            for b in backends:
                if not is_gpu_backend(b) and op in only.get(b, {op}):
                    memory.append(measure_memory(op, b, args.quick, threads))

    summary = summarize(rows, backends)
    targets = evaluate_targets(rows, summary, memory, "cpu") if "cpu" in backends else []
    print()
    print_report(rows, backends, summary, memory, args.summary)
    for n in sorted(notes):
        print("note: " + n)
    loads = [r.load_avg for r in rows if r.load_avg is not None]
    if loads:
        print(f"1-minute load average during the run: {min(loads):.2f} to {max(loads):.2f} "
              f"on {os.cpu_count()} logical CPUs")
    probe.append(core_probe())
    if probe[0] is not None:
        print(f"one-core probe: {probe[0]} GFLOP/s at the start, {probe[1]} at the end (a drop "
              f"between runs means the host gave less arithmetic; compare ratios from runs "
              f"with similar readings)")
    if args.summary and targets:
        print("targets (issue 'Cython CPU backend', cpu backend):")
        for t in targets:
            got = "not measured" if t["got"] is None else f"{_fmt(t['got'])}x"
            print(f"  {'met    ' if t['met'] else 'NOT MET'}  {t['what']}: {got}, "
                  f"want {t['want']}")

    if args.json:
        doc = {"meta": {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
                                                                     timespec="seconds"),
                        "command": "convkit bench " + " ".join(sys.argv[2:])
                        if sys.argv[1:2] == ["bench"] else " ".join(sys.argv),
                        "backends": backends, "only": {b: sorted(v) for b, v in only.items()},
                        "repeat": args.repeat, "warmup": args.warmup,
                        "quick": args.quick, "device_sync": device_sync,
                        "allocator": None if args.no_mallopt else set_mallopt(),
                        "notes": sorted(notes), "core_probe_gflops": probe, **info},
               "results": [r.to_json(backends) for r in rows],
               "summary": summary, "targets": targets, "memory": memory}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown_report(rows, backends, summary, targets, memory))
    if args.plot:
        try:
            save_plot(args.plot, rows, backends)
        except ImportError:
            print("--plot needs matplotlib (pip install matplotlib); no plot written",
                  file=sys.stderr)
        except ValueError as e:
            print(f"--plot: {e}; no plot written", file=sys.stderr)
    failed = any(r.errors for r in rows) or any(
        c != "ok" for r in rows for b, c in r.check.items() if b != "reference") or any(
        "error" in m for m in memory)
    return 1 if failed else 0
