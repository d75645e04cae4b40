"""The first-run check of the ``cuda`` backend on a GPU machine, in one go (``bench/gpu_check.sh``).

On a fresh NVIDIA machine with PyPI access (an H100 is what it is sized for: under 10 minutes),
from the repository root::

    bash bench/gpu_check.sh                 # everything; results in bench/results/gpu_check-<UTC>/
    bash bench/gpu_check.sh --dry-run       # print the steps' commands, run nothing

Steps (each with a time limit; every step's command, exit status, duration and output tail go
to ``<out>/gpu_check.json`` and ``<out>/gpu_check.md``):

1. ``install``: a virtual environment in ``<out>/venv`` with convkit (built, editable, its test
   extra and ``convkit[cuda12|cuda13]``, i.e. the CuPy build for the driver's CUDA major with
   the toolkit libraries from PyPI) plus torch and torchvision (PyPI's Linux wheels are CUDA
   builds);
2. ``info``: ``convkit info`` (device, driver, CuPy, numerics);
3. ``tests``: the test suite's cuda parts on the real device (``-k cuda``; not emulated);
4. ``bench_default``: ``convkit bench --backends cuda,torch-cuda`` with torch's defaults (cuDNN
   may use TF32 for convolutions) and convkit's opt-in TF32 on (CONVKIT_ALLOW_TF32=1): like
   with like;
5. ``bench_fp32``: the same with NVIDIA_TF32_OVERRIDE=0 (cuBLAS and cuDNN never use TF32, on
   both sides) and convkit's default FP32;
6. ``backwards``: the atomic and the deterministic backwards of max pooling and RoI align, and
   RoI pooling's backward, timed with CUDA events (``--time-backwards``, run inside the venv).

Only the standard library is imported until ``--time-backwards``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_BACKENDS = "cuda,torch-cuda"


def cuda_major(default: int = 12) -> tuple[int, str]:
    """(CUDA major the driver supports, how it was found) from ``nvidia-smi``."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return default, f"nvidia-smi not found: assuming CUDA {default}"
    try:
        out = subprocess.run([smi], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return default, f"nvidia-smi failed ({e}): assuming CUDA {default}"
    m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", out)
    if not m:
        return default, f"no CUDA version in nvidia-smi's output: assuming CUDA {default}"
    return int(m.group(1)), f"nvidia-smi reports CUDA {m.group(1)}.{m.group(2)}"


def steps(out: str, cuda: int, python: str = sys.executable) -> list[dict]:
    """The check's steps: name, argv, extra environment, time limit (seconds)."""
    venv = os.path.join(out, "venv")
    vpy = os.path.join(venv, "bin", "python")
    extra = "cuda13" if cuda >= 13 else "cuda12"

    def bench(tag, env):
        return dict(name=f"bench_{tag}", env=env, timeout=120, argv=[
            vpy, "-m", "convkit", "bench", "--backends", BENCH_BACKENDS, "--summary",
            "--no-progress", "--json", os.path.join(out, f"bench_{tag}.json"),
            "--markdown", os.path.join(out, f"bench_{tag}.md")])

    return [
        dict(name="venv", env={}, timeout=60, argv=[python, "-m", "venv", venv]),
        # if CuPy's toolkit wheels and torch's pins cannot be resolved together, the fallback
        # takes plain CuPy, which finds the CUDA libraries torch's wheels bring
        dict(name="install", env={}, timeout=330, argv=[
            vpy, "-m", "pip", "install", "--quiet", "--upgrade", "-e",
            f"{ROOT}[test,{extra}]", "torch", "torchvision"],
             fallback=[vpy, "-m", "pip", "install", "--quiet", "--upgrade", "-e", f"{ROOT}[test]",
                       f"cupy-cuda{cuda}x>=14", "torch", "torchvision"]),
        dict(name="info", env={}, timeout=60, argv=[vpy, "-m", "convkit", "info"]),
        dict(name="tests", env={}, timeout=200, argv=[
            vpy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", "--maxfail=20",
            "--deselect",       # the host emulation's run of the op suites: not the GPU
            "tests/test_cuda_backend.py::test_generic_op_suites_on_emulated_cuda",
            "--junitxml", os.path.join(out, "tests.xml"), "tests"]),
        bench("default", {"CONVKIT_ALLOW_TF32": "1"}),
        bench("fp32", {"NVIDIA_TF32_OVERRIDE": "0", "CONVKIT_ALLOW_TF32": "0"}),
        dict(name="backwards", env={}, timeout=60, argv=[
            vpy, os.path.abspath(__file__), "--time-backwards",
            os.path.join(out, "backwards.json")]),
    ]


def show(step: dict) -> str:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in step["env"].items())
    cmd = " ".join(shlex.quote(a) for a in step["argv"])
    return f"{env} {cmd}".strip()


def _run(argv, env, timeout):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                           env=dict(os.environ, **env))
        return p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
        return 124, (out or "") + f"\n[timed out after {timeout} s]"
    except OSError as e:
        return 127, str(e)


def run_steps(out: str, plan: list[dict]) -> list[dict]:
    results = []
    for st in plan:
        t0 = time.perf_counter()
        print(f"[gpu_check] {st['name']}: {show(st)}", flush=True)
        rc, log = _run(st["argv"], st["env"], st["timeout"])
        if rc != 0 and st.get("fallback"):
            print(f"[gpu_check] {st['name']}: rc={rc}, trying {shlex.join(st['fallback'])}")
            rc, log2 = _run(st["fallback"], st["env"], st["timeout"])
            log += "\n[fallback]\n" + log2
        res = dict(name=st["name"], command=show(st), rc=rc,
                   seconds=round(time.perf_counter() - t0, 1), output_tail=log[-6000:])
        results.append(res)
        with open(os.path.join(out, f"{st['name']}.log"), "w") as f:
            f.write(log)
        print(f"[gpu_check] {st['name']}: rc={rc} in {res['seconds']} s", flush=True)
        if rc != 0 and st["name"] in ("venv", "install"):
            break                       # nothing after this can run
    return results


def write_report(out: str, results: list[dict], meta: dict) -> None:
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(dict(meta, steps=results), f, indent=1)
    lines = ["# convkit cuda: GPU check", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "| step | exit | seconds |", "|---|---|---|"]
    lines += [f"| {r['name']} | {r['rc']} | {r['seconds']} |" for r in results]
    for tag, title in (("default", "torch defaults, convkit TF32 on"),
                       ("fp32", "TF32 off on both sides (NVIDIA_TF32_OVERRIDE=0)")):
        md = os.path.join(out, f"bench_{tag}.md")
        if os.path.exists(md):
            lines += ["", f"## convkit bench --backends {BENCH_BACKENDS}: {title}", ""]
            lines += [open(md).read()]
    bw = os.path.join(out, "backwards.json")
    if os.path.exists(bw):
        lines += ["", "## Backwards: atomic vs deterministic (median ms, CUDA events)", "",
                  "| op | shape | atomic | deterministic |", "|---|---|---|---|"]
        for r in json.load(open(bw)):
            lines.append(f"| {r['op']} | {r['shape']} | {r.get('atomic_ms', '-')} | "
                         f"{r['deterministic_ms']} |")
    for r in results:
        if r["rc"] != 0:
            lines += ["", f"## {r['name']} failed (exit {r['rc']})", "", "```",
                      r["output_tail"][-3000:], "```"]
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def time_backwards(path: str, repeat: int = 20) -> None:
    """Median milliseconds of the atomic and deterministic backwards on the current GPU."""
    import cupy
    import numpy as np

    import convkit

    rng = np.random.default_rng(0)

    def median_ms(fn):
        fn()
        times = []
        for _ in range(repeat):
            a, b = cupy.cuda.Event(), cupy.cuda.Event()
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(cupy.cuda.get_elapsed_time(a, b))
        return round(float(np.median(times)), 4)

    rows = []
    with convkit.use_backend("cuda"):
        x = convkit.asarray(rng.standard_normal((32, 64, 112, 112)).astype(np.float32))
        y, idx = convkit.max_pool2d_forward(x, 3, 2, 1)
        gy = convkit.asarray(rng.standard_normal(y.shape).astype(np.float32))
        row = dict(op="max_pool2d_backward", shape="32x64x112x112 k3 s2 p1")
        for det in (False, True):
            convkit.set_deterministic(det)
            row["deterministic_ms" if det else "atomic_ms"] = median_ms(
                lambda: convkit.max_pool2d_backward(gy, idx, x.shape))
        rows.append(row)
        K = 512
        xr = convkit.asarray(rng.standard_normal((2, 256, 50, 68)).astype(np.float32))
        xy = rng.uniform(0, 60, (K, 2))
        rois = np.concatenate([rng.integers(0, 2, (K, 1)), xy, xy + rng.uniform(4, 40, (K, 2))],
                              axis=1).astype(np.float32)
        rois = convkit.asarray(rois)
        gyr = convkit.asarray(rng.standard_normal((K, 256, 7, 7)).astype(np.float32))
        row = dict(op="roi_align_backward", shape="2x256x50x68, 512 RoIs, 7x7, sr 2")
        for det in (False, True):
            convkit.set_deterministic(det)
            row["deterministic_ms" if det else "atomic_ms"] = median_ms(
                lambda: convkit.roi_align_backward(gyr, rois, xr.shape, 7, 0.25, 2, True))
        rows.append(row)
        convkit.set_deterministic(False)
        yp, am = convkit.roi_pool_forward(xr, rois, 7, 0.25)
        rows.append(dict(op="roi_pool_backward", shape="2x256x50x68, 512 RoIs, 7x7",
                         deterministic_ms=median_ms(
                             lambda: convkit.roi_pool_backward(gyr, am, xr.shape, rois))))
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="output folder (default bench/results/gpu_check-<UTC time>)")
    p.add_argument("--cuda", type=int, choices=(12, 13),
                   help="CUDA major of the CuPy build (default: what nvidia-smi reports)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--time-backwards", metavar="JSON", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.time_backwards:
        time_backwards(a.time_backwards)
        return 0
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = os.path.abspath(a.out or os.path.join(ROOT, "bench", "results", f"gpu_check-{stamp}"))
    major, why = (a.cuda, "--cuda") if a.cuda else cuda_major()
    plan = steps(out, major)
    if a.dry_run:
        print(f"# output folder: {out}\n# CUDA {major} ({why})")
        for st in plan:
            print(show(st))
        return 0
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    results = run_steps(out, plan)
    meta = dict(started_utc=stamp, cuda_major=major, cuda_major_from=why,
                total_seconds=round(time.perf_counter() - t0, 1), out=out)
    write_report(out, results, meta)
    print(f"[gpu_check] report: {os.path.join(out, 'gpu_check.md')}")
    return 0 if all(r["rc"] == 0 for r in results) and len(results) == len(plan) else 1


if __name__ == "__main__":
    sys.exit(main())
