"""Test helpers: run an op on a backend from NumPy inputs, tolerances, gradient checks."""
from __future__ import annotations

import numpy as np

import convkit

RTOL = {np.float32: 2e-5, np.float64: 1e-11}
ATOL = {np.float32: 2e-5, np.float64: 1e-11}


def tol(dtype):
    d = np.dtype(dtype).type
    return dict(rtol=RTOL[d], atol=ATOL[d])


def _to_backend(be, v):
    if isinstance(v, np.ndarray):
        return be.asarray(v)
    if isinstance(v, list) and v and all(isinstance(e, np.ndarray) for e in v):
        return [be.asarray(e) for e in v]
    return v


def _to_numpy(be, v):
    if v is None or isinstance(v, (int, float)):
        return v
    if isinstance(v, tuple):
        return tuple(_to_numpy(be, e) for e in v)
    return np.asarray(be.to_numpy(v))


def run(backend: str, fn, *args, **kwargs):
    """Call ``fn`` (a convkit.functional op) on ``backend`` with NumPy inputs moved there;
    return NumPy outputs (tuples and None preserved)."""
    with convkit.use_backend(backend) as be:
        args = [_to_backend(be, a) for a in args]
        kwargs = {k: _to_backend(be, v) for k, v in kwargs.items()}
        out = fn(*args, **kwargs)
        be.synchronize()
        return _to_numpy(be, out)


def check_backward(fwd, bwd, inputs, seed=0, eps=1e-6, rtol=1e-6, atol=1e-8):
    """Directional numerical gradient check in float64 (Chainer style).

    fwd(*inputs) -> array; bwd(gy, *inputs) -> tuple of grads (None entries skipped)
    matching ``inputs``.
    """
    rng = np.random.default_rng(seed)
    y = fwd(*inputs)
    gy = rng.standard_normal(y.shape)
    grads = bwd(gy, *inputs)
    dirs = [rng.standard_normal(a.shape) if g is not None else None
            for a, g in zip(inputs, grads)]
    norm = np.sqrt(sum(np.vdot(d, d) for d in dirs if d is not None))
    dirs = [d / norm if d is not None else None for d in dirs]

    def f(t):
        xs = [a + t * d if d is not None else a for a, d in zip(inputs, dirs)]
        return np.vdot(fwd(*xs), gy)

    numeric = (f(eps) - f(-eps)) / (2 * eps)
    analytic = sum(np.vdot(g, d) for g, d in zip(grads, dirs) if d is not None)
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)


def numeric_grad(f, x, eps=1e-6):
    """Per-element central difference of scalar f at x (float64, small x only)."""
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f(x)
        x[i] = old - eps
        fm = f(x)
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def build_cimporting_extension(tmp_path, name, pyx_source):
    """Compile ``pyx_source`` (which cimports convkit's .pxd kernels) as module ``name`` in
    tmp_path and import it; skips without Cython or a C compiler."""
    import os
    import shutil
    import subprocess
    import sys
    import sysconfig
    import textwrap
    from pathlib import Path

    import pytest

    pytest.importorskip("Cython")
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip("no C compiler to build a cimporting extension")
    root = str(Path(convkit.__file__).resolve().parent.parent)   # holds convkit/cpu/*.pxd
    (tmp_path / f"{name}.pyx").write_text(textwrap.dedent(pyx_source).lstrip())
    (tmp_path / "setup.py").write_text(
        "import numpy as np\nfrom Cython.Build import cythonize\n"
        "from setuptools import Extension, setup\n"
        f"setup(ext_modules=cythonize([Extension({name!r}, [{name + '.pyx'!r}], "
        f"include_dirs=[np.get_include()])], include_path={[root]!r}, quiet=True))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sys.path.insert(0, str(tmp_path))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(tmp_path))


def assert_same_bits_at_every_roi_simd_level(outputs):
    """Run ``outputs()`` (a list of arrays from the float32 cpu RoI kernels) at each vector
    width convkit.cpu.roi.set_simd_level offers on this CPU (AVX-512, AVX2, SSE2) and assert
    the bytes agree."""
    from convkit.cpu import roi as _roi

    outs = {}
    try:
        for level in (2, 1, 0):
            outs.setdefault(_roi.set_simd_level(level), outputs())
    finally:
        _roi.set_simd_level(2)
    levels = sorted(outs)
    for lv in levels[1:]:
        for a, b in zip(outs[levels[0]], outs[lv]):
            assert a.tobytes() == b.tobytes(), (levels[0], lv)
