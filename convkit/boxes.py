"""Box helpers for detectors: format conversions, clipping, filtering, Faster R-CNN box coding,
and the pairwise generalised / distance / complete IoU (their losses: :mod:`convkit.nn.losses`).

Pure array code over ``xp``, the array module of the input (``numpy``, or ``cupy`` for CuPy
arrays), so the same functions serve every backend; nothing here dispatches to a backend and
``cupy`` is only imported when a CuPy array comes in.

Formats (all four numbers in image pixels unless normalised):

* ``xyxy``   -- ``(x1, y1, x2, y2)``, the corners; what convkit's ops take.
* ``xywh``   -- ``(x, y, w, h)``, top-left corner plus size (the lecture's format).
* ``cxcywh`` -- ``(cx, cy, w, h)``, centre plus size.

Box arrays are ``array[..., 4]`` (usually ``[K, 4]``) of float32 or float64; results keep the
input dtype.  Sizes follow torchvision: ``w = x2 - x1`` (no ``+ 1``), area ``= w * h``.
Every function checks its arrays here and raises ``TypeError`` (not an array, integer dtype) or
``ValueError`` (wrong shape) naming the argument.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "box_convert", "xyxy_to_xywh", "xywh_to_xyxy", "xyxy_to_cxcywh", "cxcywh_to_xyxy",
    "normalize_boxes", "denormalize_boxes", "clip_boxes", "remove_small_boxes", "box_area",
    "encode_boxes", "decode_boxes", "DEFAULT_BBOX_XFORM_CLIP",
    "generalized_box_iou", "distance_box_iou", "complete_box_iou",
]

#: torchvision's default clamp on dw/dh before ``exp``: a box grows at most 1000/16 times.
DEFAULT_BBOX_XFORM_CLIP = math.log(1000.0 / 16)

_FORMATS = ("xyxy", "xywh", "cxcywh")


# ------------------------------------------------------------------------------ checks
def _xp(a):
    """The array module of ``a``: cupy for a CuPy array (imported only then), else numpy."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy.get_array_module(a)
    return np


def _is_array(a) -> bool:
    return isinstance(a, np.ndarray) or type(a).__module__.split(".")[0] == "cupy"


def _check(fn: str, name: str, a, layout: str = "(..., 4)", last: int | None = 4, ndim=None):
    """``a`` must be a float32/float64 NumPy or CuPy array; ``a.shape[-1] == last`` (or a
    multiple of 4 when ``last == 0``); ``a.ndim == ndim`` when given."""
    if not _is_array(a):
        raise TypeError(f"{fn}: {name} must be a numpy or cupy array {layout}, got "
                        f"{type(a).__module__}.{type(a).__name__}; use numpy.asarray({name}, "
                        f"dtype=numpy.float32)")
    d = np.dtype(a.dtype)
    if d not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{fn}: {name} must be float32 or float64, got {d}")
    bad = a.ndim == 0 or (ndim is not None and a.ndim != ndim)
    if not bad:
        n = a.shape[-1]
        bad = (n % 4 != 0 or n == 0) if last == 0 else n != last
    if bad:
        raise ValueError(f"{fn}: {name} must have shape {layout}, got {tuple(a.shape)}")
    return a


def _image_size(fn: str, image_size) -> tuple[float, float]:
    try:
        h, w = image_size
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: image_size must be a pair (H, W), got {image_size!r}") from None
    for v in (h, w):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise TypeError(f"{fn}: image_size must be a pair of numbers (H, W), got "
                            f"{image_size!r}")
    h, w = float(h), float(w)
    if not (math.isfinite(h) and math.isfinite(w) and h > 0 and w > 0):
        raise ValueError(f"{fn}: image_size must be a positive finite (H, W), got {image_size!r}")
    return h, w


def _weights(fn: str, weights) -> tuple[float, float, float, float]:
    try:
        ws = tuple(weights)
    except TypeError:
        raise TypeError(f"{fn}: weights must be 4 numbers (wx, wy, ww, wh), got {weights!r}") \
            from None
    if len(ws) != 4 or any(isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real)
                           for v in ws):
        raise ValueError(f"{fn}: weights must be 4 numbers (wx, wy, ww, wh), got {weights!r}")
    ws = tuple(float(v) for v in ws)
    if not all(math.isfinite(v) and v > 0 for v in ws):
        raise ValueError(f"{fn}: weights must be positive and finite, got {weights!r}")
    return ws


def _split(b):
    return b[..., 0], b[..., 1], b[..., 2], b[..., 3]


def _stack(xp, cols, dtype):
    return xp.stack(cols, axis=-1).astype(dtype, copy=False)


# ------------------------------------------------------------------------- conversions
def xyxy_to_xywh(boxes):
    """array[..., 4] ``(x1, y1, x2, y2)`` -> ``(x1, y1, x2 - x1, y2 - y1)``."""
    _check("xyxy_to_xywh", "boxes", boxes)
    x1, y1, x2, y2 = _split(boxes)
    return _stack(_xp(boxes), [x1, y1, x2 - x1, y2 - y1], boxes.dtype)


def xywh_to_xyxy(boxes):
    """array[..., 4] ``(x, y, w, h)`` -> ``(x, y, x + w, y + h)``."""
    _check("xywh_to_xyxy", "boxes", boxes)
    x, y, w, h = _split(boxes)
    return _stack(_xp(boxes), [x, y, x + w, y + h], boxes.dtype)


def xyxy_to_cxcywh(boxes):
    """array[..., 4] ``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)`` with ``cx = x1 + 0.5 * w``
    (the centre as Faster R-CNN's box coder computes it)."""
    _check("xyxy_to_cxcywh", "boxes", boxes)
    x1, y1, x2, y2 = _split(boxes)
    w, h = x2 - x1, y2 - y1
    return _stack(_xp(boxes), [x1 + 0.5 * w, y1 + 0.5 * h, w, h], boxes.dtype)


def cxcywh_to_xyxy(boxes):
    """array[..., 4] ``(cx, cy, w, h)`` -> ``(cx - w/2, cy - h/2, cx + w/2, cy + h/2)``."""
    _check("cxcywh_to_xyxy", "boxes", boxes)
    cx, cy, w, h = _split(boxes)
    return _stack(_xp(boxes), [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h],
                  boxes.dtype)


_TO_XYXY = {"xyxy": None, "xywh": xywh_to_xyxy, "cxcywh": cxcywh_to_xyxy}
_FROM_XYXY = {"xyxy": None, "xywh": xyxy_to_xywh, "cxcywh": xyxy_to_cxcywh}


def box_convert(boxes, in_fmt: str, out_fmt: str):
    """Convert array[..., 4] between ``"xyxy"``, ``"xywh"`` and ``"cxcywh"`` (via xyxy).
    Always returns a new array."""
    for name, f in (("in_fmt", in_fmt), ("out_fmt", out_fmt)):
        if f not in _FORMATS:
            raise ValueError(f"box_convert: {name} must be one of {_FORMATS}, got {f!r}")
    _check("box_convert", "boxes", boxes)
    b = boxes if _TO_XYXY[in_fmt] is None else _TO_XYXY[in_fmt](boxes)
    b = b if _FROM_XYXY[out_fmt] is None else _FROM_XYXY[out_fmt](b)
    return b.copy() if b is boxes else b


# ------------------------------------------------------------- normalised coordinates
def normalize_boxes(boxes, image_size):
    """Absolute pixel coordinates -> fractions of the image: x and w divided by the image
    width, y and h by its height (the lecture's ``(x, y, w, h) / image size``).

    boxes: array[..., 4] in any of the formats above (each is ordered x, y, x-ish, y-ish);
    image_size: ``(H, W)``, as for :func:`clip_boxes`.
    """
    H, W = _image_size("normalize_boxes", image_size)
    _check("normalize_boxes", "boxes", boxes)
    xp = _xp(boxes)
    return boxes / xp.asarray([W, H, W, H], dtype=boxes.dtype)


def denormalize_boxes(boxes, image_size):
    """Inverse of :func:`normalize_boxes`: fractions of an ``(H, W)`` image -> pixels."""
    H, W = _image_size("denormalize_boxes", image_size)
    _check("denormalize_boxes", "boxes", boxes)
    xp = _xp(boxes)
    return boxes * xp.asarray([W, H, W, H], dtype=boxes.dtype)


# ------------------------------------------------------------------ clip / filter / area
def clip_boxes(boxes, image_size):
    """Clip xyxy array[..., 4] to an ``(H, W)`` image: x into [0, W], y into [0, H]
    (torchvision's ``clip_boxes_to_image``; the far edge is W, not W - 1).  NaN stays NaN."""
    H, W = _image_size("clip_boxes", image_size)
    _check("clip_boxes", "boxes", boxes)
    xp = _xp(boxes)
    x1, y1, x2, y2 = _split(boxes)
    return _stack(xp, [xp.clip(x1, 0, W), xp.clip(y1, 0, H), xp.clip(x2, 0, W),
                       xp.clip(y2, 0, H)], boxes.dtype)


def remove_small_boxes(boxes, min_size):
    """Indices (int64 array[J], ascending) of the xyxy boxes array[K, 4] whose width and
    height are both ``>= min_size`` (torchvision's rule; NaN sizes are dropped)."""
    _check("remove_small_boxes", "boxes", boxes, "(K, 4)", ndim=2)
    if isinstance(min_size, (bool, np.bool_)) or not isinstance(min_size, numbers.Real):
        raise TypeError(f"remove_small_boxes: min_size must be a number, got {min_size!r}")
    xp = _xp(boxes)
    x1, y1, x2, y2 = _split(boxes)
    keep = ((x2 - x1) >= min_size) & ((y2 - y1) >= min_size)
    return xp.nonzero(keep)[0].astype(xp.int64, copy=False)


def score_order(scores):
    """Indices that sort ``scores`` (array[N]) in decreasing order, the order every backend's
    nms walks: stable, so equal scores keep the lower index first; NaN scores come first, as
    torch's descending sort (which torchvision's nms uses) puts them (a NaN and a +inf score
    tie, lower index first)."""
    xp = _xp(scores)
    key = -scores
    nan = xp.isnan(key)
    if bool(nan.any()):
        key = xp.where(nan, -xp.inf, key)
    return xp.argsort(key, kind="stable")


def box_area(boxes):
    """Area ``(x2 - x1) * (y2 - y1)`` of xyxy array[..., 4] -> array[...] (negative for an
    inverted box, as torchvision)."""
    _check("box_area", "boxes", boxes)
    x1, y1, x2, y2 = _split(boxes)
    return (x2 - x1) * (y2 - y1)


# ------------------------------------------------------------ Faster R-CNN box coding
def encode_boxes(reference_boxes, proposals, weights=(1.0, 1.0, 1.0, 1.0)):
    """Regression targets (dx, dy, dw, dh) that move ``proposals`` onto ``reference_boxes``.

    Faster R-CNN's parametrisation, as torchvision's ``BoxCoder.encode``: with
    ``w = x2 - x1``, ``cx = x1 + 0.5 * w`` (same for y) of the proposal (p) and the reference
    / ground-truth box (g)::

        dx = wx * (gcx - pcx) / pw      dw = ww * log(gw / pw)
        dy = wy * (gcy - pcy) / ph      dh = wh * log(gh / ph)

    reference_boxes, proposals: xyxy array[K, 4], float32 or float64 (row k of one matches
    row k of the other).  weights: positive ``(wx, wy, ww, wh)``.  Returns array[K, 4] in the
    common dtype.  A proposal of zero width/height gives inf/NaN, as in torchvision: filter
    with :func:`remove_small_boxes` first.
    """
    fn = "encode_boxes"
    _check(fn, "reference_boxes", reference_boxes, "(K, 4)", ndim=2)
    _check(fn, "proposals", proposals, "(K, 4)", ndim=2)
    if reference_boxes.shape[0] != proposals.shape[0]:
        raise ValueError(f"{fn}: reference_boxes and proposals must have the same number of "
                         f"rows, got {reference_boxes.shape[0]} and {proposals.shape[0]}")
    if _xp(reference_boxes) is not _xp(proposals):
        raise TypeError(f"{fn}: reference_boxes and proposals must be arrays of one kind "
                        f"(both numpy or both cupy)")
    wx, wy, ww, wh = _weights(fn, weights)
    xp = _xp(proposals)
    dt = np.result_type(reference_boxes.dtype, proposals.dtype)
    p = proposals.astype(dt, copy=False)
    g = reference_boxes.astype(dt, copy=False)
    pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    pcx, pcy = p[:, 0] + 0.5 * pw, p[:, 1] + 0.5 * ph
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    gcx, gcy = g[:, 0] + 0.5 * gw, g[:, 1] + 0.5 * gh
    dx = wx * (gcx - pcx) / pw
    dy = wy * (gcy - pcy) / ph
    dw = ww * xp.log(gw / pw)
    dh = wh * xp.log(gh / ph)
    return _stack(xp, [dx, dy, dw, dh], dt)


def decode_boxes(deltas, boxes, weights=(1.0, 1.0, 1.0, 1.0),
                 bbox_xform_clip=DEFAULT_BBOX_XFORM_CLIP):
    """Apply regression deltas to ``boxes``: the inverse of :func:`encode_boxes`.

    deltas: array[K, 4 * num_classes] -- ``(dx, dy, dw, dh)`` per class, class-major as
    torchvision's ``BoxCoder.decode_single`` lays them out (num_classes = 1 for an RPN).
    boxes: xyxy array[K, 4] (anchors or proposals), cast to the deltas' dtype.
    weights: the ``(wx, wy, ww, wh)`` used to encode.  dw/dh are divided by their weights and
    then clamped from above at ``bbox_xform_clip`` (default log(1000/16)) before ``exp``, so a
    wild prediction cannot overflow.  With ``w = x2 - x1``, ``cx = x1 + 0.5 * w``::

        pcx = dx * w + cx    pw = exp(dw) * w
        -> (pcx - pw/2, pcy - ph/2, pcx + pw/2, pcy + ph/2)

    Returns xyxy array[K, 4 * num_classes] of the deltas' dtype.  Boxes are not clipped to
    the image (use :func:`clip_boxes`).
    """
    fn = "decode_boxes"
    _check(fn, "deltas", deltas, "(K, 4 * num_classes)", last=0, ndim=2)
    _check(fn, "boxes", boxes, "(K, 4)", ndim=2)
    if deltas.shape[0] != boxes.shape[0]:
        raise ValueError(f"{fn}: deltas and boxes must have the same number of rows, got "
                         f"{deltas.shape[0]} and {boxes.shape[0]}")
    if _xp(deltas) is not _xp(boxes):
        raise TypeError(f"{fn}: deltas and boxes must be arrays of one kind "
                        f"(both numpy or both cupy)")
    wx, wy, ww, wh = _weights(fn, weights)
    if isinstance(bbox_xform_clip, (bool, np.bool_)) or not isinstance(bbox_xform_clip,
                                                                        numbers.Real):
        raise TypeError(f"{fn}: bbox_xform_clip must be a number, got {bbox_xform_clip!r}")
    clip = float(bbox_xform_clip)
    xp = _xp(deltas)
    dt = deltas.dtype
    b = boxes.astype(dt, copy=False)
    w = (b[:, 2] - b[:, 0])[:, None]
    h = (b[:, 3] - b[:, 1])[:, None]
    cx = b[:, 0][:, None] + 0.5 * w
    cy = b[:, 1][:, None] + 0.5 * h
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    # clamp from above only (torchvision): a very negative dw just gives a tiny box
    dw = xp.minimum(deltas[:, 2::4] / ww, clip)
    dh = xp.minimum(deltas[:, 3::4] / wh, clip)
    pcx = dx * w + cx
    pcy = dy * h + cy
    half_w = 0.5 * (xp.exp(dw) * w)
    half_h = 0.5 * (xp.exp(dh) * h)
    out = xp.stack([pcx - half_w, pcy - half_h, pcx + half_w, pcy + half_h], axis=2)
    return out.reshape(deltas.shape).astype(dt, copy=False)


# ----------------------------------------------------- generalised / distance / complete IoU
#: 4 / pi^2, the scale of CIoU's aspect-ratio term v (Zheng et al. 2020, torchvision)
_V_SCALE = 4.0 / math.pi ** 2


def _box_pair(fn, boxes1, boxes2):
    """Checks of the pairwise IoU family (box_iou's): (N, 4) and (M, 4) float arrays of one
    dtype and one kind (numpy or cupy).  Returns their array module."""
    _check(fn, "boxes1", boxes1, "(N, 4)", ndim=2)
    _check(fn, "boxes2", boxes2, "(M, 4)", ndim=2)
    if _xp(boxes1) is not _xp(boxes2):
        raise TypeError(f"{fn}: boxes1 and boxes2 must be arrays of one kind "
                        f"(both numpy or both cupy)")
    if boxes1.dtype != boxes2.dtype:
        raise TypeError(f"{fn}: boxes1 and boxes2 must share one dtype; boxes1 is "
                        f"{np.dtype(boxes1.dtype)} but boxes2 is {np.dtype(boxes2.dtype)}")
    return _xp(boxes1)


def _positive_eps(fn: str, eps) -> float:
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{fn}: eps must be a number, got {eps!r}")
    e = float(eps)
    if not (math.isfinite(e) and e > 0):
        raise ValueError(f"{fn}: eps must be positive and finite, got {eps!r}")
    return e


def _aspect_angle(xp, w, h):
    """``atan(w / h)``, CIoU's aspect angle, finite for every finite box: where ``h == 0`` it is
    ``atan2(w, +0)`` (+-pi/2, or 0 for a point), the limit torch reaches as NaN for 0/0.  Its
    derivatives are ``h / (w^2 + h^2)`` and ``-w / (w^2 + h^2)`` (0 for a point)."""
    zero = h == 0
    return xp.where(zero, xp.arctan2(w, xp.abs(h)), xp.arctan(w / xp.where(zero, 1, h)))


def _pairwise_iou_terms(fn, boxes1, boxes2):
    """The (N, M) terms the three share: xp, IoU (box_iou's rule: union 0 -> 0), union, and the
    enclosing box's width and height (clamped at 0, as torchvision)."""
    xp = _box_pair(fn, boxes1, boxes2)
    a, b = boxes1[:, None, :], boxes2[None, :, :]
    area1 = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area2 = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    wh = xp.maximum(xp.minimum(a[..., 2:], b[..., 2:]) - xp.maximum(a[..., :2], b[..., :2]), 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - inter
    zero = union == 0
    iou = xp.where(zero, 0, inter / xp.where(zero, 1, union))
    enc = xp.maximum(xp.maximum(a[..., 2:], b[..., 2:]) - xp.minimum(a[..., :2], b[..., :2]), 0)
    return xp, iou, union, enc[..., 0], enc[..., 1]


def _distance_terms(boxes1, boxes2, iou, enc_w, enc_h, eps):
    """DIoU = IoU - rho^2 / (c^2 + eps): rho the distance of the centres, c the enclosing
    box's diagonal (pairwise, (N, M))."""
    dx = (boxes1[:, None, 0] + boxes1[:, None, 2]) / 2 - (boxes2[None, :, 0] + boxes2[None, :, 2]) / 2
    dy = (boxes1[:, None, 1] + boxes1[:, None, 3]) / 2 - (boxes2[None, :, 1] + boxes2[None, :, 3]) / 2
    return iou - (dx * dx + dy * dy) / (enc_w * enc_w + enc_h * enc_h + eps)


def generalized_box_iou(boxes1, boxes2):
    """Pairwise generalised IoU (Rezatofighi et al. 2019), ``torchvision.ops.generalized_box_iou``:
    ``GIoU = IoU - (C - U) / C`` with U the union and C the area of the smallest box enclosing
    both.

    boxes1 (array[N, 4]), boxes2 (array[M, 4]): xyxy, float32 or float64 (one dtype), numpy or
    cupy (one kind).  Returns array[N, M] of their dtype, in [-1, 1] for valid boxes.  Where
    torchvision divides 0 by 0 (a pair of zero-area boxes) convkit keeps :func:`convkit.box_iou`'s
    rule: a union of 0 gives IoU 0, and an enclosing area of 0 gives no penalty.
    """
    fn = "generalized_box_iou"
    xp, iou, union, enc_w, enc_h = _pairwise_iou_terms(fn, boxes1, boxes2)
    c = enc_w * enc_h
    zero = c == 0
    out = iou - xp.where(zero, 0, (c - union) / xp.where(zero, 1, c))
    return out.astype(boxes1.dtype, copy=False)


def distance_box_iou(boxes1, boxes2, eps=1e-7):
    """Pairwise distance IoU (Zheng et al. 2020), ``torchvision.ops.distance_box_iou``:
    ``DIoU = IoU - rho^2 / (c^2 + eps)``, rho the distance between the boxes' centres and c the
    diagonal of the smallest box enclosing both; eps (> 0, default 1e-7, torchvision's) keeps
    two coincident points finite.

    Arguments and result as :func:`generalized_box_iou` (IoU with box_iou's union-0 rule).
    """
    fn = "distance_box_iou"
    e = _positive_eps(fn, eps)
    xp, iou, _, enc_w, enc_h = _pairwise_iou_terms(fn, boxes1, boxes2)
    return _distance_terms(boxes1, boxes2, iou, enc_w, enc_h, e).astype(boxes1.dtype, copy=False)


def complete_box_iou(boxes1, boxes2, eps=1e-7):
    """Pairwise complete IoU (Zheng et al. 2020), ``torchvision.ops.complete_box_iou``:
    ``CIoU = DIoU - alpha * v`` with ``v = 4/pi^2 (atan(w1/h1) - atan(w2/h2))^2`` (the aspect
    ratio term) and ``alpha = v / (1 - IoU + v + eps)``.

    Arguments and result as :func:`distance_box_iou`.  A box of zero height has the aspect angle
    +-pi/2 (0 for a point) where torch divides by 0 (NaN for a point).
    """
    fn = "complete_box_iou"
    e = _positive_eps(fn, eps)
    xp, iou, _, enc_w, enc_h = _pairwise_iou_terms(fn, boxes1, boxes2)
    diou = _distance_terms(boxes1, boxes2, iou, enc_w, enc_h, e)
    t1 = _aspect_angle(xp, boxes1[:, 2] - boxes1[:, 0], boxes1[:, 3] - boxes1[:, 1])
    t2 = _aspect_angle(xp, boxes2[:, 2] - boxes2[:, 0], boxes2[:, 3] - boxes2[:, 1])
    d = t1[:, None] - t2[None, :]
    v = _V_SCALE * d * d
    alpha = v / (1 - iou + v + e)
    return (diou - alpha * v).astype(boxes1.dtype, copy=False)
