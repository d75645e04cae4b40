"""all_moderate's raw-bit scan (csrc/moderate.h: an AND, ADD and OR a value) against the rule it
implements, the exponent field compared with 2**35 (float32) / 2**480 (float64), at the
threshold, beside it, for NaN / inf / the largest finite values, at every place of vectors of
several lengths (the vector loop's body and its tail) and over several arrays in one call."""
import numpy as np
import pytest

from convkit.cpu import _conv_im2col

LIMITS = {np.float32: 2.0 ** 35, np.float64: 2.0 ** 480}


def _rule(a):
    if a.dtype == np.float32:
        return not ((a.view(np.uint32) & 0x7F800000) >= ((127 + 35) << 23)).any()
    field = a.view(np.uint64) & np.uint64(0x7FF0000000000000)
    return not (field >= np.uint64((1023 + 480) << 52)).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scan_matches_rule(dtype):
    rng = np.random.default_rng(0)
    lim = dtype(LIMITS[dtype])
    below = np.nextafter(lim, dtype(0))
    values = [0.0, -0.0, 1.0, lim, -lim, below, -below, np.inf, -np.inf, np.nan,
              np.finfo(dtype).max, -np.finfo(dtype).max, np.finfo(dtype).tiny, 2 * lim]
    for n in (1, 3, 7, 8, 9, 16, 31, 33, 100, 4099):
        for v in values:
            for pos in sorted({0, n // 2, n - 1}):
                a = rng.standard_normal(n).astype(dtype)
                a[pos] = v
                want = _rule(a)
                assert want == (abs(float(v)) < float(lim))
                assert _conv_im2col.all_moderate(a) == want, (n, v, pos)
                ok = rng.standard_normal(5).astype(dtype)
                assert _conv_im2col.all_moderate(ok, a) == want
                assert _conv_im2col.all_moderate(a, ok) == want
    assert _conv_im2col.all_moderate(np.zeros(0, dtype))
