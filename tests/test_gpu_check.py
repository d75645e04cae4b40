"""bench/gpu_check.sh, the first-run check on a GPU machine: its CPU-side parts (the plan of
commands, their arguments, the report) -- running it needs a GPU and PyPI."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check",
                                                  os.path.join(ROOT, "bench", "gpu_check.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _dry_run(tmp_path, *args):
    p = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), "--dry-run",
                        "--out", str(tmp_path / "out"), *args],
                       capture_output=True, text=True, check=True,
                       env=dict(os.environ, PYTHON=sys.executable))
    lines = [ln for ln in p.stdout.splitlines() if not ln.startswith("#")]
    return p.stdout, [shlex.split(ln) for ln in lines]


@pytest.mark.parametrize("cuda", ["12", "13"])
def test_dry_run_prints_every_step(tmp_path, cuda):
    out = str(tmp_path / "out")
    text, cmds = _dry_run(tmp_path, "--cuda", cuda)
    assert f"# CUDA {cuda} (--cuda)" in text
    assert not os.path.exists(out)                       # a dry run creates nothing
    assert len(cmds) == 7
    venv_py = os.path.join(out, "venv", "bin", "python")
    assert cmds[0][1:] == ["-m", "venv", os.path.join(out, "venv")]
    install = cmds[1]
    assert install[:4] == [venv_py, "-m", "pip", "install"]
    assert f"{ROOT}[test,cuda{cuda}]" in install and "torch" in install \
        and "torchvision" in install
    assert cmds[2] == [venv_py, "-m", "convkit", "info"]
    tests = cmds[3]
    assert tests[:3] == [venv_py, "-m", "pytest"] and tests[tests.index("-k") + 1] == "cuda"
    assert os.path.isdir(os.path.join(ROOT, tests[-1]))
    deselected = tests[tests.index("--deselect") + 1]
    path, name = deselected.split("::")
    assert name in open(os.path.join(ROOT, path)).read()


def test_bench_commands_parse_with_convkit_bench(tmp_path):
    from convkit import benchmark

    out = str(tmp_path / "out")
    _, cmds = _dry_run(tmp_path, "--cuda", "12")
    parser = argparse.ArgumentParser()
    benchmark.add_arguments(parser)
    benches = [c for c in cmds if "bench" in c[:6]]
    assert len(benches) == 2
    envs = []
    for cmd in benches:
        env = dict(a.split("=", 1) for a in cmd if "=" in a and not a.startswith("-")
                   and a.split("=", 1)[0].isupper())
        envs.append(env)
        argv = cmd[cmd.index("bench") + 1:]
        ns = parser.parse_args(argv)
        assert ns.backends == "cuda,torch-cuda" and ns.summary
        assert os.path.dirname(ns.json) == out and os.path.dirname(ns.markdown) == out
    assert envs[0] == {"CONVKIT_ALLOW_TF32": "1"}             # torch's defaults: TF32 both
    assert envs[1] == {"NVIDIA_TF32_OVERRIDE": "0", "CONVKIT_ALLOW_TF32": "0"}


def test_cuda_major_from_nvidia_smi(gc, tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '| NVIDIA-SMI 580.65  Driver Version: 580.65  "
                   "CUDA Version: 13.0 |'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert gc.cuda_major() == (13, "nvidia-smi reports CUDA 13.0")
    smi.write_text("#!/bin/sh\necho 'No devices were found'\n")
    assert gc.cuda_major()[0] == 12
    plan = gc.steps(str(tmp_path), 13)
    assert any("[test,cuda13]" in a for a in plan[1]["argv"])
    assert "cupy-cuda13x>=14" in plan[1]["fallback"]


def test_run_and_report(gc, tmp_path, monkeypatch):
    """Steps run in order with their environment; a failed install stops the run; the report
    has every step, the bench tables and the backward timings."""
    out = str(tmp_path)
    plan = [dict(name="venv", env={"X_GC": "7"}, timeout=30,
                 argv=[sys.executable, "-c", "import os; print('x', os.environ['X_GC'])"]),
            dict(name="bench_default", env={}, timeout=30,
                 argv=[sys.executable, "-c", "import sys; sys.exit(3)"]),
            dict(name="install", env={}, timeout=30, argv=[sys.executable, "-c", "1/0"],
                 fallback=[sys.executable, "-c", "import sys; sys.exit(5)"]),
            dict(name="never", env={}, timeout=30, argv=[sys.executable, "-c", "pass"])]
    results = gc.run_steps(out, plan)
    assert [r["name"] for r in results] == ["venv", "bench_default", "install"]
    assert [r["rc"] for r in results] == [0, 3, 5]
    assert "x 7" in results[0]["output_tail"] and "[fallback]" in results[2]["output_tail"]
    (tmp_path / "bench_default.md").write_text("| op | cuda | torch-cuda |\n|---|---|---|\n")
    (tmp_path / "backwards.json").write_text(json.dumps([
        dict(op="max_pool2d_backward", shape="s", atomic_ms=0.5, deterministic_ms=0.7)]))
    gc.write_report(out, results, dict(cuda_major=12))
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| install | 5 |" in md and "| op | cuda | torch-cuda |" in md
    assert "| max_pool2d_backward | s | 0.5 | 0.7 |" in md and "## install failed" in md
    assert json.loads((tmp_path / "gpu_check.json").read_text())["steps"][1]["rc"] == 3
