"""A seeded synthetic detection set: filled and outlined shapes on noisy textured backgrounds.

``shapes(n, size, classes, max_objects, seed)`` draws ``n`` RGB images.  Each holds 1 to
``max_objects`` objects; an object is a circle, an axis-aligned square or an upward triangle,
filled or outlined (2-3 px stroke), of a random colour that differs clearly from the local
background, 0.2 to 0.5 of the image side across.  Backgrounds mix a colour gradient, a
random stripe or checker texture and per-pixel Gaussian noise, so a detector cannot find the
objects by colour alone.  Objects may overlap a little (pairwise box IoU <= 0.15; a later
object is drawn over an earlier one, whose box stays the box of its whole shape).

Everything comes from ``numpy.random.default_rng(seed)``: the same arguments give the same
bytes on every machine and every backend.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["SHAPE_CLASSES", "ShapesData", "shapes"]

SHAPE_CLASSES = ("circle", "square", "triangle")


class ShapesData(NamedTuple):
    """What :func:`shapes` returns.

    images: uint8 array[N, 3, H, W] (RGB, NCHW; divide by 255 for [0, 1] floats).
    boxes: list of N float32 arrays[Ki, 4], xyxy in pixel-edge coordinates: an object covering
        pixel columns c0..c1 has x1 = c0 and x2 = c1 + 1 (so width = number of pixels).
    labels: list of N int64 arrays[Ki], indices into ``class_names`` (0-based, no background).
    class_names: tuple of the class names, in label order.
    """
    images: np.ndarray
    boxes: list
    labels: list
    class_names: tuple


def _mask(kind, h, w, yy, xx, x0, y0, s):
    """Boolean (h, w) mask of a filled shape in the s x s square at (x0, y0)."""
    if kind == "circle":
        r = s / 2.0
        return (xx + 0.5 - (x0 + r)) ** 2 + (yy + 0.5 - (y0 + r)) ** 2 <= r * r
    if kind == "square":
        return (xx >= x0) & (xx < x0 + s) & (yy >= y0) & (yy < y0 + s)
    # triangle: apex at the top centre, base along the bottom edge
    t = (yy + 0.5 - y0) / s                       # 0 at the apex row, 1 at the base
    half = t * s / 2.0
    cx = x0 + s / 2.0
    return (t >= 0) & (t <= 1) & (np.abs(xx + 0.5 - cx) <= half + 0.5)


def _erode(m, k):
    """Binary erosion by a (2k+1)^2 square, so mask minus erosion is a k-pixel outline."""
    out = m.copy()
    p = np.pad(m, k, constant_values=False)
    h, w = m.shape
    for dy in range(2 * k + 1):
        for dx in range(2 * k + 1):
            out &= p[dy:dy + h, dx:dx + w]
    return out


def _background(rng, size):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0 = rng.uniform(40, 215, 3)
    c1 = rng.uniform(40, 215, 3)
    ang = rng.uniform(0, 2 * np.pi)
    t = (np.cos(ang) * xx + np.sin(ang) * yy + 1.5) / 3.0       # gradient in [0, 1]
    img = c0[:, None, None] * (1 - t) + c1[:, None, None] * t
    texture = rng.integers(3)
    period = rng.uniform(4, 12)
    if texture == 0:          # stripes at a random angle
        a = rng.uniform(0, np.pi)
        tex = np.sin(2 * np.pi * (np.cos(a) * xx + np.sin(a) * yy) * size / period)
    elif texture == 1:        # checker
        tex = np.sign(np.sin(2 * np.pi * xx * size / period)
                      * np.sin(2 * np.pi * yy * size / period))
    else:                     # blotches: a few random low-frequency waves
        tex = sum(np.sin(2 * np.pi * (rng.uniform(-2, 2) * xx + rng.uniform(-2, 2) * yy)
                         + rng.uniform(0, 2 * np.pi)) for _ in range(3)) / 3
    img = img + rng.uniform(8, 20) * tex[None]
    img = img + rng.normal(0, rng.uniform(4, 10), img.shape)
    return img


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _class_names(classes):
    if isinstance(classes, (int, np.integer)):
        if not 1 <= classes <= len(SHAPE_CLASSES):
            raise ValueError(f"shapes: classes must be 1..{len(SHAPE_CLASSES)} or a sequence of "
                             f"names from {SHAPE_CLASSES}, got {classes}")
        return SHAPE_CLASSES[:int(classes)]
    names = tuple(classes)
    bad = [c for c in names if c not in SHAPE_CLASSES]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"shapes: classes must be distinct names from {SHAPE_CLASSES}, "
                         f"got {names}")
    return names


def shapes(n, size=64, classes=SHAPE_CLASSES, max_objects=3, seed=0, *, min_frac=0.2,
           max_frac=0.5):
    """Draw the synthetic shapes detection set (see the module docstring).

    n: number of images (>= 0).  size: image side H = W in pixels (>= 16).
    classes: a sequence of names from ``SHAPE_CLASSES`` or an int k (the first k).
    max_objects: each image has 1..max_objects objects.  seed: the only source of randomness.
    min_frac, max_frac: object side as a fraction of ``size``.
    Returns :class:`ShapesData` (images uint8 array[N, 3, H, W]; boxes xyxy float32; labels).
    """
    names = _class_names(classes)
    n, size, max_objects = int(n), int(size), int(max_objects)
    if n < 0:
        raise ValueError(f"shapes: n must be >= 0, got {n}")
    if size < 16:
        raise ValueError(f"shapes: size must be >= 16, got {size}")
    if max_objects < 1:
        raise ValueError(f"shapes: max_objects must be >= 1, got {max_objects}")
    if not 0 < min_frac <= max_frac <= 1:
        raise ValueError(f"shapes: need 0 < min_frac <= max_frac <= 1, got {min_frac}, {max_frac}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    lo = max(6, int(round(min_frac * size)))
    hi = max(lo, int(round(max_frac * size)))
    images = np.empty((n, 3, size, size), np.uint8)
    all_boxes, all_labels = [], []
    for i in range(n):
        img = _background(rng, size)
        boxes, labels = [], []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _attempt in range(20):     # find a place that overlaps the others little
                s = int(rng.integers(lo, hi + 1))
                x0 = int(rng.integers(0, size - s + 1))
                y0 = int(rng.integers(0, size - s + 1))
                cand = (x0, y0, x0 + s, y0 + s)
                if all(_iou(cand, b) <= 0.15 for b in boxes):
                    break
            else:
                continue
            label = int(rng.integers(len(names)))
            m = _mask(names[label], size, size, yy, xx, x0, y0, s)
            if rng.random() < 0.5:         # outlined
                m = m & ~_erode(m, int(rng.integers(2, 4)))
            # a colour far from the background under the object, so it stays visible
            under = img[:, m].mean(axis=1)
            colour = rng.uniform(0, 255, 3)
            for _c in range(20):
                if np.abs(colour - under).sum() > 150:
                    break
                colour = rng.uniform(0, 255, 3)
            img[:, m] = colour[:, None] + rng.normal(0, 4, (3, int(m.sum())))
            rows = np.nonzero(m.any(axis=1))[0]
            cols = np.nonzero(m.any(axis=0))[0]
            boxes.append((float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)))
            labels.append(label)
        images[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        all_boxes.append(np.asarray(boxes, np.float32).reshape(-1, 4))
        all_labels.append(np.asarray(labels, np.int64))
    return ShapesData(images, all_boxes, all_labels, names)
