"""Backend selection: env var, set_backend, use_backend (ContextVar), entry points, errors."""
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import convkit
from convkit import _registry


def _py(code, **env):
    e = dict(os.environ)
    e.pop("CONVKIT_BACKEND", None)
    e.update(env)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, env=e, timeout=120)
    return r


def test_env_var_is_honoured_and_read_at_first_dispatch():
    r = _py("""
        import os, convkit
        os.environ["CONVKIT_BACKEND"] = "numpy"      # set after import: still honoured
        print(convkit.get_backend().name)
        from convkit._registry import active_backend_reason
        print(active_backend_reason())
    """)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[0] == "numpy"
    assert "env CONVKIT_BACKEND" in lines[1]


def test_env_var_from_environment():
    r = _py("import convkit; print(convkit.get_backend().name)", CONVKIT_BACKEND="numpy")
    assert r.returncode == 0 and r.stdout.strip() == "numpy", r.stderr


def test_empty_env_var_counts_as_unset():
    r = _py("import convkit; from convkit._registry import active_backend_reason;"
            "print(active_backend_reason()[1])", CONVKIT_BACKEND="  ")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ("default", "fallback (cpu extension missing)")


def test_bad_env_name_raises_value_error_listing_names():
    r = _py("""
        import numpy as np, convkit
        try:
            convkit.conv2d_forward(np.zeros((1,1,3,3)), np.zeros((1,1,1,1)))
        except ValueError as e:
            print("VE", e)
    """, CONVKIT_BACKEND="nosuch")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("VE")
    assert "'nosuch'" in r.stdout and "numpy" in r.stdout and "cpu" in r.stdout


def test_import_loads_no_plugin_and_no_cupy():
    r = _py("""
        import sys, convkit
        print(any(m.startswith(("cupy", "convkit_cuda", "convkit.cpu", "torch")) for m in sys.modules))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_unknown_name_value_error():
    with pytest.raises(ValueError, match="known backends: .*numpy"):
        convkit.set_backend("tpu")
    with pytest.raises(ValueError, match="'tpu'"):
        with convkit.use_backend("tpu"):
            pass
    with pytest.raises(ValueError, match="'tpu'"):
        convkit.get_backend("tpu")


def test_entry_points_register_the_builtins_and_cuda():
    names = convkit.known_backends()
    assert {"numpy", "cpu", "cuda"} <= set(names)
    assert "numpy" in convkit.available_backends()


def test_known_but_unusable_is_runtime_error_with_reason():
    ok, why = convkit.backend_status("cuda")
    if ok:
        pytest.skip("cuda is usable on this machine")
    assert "cuda" in why
    with pytest.raises(RuntimeError, match="cuda"):
        convkit.get_backend("cuda")
    with pytest.raises(RuntimeError):
        convkit.set_backend("cuda")
    with pytest.raises(RuntimeError):
        with convkit.use_backend("cuda"):
            pass
    # never a silent switch: the failed set_backend left the previous choice alone
    assert convkit.get_backend().name != "cuda"


def test_use_backend_nests_and_restores():
    convkit.set_backend("cpu" if "cpu" in convkit.available_backends() else "numpy")
    outer = convkit.get_backend().name
    with convkit.use_backend("numpy") as be:
        assert be.name == "numpy" and convkit.get_backend().name == "numpy"
        with convkit.use_backend(outer):
            assert convkit.get_backend().name == outer
        assert convkit.get_backend().name == "numpy"
    assert convkit.get_backend().name == outer


def test_use_backend_restores_on_exception():
    before = convkit.get_backend().name
    with pytest.raises(KeyError):
        with convkit.use_backend("numpy"):
            raise KeyError("x")
    assert convkit.get_backend().name == before


def test_use_backend_does_not_leak_across_threads():
    if "cpu" not in convkit.available_backends():
        pytest.skip("needs two usable backends")
    seen = {}
    inside = threading.Event()
    done = threading.Event()

    def other():
        inside.wait(10)
        seen["other"] = convkit.get_backend().name
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with convkit.use_backend("numpy"):
        inside.set()
        done.wait(10)
        seen["main"] = convkit.get_backend().name
    t.join()
    assert seen == {"main": "numpy", "other": "cpu"}


def test_set_backend_none_returns_to_default(monkeypatch):
    monkeypatch.delenv("CONVKIT_BACKEND", raising=False)
    convkit.set_backend("numpy")
    assert convkit.get_backend().name == "numpy"
    convkit.set_backend(None)
    assert _registry.active_backend_reason()[1] in ("default", "fallback (cpu extension missing)")


def test_auto_picks_a_usable_backend():
    be = convkit.get_backend("auto")
    assert be.name == ("cuda" if convkit.backend_status("cuda")[0] else
                       "cpu" if convkit.backend_status("cpu")[0] else "numpy")


def test_broken_plugin_gives_runtime_error_not_broken_import(monkeypatch):
    specs = dict(_registry._specs())
    specs["broken"] = "convkit_no_such_module:Backend"
    monkeypatch.setattr(_registry, "_specs", lambda: specs)
    ok, why = convkit.backend_status("broken")
    assert not ok and "convkit_no_such_module" in why
    assert "broken" not in convkit.available_backends()
    _registry._failures.pop("broken", None)


def test_third_party_backend_through_registry(monkeypatch):
    """A plugin registered like an entry point is found and used by the functional API."""
    import types

    from convkit.reference import NumpyBackend

    class Tagged(NumpyBackend):
        name = "tagged"
        calls = 0

        def _box_iou(self, a, b):
            Tagged.calls += 1
            return super()._box_iou(a, b)

    mod = types.ModuleType("convkit_tagged_plugin")
    mod.Tagged = Tagged
    monkeypatch.setitem(sys.modules, "convkit_tagged_plugin", mod)
    specs = dict(_registry._specs())
    specs["tagged"] = "convkit_tagged_plugin:Tagged"
    monkeypatch.setattr(_registry, "_specs", lambda: specs)
    b = np.array([[0.0, 0, 2, 2]])
    with convkit.use_backend("tagged"):
        iou = convkit.box_iou(b, b)
    assert Tagged.calls == 1 and iou[0, 0] == 1.0
    _registry._instances.pop("tagged", None)


def test_arrays_of_another_kind_raise_type_error():
    class Fake:
        __cuda_array_interface__ = {}
        shape = (1, 1, 2, 2)
        ndim = 4
        dtype = np.float32

    with convkit.use_backend("numpy"):
        with pytest.raises(TypeError, match=r"x .*convkit\.asarray"):
            convkit.max_pool2d_forward(Fake(), 2)
        with pytest.raises(TypeError, match="host"):
            convkit.asarray(Fake())


def test_show_config_and_info_cli(capsys):
    convkit.show_config()
    out = capsys.readouterr().out
    assert "backend in use:" in out and "numpy" in out and "threads:" in out
    r = subprocess.run([sys.executable, "-m", "convkit", "info"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "convkit 0.1.0" in r.stdout and "cuda" in r.stdout


def test_num_threads_knobs(monkeypatch):
    monkeypatch.setenv("CONVKIT_NUM_THREADS", "3")
    assert convkit.get_num_threads() == 3
    convkit.set_num_threads(1)
    assert convkit.get_num_threads() == 1
    convkit.set_num_threads(None)
    monkeypatch.delenv("CONVKIT_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert convkit.get_num_threads() == 2
    monkeypatch.setenv("CONVKIT_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="CONVKIT_NUM_THREADS"):
        convkit.get_num_threads()
    with pytest.raises(ValueError, match="n must be"):
        convkit.set_num_threads(0)
    with pytest.raises(ValueError, match="nbytes"):
        convkit.set_workspace_limit(-1)
