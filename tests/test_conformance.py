"""convkit.testing.check_backend: the conformance check plugin authors run, on every backend,
and proof that it catches a wrong backend and that the named backend really ran."""
import sys
import types

import numpy as np
import pytest

import convkit
from convkit import _registry
from convkit.testing import check_backend


def test_check_backend_passes(backend):
    assert check_backend(backend) >= 30


def _plugin(monkeypatch, name, cls):
    mod = types.ModuleType(f"convkit_plugin_{name}")
    setattr(mod, "B", cls)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    specs = dict(_registry._specs())
    specs[name] = f"{mod.__name__}:B"
    monkeypatch.setattr(_registry, "_specs", lambda: specs)
    monkeypatch.setattr(_registry, "_instances", {})


def test_check_backend_catches_an_off_by_one(monkeypatch):
    from convkit.reference import NumpyBackend

    class Shifted(NumpyBackend):
        name = "shifted"

        def _avg_pool2d_forward(self, x, *a, **kw):   # wrong: divides by one too many
            y = super()._avg_pool2d_forward(x, *a, **kw)
            return y * 0.999

    _plugin(monkeypatch, "shifted", Shifted)
    with pytest.raises(AssertionError, match="avg_pool2d_forward"):
        check_backend("shifted")


def test_the_named_backend_runs(monkeypatch):
    """Which backend ran is observable: the op goes to the active backend's hook."""
    from convkit.reference import NumpyBackend

    calls = []

    class Spy(NumpyBackend):
        name = "spy"

        def _conv2d_forward(self, *a, **kw):
            calls.append("conv")
            return super()._conv2d_forward(*a, **kw)

    _plugin(monkeypatch, "spy", Spy)
    x = np.ones((1, 1, 3, 3), np.float32)
    with convkit.use_backend("spy"):
        convkit.conv2d_forward(x, x)
    convkit.conv2d_forward(x, x)      # outside: not the spy
    assert calls == ["conv"]


def test_check_backend_calls_the_backend_objects_public_ops(monkeypatch):
    """The public ops of the Backend object are exercised too: one replaced on the instance
    (class-level overrides are refused) is caught."""
    from convkit.reference import NumpyBackend

    class Sneaky(NumpyBackend):
        name = "sneaky"

        def __init__(self):
            self.box_iou = lambda a, b: convkit.box_iou(a, b, backend="numpy") * 0.5

    _plugin(monkeypatch, "sneaky", Sneaky)
    with pytest.raises(AssertionError, match=r"Backend\.box_iou vs the functional op"):
        check_backend("sneaky")
