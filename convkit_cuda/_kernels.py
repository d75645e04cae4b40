"""Loading, compiling and launching the CUDA kernels in ``convkit_cuda/kernels/*.cu``.

Each ``.cu`` file holds plain ``extern "C" __global__`` kernels written against
``scalar_t``.  :func:`kernel_source` turns one file into the source for one dtype:
it prepends ``typedef float scalar_t;`` (or ``double``), gives every kernel name a
dtype suffix (``conv_im2col`` -> ``conv_im2col_f32``) and adds a ``#line`` directive so
compiler errors point at the right line of the ``.cu`` file.  Plain ``extern "C"`` names
(no ``name_expressions``) let CuPy's on-disk kernel cache hold the compiled module, so a
new process does not recompile (STYLE.md 16-17).

:data:`SIGNATURES` lists, next to every kernel name, the C type of each parameter.
:func:`launch` checks each argument against it before a launch -- a Python int or float,
a wrong-width NumPy scalar or an array of the wrong dtype would otherwise be packed with
the wrong size and silently shift every later argument (STYLE.md 18) -- and
``tests/test_cuda_build.py`` checks the table against the ``.cu`` signatures.

Nothing here imports CuPy at module level: the build test imports :func:`kernel_source`
on machines without CuPy.
"""
from __future__ import annotations

import functools
import re
import threading
import time
from importlib.resources import files

import numpy as np

STEMS = ("conv", "pool", "batchnorm", "roi", "boxes")
DTYPES = {"float32": ("float", "f32"), "float64": ("double", "f64")}

# Parameter type codes: S = scalar_t, I = long long, D = double; a trailing * = pointer.
SIGNATURES: dict[str, dict[str, tuple[str, ...]]] = {
    "conv": {
        # x, B, C, H, W, KH, KW, sh, sw, pt, pl, dh, dw, Ho, Wo, col
        "conv_im2col": ("S*",) + ("I",) * 14 + ("S*",),
        # col, B, C, H, W, KH, KW, sh, sw, pt, pl, dh, dw, Ho, Wo, gx
        "conv_col2im": ("S*",) + ("I",) * 14 + ("S*",),
        # x, w, bias, has_bias, N, C, H, W, F, KH, KW, sh, sw, pt, pl, dh, dw, Ho, Wo, groups, y
        "conv_direct_fwd": ("S*", "S*", "S*") + ("I",) * 17 + ("S*",),
        # gy, w, N, C, H, W, F, KH, KW, sh, sw, pt, pl, dh, dw, Ho, Wo, groups, gx
        "conv_direct_bwd_data": ("S*", "S*") + ("I",) * 16 + ("S*",),
        # gy, x, N, C, H, W, F, KH, KW, sh, sw, pt, pl, dh, dw, Ho, Wo, groups, P, partial
        "conv_direct_bwd_weight": ("S*", "S*") + ("I",) * 17 + ("D*",),
    },
    "pool": {
        # x, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw, y, idx
        "max_pool2d_fwd": ("S*",) + ("I",) * 13 + ("S*", "I*"),
        # gy, idx, NC, HoWo, HW, gx
        "max_pool2d_bwd_atomic": ("S*", "I*", "I", "I", "I", "S*"),
        # vals, order, keys_sorted, L, out
        "scatter_add_sorted": ("S*", "I*", "I*", "I", "S*"),
        # x, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, count_include_pad, y
        "avg_pool2d_fwd": ("S*",) + ("I",) * 12 + ("S*",),
        # gy, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, count_include_pad, gx
        "avg_pool2d_bwd": ("S*",) + ("I",) * 12 + ("S*",),
    },
    "batchnorm": {
        # x, gy, mean, invstd, N, C, HW, P, mode, partial
        "bn_partial_sums": ("S*", "S*", "D*", "D*", "I", "I", "I", "I", "I", "D*"),
        # partial, C, P, sums
        "bn_reduce": ("D*", "I", "I", "D*"),
        # x, mean, invstd, weight, bias, C, HW, total, y
        "bn_forward_apply": ("S*", "D*", "D*", "S*", "S*", "I", "I", "I", "S*"),
        # gy, x, mean, invstd, weight, sums, C, HW, total, M, training, gx
        "bn_backward_apply": ("S*", "S*", "D*", "D*", "S*", "D*", "I", "I", "I", "I", "I", "S*"),
    },
    "roi": {
        # x, rois, K, C, H, W, oh, ow, scale, y, argmax
        "roi_pool_fwd": ("S*", "S*", "I", "I", "I", "I", "I", "I", "S", "S*", "I*"),
        # x, rois, K, C, H, W, oh, ow, scale, sampling_ratio, aligned, y
        "roi_align_fwd": ("S*", "S*", "I", "I", "I", "I", "I", "I", "S", "I", "I", "S*"),
        # gy, rois, K, C, H, W, oh, ow, scale, sampling_ratio, aligned, gx
        "roi_align_bwd_atomic": ("S*", "S*", "I", "I", "I", "I", "I", "I", "S", "I", "I", "S*"),
        # gy, rois, K, N, C, H, W, oh, ow, scale, sampling_ratio, aligned, gx
        "roi_align_bwd_gather": ("S*", "S*", "I", "I", "I", "I", "I", "I", "I", "S", "I", "I",
                                 "S*"),
    },
    "boxes": {
        # b1, b2, N, M, out
        "box_iou": ("S*", "S*", "I", "I", "S*"),
        # boxes_sorted, N, nblocks, thr, mask
        "nms_mask": ("S*", "I", "I", "D", "U*"),
        # mask, N, nblocks, removed, keep, nkeep
        "nms_reduce": ("U*", "I", "I", "U*", "I*", "I*"),
    },
}

_KERNEL_RE = re.compile(r'(extern\s+"C"\s+__global__\s+void\s+)([A-Za-z_]\w*)(\s*\()')


@functools.cache
def _text(stem: str) -> str:
    return (files("convkit_cuda") / "kernels" / f"{stem}.cu").read_text()


def kernel_names(stem: str) -> list[str]:
    """The ``extern "C"`` kernel names defined in ``kernels/<stem>.cu`` (no dtype suffix)."""
    return [m.group(2) for m in _KERNEL_RE.finditer(_text(stem))]


def suffixed(name: str, dtype) -> str:
    return f"{name}_{DTYPES[np.dtype(dtype).name][1]}"


@functools.cache
def kernel_source(stem: str, dtype: str) -> str:
    """The exact source compiled for ``kernels/<stem>.cu`` and ``dtype`` (float32/float64)."""
    ctype, suffix = DTYPES[np.dtype(dtype).name]
    body = _KERNEL_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}_{suffix}{m.group(3)}", _text(stem))
    return f'typedef {ctype} scalar_t;\n#line 1 "{stem}.cu"\n{body}'


# NVRTC options: C++14 is all the kernels need.  CuPy adds -arch for the current device.
OPTIONS = ("--std=c++14",)

_modules: dict[tuple[str, str, int], object] = {}
_functions: dict[tuple[str, str, str, int], object] = {}
_lock = threading.Lock()


def _module(stem: str, dtype: str, device: int):
    """The RawModule of (stem, dtype) on ``device``, compiled on first use."""
    import cupy

    key = (stem, dtype, device)
    with _lock:
        mod = _modules.get(key)
        if mod is None:
            mod = _modules[key] = cupy.RawModule(code=kernel_source(stem, dtype), options=OPTIONS)
    return mod


def get_kernel(stem: str, name: str, dtype):
    """The compiled kernel ``name`` of ``kernels/<stem>.cu`` for ``dtype`` on the current
    device, cached per (kernel, dtype, device)."""
    import cupy

    dt = np.dtype(dtype).name
    key = (stem, name, dt, cupy.cuda.runtime.getDevice())
    fn = _functions.get(key)
    if fn is None:
        fn = _module(stem, dt, key[3]).get_function(suffixed(name, dt))
        with _lock:
            _functions[key] = fn
    return fn


_SCALAR_TYPES = {"I": np.int64, "D": np.float64}
_POINTER_DTYPES = {"I*": np.dtype(np.int64), "D*": np.dtype(np.float64),
                   "U*": np.dtype(np.uint64)}


def check_args(stem: str, name: str, dtype, args) -> None:
    """Raise TypeError unless ``args`` match the kernel's declared parameter types exactly:
    scalars must already be NumPy scalars of the declared width (the launcher casts them),
    arrays must be C-contiguous with the declared element type."""
    sig = SIGNATURES[stem][name]
    dt = np.dtype(dtype)
    if len(args) != len(sig):
        raise TypeError(f"{name}: kernel takes {len(sig)} arguments, launcher passed {len(args)}")
    for i, (code, a) in enumerate(zip(sig, args)):
        if code.endswith("*"):
            want = dt if code == "S*" else _POINTER_DTYPES[code]
            if not hasattr(a, "dtype") or not hasattr(a, "flags") or a.dtype != want \
                    or not a.flags.c_contiguous:
                got = getattr(a, "dtype", type(a).__name__)
                raise TypeError(f"{name}: argument {i} must be a C-contiguous {want} array, "
                                f"got {got}")
        else:
            want = dt.type if code == "S" else _SCALAR_TYPES[code]
            if type(a) is not want:
                raise TypeError(f"{name}: argument {i} must be {want.__name__}, "
                                f"got {type(a).__name__}")


BLOCK = 256
MAX_BLOCKS = 65535 * 8   # grid-stride loops cover the rest


def grid_for(n: int, block: int = BLOCK) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) for ``n`` work items with a grid-stride kernel; a grid of 0 blocks when
    there is no work, which :func:`launch` skips (the boundary filters empty inputs already,
    but a launcher reached with no work must not launch an invalid configuration)."""
    return (max(0, min((n + block - 1) // block, MAX_BLOCKS)),), (block,)


def launch(stem: str, name: str, dtype, grid, block, args) -> None:
    """Check ``args`` against :data:`SIGNATURES` and launch on the current device and stream."""
    if grid[0] < 1:   # never launch an empty grid (CUDA would report an invalid configuration)
        return
    check_args(stem, name, dtype, args)
    get_kernel(stem, name, dtype)(grid, block, tuple(args))


def precompile(dtypes=("float32", "float64")) -> dict[str, float]:
    """Compile and load every kernel of every file for every dtype on the current device;
    returns seconds per (file, dtype).  A second process reads CuPy's disk cache instead."""
    timings = {}
    for stem in STEMS:
        for dt in dtypes:
            t0 = time.perf_counter()
            for name in kernel_names(stem):
                get_kernel(stem, name, dt)
            timings[f"{stem}:{dt}"] = time.perf_counter() - t0
    return timings


def on_device(a):
    """Context manager making ``a``'s device current (``with on_device(x):``)."""
    return a.device
