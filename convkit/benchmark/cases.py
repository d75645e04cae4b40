"""The layer-shape table: every op's shapes, inputs and counted work, as data.

:data:`CASES` (tiny twins in :data:`QUICK_CASES`) is the one shape table of the project: ``convkit
bench`` and ``pytest bench/`` (through ``bench/shapes.py``) time these very objects.  A case knows
its shapes, how to make its inputs from a seeded generator and how much work a pass does; how a
backend or torch runs it lives in :mod:`convkit.benchmark.adapters`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._shapes import conv_out_size

FWD = "forward"
FB = "forward+backward"
FAMILIES = ("conv", "pool", "bn", "roi", "nms", "deform")
F32 = np.float32


def _conv_out(size, k, s, p):
    return conv_out_size(size, k, s, 2 * p, 1)


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
    """roi_align (sampling_ratio 2, aligned=False: torchvision's Faster R-CNN setting),
    roi_pool, roi_avg_pool or roi_max_align (roi_align's grid), on a stride-16 feature map of an
    ``image_hw`` image."""
    name: str
    kind: str            # "align" | "pool" | "avg_pool" | "max_align"
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


@dataclass(frozen=True)
class ConvTransposeCase(ConvCase):
    """conv_transpose2d (a decoder's upsampling layer), float32 NCHW, square kernel, symmetric
    padding, bias: C channels in, F out, weight (C, F, K, K) as torch's; groups 1."""
    output_padding: int = 0

    @property
    def out_hw(self):
        return tuple((n - 1) * self.stride - 2 * self.pad + self.K + self.output_padding
                     for n in (self.H, self.W))

    def describe(self):
        return (f"transposed x({self.N},{self.C},{self.H},{self.W}) w({self.C},{self.F},"
                f"{self.K},{self.K}) s{self.stride} p{self.pad}"
                + (f" op{self.output_padding}" if self.output_padding else ""))

    def flops_forward(self):      # each input pixel meets every tap of every filter
        return 2 * self.N * self.C * self.H * self.W * self.F * self.K * self.K

    def inputs(self, rng):
        scale = 1.0 / math.sqrt(self.C * self.K * self.K / self.stride ** 2)
        return {"x": rng.standard_normal((self.N, self.C, self.H, self.W), F32),
                "w": rng.standard_normal((self.C, self.F, self.K, self.K), F32) * F32(scale),
                "b": rng.standard_normal(self.F, F32),
                "gy": rng.standard_normal((self.N, self.F) + self.out_hw, F32)}


@dataclass(frozen=True)
class DeformCase(ConvCase):
    """deform_conv2d (DCNv2: with a modulation mask) on a conv's shapes (no groups), one offset
    group; offsets ~N(0, 1) pixels, mask uniform in [0, 1)."""
    family: str = "deform"

    def describe(self):
        return super().describe() + " offsets N(0,1) + mask"

    def inputs(self, rng):
        d = super().inputs(rng)
        Ho, Wo = self.out_hw
        kk = self.K * self.K
        d["offset"] = rng.standard_normal((self.N, 2 * kk, Ho, Wo), F32)
        d["mask"] = rng.random((self.N, kk, Ho, Wo), F32)
        return d


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
    # the lecture's other two aggregators, on the same map and boxes as roi_align / roi_pool
    RoiCase("roi_avg_pool", "avg_pool", (2, 256, 50, 68), 512, (800, 1088)),
    RoiCase("roi_max_align", "max_align", (2, 256, 50, 68), 512, (800, 1088)),
    NmsCase("nms", 6000, 0.7, (800, 1088), 300),
    ConvTransposeCase("convt_28", 8, 64, 28, 28, 32, 4, 2, 1),     # -> (8, 32, 56, 56)
    DeformCase("deform_conv", 4, 64, 28, 28, 64, 3, 1, 1),     # a DCN layer in a ResNet stage
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
    RoiCase("roi_avg_pool", "avg_pool", (2, 8, 12, 17), 16, (192, 272)),
    RoiCase("roi_max_align", "max_align", (2, 8, 12, 17), 16, (192, 272)),
    NmsCase("nms", 300, 0.7, (192, 272), 20),
    ConvTransposeCase("convt_28", 2, 8, 6, 6, 4, 4, 2, 1),
    DeformCase("deform_conv", 2, 4, 8, 8, 4, 3, 1, 1),
)
"""Tiny twins of :data:`CASES` (same names, same structure) for tests: ``--quick``."""


# ---- position-sensitive RoI ops (issue 14): a C = C_out * 7 * 7 map, as R-FCN's score maps
@dataclass(frozen=True)
class PsRoiCase(RoiCase):
    """ps_roi_align (sampling_ratio 2) or ps_roi_pool: x has C = C_out * out * out channels and
    y is (K, C_out, out, out).  The boxes are shrunk by 2% so none reaches the map's last
    row/column, where torchvision's ps_roi_pool backward and forward disagree (its forward
    never pools them)."""

    @property
    def out_shape(self):
        return (self.K, self.shape[1] // (self.out * self.out), self.out, self.out)

    def inputs(self, rng):
        d = super().inputs(rng)
        d["rois"][:, 1:] *= F32(0.98)
        return d


CASES += (PsRoiCase("ps_roi_align", "ps_align", (2, 490, 50, 68), 512, (800, 1088)),
          PsRoiCase("ps_roi_pool", "ps_pool", (2, 490, 50, 68), 512, (800, 1088)))
QUICK_CASES += (PsRoiCase("ps_roi_align", "ps_align", (2, 18, 12, 17), 16, (192, 272), out=3),
                PsRoiCase("ps_roi_pool", "ps_pool", (2, 18, 12, 17), 16, (192, 272), out=3))


# ---- adaptive pooling (issue 14): a ResNet classifier head (7x7 -> 1x1, global pooling) and a
# 56x56 map to 7x7, average and max
@dataclass(frozen=True)
class AdaptivePoolCase:
    """adaptive avg or max pooling to ``out`` x ``out``, float32 NCHW."""
    name: str
    kind: str          # "avg" | "max"
    shape: tuple
    out: int
    family: str = "adaptive"
    passes: tuple = (FWD, FB)

    @property
    def out_shape(self):
        return self.shape[:2] + (self.out, self.out)

    def describe(self):
        return f"adaptive {self.kind} to {self.out}x{self.out} on {self.shape}"

    def work(self, pas):
        nx, ny = math.prod(self.shape) * 4, math.prod(self.out_shape) * 4
        idx = 2 * ny if self.kind == "max" else 0   # int64 indices: twice a float32 output
        fwd = nx + ny + idx
        return "GB/s", fwd if pas == FWD else fwd + ny + idx + nx

    def inputs(self, rng):
        return {"x": rng.standard_normal(self.shape, F32),
                "gy": rng.standard_normal(self.out_shape, F32)}


FAMILIES += ("adaptive",)
CASES += tuple(AdaptivePoolCase(f"adaptive_{k}_{n}", k, shape, out)
               for n, shape, out in (("head", (8, 512, 7, 7), 1), ("56to7", (8, 64, 56, 56), 7))
               for k in ("avg", "max"))
QUICK_CASES += tuple(AdaptivePoolCase(f"adaptive_{k}_{n}", k, shape, out)
                     for n, shape, out in (("head", (2, 8, 7, 7), 1), ("56to7", (2, 4, 12, 12), 7))
                     for k in ("avg", "max"))


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
