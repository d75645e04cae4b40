"""Large finite operands on the cpu backend's fast conv algorithms.  Winograd's transforms
(F(2x2) and F(4x4), the weight gradient's, stem_wino's 1-D ones) add up to 2**14 times an
operand's size before the products, so values near float32's limit overflowed to inf / NaN
where torch's direct sums stay finite.  The boundary now sends operands with a value of 2**35 or
more (conv.py _finite, _conv_im2col.all_moderate) down the exact path as it does NaN and inf:
torch's values and its NaN / inf pattern, element for element (DESIGN.md "Errors").  The bound
behind 2**35: bench/wino_growth.py.
"""
import numpy as np
import pytest

import convkit
from convkit import functional as F

from helpers import run

ok, why = convkit.backend_status("cpu")
pytestmark = pytest.mark.skipif(not ok, reason=why[:300])

HUGE, TINY = 2e38, 1e-6         # products ~2e32: finite; a transform of HUGE's tile is not

# (name, x shape, weight shape, stride, padding): the suite's 3x3 algorithms (F(4x4) at 64
# channels and more, F(2x2) / batch below), a weight gradient on weight_winograd, the stem
CASES = [
    ("f4_res", (2, 64, 14, 14), (64, 64, 3, 3), 1, 1),
    ("small_16", (4, 16, 8, 8), (16, 16, 3, 3), 1, 1),
    ("vgg_like", (1, 32, 28, 28), (32, 32, 3, 3), 1, 1),
    ("stem", (1, 3, 64, 64), (64, 3, 7, 7), 2, 3),
]


def _mixing(x, w, st, pd):
    """The plan's algorithms for finite moderate operands: at least one must mix values across
    outputs, or the case would test nothing."""
    from convkit.cpu import conv as cc
    s, _, _, plan = cc._plan(x, w, (st, st), (pd,) * 4, (1, 1), 1)
    algos = {plan.forward.algo, plan.grad_weight.algo}
    if plan.grad_x is not None:
        algos.add(plan.grad_x.algo)
    return algos & (cc._MIXES_X | {"stem_wino"})


def _torch(torch, x, w, gy, st, pd):
    xt = torch.from_numpy(x).double().requires_grad_()
    wt = torch.from_numpy(w).double().requires_grad_()
    y = torch.nn.functional.conv2d(xt, wt, stride=st, padding=pd)
    y.backward(torch.from_numpy(gy).double())
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()


def _close(got, want, what):
    assert np.isfinite(want).all()
    bad = np.argwhere(~np.isfinite(got))
    assert not len(bad), f"{what}: not finite at {bad[:5].tolist()} where torch's is finite"
    scale = np.abs(want).max()
    np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=2e-5, err_msg=what)


@pytest.mark.parametrize("name, xs, ws, st, pd", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("big", ["x", "weight", "grad_y"])
def test_large_finite_operands_give_torchs_finite_values(torch, name, xs, ws, st, pd, big):
    from convkit.cpu import conv as cc
    cc._plans.clear()
    rng = np.random.default_rng(len(name) + len(big))
    x = rng.uniform(-1, 1, xs).astype(np.float32)        # (|v| <= 1: HUGE * v stays finite)
    w = rng.uniform(-1, 1, ws).astype(np.float32)
    assert _mixing(x, w, st, pd), name
    Ho = (xs[2] + 2 * pd - ws[2]) // st + 1
    gy = rng.uniform(-1, 1, (xs[0], ws[0], Ho, Ho)).astype(np.float32)
    # one operand huge, the one it multiplies in each pass tiny
    if big == "x":
        x, w, gy = x * np.float32(HUGE), w * np.float32(TINY), gy * np.float32(TINY)
    elif big == "weight":
        x, w, gy = x * np.float32(TINY), w * np.float32(HUGE), gy * np.float32(TINY)
    else:
        x, w, gy = x * np.float32(TINY), w * np.float32(TINY), gy * np.float32(HUGE)
    y64, gx64, gw64 = _torch(torch, x, w, gy, st, pd)
    y = run("cpu", F.conv2d_forward, x, w, None, stride=st, padding=pd)
    gx, gw, _ = run("cpu", F.conv2d_backward, gy, x, w, stride=st, padding=pd, has_bias=False)
    if big != "grad_y":
        _close(y, y64, f"{name} forward, large {big}")
    if big != "x":
        _close(gx, gx64, f"{name} grad_x, large {big}")
    if big != "weight":
        _close(gw, gw64, f"{name} grad_weight, large {big}")


def test_large_image_takes_the_exact_path_alone(torch):
    """The rule is per image, as for NaN: the batch's other images keep their fast-plan bits."""
    from convkit.cpu import conv as cc
    cc._plans.clear()
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (3, 64, 14, 14)).astype(np.float32)
    w = rng.uniform(-1, 1, (64, 64, 3, 3)).astype(np.float32)
    clean = run("cpu", F.conv2d_forward, x, w, None, padding=1)
    x[1] *= np.float32(HUGE)
    w_t = w * np.float32(TINY)
    clean_t = run("cpu", F.conv2d_forward, np.ascontiguousarray(x[[0, 2]]), w_t, None, padding=1)
    y = run("cpu", F.conv2d_forward, x, w_t, None, padding=1)
    np.testing.assert_array_equal(y[[0, 2]], clean_t)
    y64 = torch.nn.functional.conv2d(torch.from_numpy(x).double(),
                                     torch.from_numpy(w_t).double(), padding=1).numpy()
    _close(y[1], y64[1], "the large image")
    assert clean.shape == y.shape


@pytest.mark.parametrize("dtype, limit", [(np.float32, 2.0 ** 35), (np.float64, 2.0 ** 480)])
def test_all_moderate_threshold(dtype, limit):
    from convkit.cpu import _conv_im2col as im
    below = np.nextafter(dtype(limit), dtype(0))
    for v, want in [(0.0, True), (below, True), (-below, True), (limit, False), (-limit, False),
                    (np.inf, False), (-np.inf, False), (np.nan, False)]:
        a = np.zeros(37, dtype)
        a[29] = v               # (past the first vector of the reduction)
        assert im.all_moderate(np.zeros(3, dtype), a) is want, (dtype, v)
    with pytest.raises(TypeError, match="float32 or float64"):
        im.all_moderate(np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="C-contiguous"):
        im.all_moderate(np.zeros((4, 4), dtype)[:, ::2])
