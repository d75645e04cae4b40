"""The batch path's float32 grad_weight on csrc/fgemm.h (machines with AVX2 and no AVX-512
GEMM; tuning.BATCH_W_FGEMM_RATIO): straight (grad_y @ cols^T) where a block has at most that
many times its filters in columns (channels x taps), transposed (cols @ grad_y^T, then written
back transposed) above.  Both sum each weight as one FMA chain over the batch's positions in
order, going on across the blocks of images (beta 1), the parts of the batch added after: the
oracle is fgemm itself on numpy's im2col of each part, bit for bit; values against float64."""
import numpy as np
import pytest

import convkit
from convkit.cpu import _gemm, conv as cc, tuning as T

ok, why = convkit.backend_status("cpu")
ACTIVE = ok and not _gemm.own_sgemm_active() and _gemm.fixed_sgemm_active()
pytestmark = pytest.mark.skipif(not ACTIVE, reason="the batch grad_weight runs on fgemm.h only "
                                "on AVX2 machines without the own AVX-512 GEMM (and not with "
                                "CONVKIT_DISABLE_FGEMM=1): elsewhere BLAS or the AVX-512 GEMM, "
                                "as before")


def _im2col(x, K, stride, pad):
    """(C*K*K, N*Ho*Wo): columns in the kernel's order (channel, kh, kw) x (image, ho, wo)."""
    N, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = (H + 2 * pad - K) // stride + 1, (W + 2 * pad - K) // stride + 1
    cols = np.empty((C, K, K, N, Ho, Wo), x.dtype)
    for kh in range(K):
        for kw in range(K):
            cols[:, kh, kw] = xp[:, :, kh:kh + stride * Ho:stride,
                                 kw:kw + stride * Wo:stride].transpose(1, 0, 2, 3)
    return cols.reshape(C * K * K, -1)


# (x shape, w shape, stride, padding): columns per block against filters
CASES = [
    # (odd maps: the even ones of these layers take weight_winotiny)
    ((64, 16, 7, 7), (16, 16, 3, 3), 1, 1),    # 144 columns, 16 filters: transposed, 6+ blocks
    ((64, 32, 5, 5), (32, 32, 3, 3), 1, 1),    # 2 blocks of 16 channels, 144 / 32: transposed
    ((16, 16, 8, 8), (32, 16, 1, 1), 2, 0),    # 16 / 32 (a 1x1 stride-2 shortcut): straight
    ((16, 32, 8, 8), (32, 32, 1, 1), 2, 0),    # 32 / 32, at the ratio: straight
    ((8, 3, 8, 8), (16, 3, 3, 3), 1, 1),       # 27 / 16: transposed
]


@pytest.mark.parametrize("xs,ws,stride,pad", CASES)
def test_batch_grad_weight_is_the_fgemm_chain(xs, ws, stride, pad):
    rng = np.random.default_rng(1616)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    _, _, _, plan = cc._plan(x, w, (stride,) * 2, (pad,) * 4, (1, 1), 1)
    assert plan.grad_weight.algo == "batch"
    nsplit = plan.grad_weight.params["nsplit"]
    K = ws[2]
    N, F = xs[0], ws[0]
    with convkit.use_backend("cpu"):
        y = convkit.conv2d_forward(x, w, None, stride=stride, padding=pad)
        gy = rng.standard_normal(y.shape).astype(np.float32)
        _, gw, _ = convkit.conv2d_backward(gy, x, w, stride=stride, padding=pad,
                                           needs_input_grad=False, has_bias=False)
    # the oracle: per part of the batch one fgemm chain over its positions, parts added in order
    want = None
    for sp in range(nsplit):
        n0, n1 = sp * N // nsplit, (sp + 1) * N // nsplit
        cols = _im2col(x[n0:n1], K, stride, pad)
        g2 = np.ascontiguousarray(gy[n0:n1].transpose(1, 0, 2, 3).reshape(F, -1))
        part = np.empty((F, cols.shape[0]), np.float32)
        assert _gemm.fgemm_into(False, True, g2, cols, 0.0, part)
        want = part if want is None else want + part
    np.testing.assert_array_equal(gw.reshape(F, -1), want)
    # and the values
    cols = _im2col(x.astype(np.float64), K, stride, pad)
    g2 = gy.astype(np.float64).transpose(1, 0, 2, 3).reshape(F, -1)
    np.testing.assert_allclose(gw.reshape(F, -1), g2 @ cols.T, rtol=2e-4, atol=2e-3)


def test_the_ratio_splits_the_cases():
    """The cases above sit on both sides of the threshold (and one at it): a block's columns
    are the plan's channels per block x taps."""
    sides = []
    for xs, ws, stride, pad in CASES:
        x, w = np.zeros(xs, np.float32), np.zeros(ws, np.float32)
        _, _, _, plan = cc._plan(x, w, (stride,) * 2, (pad,) * 4, (1, 1), 1)
        nck = plan.grad_weight.params["chans_w"] * ws[2] * ws[3]
        sides.append((nck > T.BATCH_W_FGEMM_RATIO * ws[0]) - (nck < T.BATCH_W_FGEMM_RATIO * ws[0]))
    assert set(sides) == {-1, 0, 1}, sides


def test_same_bits_on_1_2_8_threads():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((32, 16, 8, 8)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((32, 16, 8, 8)).astype(np.float32)
    out = []
    try:
        for nt in (1, 2, 8):
            convkit.set_num_threads(nt)
            with convkit.use_backend("cpu"):
                out.append(convkit.conv2d_backward(gy, x, w, padding=1)[1].tobytes())
    finally:
        convkit.set_num_threads(None)
    assert out[0] == out[1] == out[2]
