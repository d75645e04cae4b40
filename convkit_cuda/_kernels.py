"""Loading, compiling and launching the CUDA kernels in ``convkit_cuda/kernels/*.cu``.

Each ``.cu`` file holds plain ``extern "C" __global__`` kernels written against
``scalar_t``.  :func:`kernel_source` turns one file into the source for one dtype:
it prepends ``typedef float scalar_t;`` (or ``double``), gives every kernel name a
dtype suffix (``conv_im2col`` -> ``conv_im2col_f32``) and adds a ``#line`` directive so
compiler errors point at the right line of the ``.cu`` file.  Plain ``extern "C"`` names
(no ``name_expressions``) let CuPy's on-disk kernel cache hold the compiled module, so a
new process does not recompile (STYLE.md 16-17).

:func:`signatures` parses, from the ``.cu`` files themselves (:func:`parse_params`, the one
parser, which the tests' host emulation uses too), the C type of each kernel parameter.
:func:`launch` checks each argument against it before a launch -- a Python int or float,
a wrong-width NumPy scalar or an array of the wrong dtype would otherwise be packed with
the wrong size and silently shift every later argument (STYLE.md 18).

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

# one .cu file per op family; every file in kernels/ is one (a new family needs no list edit)
STEMS = tuple(sorted(p.name[:-3] for p in (files("convkit_cuda") / "kernels").iterdir()
                     if p.name.endswith(".cu")))
DTYPES = {"float32": ("float", "f32"), "float64": ("double", "f64")}

# Parameter type codes: S = scalar_t, I = long long, D = double, U = unsigned long long,
# i = int (int32 arrays only), b = signed char (int8 arrays only); a trailing * = pointer.
# Kernels take no other parameter types (a scalar `int` would be packed at another width than
# the int64 the launchers pass).
CTYPES = {"scalar_t*": "S*", "longlong*": "I*", "double*": "D*", "unsignedlonglong*": "U*",
          "int*": "i*", "signedchar*": "b*", "scalar_t": "S", "longlong": "I", "double": "D"}
_SIG_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)


def parse_params(text: str) -> dict[str, list[tuple[str, str]]]:
    """{kernel: [(type code, parameter name), ...]} of the ``extern "C"`` kernels in a ``.cu``
    text -- the one parser of kernel signatures: the launch check (:func:`signatures`) and the
    host emulation of the tests both read the ``.cu`` files through it.  A parameter of a type
    not in :data:`CTYPES` is a ValueError naming the kernel."""
    out = {}
    for name, params in _SIG_RE.findall(text):
        ps = []
        for p in params.split(","):
            p = re.sub(r"\b(const|__restrict__)\b", " ", p).strip()
            m = re.fullmatch(r"(.*?[\s*])(\w+)", p)
            if m is None:
                raise ValueError(f"{name}: cannot parse kernel parameter {p!r}")
            ctype = re.sub(r"\s+", "", m.group(1))
            if ctype not in CTYPES:
                raise ValueError(f"{name}: parameter {m.group(2)} has type {ctype!r}, not one "
                                 f"of {sorted(CTYPES)}")
            ps.append((CTYPES[ctype], m.group(2)))
        out[name] = ps
    return out


_KERNEL_RE = re.compile(r'(extern\s+"C"\s+__global__\s+void\s+)([A-Za-z_]\w*)(\s*\()')


@functools.cache
def _text(stem: str) -> str:
    return (files("convkit_cuda") / "kernels" / f"{stem}.cu").read_text()


@functools.cache
def signatures(stem: str) -> dict[str, tuple[str, ...]]:
    """{kernel: (type code, ...)} of ``kernels/<stem>.cu``, parsed from the file."""
    return {k: tuple(c for c, _ in ps) for k, ps in parse_params(_text(stem)).items()}


def kernel_names(stem: str) -> list[str]:
    """The ``extern "C"`` kernel names defined in ``kernels/<stem>.cu`` (no dtype suffix)."""
    return [m.group(2) for m in _KERNEL_RE.finditer(_text(stem))]


def suffixed(name: str, dtype) -> str:
    return f"{name}_{DTYPES[np.dtype(dtype).name][1]}"


_INCLUDE_RE = re.compile(r'^#include "(\w+)\.cu"[ \t]*\n', re.M)


def _without_kernels(text: str) -> str:
    """``text`` with each ``extern "C"`` kernel's definition blanked (its lines kept empty, so
    line numbers stay right): what another family includes are the device helpers."""
    out, last = [], 0
    for m in _KERNEL_RE.finditer(text):
        i, depth = text.index("{", m.end()), 0
        while True:             # to the brace that closes the body; comments skipped
            if text.startswith("//", i):
                i = text.index("\n", i)
            elif text.startswith("/*", i):
                i = text.index("*/", i) + 1
            elif text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        out += [text[last:m.start()], "\n" * text.count("\n", m.start(), i + 1)]
        last = i + 1
    return "".join(out) + text[last:]


def _expanded(stem: str) -> str:
    """``kernels/<stem>.cu`` with each line ``#include "<other>.cu"`` replaced by the device
    helpers of that file (its text without its kernels), with ``#line`` directives keeping
    error lines right: one family shares another's helpers instead of copying them."""
    text, out, last = _text(stem), [], 0
    for m in _INCLUDE_RE.finditer(text):
        after = text.count("\n", 0, m.end()) + 1
        out += [text[last:m.start()], f'#line 1 "{m.group(1)}.cu"\n',
                _without_kernels(_text(m.group(1))), f'\n#line {after} "{stem}.cu"\n']
        last = m.end()
    return "".join(out) + text[last:]


@functools.cache
def kernel_source(stem: str, dtype: str) -> str:
    """The exact source compiled for ``kernels/<stem>.cu`` and ``dtype`` (float32/float64)."""
    ctype, suffix = DTYPES[np.dtype(dtype).name]
    body = _KERNEL_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}_{suffix}{m.group(3)}",
                          _expanded(stem))
    return f'typedef {ctype} scalar_t;\n#line 1 "{stem}.cu"\n{body}'


# NVRTC options, chosen so that the arithmetic is reproducible and the host emulation of the
# tests does the same (README, "CUDA numerics"):
# * --fmad=false: no multiply-add contraction.  Every + and * is rounded as written, so a
#   kernel without atomics gives the bits of the host emulation (built with
#   -ffp-contract=off); the kernels are memory-bound, the lost FMAs cost little.
# * CuPy appends -ftz=true to every RawModule and the later option wins (cupy issue 9576),
#   so float32 kernels flush subnormal inputs and results to zero, as CuPy's own kernels do;
#   float64 is unaffected.  The emulation sets the same mode for float32 (FLUSH_SUBNORMALS).
# * division and sqrt stay IEEE round-to-nearest (NVRTC's --prec-div/--prec-sqrt defaults).
OPTIONS = ("--std=c++14", "--fmad=false")
FLUSH_SUBNORMALS = {"float32": True, "float64": False}

# float64 atomicAdd (the atomic backwards) exists from compute capability 6.0 on.
MIN_CAPABILITY = 60

_modules: dict[tuple[str, str, int], object] = {}
_functions: dict[tuple[str, str, str, int], object] = {}
_lock = threading.Lock()


def check_capability(cc, device) -> None:
    """RuntimeError unless compute capability ``cc`` ("86", 86 or "8.6") runs the kernels."""
    v = int(str(cc).replace(".", ""))
    if v < MIN_CAPABILITY:
        raise RuntimeError(f"CUDA device {device} has compute capability {v // 10}.{v % 10}; "
                           f"the cuda backend needs 6.0 or newer (its backwards use float64 "
                           f"atomicAdd)")


def _module(stem: str, dtype: str, device: int):
    """The RawModule of (stem, dtype) on ``device``, compiled on first use."""
    import cupy

    key = (stem, dtype, device)
    with _lock:
        mod = _modules.get(key)
        if mod is None:
            check_capability(cupy.cuda.Device(device).compute_capability, device)
            mod = _modules[key] = cupy.RawModule(code=kernel_source(stem, dtype), options=OPTIONS)
    return mod


def get_kernel(stem: str, name: str, dtype):
    """The compiled kernel ``name`` of ``kernels/<stem>.cu`` for ``dtype`` on the current
    device, cached per (kernel, dtype, device)."""
    import cupy

    key = (stem, name, dtype, cupy.cuda.runtime.getDevice())
    fn = _functions.get(key)
    if fn is None:       # (a dtype's .name costs microseconds: only worked out here)
        dt = np.dtype(dtype).name
        fn = _module(stem, dt, key[3]).get_function(suffixed(name, dt))
        with _lock:
            _functions[key] = fn
    return fn


_SCALAR_TYPES = {"I": np.int64, "D": np.float64}
_POINTER_DTYPES = {"I*": np.dtype(np.int64), "D*": np.dtype(np.float64),
                   "U*": np.dtype(np.uint64), "i*": np.dtype(np.int32), "b*": np.dtype(np.int8)}


@functools.cache
def _spec(stem: str, name: str, dtype) -> tuple:
    """Per parameter: (True, element dtype) for a pointer, (False, scalar type) otherwise --
    worked out once per kernel and dtype, so a launch only compares."""
    dt = np.dtype(dtype)
    return tuple((True, dt if c == "S*" else _POINTER_DTYPES[c]) if c.endswith("*")
                 else (False, dt.type if c == "S" else _SCALAR_TYPES[c])
                 for c in signatures(stem)[name])


def check_args(stem: str, name: str, dtype, args) -> None:
    """Raise TypeError unless ``args`` match the kernel's declared parameter types exactly:
    scalars must already be NumPy scalars of the declared width (the launcher casts them),
    arrays must be C-contiguous with the declared element type."""
    spec = _spec(stem, name, dtype)
    if len(args) != len(spec):
        raise TypeError(f"{name}: kernel takes {len(spec)} arguments, launcher passed "
                        f"{len(args)}")
    for i, ((ptr, want), a) in enumerate(zip(spec, args)):
        if ptr:
            try:
                ok = (a.dtype is want or a.dtype == want) and a.flags.c_contiguous
            except AttributeError:
                ok = False
            if not ok:
                got = getattr(a, "dtype", type(a).__name__)
                raise TypeError(f"{name}: argument {i} must be a C-contiguous {want} array, "
                                f"got {got}")
        elif type(a) is not want:
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
    """Check ``args`` against the kernel's signature in the ``.cu`` file and launch on the
    current device and stream."""
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


def device_id(a) -> int:
    """The id of the GPU holding ``a`` (a cupy.ndarray)."""
    return a.device.id


def data_ptr(a) -> int:
    """The device address of ``a``'s first element (a cupy.ndarray), for cuBLAS calls."""
    return a.data.ptr


def common_device(op: str, **arrays) -> int:
    """The device of the named arrays (None skipped); a TypeError naming the argument when
    they are not all on one GPU -- CuPy's raw launch would not notice."""
    dev = first = None
    for name, a in arrays.items():
        if a is None:
            continue
        d = device_id(a)
        if dev is None:
            dev, first = d, name
        elif d != dev:
            raise TypeError(f"{op}: {name} is on GPU {d} but {first} is on GPU {dev}; the arrays "
                            f"of one call must share a device (copy one over, e.g. "
                            f"`with cupy.cuda.Device({dev}): {name} = cupy.asarray({name})`)")
    return dev


def on_device(op: str, **arrays):
    """``with on_device(op, x=x, w=w):`` -- checks that the arrays share a GPU and makes it the
    current device for the block, whatever the caller's current device is: the kernels, the
    allocations and cuBLAS calls inside then all run there."""
    import cupy

    return cupy.cuda.Device(common_device(op, **arrays))


def read_flag(flag) -> int:
    """The value of a one-element device error flag (the one device -> host copy of a
    device-side check)."""
    import cupy

    return int(cupy.asnumpy(flag)[0])
