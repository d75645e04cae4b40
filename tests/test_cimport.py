"""Other Cython code can ``cimport`` the cpu conv kernels (convkit/cpu/_conv.pxd, _blas.pxd):
build a tiny extension against them in a temporary directory and check what it computes."""
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest

import convkit

ok, why = convkit.backend_status("cpu")
pytestmark = pytest.mark.skipif(not ok, reason=why[:300])

USER_PYX = """
# cython: language_level=3, boundscheck=False, wraparound=False
import numpy as np
from convkit.cpu._conv cimport im2col_plane, depthwise_forward_plane, plane_sum
from convkit.cpu._blas cimport gemm

def conv_one_plane(const double[:, ::1] x, const double[:, ::1] w, Py_ssize_t pad):
    '''single-channel conv (stride 1) two ways: im2col + gemm and the direct kernel'''
    cdef Py_ssize_t H = x.shape[0], W = x.shape[1], KH = w.shape[0], KW = w.shape[1]
    cdef Py_ssize_t Ho = H + 2 * pad - KH + 1, Wo = W + 2 * pad - KW + 1
    cdef double[:, ::1] cols = np.empty((KH * KW, Ho * Wo))
    cdef double[::1] y1 = np.empty(Ho * Wo)
    cdef double[::1] y2 = np.empty(Ho * Wo)
    cdef double total
    with nogil:
        im2col_plane(&x[0, 0], H, W, KH, KW, 1, 1, pad, pad, 1, 1, Wo, 0, Ho,
                     &cols[0, 0], Ho * Wo)
        gemm(False, False, 1, Ho * Wo, KH * KW, 1.0, &w[0, 0], KH * KW, &cols[0, 0], Ho * Wo,
             0.0, &y1[0], Ho * Wo)
        depthwise_forward_plane(&x[0, 0], H, W, &w[0, 0], KH, KW, 1, 1, pad, pad, 1, 1, 0.0,
                                &y2[0], Ho, Wo)
        total = plane_sum(&y2[0], Ho * Wo)
    return np.asarray(y1).reshape(Ho, Wo), np.asarray(y2).reshape(Ho, Wo), total
"""

SETUP_PY = """
import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(ext_modules=cythonize(
    [Extension("user_conv", ["user_conv.pyx"], include_dirs=[np.get_include()])],
    include_path={include!r}, quiet=True))
"""


def _have_compiler():
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None


@pytest.mark.skipif(not _have_compiler(), reason="no C compiler to build a cimporting extension")
def test_cimport_conv_kernels(tmp_path):
    pytest.importorskip("Cython")
    root = str(Path(convkit.__file__).resolve().parent.parent)   # holds convkit/cpu/*.pxd
    (tmp_path / "user_conv.pyx").write_text(textwrap.dedent(USER_PYX).lstrip())
    (tmp_path / "setup.py").write_text(SETUP_PY.format(include=[root]))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sys.path.insert(0, str(tmp_path))
    try:
        import user_conv
    finally:
        sys.path.remove(str(tmp_path))

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 7))
    w = rng.standard_normal((3, 2))
    y1, y2, total = user_conv.conv_one_plane(x, w, 1)
    xp = np.pad(x, 1)
    want = np.array([[np.sum(xp[i:i + 3, j:j + 2] * w) for j in range(xp.shape[1] - 1)]
                     for i in range(xp.shape[0] - 2)])
    np.testing.assert_allclose(y1, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y2, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(total, want.sum(), rtol=1e-12)
