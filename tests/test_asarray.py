"""convkit.asarray on the host backends (DESIGN.md, "Backend selection"): any DLPack producer
without a copy, a TypeError for anything that is not an array."""
import numpy as np
import pytest

import convkit

HOST = ["numpy", "cpu"]


class _OnlyDLPack:
    """A producer with nothing but the DLPack protocol (as an array-API library's array)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kw):
        return self._a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


@pytest.mark.parametrize("backend", HOST)
def test_torch_cpu_tensor_comes_in_without_a_copy(backend, torch):
    t = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)[:, 1:]   # a strided view
    a = convkit.asarray(t, backend=backend)
    assert isinstance(a, np.ndarray) and a.shape == (2, 2, 4) and a.dtype == np.float32
    a[0, 0, 0] = -7.0                     # shared memory: the tensor sees the write
    assert t[0, 0, 0].item() == -7.0
    np.testing.assert_array_equal(a, t.numpy())
    # the op takes it straight away, and dtype= converts
    assert convkit.asarray(t, dtype=np.float64, backend=backend).dtype == np.float64


@pytest.mark.parametrize("backend", HOST)
def test_any_dlpack_producer_without_a_copy(backend):
    base = np.arange(12.0).reshape(3, 4)
    a = convkit.asarray(_OnlyDLPack(base), backend=backend)
    assert np.shares_memory(a, base)
    np.testing.assert_array_equal(a, base)


@pytest.mark.parametrize("backend", HOST)
def test_buffer_protocol_and_lists_still_work(backend):
    b = bytearray(np.arange(4, dtype=np.float32).tobytes())
    a = convkit.asarray(memoryview(b).cast("f"), backend=backend)
    np.testing.assert_array_equal(a, [0, 1, 2, 3])
    np.testing.assert_array_equal(convkit.asarray([[1.0, 2.0]], backend=backend), [[1, 2]])
    x = np.ones(3)
    assert convkit.asarray(x, backend=backend) is x


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("bad", ["abc", b"abc", {"a": 1}, object(), ["x", "y"], None],
                         ids=["str", "bytes", "dict", "object", "strings", "None"])
def test_non_arrays_are_a_type_error(backend, bad):
    with pytest.raises(TypeError, match="expected an array"):
        convkit.asarray(bad, backend=backend)


@pytest.mark.parametrize("backend", HOST)
def test_a_tensor_that_requires_grad_is_a_type_error_saying_why(backend, torch):
    with pytest.raises(TypeError, match="DLPack.*detach"):
        convkit.asarray(torch.ones(3, requires_grad=True), backend=backend)
