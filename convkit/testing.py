"""Backend conformance check for plugin authors: ``convkit.testing.check_backend("name")``.

Runs every op of the contract, forward and backward, on a small fixed table of cases through the
functional API with backend ``name`` active, and compares each result with the ``numpy``
reference; then calls the same op through the plugin's Backend object (``be.conv2d_forward(...)``,
the functional signature, another backend selected meanwhile) and compares that with the
functional result.  Raises AssertionError naming the op, the case and the dtype on the first
mismatch; returns the number of comparisons made.  A backend that lacks hooks for some ops
(:data:`convkit.backend.EXTENSION_OPS` have defaults that raise ``NotImplementedError``) is told
which, all at once, after the ops it has were checked; :func:`missing_hooks` lists them without
running anything.  The full parametrised suite lives in the project's tests/.
"""
from __future__ import annotations

import numpy as np

from . import functional as F
from ._registry import get_backend, use_backend
from .backend import EXTENSION_OPS

_TOL = {np.float32: (1e-4, 1e-4), np.float64: (1e-10, 1e-10)}


def _cases(dtype, rng):
    def r(*s):
        return rng.standard_normal(s).astype(dtype)

    x = r(2, 4, 9, 7)
    xp = rng.permutation(2 * 4 * 9 * 7).reshape(2, 4, 9, 7).astype(dtype)  # distinct: no ties
    rois = np.array([[0, 0.5, 1.0, 5.2, 7.9], [1, -2, 1, 3, 3], [1, 2.2, 0.3, 6.6, 4.1]], dtype)
    boxes = np.abs(r(30, 4)) * 10
    boxes[:, 2:] += boxes[:, :2]
    scores = r(30)
    w, b = r(6, 2, 3, 2), r(6)
    conv_kw = dict(stride=(2, 1), padding=(1, 0), dilation=1, groups=2)
    y = F.conv2d_forward(x, w, b, **conv_kw)
    gy = r(*y.shape)
    yield "conv2d_forward", F.conv2d_forward, (x, w, b), conv_kw
    yield "conv2d_backward", F.conv2d_backward, (gy, x, w), conv_kw
    yield "max_pool2d_forward", F.max_pool2d_forward, (xp, 3, 2, 1), dict(ceil_mode=True)
    yp, idx = F.max_pool2d_forward(xp, 3, 2, 1, ceil_mode=True)
    yield "max_pool2d_backward", F.max_pool2d_backward, (r(*yp.shape), idx, xp.shape), {}
    yield "avg_pool2d_forward", F.avg_pool2d_forward, (x, 3, 2, 1), dict(count_include_pad=False)
    ya = F.avg_pool2d_forward(x, 3, 2, 1)
    yield "avg_pool2d_backward", F.avg_pool2d_backward, (r(*ya.shape), x.shape, 3, 2, 1), {}
    g, bb = r(4), r(4)
    yield "batch_norm_forward", F.batch_norm_forward, (x, g, bb, None, None, True), {}
    _, m, s = F.batch_norm_forward(x, g, bb, None, None, True)
    yield "batch_norm_backward", F.batch_norm_backward, (r(*x.shape), x, g, m, s, True), {}
    yield "roi_pool_forward", F.roi_pool_forward, (xp, rois, (2, 3), 0.5), {}
    yr, am = F.roi_pool_forward(xp, rois, (2, 3), 0.5)
    yield "roi_pool_backward", F.roi_pool_backward, (r(*yr.shape), am, xp.shape), dict(rois=rois)
    for aligned in (False, True):
        kw = dict(spatial_scale=0.5, sampling_ratio=-1, aligned=aligned)
        yield f"roi_align_forward aligned={aligned}", F.roi_align_forward, (x, rois, 3), kw
        yield (f"roi_align_backward aligned={aligned}", F.roi_align_backward,
               (r(3, 4, 3, 3), rois, x.shape, 3), kw)
    yield "nms", F.nms, (boxes, scores, 0.3), {}
    yield "box_iou", F.box_iou, (boxes[:7], boxes), {}
    for family in _FAMILY_CASES:
        yield from family(dtype, rng, r)


# ---- cases of the op families beyond the first release: one generator per family, each
# yielding (label, op, args, kwargs) like _cases; r(*shape) draws standard normal inputs; each
# family's section appends its generator
_FAMILY_CASES = []


# roi_avg_pool, roi_max_align
def _roi_variants_cases(dtype, rng, r):
    xp = rng.permutation(2 * 3 * 9 * 8).reshape(2, 3, 9, 8).astype(dtype)  # distinct: no ties
    rois = np.array([[0, 0.5, 1.0, 5.2, 7.9], [1, -2, 1, 3, 3], [1, 2.2, 0.3, 6.6, 4.1],
                     [0, 11.0, 2.0, 14.0, 6.0]], dtype)         # the last one partly off the map
    yield "roi_avg_pool_forward", F.roi_avg_pool_forward, (xp, rois, (2, 3), 0.5), {}
    yield ("roi_avg_pool_backward", F.roi_avg_pool_backward,
           (r(4, 3, 2, 3), rois, xp.shape, (2, 3), 0.5), {})
    for aligned, sr in ((False, -1), (True, 2)):
        kw = dict(spatial_scale=0.7, sampling_ratio=sr, aligned=aligned)
        yield (f"roi_max_align_forward aligned={aligned}", F.roi_max_align_forward,
               (xp, rois, (3, 2)), kw)
        _, am = F.roi_max_align_forward(xp, rois, (3, 2), **kw)
        yield (f"roi_max_align_backward aligned={aligned}", F.roi_max_align_backward,
               (r(4, 3, 3, 2), am, rois, xp.shape, (3, 2)), kw)


_FAMILY_CASES.append(_roi_variants_cases)


# ps_roi_align, ps_roi_pool
def _psroi_cases(dtype, rng, r):
    x = r(2, 12, 9, 7)                   # C = 2 * (2*3) for output_size (2, 3)
    rois = np.array([[0, 0.5, 1.0, 5.2, 7.9], [1, -2, 1, 3, 3], [1, 2.2, 0.3, 6.6, 4.1],
                     [0, 3.0, 2.0, 3.0, 6.0]], dtype)
    g = r(4, 2, 2, 3)
    for sr in (-1, 2):
        kw = dict(spatial_scale=0.5, sampling_ratio=sr)
        yield f"ps_roi_align_forward sampling_ratio={sr}", F.ps_roi_align_forward, \
            (x, rois, (2, 3)), kw
        yield f"ps_roi_align_backward sampling_ratio={sr}", F.ps_roi_align_backward, \
            (g, rois, x.shape, (2, 3)), kw
    yield "ps_roi_pool_forward", F.ps_roi_pool_forward, (x, rois, (2, 3), 0.5), {}
    yield "ps_roi_pool_backward", F.ps_roi_pool_backward, (g, rois, x.shape, (2, 3), 0.5), {}


_FAMILY_CASES.append(_psroi_cases)


# conv_transpose2d
def _conv_transpose_cases(dtype, rng, r):
    x, w, b = r(2, 4, 5, 4), r(4, 3, 3, 2), r(6)
    for kw in (dict(stride=2, padding=1, output_padding=1, groups=2),
               dict(stride=(1, 2), padding=(0, 1), output_padding=(1, 0), dilation=(2, 1))):
        bias = b if kw.get("groups", 1) == 2 else b[:3]
        label = f"conv_transpose2d {kw}"
        yield label + " forward", F.conv_transpose2d_forward, (x, w, bias), kw
        y = F.conv_transpose2d_forward(x, w, bias, **kw)
        yield label + " backward", F.conv_transpose2d_backward, (r(*y.shape), x, w), kw


_FAMILY_CASES.append(_conv_transpose_cases)


# adaptive pools
def _adaptive_pool_cases(dtype, rng, r):
    x = r(2, 3, 7, 9)
    xd = rng.permutation(2 * 3 * 7 * 9).reshape(2, 3, 7, 9).astype(dtype)   # distinct: no ties
    # (3, 4): overlapping bins (7 % 3, 9 % 4 != 0); (None, 12): input height, repeated columns
    for size in ((3, 4), 1, (None, 12)):
        yield f"adaptive_avg_pool2d_forward {size}", F.adaptive_avg_pool2d_forward, (x, size), {}
        y = F.adaptive_avg_pool2d_forward(x, size)
        yield (f"adaptive_avg_pool2d_backward {size}", F.adaptive_avg_pool2d_backward,
               (r(*y.shape), x.shape), {})
        yield f"adaptive_max_pool2d_forward {size}", F.adaptive_max_pool2d_forward, (xd, size), {}
        y, idx = F.adaptive_max_pool2d_forward(xd, size)
        yield (f"adaptive_max_pool2d_backward {size}", F.adaptive_max_pool2d_backward,
               (r(*y.shape), idx, xd.shape), {})


_FAMILY_CASES.append(_adaptive_pool_cases)


# deform_conv2d
def _deform_conv_cases(dtype, rng, r):
    # 2 weight groups, 2 offset groups, stride/padding/dilation, with and without a mask;
    # offsets ~N(0, 1.5) put some samples outside the image
    x, w, b = r(2, 4, 7, 6), r(6, 2, 3, 2), r(6)
    kw = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    off = (r(2, 2 * 2 * 6, 4, 8) * dtype(1.5)).astype(dtype)
    mask = np.abs(r(2, 2 * 6, 4, 8))
    for m in (None, mask):
        label = "mask" if m is not None else "no mask"
        yield (f"deform_conv2d_forward {label}", F.deform_conv2d_forward, (x, off, w, b),
               dict(kw, mask=m))
        yield (f"deform_conv2d_backward {label}", F.deform_conv2d_backward,
               (r(2, 6, 4, 8), x, off, w), dict(kw, mask=m))


_FAMILY_CASES.append(_deform_conv_cases)


def missing_hooks(name_or_backend) -> list:
    """The ops (of :data:`convkit.backend.EXTENSION_OPS`) whose hook backend ``name_or_backend``
    leaves at the default that raises NotImplementedError."""
    be = get_backend(name_or_backend) if isinstance(name_or_backend, (str, type(None))) \
        else name_or_backend
    return [op for op in EXTENSION_OPS
            if getattr(getattr(type(be), "_" + op), "_convkit_missing", False)]


def _as_tuple(v):
    return v if isinstance(v, tuple) else (v,)


def check_backend(name: str, seed: int = 0) -> int:
    """Compare backend ``name`` with the numpy reference on every op; returns #comparisons."""
    be = get_backend(name)
    n = 0
    missing = {}     # op -> NotImplementedError message, reported together at the end
    for dtype in (np.float32, np.float64):
        with use_backend("numpy"):
            cases = list(_cases(dtype, np.random.default_rng(seed)))
        for label, fn, args, kw in cases:
            with use_backend("numpy"):
                want = _as_tuple(fn(*args, **kw))
            moved = [be.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
            kwm = {k: be.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
            with use_backend(name):
                try:
                    got = _as_tuple(fn(*moved, **kwm))
                except NotImplementedError as e:
                    missing.setdefault(fn.__name__, str(e))
                    continue
                be.synchronize()
            n += _compare(be, got, want, dtype, f"backend {name!r}: {label}")
            # the Backend object's public op: same signature, runs on be whatever is selected
            with use_backend("numpy"):
                via = _as_tuple(getattr(be, fn.__name__)(*moved, **kwm))
                be.synchronize()
            n += _compare(be, via, [None if g is None else be.to_numpy(g) for g in got], dtype,
                          f"backend {name!r}: Backend.{label} vs the functional op")
    if missing:
        raise AssertionError(
            f"backend {name!r} passed {n} comparisons but does not implement "
            f"{len(missing)} op(s): {', '.join(missing)}; add the hooks "
            f"{', '.join('_' + op for op in missing)} (convkit/backend.py documents them)")
    return n


def _compare(be, got, want, dtype, what) -> int:
    rtol, atol = _TOL[dtype]
    assert len(got) == len(want), f"{what}: {len(got)} outputs, expected {len(want)}"
    n = 0
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None:
            assert g is None, f"{what} output {i} should be None"
            continue
        np.testing.assert_allclose(be.to_numpy(g), w, rtol=rtol, atol=atol,
                                   err_msg=f"{what} output {i} ({np.dtype(dtype).name})")
        n += 1
    return n
