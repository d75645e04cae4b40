"""CudaBackend: the ``cuda`` backend, CuPy RawKernels (``kernels/*.cu``) + cuBLAS.

Importing this module imports neither CuPy nor the op modules and does no GPU work; creating
a :class:`CudaBackend` does, and raises ``RuntimeError`` saying exactly what is missing --
CuPy, a driver, a device, or a new enough driver -- and how to fix it.  There is no CPU
fallback: asking for ``cuda`` on a machine that cannot run it is an error.

Each op runs on the device of its inputs and on the current CuPy stream; kernels are
compiled on first use (one ``extern "C"`` kernel per dtype, so CuPy's disk cache keeps them
across processes), or up front with ``convkit.precompile()``.
"""
from __future__ import annotations

import os

import importlib

from convkit._config import get_allow_tf32
from convkit.backend import Backend

# the op families beyond the first release: hook "_<op>" runs convkit_cuda.<module>.<op>,
# imported at the first call (the modules import CuPy)
_FAMILY_OPS = {
    "roi_variants": ("roi_avg_pool_forward", "roi_avg_pool_backward",
                     "roi_max_align_forward", "roi_max_align_backward"),
    "psroi": ("ps_roi_align_forward", "ps_roi_align_backward",
              "ps_roi_pool_forward", "ps_roi_pool_backward"),
    "conv_transpose": ("conv_transpose2d_forward", "conv_transpose2d_backward"),
    "adaptive_pool": ("adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward",
                      "adaptive_max_pool2d_forward", "adaptive_max_pool2d_backward"),
    "deform_conv": ("deform_conv2d_forward", "deform_conv2d_backward"),
}


def _family_hook(module, op):
    def hook(self, *args, **kwargs):
        fn = getattr(importlib.import_module(f"convkit_cuda.{module}"), op, None)
        if fn is None:
            self._missing(op)
        return fn(*args, **kwargs)
    hook.__name__ = hook.__qualname__ = "_" + op
    hook.__doc__ = f"``convkit_cuda.{module}.{op}``."
    return hook

_INSTALL = "`pip install 'convkit[cuda12]'` or `pip install 'convkit[cuda13]'`"


def _cuda_version(v) -> str:
    return "unknown" if v is None else f"{v // 1000}.{(v % 1000) // 10}"


def _import_cupy():
    try:
        import cupy
    except ModuleNotFoundError as e:
        if e.name == "cupy" or (e.name or "").startswith("cupy."):
            raise RuntimeError(f"CuPy is not installed; install the CuPy build for your CUDA "
                               f"version with {_INSTALL}") from None
        raise RuntimeError(f"CuPy is installed but failed to import ({e}); reinstall it for "
                           f"your CUDA version with {_INSTALL}") from None
    except Exception as e:   # CuPy present but its CUDA libraries are missing or broken
        raise RuntimeError(f"CuPy is installed but failed to import ({type(e).__name__}: "
                           f"{e}); reinstall it for your CUDA version with {_INSTALL}") from None
    return cupy


def _check_device(cupy) -> int:
    """Number of visible CUDA devices (>= 1), or RuntimeError naming the cause and the fix."""
    rt = cupy.cuda.runtime

    def version(fn):
        try:
            return int(fn())
        except Exception:
            return None

    driver, runtime = version(rt.driverGetVersion), version(rt.runtimeGetVersion)
    try:
        count, err = int(rt.getDeviceCount()), None
    except Exception as e:   # CUDARuntimeError: no driver, no device, driver too old, ...
        count, err = 0, e
    if count > 0:
        return count
    status = getattr(err, "status", None)
    why = f" ({type(err).__name__}: {err})" if err is not None else ""
    if not driver:
        raise RuntimeError(f"CuPy {cupy.__version__} is installed but no NVIDIA driver was found"
                           f"{why}; install the NVIDIA driver (`nvidia-smi` should list the GPU)")
    if status == 35 or "InsufficientDriver" in str(err) or (runtime and driver < runtime):
        raise RuntimeError(f"the NVIDIA driver is too old for CuPy's CUDA runtime: the driver "
                           f"supports CUDA {_cuda_version(driver)}, CuPy {cupy.__version__} uses "
                           f"CUDA {_cuda_version(runtime)}{why}; update the driver, or install "
                           f"the CuPy build for an older CUDA ({_INSTALL})")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    raise RuntimeError(f"CuPy {cupy.__version__} and the NVIDIA driver (CUDA "
                       f"{_cuda_version(driver)}) are installed but no CUDA device is visible"
                       f"{hint}{why}; check `nvidia-smi` and CUDA_VISIBLE_DEVICES")


def _check_libraries(cupy) -> None:
    """RuntimeError unless NVRTC (the kernels are compiled at first use) and cuBLAS (the
    GEMMs of conv2d) load: a ``cupy-cudaXXx`` wheel without the CUDA toolkit imports and sees
    the device, and would otherwise fail only at the first op."""
    fix = (f"install the CUDA toolkit libraries from PyPI with {_INSTALL} (they bring "
           f"CuPy's [ctk] extra), or a local CUDA toolkit")
    for lib, load, use in (
            ("NVRTC", lambda: cupy.cuda.nvrtc.getVersion(),
             "the runtime compiler the cuda backend builds its kernels with"),
            ("cuBLAS", lambda: cupy.cuda.device.get_cublas_handle(),
             "which conv2d's matrix products use")):
        try:
            load()
        except Exception as e:
            raise RuntimeError(f"CuPy {cupy.__version__} sees the GPU but cannot load {lib}, "
                               f"{use} ({type(e).__name__}: {e}); {fix}") from None


class CudaBackend(Backend):
    """CuPy arrays on an NVIDIA GPU.  ``xp`` is ``cupy``."""

    name = "cuda"
    # the max-pool / roi-pool backward kernels read each index once and range-check it on the
    # device (one error flag read per call): the boundary neither copies nor scans them
    validates_indices = True
    # the RoI kernels check batch indices (same flag) and zero non-finite RoIs themselves, so
    # an RoI call reads nothing back before its kernel
    validates_rois = True

    def __init__(self):
        cupy = _import_cupy()
        self._n_devices = _check_device(cupy)
        from . import _kernels

        dev = cupy.cuda.Device()
        _kernels.check_capability(dev.compute_capability, dev.id)
        _check_libraries(cupy)
        self.xp = cupy
        from . import batchnorm, boxes, conv, pool, roi

        self._kernels, self._conv, self._pool = _kernels, conv, pool
        self._bn, self._roi, self._boxes = batchnorm, roi, boxes

    # ------------------------------------------------------------------ arrays
    def asarray(self, a, dtype=None):
        """A ``cupy.ndarray`` from a CuPy array, a CUDA DLPack producer (a torch CUDA tensor:
        zero-copy, stream-ordered by the DLPack protocol), a ``__cuda_array_interface__``
        producer (zero-copy), or host data -- a NumPy array, a list -- copied to the current
        device."""
        cp = self.xp
        if isinstance(a, cp.ndarray):
            return a if dtype is None else a.astype(dtype, copy=False)
        if hasattr(a, "__dlpack__") and self._dlpack_on_gpu(a):
            out = cp.from_dlpack(a)     # the producer's own error if it cannot export
        elif self._has_cai(a):
            out = cp.asarray(a)
        else:   # host data: NumPy arrays, lists, CPU DLPack / buffer producers
            import numpy as np

            out = cp.asarray(np.asarray(a))
        return out if dtype is None else out.astype(dtype, copy=False)

    @staticmethod
    def _has_cai(a) -> bool:
        try:
            return hasattr(a, "__cuda_array_interface__")
        except Exception:    # the property exists but refuses (e.g. a tensor needing grad):
            return True      # let cupy.asarray raise the producer's explanation

    @staticmethod
    def _dlpack_on_gpu(a) -> bool:
        try:
            dev_type = int(a.__dlpack_device__()[0])
        except Exception:
            return False
        return dev_type in (2, 3, 13)   # kDLCUDA, kDLCUDAHost, kDLCUDAManaged

    def to_numpy(self, a):
        return self.xp.asnumpy(a)

    def device_of(self, a):
        """``a``'s GPU as a context manager (``cupy.cuda.Device``): the boundary's copies and
        casts for an op run there, beside its inputs, whatever the current device is."""
        return self.xp.cuda.Device(self._kernels.device_id(a))

    def synchronize(self) -> None:
        """Wait for all work queued on the current device."""
        self.xp.cuda.Device().synchronize()

    def is_native(self, a) -> bool:
        return isinstance(a, self.xp.ndarray)

    def info(self) -> dict:
        cp = self.xp
        rt = cp.cuda.runtime
        dev = cp.cuda.Device()
        try:
            name = rt.getDeviceProperties(dev.id)["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
        except Exception as e:   # pragma: no cover - informational only
            name = f"unknown ({e})"
        cc = str(dev.compute_capability)
        return {
            "device": f"{dev.id}: {name} (compute capability {cc[:-1]}.{cc[-1]}; "
                      f"{self._n_devices} visible)",
            "driver": f"CUDA {_cuda_version(rt.driverGetVersion())}",
            "runtime": f"CUDA {_cuda_version(rt.runtimeGetVersion())}",
            "cupy": cp.__version__,
            "kernels": "NVRTC, compiled on first use per dtype and device "
                       "(convkit.precompile() compiles them all); needs compute capability "
                       "6.0+ (float64 atomicAdd)",
            "numerics": "no multiply-add contraction (--fmad=false); float32 kernels flush "
                        "subnormals (CuPy's -ftz=true); float32 GEMMs "
                        + ("may use TF32 (convkit.set_allow_tf32(True))" if get_allow_tf32()
                           else "in full FP32 (TF32 off)"),
        }

    def precompile(self) -> dict:
        """Compile every kernel for float32 and float64 on the current device; returns the
        seconds spent per (kernel file, dtype)."""
        return self._kernels.precompile()

    # ------------------------------------------------------------------ hooks
    def _conv2d_forward(self, x, weight, bias, stride, padding, dilation, groups, out=None):
        return self._conv.conv2d_forward(x, weight, bias, stride, padding, dilation, groups,
                                         out=out)

    def _conv2d_backward(self, grad_y, x, weight, stride, padding, dilation, groups,
                         needs_input_grad, has_bias):
        return self._conv.conv2d_backward(grad_y, x, weight, stride, padding, dilation, groups,
                                          needs_input_grad, has_bias)

    def _max_pool2d_forward(self, x, kernel_size, stride, padding, dilation, out_hw, out=None):
        return self._pool.max_pool2d_forward(x, kernel_size, stride, padding, dilation, out_hw,
                                             out=out)

    def _max_pool2d_backward(self, grad_y, indices, input_shape):
        """Atomic scatter by default (not bit-reproducible where windows overlap); a
        deterministic gather under ``convkit.set_deterministic(True)``."""
        return self._pool.max_pool2d_backward(grad_y, indices, input_shape)

    def _avg_pool2d_forward(self, x, kernel_size, stride, padding, out_hw, count_include_pad,
                            out=None):
        return self._pool.avg_pool2d_forward(x, kernel_size, stride, padding, out_hw,
                                             count_include_pad, out=out)

    def _avg_pool2d_backward(self, grad_y, input_shape, kernel_size, stride, padding,
                             count_include_pad):
        return self._pool.avg_pool2d_backward(grad_y, input_shape, kernel_size, stride, padding,
                                              count_include_pad)

    def _batch_norm_forward(self, x, weight, bias, running_mean, running_var, training,
                            momentum, eps, out=None):
        return self._bn.batch_norm_forward(x, weight, bias, running_mean, running_var,
                                           training, momentum, eps, out=out)

    def _batch_norm_backward(self, grad_y, x, weight, save_mean, save_invstd, training):
        return self._bn.batch_norm_backward(grad_y, x, weight, save_mean, save_invstd, training)

    def _roi_pool_forward(self, x, rois, output_size, spatial_scale, out=None):
        return self._roi.roi_pool_forward(x, rois, output_size, spatial_scale, out=out)

    def _roi_pool_backward(self, grad_y, rois, argmax, input_shape):
        return self._roi.roi_pool_backward(grad_y, rois, argmax, input_shape)

    def _roi_align_forward(self, x, rois, output_size, spatial_scale, sampling_ratio, aligned,
                           out=None):
        return self._roi.roi_align_forward(x, rois, output_size, spatial_scale, sampling_ratio,
                                           aligned, out=out)

    def _roi_align_backward(self, grad_y, rois, input_shape, output_size, spatial_scale,
                            sampling_ratio, aligned):
        """Atomic scatter by default (not bit-reproducible); a deterministic gather kernel
        under ``convkit.set_deterministic(True)``
        (see :func:`convkit_cuda.roi.roi_align_backward`)."""
        return self._roi.roi_align_backward(grad_y, rois, input_shape, output_size,
                                            spatial_scale, sampling_ratio, aligned)

    def _nms(self, boxes, scores, iou_threshold):
        return self._boxes.nms(boxes, scores, iou_threshold)

    def _box_iou(self, boxes1, boxes2):
        return self._boxes.box_iou(boxes1, boxes2)


for _module, _ops in _FAMILY_OPS.items():
    for _op in _ops:
        setattr(CudaBackend, "_" + _op, _family_hook(_module, _op))
del _module, _ops, _op
