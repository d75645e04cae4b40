"""The contract's Errors section: every bad input raises the right type, naming the argument,
before any kernel runs -- on every backend (validation lives at the boundary)."""
import re

import numpy as np
import pytest

import convkit
from helpers import run

f32, f64 = np.float32, np.float64


def x4(*shape, dtype=f32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def raises(backend, exc, pattern, fn, *args, **kw):
    with pytest.raises(exc, match=pattern):
        run(backend, fn, *args, **kw)


# ------------------------------------------------------------------------------------ conv
CONV_BAD = [
    ("x 3-D", ValueError, r"conv2d_forward: x must be 4-D \(N, C, H, W\), got shape \(3, 8, 8\)",
     (x4(3, 8, 8), x4(2, 3, 3, 3)), {}),
    ("weight 3-D", ValueError, r"weight must be 4-D", (x4(1, 3, 8, 8), x4(3, 3, 3)), {}),
    ("channel mismatch", ValueError, r"weight has 2 input channels per group but x has C=3",
     (x4(1, 3, 8, 8), x4(4, 2, 3, 3)), {}),
    ("groups not dividing C", ValueError, r"groups=2 must divide the input channels C=3",
     (x4(1, 3, 8, 8), x4(4, 1, 3, 3)), {"groups": 2}),
    ("groups not dividing F", ValueError, r"groups=2 must divide the output channels F=3",
     (x4(1, 4, 8, 8), x4(3, 2, 3, 3)), {"groups": 2}),
    ("groups zero", ValueError, r"groups must be a positive int", (x4(1, 4, 8, 8), x4(3, 4, 3, 3)),
     {"groups": 0}),
    ("stride zero", ValueError, r"stride must be positive, got 0", (x4(1, 3, 8, 8), x4(2, 3, 3, 3)),
     {"stride": 0}),
    ("stride pair negative", ValueError, r"stride must be positive, got \(1, -1\)",
     (x4(1, 3, 8, 8), x4(2, 3, 3, 3)), {"stride": (1, -1)}),
    ("dilation zero", ValueError, r"dilation must be positive", (x4(1, 3, 8, 8), x4(2, 3, 3, 3)),
     {"dilation": 0}),
    ("negative padding", ValueError, r"padding must be non-negative, got -1",
     (x4(1, 3, 8, 8), x4(2, 3, 3, 3)), {"padding": -1}),
    ("padding word", ValueError, r"padding must be an int, a pair, 'same' or 'valid', got 'full'",
     (x4(1, 3, 8, 8), x4(2, 3, 3, 3)), {"padding": "full"}),
    ("same with stride", ValueError, r"padding='same' needs stride 1",
     (x4(1, 3, 8, 8), x4(2, 3, 3, 3)), {"padding": "same", "stride": 2}),
    ("output < 1", ValueError, r"output size would be 0x0 \(< 1\)",
     (x4(1, 3, 4, 4), x4(2, 3, 5, 5)), {}),
    ("float stride", TypeError, r"stride must be an int or a pair of ints, got 1.5",
     (x4(1, 3, 8, 8), x4(2, 3, 3, 3)), {"stride": 1.5}),
    ("bool groups", TypeError, r"groups must be an int, got bool",
     (x4(1, 3, 8, 8), x4(2, 3, 3, 3)), {"groups": True}),
    ("integer dtype", TypeError, r"x must be float32 or float64, got int64",
     (np.zeros((1, 3, 8, 8), np.int64), x4(2, 3, 3, 3)), {}),
    ("mixed dtypes", TypeError, r"x is float32 but weight is float64",
     (x4(1, 3, 8, 8), x4(2, 3, 3, 3, dtype=f64)), {}),
    ("bias shape", ValueError, r"bias must have shape \(2,\), got \(3,\)",
     (x4(1, 3, 8, 8), x4(2, 3, 3, 3), x4(3)), {}),
    ("bias dtype", TypeError, r"bias is float64",
     (x4(1, 3, 8, 8), x4(2, 3, 3, 3), x4(2, dtype=f64)), {}),
    ("list input", TypeError, r"x must be a .*ndarray .*got builtins.list.*convkit.asarray",
     ([[[[1.0]]]], x4(1, 1, 1, 1)), {}),
]


@pytest.mark.parametrize("case", CONV_BAD, ids=[c[0] for c in CONV_BAD])
def test_conv2d_forward_bad_input(backend, case):
    _, exc, pat, args, kw = case
    raises(backend, exc, pat, convkit.conv2d_forward, *args, **kw)


def test_conv2d_backward_bad_grad_shape(backend):
    x, w = x4(2, 3, 8, 8), x4(4, 3, 3, 3)
    raises(backend, ValueError, r"conv2d_backward: grad_y must have shape \(2, 4, 6, 6\), got "
           r"\(2, 4, 8, 8\)", convkit.conv2d_backward, x4(2, 4, 8, 8), x, w)
    raises(backend, TypeError, r"grad_y is float32 but x is float64|x is float32",
           convkit.conv2d_backward, np.zeros((2, 4, 6, 6), f64), x, w)


def test_workspace_limit_too_small_is_memory_error_or_works():
    """A cap below one image's im2col: either split further (same result) or MemoryError
    naming the limit -- never a crash."""
    if "cpu" not in convkit.available_backends():
        pytest.skip("cpu backend not built")
    x, w = x4(2, 16, 32, 32), x4(8, 16, 3, 3)
    want = run("numpy", convkit.conv2d_forward, x, w, None, 1, 1)
    old = convkit.get_workspace_limit()
    convkit.set_workspace_limit(1024)
    try:
        got = run("cpu", convkit.conv2d_forward, x, w, None, 1, 1)
    except MemoryError as e:
        assert "1024" in str(e) or "limit" in str(e)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    finally:
        convkit.set_workspace_limit(old)


# ------------------------------------------------------------------------------------ pooling
@pytest.mark.parametrize("fn", [convkit.max_pool2d_forward, convkit.avg_pool2d_forward])
def test_pool_bad_input(backend, fn):
    name = fn.__name__
    raises(backend, ValueError, rf"{name}: x must be 4-D", fn, x4(8, 8), 2)
    raises(backend, ValueError, r"kernel_size must be positive", fn, x4(1, 1, 8, 8), 0)
    raises(backend, ValueError, r"stride must be positive", fn, x4(1, 1, 8, 8), 2, 0)
    raises(backend, ValueError, r"padding must be non-negative", fn, x4(1, 1, 8, 8), 3, 1, -1)
    raises(backend, ValueError, r"padding \(2, 2\) must be at most half the kernel size", fn,
           x4(1, 1, 8, 8), 3, 1, 2)
    raises(backend, ValueError, r"output size would be 0x0", fn, x4(1, 1, 2, 2), 3)
    raises(backend, TypeError, r"x must be float32 or float64, got int32", fn,
           np.zeros((1, 1, 4, 4), np.int32), 2)


def test_max_pool_backward_bad_indices(backend):
    x = x4(1, 2, 4, 4)
    y, idx = run(backend, convkit.max_pool2d_forward, x, 2)
    bad = idx.copy()
    bad[0, 0, 0, 0] = 16          # one past the 4x4 plane
    raises(backend, ValueError, r"max_pool2d_backward: indices must lie in \[0, 16\)",
           convkit.max_pool2d_backward, y, bad, x.shape)
    bad[0, 0, 0, 0] = -3
    raises(backend, ValueError, r"indices must lie in", convkit.max_pool2d_backward, y, bad,
           x.shape)
    raises(backend, TypeError, r"indices must be an integer", convkit.max_pool2d_backward, y,
           idx.astype(f32), x.shape)
    raises(backend, ValueError, r"indices must have shape", convkit.max_pool2d_backward, y,
           idx[:, :, :1], x.shape)
    raises(backend, ValueError, r"input_shape must be 4 non-negative ints",
           convkit.max_pool2d_backward, y, idx, (2, 4, 4))


def test_avg_pool_backward_bad_grad(backend):
    raises(backend, ValueError, r"avg_pool2d_backward: grad_y must have shape \(1, 2, 2, 2\)",
           convkit.avg_pool2d_backward, x4(1, 2, 3, 3), (1, 2, 4, 4), 2)


# ------------------------------------------------------------------------------------ batch norm
def test_batch_norm_bad_input(backend):
    x = x4(2, 3, 4, 4)
    c3, c4 = np.ones(3, f32), np.ones(4, f32)
    bn = convkit.batch_norm_forward
    raises(backend, ValueError, r"batch_norm_forward: weight must have shape \(3,\), got \(4,\)",
           bn, x, c4, c3, c3.copy(), c3.copy(), True)
    raises(backend, ValueError, r"running_mean must have shape \(3,\)", bn, x, c3, c3, c4,
           c3.copy(), True)
    raises(backend, ValueError, r"training=False needs running_mean", bn, x, c3, c3, None, None,
           False)
    raises(backend, ValueError, r"more than 1 value per channel", bn, x4(1, 3, 1, 1), c3, c3,
           None, None, True)
    raises(backend, TypeError, r"running_var is float64", bn, x, c3, c3, c3.copy(),
           np.ones(3, f64), True)
    raises(backend, ValueError, r"running_var must be C-contiguous", bn, x, c3, c3, c3.copy(),
           np.ones(6, f32)[::2], True)
    raises(backend, ValueError, r"eps must be >= 0", bn, x, c3, c3, None, None, True, 0.1, -1.0)
    raises(backend, ValueError, r"x must be 4-D", bn, x4(2, 3), c3, c3, None, None, True)
    y, m, s = run(backend, bn, x, c3, c3, None, None, True)
    raises(backend, ValueError, r"batch_norm_backward: grad_y must have shape \(2, 3, 4, 4\)",
           convkit.batch_norm_backward, x4(2, 3, 4, 5), x, c3, m, s, True)


# ------------------------------------------------------------------------------------ roi
@pytest.mark.parametrize("fn", [convkit.roi_align_forward, convkit.roi_pool_forward])
def test_roi_bad_rois(backend, fn):
    name = fn.__name__
    x = x4(2, 3, 8, 8)
    rois = np.array([[0, 0, 0, 4, 4], [1, 1, 1, 5, 5], [2.5, 0, 0, 3, 3]], f32)
    raises(backend, ValueError, re.escape(f"{name}: rois[2, 0] = 2.5 is not an integer batch "
                                          f"index in [0, 2)"), fn, x, rois, 2)
    rois[2, 0] = 2
    raises(backend, ValueError, r"rois\[2, 0\] = 2.0 is not an integer batch index", fn, x, rois, 2)
    rois[2, 0] = -1
    raises(backend, ValueError, r"rois\[2, 0\] = -1.0", fn, x, rois, 2)
    rois[2, 0] = np.nan
    raises(backend, ValueError, r"rois\[2, 0\] = nan", fn, x, rois, 2)
    raises(backend, ValueError, r"rois must have shape \(K, 5\) or \(K, 4\), got \(3, 3\)", fn, x,
           rois[:, :3], 2)
    raises(backend, ValueError, r"rois must be 2-D", fn, x, rois[0], 2)
    raises(backend, ValueError, r"rois of shape \(K, 4\) are only accepted for N=1", fn, x,
           rois[:, 1:], 2)
    raises(backend, TypeError, r"rois is float64", fn, x, rois.astype(f64), 2)
    raises(backend, ValueError, r"output_size must be positive", fn, x, rois[:2], 0)
    raises(backend, ValueError, r"spatial_scale must be > 0", fn, x, rois[:2], 2, -1.0)
    raises(backend, ValueError, r"rois\[1\] must have shape \(Ki, 4\)", fn, x,
           [np.zeros((1, 4), f32), np.zeros((1, 5), f32)], 2)
    raises(backend, ValueError, r"list of 3 per-image box arrays but x has N=2", fn, x,
           [np.zeros((1, 4), f32)] * 3, 2)


def test_roi_pool_backward_bad_argmax(backend):
    x = x4(1, 2, 6, 6)
    rois = np.array([[0, 0, 0, 3, 3]], f32)
    y, am = run(backend, convkit.roi_pool_forward, x, rois, 2)
    bad = am.copy()
    bad[0, 0, 0, 0] = 36
    raises(backend, ValueError, r"roi_pool_backward: argmax must lie in \[-1, 36\)",
           convkit.roi_pool_backward, y, bad, x.shape)
    raises(backend, ValueError, r"rois is required when input_shape has N=2",
           convkit.roi_pool_backward, y, am, (2, 2, 6, 6))


def test_roi_align_backward_bad_grad(backend):
    rois = np.array([[0, 0, 0, 3, 3]], f32)
    raises(backend, ValueError, r"roi_align_backward: grad_y must have shape \(1, 2, 2, 2\)",
           convkit.roi_align_backward, x4(1, 2, 3, 3), rois, (1, 2, 6, 6), 2)


# ------------------------------------------------------------------------------------ boxes
def test_box_ops_bad_input(backend):
    b = np.array([[0, 0, 1, 1]], f32)
    raises(backend, ValueError, r"nms: boxes must have shape \(N, 4\) xyxy, got \(1, 3\)",
           convkit.nms, b[:, :3], np.ones(1, f32), 0.5)
    raises(backend, ValueError, r"nms: scores must have shape \(1,\), got \(2,\)", convkit.nms, b,
           np.ones(2, f32), 0.5)
    raises(backend, TypeError, r"scores is float64", convkit.nms, b, np.ones(1, f64), 0.5)
    raises(backend, TypeError, r"iou_threshold must be a real number", convkit.nms, b,
           np.ones(1, f32), "0.5")
    raises(backend, ValueError, r"box_iou: boxes2 must be 2-D", convkit.box_iou, b, b[0])
    raises(backend, TypeError, r"idxs must be an integer", convkit.batched_nms, b, np.ones(1, f32),
           np.ones(1, f32), 0.5)


# ------------------------------------------------------------------------------------ empty
def test_zero_size_inputs_give_empty_results(backend):
    x0 = np.zeros((0, 3, 8, 8), f32)
    w = x4(4, 3, 3, 3)
    y = run(backend, convkit.conv2d_forward, x0, w, np.ones(4, f32), 1, 1)
    assert y.shape == (0, 4, 8, 8)
    gx, gw, gb = run(backend, convkit.conv2d_backward, np.zeros((0, 4, 8, 8), f32), x0, w, 1, 1)
    assert gx.shape == x0.shape and gw.shape == w.shape and gb.shape == (4,)
    assert not gw.any() and not gb.any()
    y, idx = run(backend, convkit.max_pool2d_forward, x0, 2)
    assert y.shape == (0, 3, 4, 4) and idx.dtype == np.int64
    assert run(backend, convkit.max_pool2d_backward, y, idx, x0.shape).shape == x0.shape
    assert run(backend, convkit.avg_pool2d_forward, x0, 2).shape == (0, 3, 4, 4)
    x = x4(1, 3, 8, 8)
    empty = np.zeros((0, 5), f32)
    y, am = run(backend, convkit.roi_pool_forward, x, empty, 7)
    assert y.shape == (0, 3, 7, 7) and am.shape == (0, 3, 7, 7)
    assert run(backend, convkit.roi_align_forward, x, empty, 7).shape == (0, 3, 7, 7)
    assert run(backend, convkit.roi_align_forward, x, [np.zeros((0, 4), f32)], 2).shape == \
        (0, 3, 2, 2)
    g = run(backend, convkit.roi_align_backward, np.zeros((0, 3, 7, 7), f32), empty, x.shape, 7)
    assert g.shape == x.shape and not g.any()
    keep = run(backend, convkit.nms, np.zeros((0, 4), f32), np.zeros(0, f32), 0.5)
    assert keep.shape == (0,) and keep.dtype == np.int64
    assert run(backend, convkit.box_iou, np.zeros((0, 4), f32), np.zeros((3, 4), f32)).shape == (0, 3)


def test_out_buffer_checked(backend):
    x = x4(1, 2, 4, 4)
    raises(backend, ValueError, r"out must have shape \(1, 2, 2, 2\) and dtype float32",
           convkit.avg_pool2d_forward, x, 2, out=np.zeros((1, 2, 2, 2), f64))


def test_max_pool_dilated_window_all_padding_is_rejected(backend):
    # H=2, k=2, d=3, p=1: the window reads rows -1 and 2, both outside the image
    raises(backend, ValueError, r"covers only padding", convkit.max_pool2d_forward,
           x4(1, 1, 2, 3), (2, 1), 1, (1, 0), (3, 1))


# ------------------------------------------------------------------------------ review findings
@pytest.mark.parametrize("fn", [convkit.max_pool2d_forward, convkit.avg_pool2d_forward])
def test_pool_of_empty_plane_is_refused(backend, fn):
    # padding would give a 1x1 output made only of padding: torch refuses, so do we (no garbage)
    raises(backend, ValueError, r"x must have non-zero height and width", fn,
           np.zeros((1, 1, 0, 0), f32), 2, 1, 1)


def test_out_overlapping_an_input_is_refused(backend):
    x = x4(1, 4, 6, 6)
    with convkit.use_backend(backend) as be:
        xb = be.asarray(x)
        with pytest.raises(ValueError, match="out must not share memory with x"):
            convkit.conv2d_forward(xb, be.asarray(x4(4, 4, 1, 1)), out=xb)
        with pytest.raises(ValueError, match="out must not share memory with x"):
            convkit.max_pool2d_forward(xb, 3, 1, 1, out=xb)
        with pytest.raises(ValueError, match="out must not share memory with x"):
            convkit.avg_pool2d_forward(xb, 3, 1, 1, out=xb)
        with pytest.raises(ValueError, match="out must not share memory with x"):
            convkit.batch_norm_forward(xb, None, None, None, None, True, out=xb)
        rois = be.asarray(np.array([[0, 0, 0, 5, 5]], f32))
        with pytest.raises(ValueError, match="out must not share memory with x"):
            convkit.roi_align_forward(xb, rois, 6, out=xb)


def test_read_only_out_is_refused():
    y = np.zeros((1, 2, 2, 2), f32)
    y.flags.writeable = False
    raises("numpy", ValueError, r"out must be writeable", convkit.avg_pool2d_forward,
           x4(1, 2, 4, 4), 2, out=y)


def test_batch_norm_read_only_running_stats_refused_before_any_update(backend):
    if backend != "numpy" and backend != "cpu":
        pytest.skip("host arrays only")
    rm, rv = np.zeros(3, f32), np.ones(3, f32)
    rv.flags.writeable = False
    raises(backend, ValueError, r"running_var must be writeable", convkit.batch_norm_forward,
           x4(2, 3, 4, 4), None, None, rm, rv, True)
    assert not rm.any()           # nothing was half-updated


def test_huge_sampling_ratio_is_a_memory_error_not_a_hang(backend):
    x = x4(1, 2, 6, 6)
    rois = np.array([[0, 1, 1, 4, 4]], f32)
    for sr in (2**24, 2**40):
        raises(backend, MemoryError, r"sampling_ratio=\d+ needs about \d+ bytes .* workspace "
               r"limit", convkit.roi_align_forward, x, rois, 2, 1.0, sr)
        raises(backend, MemoryError, r"sampling_ratio", convkit.roi_align_backward,
               x4(1, 2, 2, 2), rois, x.shape, 2, 1.0, sr)


def test_huge_int_parameters_name_the_argument(backend):
    raises(backend, ValueError, r"stride must be at most", convkit.conv2d_forward,
           x4(1, 1, 4, 4), x4(1, 1, 1, 1), None, 2**63)
    raises(backend, ValueError, r"padding must be at most", convkit.conv2d_forward,
           x4(1, 1, 4, 4), x4(1, 1, 1, 1), None, 1, 2**62)


def test_thread_settings_from_the_environment(monkeypatch):
    monkeypatch.delenv("CONVKIT_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3,2")      # nested-team list: the outer count is ours
    assert convkit.get_num_threads() == 3
    monkeypatch.setenv("CONVKIT_NUM_THREADS", "abc")
    from convkit._info import config_lines

    text = "\n".join(config_lines())                   # reported, not a traceback
    assert "invalid setting" in text and "CONVKIT_NUM_THREADS" in text
