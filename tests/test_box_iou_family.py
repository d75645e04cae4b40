"""convkit.boxes.generalized/distance/complete_box_iou (N x M) and the matching losses of
convkit.nn.losses against torchvision's formulas written here with torch float64 ops (torchvision
is not installed), torch autograd for the gradients, central differences, degenerate boxes,
errors and empty inputs, on every backend's arrays."""
import math

import numpy as np
import pytest

import convkit
from convkit import boxes as B
from convkit import nn
from helpers import numeric_grad, run

DTYPES = [np.float32, np.float64]
PAIRWISE = {"giou": B.generalized_box_iou, "diou": B.distance_box_iou,
            "ciou": B.complete_box_iou}
LOSSES = {"giou": nn.generalized_box_iou_loss, "diou": nn.distance_box_iou_loss,
          "ciou": nn.complete_box_iou_loss}
# float32 results against the float64 oracle
TOL32 = dict(rtol=2e-4, atol=2e-5)
TOL64 = dict(rtol=1e-12, atol=1e-13)


def tol(dtype):
    return TOL64 if dtype == np.float64 else TOL32


# --------------------------------------------------------------------------------- oracles
def torch_pairwise(torch, kind, b1, b2, eps=1e-7):
    """torchvision.ops.{generalized,distance,complete}_box_iou, written with torch ops from
    their documented definitions (box_iou, the enclosing box clamped at 0, eps on c^2 and in
    alpha's denominator)."""
    a1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    a2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    lt = torch.max(b1[:, None, :2], b2[:, :2])
    rb = torch.min(b1[:, None, 2:], b2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = a1[:, None] + a2 - inter
    iou = inter / union
    lti = torch.min(b1[:, None, :2], b2[:, :2])
    rbi = torch.max(b1[:, None, 2:], b2[:, 2:])
    whi = (rbi - lti).clamp(min=0)
    if kind == "giou":
        area = whi[..., 0] * whi[..., 1]
        return iou - (area - union) / area
    diag = whi[..., 0] ** 2 + whi[..., 1] ** 2 + eps
    xp_, yp_ = (b1[:, 0] + b1[:, 2]) / 2, (b1[:, 1] + b1[:, 3]) / 2
    xg, yg = (b2[:, 0] + b2[:, 2]) / 2, (b2[:, 1] + b2[:, 3]) / 2
    diou = iou - ((xp_[:, None] - xg) ** 2 + (yp_[:, None] - yg) ** 2) / diag
    if kind == "diou":
        return diou
    w1, h1 = b1[:, None, 2] - b1[:, None, 0], b1[:, None, 3] - b1[:, None, 1]
    w2, h2 = b2[:, 2] - b2[:, 0], b2[:, 3] - b2[:, 1]
    v = (4 / math.pi ** 2) * torch.pow(torch.atan(w1 / h1) - torch.atan(w2 / h2), 2)
    alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


def torch_loss(torch, kind, b1, b2, eps=1e-7):
    """torchvision.ops.{generalized,distance,complete}_box_iou_loss (reduction "none"), with
    torch ops: intersection only where both overlaps are > 0, IoU = inter / (U + eps), alpha
    under no_grad."""
    x1, y1, x2, y2 = b1.unbind(-1)
    gx1, gy1, gx2, gy2 = b2.unbind(-1)
    xk1, yk1 = torch.max(x1, gx1), torch.max(y1, gy1)
    xk2, yk2 = torch.min(x2, gx2), torch.min(y2, gy2)
    inter = torch.zeros_like(x1)
    m = (yk2 > yk1) & (xk2 > xk1)
    inter[m] = (xk2[m] - xk1[m]) * (yk2[m] - yk1[m])
    union = (x2 - x1) * (y2 - y1) + (gx2 - gx1) * (gy2 - gy1) - inter
    iou = inter / (union + eps)
    xc1, yc1 = torch.min(x1, gx1), torch.min(y1, gy1)
    xc2, yc2 = torch.max(x2, gx2), torch.max(y2, gy2)
    if kind == "giou":
        area = (xc2 - xc1) * (yc2 - yc1)
        return 1 - (iou - (area - union) / (area + eps))
    diag = (xc2 - xc1) ** 2 + (yc2 - yc1) ** 2 + eps
    rho2 = ((x1 + x2) / 2 - (gx1 + gx2) / 2) ** 2 + ((y1 + y2) / 2 - (gy1 + gy2) / 2) ** 2
    loss = 1 - iou + rho2 / diag
    if kind == "diou":
        return loss
    v = (4 / math.pi ** 2) * torch.pow(torch.atan((gx2 - gx1) / (gy2 - gy1))
                                       - torch.atan((x2 - x1) / (y2 - y1)), 2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return loss + alpha * v


def random_boxes(n, seed, size=20.0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, size, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(size / 40, size / 2, (n, 2))], axis=1)


def paired_boxes(n, seed):
    """Pairs that overlap, nest, touch, tie on an edge, coincide and lie apart."""
    b1, b2 = random_boxes(n, seed), random_boxes(n, seed + 1)
    b2[0] = b1[0]                                  # identical
    b2[1, [0, 2]] = b1[1, [0, 2]]                  # same x extent (ties in min/max)
    b2[2, 0] = b1[2, 0]                            # one tied edge
    b2[3] = b1[3] + [100, 100, 100, 100]           # far apart
    b2[4] = [b1[4, 2], b1[4, 1], b1[4, 2] + 3, b1[4, 3]]      # touching at x = b1's x2
    b2[5] = b1[5] + [1, 1, -1, -1]                 # nested inside
    return b1, b2


# ------------------------------------------------------------------------- pairwise (N x M)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(PAIRWISE))
def test_pairwise_matches_torch_formula(backend, torch, kind, dtype):
    b1, b2 = random_boxes(13, 0), random_boxes(9, 1)
    b2[0] = b1[0]
    b2[1] = b1[1] + [50, 0, 50, 0]
    got = run(backend, PAIRWISE[kind], b1.astype(dtype), b2.astype(dtype))
    assert got.shape == (13, 9) and got.dtype == dtype
    want = torch_pairwise(torch, kind, torch.from_numpy(b1.astype(dtype).astype(np.float64)),
                          torch.from_numpy(b2.astype(dtype).astype(np.float64))).numpy()
    np.testing.assert_allclose(got, want, **tol(dtype))
    assert np.all(got <= 1 + 1e-6) and np.all(got >= -1 - 1e-6)


@pytest.mark.parametrize("kind", sorted(PAIRWISE))
def test_pairwise_eps_is_passed_on(torch, kind):
    b1, b2 = random_boxes(4, 2, size=1e-3), random_boxes(5, 3, size=1e-3)   # c^2 ~ 1e-7
    for eps in (1e-7, 1e-3):
        kw = {} if kind == "giou" else dict(eps=eps)
        want = torch_pairwise(torch, kind, torch.from_numpy(b1), torch.from_numpy(b2), eps)
        np.testing.assert_allclose(PAIRWISE[kind](b1, b2, **kw), want.numpy(), **TOL64)


def test_pairwise_known_values():
    a = np.array([[0.0, 0, 2, 2]])
    b = np.array([[1.0, 1, 3, 3], [4.0, 0, 6, 2], [0.0, 0, 2, 2]])
    # overlap 1, union 7, enclosure 3x3 = 9; apart: union 8, enclosure 6x2 = 12
    np.testing.assert_allclose(B.generalized_box_iou(a, b),
                               [[1 / 7 - 2 / 9, 0 - 4 / 12, 1.0]], rtol=1e-15)
    # centres (1,1) vs (2,2): rho^2 = 2, c^2 = 18; vs (5,1): rho^2 = 16, c^2 = 40
    eps = 1e-7
    np.testing.assert_allclose(B.distance_box_iou(a, b),
                               [[1 / 7 - 2 / (18 + eps), -16 / (40 + eps), 1.0]], rtol=1e-15)
    # all three boxes are squares: v = 0, CIoU = DIoU
    np.testing.assert_allclose(B.complete_box_iou(a, b), B.distance_box_iou(a, b), rtol=0)
    # a 2x1 box against a square: v = 4/pi^2 (atan 2 - pi/4)^2
    c = np.array([[0.0, 0, 2, 1]])
    v = 4 / math.pi ** 2 * (math.atan(2) - math.pi / 4) ** 2
    iou = 0.5
    alpha = v / (1 - iou + v + eps)
    rho2 = 0.25
    np.testing.assert_allclose(B.complete_box_iou(c, a),
                               [[iou - rho2 / (8 + eps) - alpha * v]], rtol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pairwise_identical_and_disjoint(backend, dtype):
    b = random_boxes(6, 4).astype(dtype)
    for fn in PAIRWISE.values():
        np.testing.assert_allclose(np.diag(run(backend, fn, b, b)), 1.0,
                                   atol=1e-6 if dtype == np.float32 else 1e-12)
    far = (b + 1000).astype(dtype)
    g = run(backend, B.generalized_box_iou, b, far)
    assert np.all(g < 0) and np.all(g > -1)
    d = run(backend, B.distance_box_iou, b, far)
    assert np.all(d < 0) and np.all(d > -1)


def test_pairwise_zero_area_boxes(torch):
    """Where torchvision divides 0 by 0 (NaN), convkit keeps box_iou's rule: union 0 -> IoU 0,
    enclosing area 0 -> no GIoU penalty, and a point's aspect angle is 0."""
    p = np.array([[5.0, 5, 5, 5]])
    line = np.array([[0.0, 5, 4, 5]])             # zero height, width 4
    tp = torch.from_numpy(p)
    assert torch.isnan(torch_pairwise(torch, "giou", tp, tp)).all()
    assert torch.isnan(torch_pairwise(torch, "ciou", tp, tp)).all()
    assert B.generalized_box_iou(p, p)[0, 0] == 0
    assert B.distance_box_iou(p, p)[0, 0] == 0
    assert B.complete_box_iou(p, p)[0, 0] == 0
    # a point and a line: union 0 -> IoU 0; enclosure 5 x 0 -> no GIoU penalty
    assert B.generalized_box_iou(p, line)[0, 0] == 0
    rho2, c2 = 9.0, 25.0                          # centres (5,5) and (2,5); enclosure 5x0
    assert B.distance_box_iou(p, line)[0, 0] == pytest.approx(-rho2 / (c2 + 1e-7), rel=1e-15)
    # the line's aspect angle is atan(4/0) = pi/2, as torch's atan(inf); the point's is 0
    v = 4 / math.pi ** 2 * (math.pi / 2) ** 2
    want = -rho2 / (c2 + 1e-7) - v / (1 + v + 1e-7) * v
    assert B.complete_box_iou(p, line)[0, 0] == pytest.approx(want, rel=1e-14)
    # against a real box, the zero-area line matches torch where torch is finite
    box = np.array([[1.0, 2, 3, 7]])
    for kind in ("giou", "diou", "ciou"):
        want = torch_pairwise(torch, kind, torch.from_numpy(line), torch.from_numpy(box))
        np.testing.assert_allclose(PAIRWISE[kind](line, box), want.numpy(), **TOL64)


def test_pairwise_nan_propagates():
    b = np.array([[0.0, 0, 2, 2], [np.nan, 0, 1, 1]])
    for fn in PAIRWISE.values():
        out = fn(b, b)
        assert np.isfinite(out[0, 0]) and np.isnan(out[1]).all() and np.isnan(out[:, 1]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_pairwise_empty(backend, dtype):
    b = random_boxes(3, 5).astype(dtype)
    e = np.zeros((0, 4), dtype)
    for fn in PAIRWISE.values():
        for x, y, shape in ((e, b, (0, 3)), (b, e, (3, 0)), (e, e, (0, 0))):
            out = run(backend, fn, x, y)
            assert out.shape == shape and out.dtype == dtype


@pytest.mark.parametrize("kind", sorted(PAIRWISE))
def test_pairwise_errors(kind):
    fn = PAIRWISE[kind]
    name = fn.__name__
    good = np.zeros((2, 4))
    with pytest.raises(TypeError, match=rf"{name}: boxes1 must be float32 or float64, got int64"):
        fn(np.zeros((2, 4), np.int64), good)
    with pytest.raises(TypeError, match=rf"{name}: boxes2 must be a numpy or cupy array"):
        fn(good, [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match=rf"{name}: boxes2 must have shape \(M, 4\), got \(2, 5\)"):
        fn(good, np.zeros((2, 5)))
    with pytest.raises(ValueError, match=rf"{name}: boxes1 must have shape \(N, 4\), got \(4,\)"):
        fn(np.zeros(4), good)
    with pytest.raises(TypeError, match=rf"{name}: boxes1 and boxes2 must share one dtype; "
                                        r"boxes1 is float32 but boxes2 is float64"):
        fn(good.astype(np.float32), good)
    if kind != "giou":
        for eps in (0, -1e-7, float("nan")):
            with pytest.raises(ValueError, match=rf"{name}: eps must be positive"):
                fn(good, good, eps=eps)
        with pytest.raises(TypeError, match=rf"{name}: eps must be a number"):
            fn(good, good, eps="1e-7")


def test_exported():
    for name in ("generalized_box_iou", "distance_box_iou", "complete_box_iou"):
        assert name in B.__all__
    for name in ("generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss"):
        assert name in nn.__all__ and getattr(nn, name) is getattr(nn.losses, name)


# ---------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_loss_and_grad_match_torch_autograd(backend, torch, kind, reduction):
    b1, b2 = paired_boxes(40, 6)
    loss, grad = run(backend, LOSSES[kind], b1, b2, reduction=reduction)
    t1 = torch.from_numpy(b1).requires_grad_(True)
    want = torch_loss(torch, kind, t1, torch.from_numpy(b2))
    if reduction == "mean":
        want = want.mean()
    elif reduction == "sum":
        want = want.sum()
    want.sum().backward()
    assert grad.shape == b1.shape and grad.dtype == np.float64
    assert np.shape(loss) == ((40,) if reduction == "none" else ())
    np.testing.assert_allclose(loss, want.detach().numpy(), **TOL64)
    np.testing.assert_allclose(grad, t1.grad.numpy(), **TOL64)


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_loss_float32_matches_float64(backend, torch, kind):
    b1, b2 = paired_boxes(30, 7)
    b1, b2 = b1.astype(np.float32), b2.astype(np.float32)
    loss, grad = run(backend, LOSSES[kind], b1, b2, reduction="none")
    assert loss.dtype == np.float32 and grad.dtype == np.float32
    t1 = torch.from_numpy(b1.astype(np.float64)).requires_grad_(True)
    want = torch_loss(torch, kind, t1, torch.from_numpy(b2.astype(np.float64)))
    want.sum().backward()
    np.testing.assert_allclose(loss, want.detach().numpy(), **TOL32)
    np.testing.assert_allclose(grad, t1.grad.numpy(), rtol=1e-3, atol=1e-4)


def aspect_v(b1, b2):
    """CIoU's v for pairs of boxes (float64 loop, from its definition)."""
    return np.array([4 / math.pi ** 2 * (math.atan((g[2] - g[0]) / (g[3] - g[1]))
                                         - math.atan((p[2] - p[0]) / (p[3] - p[1]))) ** 2
                     for p, g in zip(b1, b2)])


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_loss_numeric_gradient(kind):
    """Central differences at generic pairs (no ties, overlaps and gaps away from 0).  CIoU's
    gradient holds alpha constant (torchvision's no_grad), so its check differentiates
    DIoU + alpha(b1) * v with alpha frozen at b1."""
    b1 = np.array([[0.0, 0, 4, 3], [1.0, 2, 5, 9], [10.0, 10, 12, 13], [0.3, 0.2, 2.1, 1.4]])
    b2 = np.array([[1.0, 0.5, 5, 2], [2.5, 1, 4, 7], [0.0, 0, 3, 2], [0.7, 0.6, 1.9, 3.3]])
    for reduction in ("sum", "mean"):
        if kind == "ciou":
            lc, _ = nn.complete_box_iou_loss(b1, b2, reduction="none")
            ld, _ = nn.distance_box_iou_loss(b1, b2, reduction="none")
            alpha = (lc - ld) / aspect_v(b1, b2)
            scale = 1.0 if reduction == "sum" else 1.0 / len(b1)

            def f(a):
                return float(nn.distance_box_iou_loss(a, b2, reduction=reduction)[0]
                             + scale * np.sum(alpha * aspect_v(a, b2)))
        else:
            def f(a):
                return float(LOSSES[kind](a, b2, reduction=reduction)[0])
        _, g = LOSSES[kind](b1, b2, reduction=reduction)
        np.testing.assert_allclose(g, numeric_grad(f, b1.copy(), eps=1e-6), rtol=1e-6,
                                   atol=1e-9)


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_loss_identical_boxes(torch, kind):
    b = random_boxes(5, 8)
    loss, grad = LOSSES[kind](b, b.copy(), reduction="none")
    # IoU = A / (A + eps): the loss is eps-small, not 0, as torchvision's
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    np.testing.assert_allclose(loss, 1 - area / (area + 1e-7), rtol=1e-6, atol=1e-16)
    t1 = torch.from_numpy(b).requires_grad_(True)
    torch_loss(torch, kind, t1, torch.from_numpy(b)).sum().backward()
    np.testing.assert_allclose(grad, t1.grad.numpy(), **TOL64)    # ties split 1/2, as torch


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_loss_disjoint_boxes(torch, kind):
    b1 = np.array([[0.0, 0, 2, 2], [0.0, 0, 2, 2], [0.0, 0, 1, 1]])
    b2 = np.array([[5.0, 0, 7, 3], [2.0, 0, 4, 2], [3.0, 4, 6, 5]])     # apart, touching, apart
    loss, grad = LOSSES[kind](b1, b2, reduction="none")
    assert np.all(loss >= 1)
    t1 = torch.from_numpy(b1).requires_grad_(True)
    want = torch_loss(torch, kind, t1, torch.from_numpy(b2))
    want.sum().backward()
    np.testing.assert_allclose(loss, want.detach().numpy(), **TOL64)
    np.testing.assert_allclose(grad, t1.grad.numpy(), **TOL64)
    if kind == "giou":   # disjoint: 1 + (C - U) / C; U = 4 + 6, C = 7 x 3
        np.testing.assert_allclose(loss[0], 1 + (21 - 10) / 21, rtol=1e-7)


def test_loss_zero_area_boxes(torch):
    """Zero-area boxes: GIoU/DIoU as torch; CIoU's aspect term stays finite (torch: NaN for a
    point, NaN gradient for a zero height)."""
    b1 = np.array([[1.0, 1, 1, 1], [0.0, 2, 4, 2], [1.0, 1, 3, 3]])
    b2 = np.array([[1.0, 1, 1, 1], [1.0, 0, 3, 5], [2.0, 2, 2, 2]])
    for kind in ("giou", "diou"):
        loss, grad = LOSSES[kind](b1, b2, reduction="none")
        t1 = torch.from_numpy(b1).requires_grad_(True)
        want = torch_loss(torch, kind, t1, torch.from_numpy(b2))
        want.sum().backward()
        np.testing.assert_allclose(loss, want.detach().numpy(), **TOL64)
        np.testing.assert_allclose(grad, t1.grad.numpy(), **TOL64)
    # two coincident points: every term is 0 over eps; the loss is 1 with zero gradient
    loss, grad = nn.complete_box_iou_loss(b1[:1], b2[:1], reduction="none")
    np.testing.assert_array_equal(loss, [1.0])
    np.testing.assert_array_equal(grad, np.zeros((1, 4)))
    loss, grad = nn.complete_box_iou_loss(b1, b2, reduction="none")
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    # row 1: a horizontal line (angle pi/2) against a 2x5 box; torch's forward is finite there
    want = torch_loss(torch, "ciou", torch.from_numpy(b1[1:2]), torch.from_numpy(b2[1:2]))
    np.testing.assert_allclose(loss[1], want.item(), rtol=1e-13)
    # the aspect term's gradient (CIoU's minus DIoU's) there is the limit from boxes of positive
    # height (the IoU term's is not: the overlap's gradient jumps where the overlap opens)
    _, g_diou = nn.distance_box_iou_loss(b1, b2, reduction="none")
    b = b1[1:2].copy()
    b[0, 3] += 1e-9                       # h = 1e-9: an ordinary box next to the line
    _, gc = nn.complete_box_iou_loss(b, b2[1:2], reduction="sum")
    _, gd = nn.distance_box_iou_loss(b, b2[1:2], reduction="sum")
    np.testing.assert_allclose(grad[1] - g_diou[1], gc[0] - gd[0], rtol=1e-6, atol=1e-8)
    assert np.abs(grad[1] - g_diou[1]).max() > 1e-3


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_loss_empty(backend, kind):
    e = np.zeros((0, 4))
    loss, grad = run(backend, LOSSES[kind], e, e, reduction="none")
    assert loss.shape == (0,) and grad.shape == (0, 4)
    for reduction in ("sum", "mean"):     # torchvision: the mean of no pairs is 0, not NaN
        loss, grad = run(backend, LOSSES[kind], e, e, reduction=reduction)
        assert loss.shape == () and float(loss) == 0.0 and grad.shape == (0, 4)


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_loss_batched_shape_and_int_targets(kind):
    b1, b2 = paired_boxes(12, 9)
    loss, grad = LOSSES[kind](b1.reshape(3, 4, 4), b2.reshape(3, 4, 4), reduction="none")
    flat_loss, flat_grad = LOSSES[kind](b1, b2, reduction="none")
    np.testing.assert_array_equal(loss, flat_loss.reshape(3, 4))
    np.testing.assert_array_equal(grad, flat_grad.reshape(3, 4, 4))
    # integer targets are cast to boxes1's dtype (torchvision upcasts non-float boxes)
    t = np.round(b2).astype(np.int64)
    np.testing.assert_array_equal(LOSSES[kind](b1, t)[1], LOSSES[kind](b1, t.astype(float))[1])


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_loss_errors(kind):
    fn = LOSSES[kind]
    name = fn.__name__
    good = np.zeros((2, 4))
    with pytest.raises(TypeError, match=rf"{name}: input must be float32 or float64"):
        fn(np.zeros((2, 4), np.int64), good)
    with pytest.raises(ValueError, match=rf"{name}: reduction must be one of"):
        fn(good, good, reduction="avg")
    with pytest.raises(ValueError, match=rf"{name}: boxes1 must have shape \(N, 4\)"):
        fn(np.zeros((2, 5)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match=rf"{name}: boxes2 must have the shape of boxes1"):
        fn(good, np.zeros((3, 4)))
    with pytest.raises(TypeError, match=rf"{name}: boxes2 must be an array"):
        fn(good, [[0, 0, 1, 1]] * 2)
    with pytest.raises(TypeError, match=rf"{name}: boxes2 must be a float or integer array"):
        fn(good, np.zeros((2, 4), bool))
    for eps in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match=rf"{name}: eps must be positive"):
            fn(good, good, eps=eps)


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_loss_trains_a_box(backend, kind):
    """Gradient descent on each loss moves a box onto its target (the gradient's sign and
    scale are usable, the point of the loss)."""
    target = np.array([[10.0, 10, 30, 20]])
    box = np.array([[0.0, 0, 8, 16]])
    with convkit.use_backend(backend) as be:
        b, t = be.asarray(box), be.asarray(target)
        for _ in range(1000):
            _, g = LOSSES[kind](b, t, reduction="sum")
            b = b - 2.0 * g
        got = be.to_numpy(b)
    np.testing.assert_allclose(got, target, atol=0.1)
