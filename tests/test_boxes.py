"""nms / batched_nms / box_iou on every backend against plain loops, and the convkit.boxes
helpers against hand-computed values and round trips."""
import math

import numpy as np
import pytest

from convkit import boxes as B
from convkit import functional as F
from helpers import run, tol

DTYPES = [np.float32, np.float64]


# --------------------------------------------------------------------------------- oracles
def iou_scalar(a, b):
    """IoU of two xyxy boxes with scalar arithmetic in their dtype; union 0 -> 0."""
    dt = type(a[0])
    w = max(min(a[2], b[2]) - max(a[0], b[0]), dt(0))
    h = max(min(a[3], b[3]) - max(a[1], b[1]), dt(0))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return dt(0) if union == 0 else inter / union


def nms_oracle(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))   # ties: lower index
    removed = [False] * len(scores)
    keep = []
    for a, i in enumerate(order):
        if removed[i]:
            continue
        keep.append(i)
        for j in order[a + 1:]:
            if not removed[j] and float(iou_scalar(boxes[i], boxes[j])) > thr:
                removed[j] = True
    return np.array(keep, np.int64)


def random_boxes(n, dtype, seed, size=100.0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, size / 3, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(dtype)


# ------------------------------------------------------------------------------------- nms
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_matches_loop(backend, dtype, thr):
    boxes = random_boxes(150, dtype, seed=0)
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 20, 150).astype(dtype) / 20     # many ties on purpose
    keep = run(backend, F.nms, boxes, scores, thr)
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, nms_oracle(boxes, scores, thr))


def test_nms_ties_keep_lower_index_first(backend):
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [50, 50, 60, 60],
                      [100, 0, 110, 10]], np.float32)
    scores = np.array([0.5, 0.5, 0.9, 0.9, 0.5], np.float32)
    np.testing.assert_array_equal(run(backend, F.nms, boxes, scores, 0.5), [2, 0, 4])
    # nothing overlaps enough: all kept, ordered by score, ties by index
    np.testing.assert_array_equal(run(backend, F.nms, boxes, scores, 1.0), [2, 3, 0, 1, 4])


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_iou_exactly_at_threshold_is_kept(backend, dtype):
    # intersection 2, union 4: IoU exactly 0.5 in any float type
    boxes = np.array([[0, 0, 3, 1], [1, 0, 4, 1]], dtype)
    scores = np.array([0.9, 0.8], dtype)
    np.testing.assert_array_equal(run(backend, F.nms, boxes, scores, 0.5), [0, 1])
    np.testing.assert_array_equal(run(backend, F.nms, boxes, scores, 0.49), [0])


def test_nms_zero_area_boxes_have_iou_zero(backend):
    boxes = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [1, 1, 1, 4]], np.float64)
    scores = np.array([0.3, 0.2, 0.1])
    # union 0 -> IoU 0, which is not > 0: nothing suppresses anything
    np.testing.assert_array_equal(run(backend, F.nms, boxes, scores, 0.0), [0, 1, 2])
    # and IoU 0 (not NaN) is > a negative threshold: the first box suppresses the rest
    np.testing.assert_array_equal(run(backend, F.nms, boxes, scores, -0.5), [0])


def test_nms_no_boxes(backend):
    keep = run(backend, F.nms, np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5)
    assert keep.shape == (0,) and keep.dtype == np.int64


def test_nms_single_box(backend):
    keep = run(backend, F.nms, np.array([[0, 0, 1, 1.0]]), np.array([0.1]), 0.5)
    np.testing.assert_array_equal(keep, [0])


def test_batched_nms_keeps_classes_apart(backend):
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [30, 30, 40, 40],
                      [31, 31, 41, 41]], np.float32)
    scores = np.array([0.9, 0.8, 0.95, 0.7, 0.85], np.float32)
    idxs = np.array([0, 0, 1, 1, 0], np.int64)
    keep = run(backend, F.batched_nms, boxes, scores, idxs, 0.5)
    # class 0: 0 suppresses 1; 4 alone.  class 1: 2 and 3.  Box 2 overlaps 0 completely but
    # is another class.  Order: decreasing score.
    np.testing.assert_array_equal(keep, [2, 0, 4, 3])
    assert keep.dtype == np.int64


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_nms_matches_per_class_loop(backend, dtype):
    boxes = random_boxes(120, dtype, seed=2)
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 10, 120).astype(dtype) / 10
    idxs = rng.integers(0, 4, 120)
    keep = run(backend, F.batched_nms, boxes, scores, idxs, 0.4)
    want = []
    for c in range(4):
        sel = np.nonzero(idxs == c)[0]
        want += sel[nms_oracle(boxes[sel], scores[sel], 0.4)].tolist()
    want.sort(key=lambda i: (-scores[i], i))
    np.testing.assert_array_equal(keep, want)


def test_batched_nms_empty(backend):
    keep = run(backend, F.batched_nms, np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), 0.5)
    assert keep.shape == (0,) and keep.dtype == np.int64


# ----------------------------------------------------------------------------------- box_iou
@pytest.mark.parametrize("dtype", DTYPES)
def test_box_iou_matches_loop(backend, dtype):
    b1 = random_boxes(13, dtype, seed=4)
    b2 = random_boxes(9, dtype, seed=5)
    b2[0] = b1[0]                                  # IoU 1
    iou = run(backend, F.box_iou, b1, b2)
    want = np.array([[iou_scalar(a, b) for b in b2] for a in b1], dtype)
    assert iou.shape == (13, 9) and iou.dtype == dtype
    np.testing.assert_allclose(iou, want, **tol(dtype))
    assert iou[0, 0] == pytest.approx(1.0)


def test_box_iou_known_values_and_zero_area(backend):
    b1 = np.array([[0, 0, 2, 2], [5, 5, 5, 5], [0, 0, 1, 1]], np.float64)
    b2 = np.array([[1, 1, 3, 3], [5, 5, 5, 5], [0, 0, 2, 2], [3, 0, 4, 1]], np.float64)
    want = np.array([[1 / 7, 0, 1, 0],
                     [0, 0, 0, 0],                 # zero-area boxes: union 0 -> 0, never NaN
                     [0, 0, 0.25, 0]])
    np.testing.assert_allclose(run(backend, F.box_iou, b1, b2), want, rtol=1e-12, atol=0)


def test_box_iou_empty(backend):
    a = run(backend, F.box_iou, np.zeros((0, 4), np.float32), random_boxes(3, np.float32, 0))
    b = run(backend, F.box_iou, random_boxes(3, np.float32, 0), np.zeros((0, 4), np.float32))
    assert a.shape == (0, 3) and b.shape == (3, 0) and a.dtype == np.float32


# --------------------------------------------------------------------------- convkit.boxes
def test_conversions_known_values():
    xyxy = np.array([[1.0, 2.0, 4.0, 6.0]])
    np.testing.assert_array_equal(B.xyxy_to_xywh(xyxy), [[1, 2, 3, 4]])
    np.testing.assert_array_equal(B.xyxy_to_cxcywh(xyxy), [[2.5, 4, 3, 4]])
    np.testing.assert_array_equal(B.xywh_to_xyxy(np.array([[1.0, 2.0, 3.0, 4.0]])), xyxy)
    np.testing.assert_array_equal(B.cxcywh_to_xyxy(np.array([[2.5, 4.0, 3.0, 4.0]])), xyxy)
    np.testing.assert_array_equal(B.box_convert(xyxy, "xywh", "cxcywh"),
                                  B.xyxy_to_cxcywh(B.xywh_to_xyxy(xyxy)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh"])
def test_conversions_round_trip(dtype, fmt):
    b = random_boxes(20, dtype, seed=6).reshape(4, 5, 4)       # (..., 4) works too
    for out in ("xyxy", "xywh", "cxcywh"):
        c = B.box_convert(b, fmt, out)
        assert c.dtype == dtype and c.shape == b.shape
        np.testing.assert_allclose(B.box_convert(c, out, fmt), b, **tol(dtype))
    assert B.box_convert(b, fmt, fmt) is not b


def test_normalize_known_values_and_round_trip():
    xywh = np.array([[10.0, 20.0, 30.0, 40.0]])
    n = B.normalize_boxes(xywh, (100, 200))            # (H, W): x, w / 200; y, h / 100
    np.testing.assert_allclose(n, [[0.05, 0.2, 0.15, 0.4]], rtol=1e-15)
    np.testing.assert_allclose(B.denormalize_boxes(n, (100, 200)), xywh, rtol=1e-15)
    b32 = random_boxes(7, np.float32, 7)
    r = B.denormalize_boxes(B.normalize_boxes(b32, (480, 640)), (480, 640))
    assert r.dtype == np.float32
    np.testing.assert_allclose(r, b32, rtol=1e-6)


def test_clip_remove_small_area():
    b = np.array([[-5.0, 2.0, 30.0, 8.0], [1.0, -1.0, 2.0, 50.0], [3.0, 3.0, 3.5, 9.0]])
    np.testing.assert_array_equal(B.clip_boxes(b, (10, 20)),
                                  [[0, 2, 20, 8], [1, 0, 2, 10], [3, 3, 3.5, 9]])
    np.testing.assert_array_equal(B.box_area(b), [210.0, 51.0, 3.0])
    keep = B.remove_small_boxes(b, 1.0)
    np.testing.assert_array_equal(keep, [0, 1])
    assert keep.dtype == np.int64
    assert B.remove_small_boxes(np.zeros((0, 4)), 1.0).shape == (0,)


def test_encode_known_values():
    proposals = np.array([[0.0, 0.0, 10.0, 10.0]])
    gt = np.array([[2.0, 3.0, 12.0, 23.0]])       # w 10, h 20, centre (7, 13)
    np.testing.assert_allclose(B.encode_boxes(gt, proposals), [[0.2, 0.8, 0.0, math.log(2)]],
                               rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(B.encode_boxes(gt, proposals, (10, 10, 5, 5)),
                               [[2.0, 8.0, 0.0, 5 * math.log(2)]], rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_round_trip(dtype, weights):
    props = random_boxes(50, dtype, seed=8)
    gt = random_boxes(50, dtype, seed=9)
    d = B.encode_boxes(gt, props, weights)
    assert d.shape == (50, 4) and d.dtype == dtype
    back = B.decode_boxes(d, props, weights)
    assert back.dtype == dtype
    np.testing.assert_allclose(back, gt, rtol=1e-4 if dtype == np.float32 else 1e-12,
                               atol=1e-3 if dtype == np.float32 else 1e-10)


def test_decode_multi_class_layout():
    props = random_boxes(6, np.float64, seed=10)
    gts = [random_boxes(6, np.float64, seed=s) for s in (11, 12, 13)]
    deltas = np.concatenate([B.encode_boxes(g, props) for g in gts], axis=1)   # (K, 12)
    out = B.decode_boxes(deltas, props)
    assert out.shape == (6, 12)
    for c, g in enumerate(gts):
        np.testing.assert_allclose(out[:, 4 * c:4 * c + 4], g, rtol=1e-12, atol=1e-10)


def test_decode_clamps_dw_dh():
    box = np.array([[0.0, 0.0, 10.0, 20.0]])     # centre (5, 10)
    deltas = np.array([[0.0, 0.0, 100.0, -3.0]])
    out = B.decode_boxes(deltas, box)
    w = 1000.0 / 16 * 10                          # exp(log(1000/16)) * 10
    h = math.exp(-3.0) * 20                       # very negative: not clamped
    np.testing.assert_allclose(out, [[5 - w / 2, 10 - h / 2, 5 + w / 2, 10 + h / 2]],
                               rtol=1e-12)
    out = B.decode_boxes(deltas, box, weights=(1, 1, 2, 2), bbox_xform_clip=1.0)
    w, h = math.e * 10, math.exp(-1.5) * 20       # dw = 100/2 clamped to 1
    np.testing.assert_allclose(out, [[5 - w / 2, 10 - h / 2, 5 + w / 2, 10 + h / 2]],
                               rtol=1e-12)
    # huge deltas stay finite in float32 thanks to the clamp
    big = B.decode_boxes(np.array([[0, 0, 1e30, 1e30]], np.float32), box.astype(np.float32))
    assert np.isfinite(big).all() and big.dtype == np.float32


def test_box_helpers_validate_arguments():
    good = np.zeros((3, 4))
    with pytest.raises(TypeError, match="boxes must be float32 or float64"):
        B.xyxy_to_xywh(np.zeros((3, 4), np.int64))
    with pytest.raises(ValueError, match=r"boxes must have shape"):
        B.clip_boxes(np.zeros((3, 5)), (10, 10))
    with pytest.raises(TypeError, match="boxes must be a numpy or cupy array"):
        B.box_area([[0, 0, 1, 1]])
    with pytest.raises(TypeError, match="proposals must be float32 or float64"):
        B.encode_boxes(good, np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError, match="same number of rows"):
        B.encode_boxes(good, np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"deltas must have shape \(K, 4 \* num_classes\)"):
        B.decode_boxes(np.zeros((3, 6)), good)
    with pytest.raises(ValueError, match=r"boxes must have shape \(K, 4\)"):
        B.decode_boxes(np.zeros((3, 4)), np.zeros((3, 4, 1)))
    with pytest.raises(ValueError, match="weights"):
        B.decode_boxes(good, good, weights=(1, 1, 0, 1))
    with pytest.raises(ValueError, match="image_size"):
        B.clip_boxes(good, (10,))
    with pytest.raises(ValueError, match="image_size"):
        B.normalize_boxes(good, (0, 10))
    with pytest.raises(ValueError, match="in_fmt"):
        B.box_convert(good, "xyz", "xyxy")


def test_nms_nan_scores_come_first_like_torch(backend):
    """torch's descending sort (torchvision's nms order) puts NaN scores first."""
    b = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    s = np.array([np.nan, 0.8, 0.9, np.nan], np.float32)
    keep = run(backend, F.nms, b, s, 0.5)
    np.testing.assert_array_equal(keep, [0, 3])        # box 0 (NaN) suppresses 1 and 2
    keep = run(backend, F.batched_nms, b, s, np.array([0, 0, 1, 1]), 0.5)
    np.testing.assert_array_equal(keep, [0, 3, 2])


def test_nms_nan_order_matches_torch_sort(torch):
    s = np.array([0.3, np.nan, 0.9, 0.3, np.nan, -1.0], np.float32)
    want = torch.sort(torch.from_numpy(s), descending=True, stable=True).indices.numpy()
    np.testing.assert_array_equal(B.score_order(s), want)
