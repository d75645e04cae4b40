"""``convkit bench``: the CLI end to end on tiny shapes (JSON checked value by value), and the
counting / comparison helpers it reports with, against hand-computed values."""
from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import convkit
from convkit import benchmark as B

ROOT = Path(__file__).resolve().parents[1]
OPS = ["lenet_c1", "dw_56", "stem_224", "maxpool_3x3s2", "avgpool_3x3s2", "bn_train", "roi_align",
       "roi_pool", "nms"]


def _bench(*args, timeout=120):
    env = dict(os.environ, CONVKIT_NUM_THREADS="1")   # tiny shapes: no thread start-up noise
    return subprocess.run([sys.executable, "-m", "convkit", "bench", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


def _torch_importable():
    return importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    backends = ["numpy", "cpu"] + (["torch"] if _torch_importable() else [])
    d = tmp_path_factory.mktemp("bench")
    out = d / "quick.json"
    p = _bench("--quick", "--json", str(out), "--backends", ",".join(backends), "--ops",
               ",".join(OPS), "--repeat", "3", "--no-progress", "--summary",
               "--markdown", str(d / "quick.md"))
    return backends, p, out


def test_quick_run_exits_cleanly(quick_run):
    backends, p, out = quick_run
    assert p.returncode == 0, p.stdout + p.stderr
    assert "mallopt" in p.stdout               # says what it did to the allocator
    assert "summary: geometric mean" in p.stdout
    md = (out.parent / "quick.md").read_text()
    for op in OPS:
        assert f"| {op} | fwd |" in md
    assert "| target | want | got | per-round quartiles | met? |" in md


def test_quick_table_shows_what_each_row_timed(quick_run):
    backends, p, out = quick_run
    table = [ln for ln in p.stdout.splitlines() if ln.startswith(("op ", *OPS))]
    assert table[0].split()[:2] == ["op", "pass"] and table[0].endswith("shapes")
    lines = {tuple(ln.split()[:2]): ln for ln in table[1:]}
    # lenet_c1 quick: x (2,1,12,12), w (3,1,5,5), stride 1, padding 2
    assert lines["lenet_c1", "fwd"].endswith("x(2,1,12,12) w(3,1,5,5) s1 p2")
    assert lines["lenet_c1", "fwd+bwd"].endswith("x(2,1,12,12) w(3,1,5,5) s1 p2")
    assert lines["dw_56", "fwd"].endswith("x(2,8,10,10) w(8,1,3,3) s1 p1 g8")
    assert lines["stem_224", "fwd"].endswith("x(2,3,16,16) w(4,3,7,7) s2 p3 no-dx")
    assert lines["maxpool_3x3s2", "fwd"].endswith("max 3x3/s2/p1 on (2, 4, 12, 12)")
    md = (out.parent / "quick.md").read_text()
    assert md.splitlines()[0].endswith("| shapes |")
    row = next(ln for ln in md.splitlines() if ln.startswith("| lenet_c1 | fwd |"))
    assert row.endswith("| x(2,1,12,12) w(3,1,5,5) s1 p2 |")


def test_quick_summary_speaks_to_users(quick_run):
    backends, p, out = quick_run
    text = p.stdout
    assert "issue" not in text.lower()
    # per op family, the ratio to each reference that ran, as the JSON rows give them
    doc = json.loads(out.read_text())
    conv = [r["ratios"]["cpu"]["numpy"] for r in doc["results"] if r["family"] == "conv"]
    want = f"numpy/cpu {B.report._fmt(math.exp(np.mean(np.log(conv))))}x over {len(conv)} rows"
    assert "cpu backend on this machine, per op family" in text and want in text
    assert "NMS" in text and "RoI align / RoI pool" in text
    # the per-layer goals are counted, not listed one per line
    assert "per-layer development goals (bench/RESULTS.md):" in text
    assert not any(ln.strip().startswith(("met ", "NOT MET")) and "forward" in ln
                   for ln in text.splitlines())
    if "torch" in backends:
        assert "targets for the cpu backend:" in text
        assert f"geomean torch/cpu over {doc['summary']['cpu']['rows']} rows" in text


def test_quick_json_has_every_op_pass_and_backend(quick_run):
    backends, p, out = quick_run
    doc = json.loads(out.read_text())
    assert doc["meta"]["backends"] == backends
    assert doc["meta"]["quick"] is True and doc["meta"]["repeat"] == 3
    # the one-core probe, read at the start and the end: on the own float32 GEMM, or on BLAS's
    # sgemm pinned to one thread where the CPU has no AVX-512F (None only without the cpu
    # extension, and the suite runs with it)
    probe = doc["meta"]["core_probe_gflops"]
    assert len(probe) == 2
    assert all(v > 1 for v in probe)
    # the placement reading beside it: two readings, each a round trip of 5 ns to 1 ms, or None
    # where a 2-thread team could not run (one CPU; a budget that ran out)
    pair = doc["meta"]["pair_round_trip_ns"]
    assert len(pair) == 2
    assert all(v is None or 5 < v < 1e6 for v in pair)
    got = {(r["op"], r["pass"]) for r in doc["results"]}
    want = {(c.name, pas) for c in B.QUICK_CASES if c.name in OPS for pas in c.passes}
    assert got == want
    tv = B._has_torchvision()
    for r in doc["results"]:
        expected = [b for b in backends
                    if not (b == "torch" and r["family"] in ("roi", "nms") and not tv)]
        assert sorted(r["medians_ms"]) == sorted(expected), r["op"]
        assert not r["errors"], r["errors"]
        # every backend's result was checked against the oracle, and agreed
        assert r["check"]["reference"] in ("torch", "numpy")
        for b in expected:
            if b != r["check"]["reference"]:
                assert r["check"][b] == "ok", (r["op"], r["pass"], b, r["check"][b])


def test_quick_json_medians_ratios_and_throughput_are_consistent(quick_run):
    backends, p, out = quick_run
    doc = json.loads(out.read_text())
    n_torch_ratios = 0
    for r in doc["results"]:
        for b, med in r["medians_ms"].items():
            times = r["times_ms"][b]
            assert len(times) == 3 and all(t > 0 for t in times)
            assert med > 0 and med == pytest.approx(statistics.median(times))
            assert r["first_call_ms"][b] > 0
            if r["unit"] is not None:
                assert r["throughput"][b] == pytest.approx(r["work"] / 1e9 / (med / 1e3))
        for b, refs in r["ratios"].items():
            for ref, ratio in refs.items():
                assert ratio == pytest.approx(r["medians_ms"][ref] / r["medians_ms"][b])
                paired = [x / y for x, y in zip(r["times_ms"][ref], r["times_ms"][b])]
                q = statistics.quantiles(paired, n=4)
                assert r["ratio_quartiles"][b][ref] == pytest.approx([q[0], q[2]])
                n_torch_ratios += ref == "torch"
        # ratio vs numpy reported for the cpu backend on every op (numpy ran everywhere)
        assert r["ratios"]["cpu"]["numpy"] > 0
    if "torch" in backends:
        assert n_torch_ratios >= 2 * 5   # conv, pool and bn rows, cpu and numpy each
        s = doc["summary"]["cpu"]
        ratios = [r["ratios"]["cpu"]["torch"] for r in doc["results"]
                  if "torch" in r["ratios"].get("cpu", {})]
        assert s["rows"] == len(ratios)
        assert s["geomean"] == pytest.approx(math.exp(np.mean(np.log(ratios))))


def test_quick_json_work_is_counted_as_documented(quick_run):
    _, _, out = quick_run
    rows = {(r["op"], r["pass"]): r for r in json.loads(out.read_text())["results"]}
    # lenet_c1 quick: N=2, F=3, 12x12 out (pad 2, 5x5), C=1 -> 2*2*3*12*12*1*25 flops
    f = 2 * 2 * 3 * 12 * 12 * 1 * 25
    assert rows["lenet_c1", B.FWD]["work"] == f and rows["lenet_c1", B.FWD]["unit"] == "GFLOP/s"
    assert rows["lenet_c1", B.FB]["work"] == 3 * f
    # stem_224 quick: 2,3,16,16 -> 4 filters 7x7 s2 p3: 8x8 out; no grad_x -> 2x
    f = 2 * 2 * 4 * 8 * 8 * 3 * 49
    assert rows["stem_224", B.FB]["work"] == 2 * f
    # dw_56 quick: groups = C = 8, so C/groups = 1
    assert rows["dw_56", B.FWD]["work"] == 2 * 2 * 8 * 10 * 10 * 1 * 9
    # max pool 3x3/s2/p1 on (2,4,12,12) -> 6x6: x + y + int64 indices; backward gy + idx + gx
    nx, ny = 2 * 4 * 144 * 4, 2 * 4 * 36 * 4
    assert rows["maxpool_3x3s2", B.FWD]["work"] == nx + 3 * ny
    assert rows["maxpool_3x3s2", B.FB]["work"] == 2 * (nx + 3 * ny)
    assert rows["avgpool_3x3s2", B.FB]["work"] == 2 * (nx + ny)
    assert rows["bn_train", B.FB]["work"] == 5 * nx
    assert rows["nms", B.FWD]["unit"] is None and ("nms", B.FB) not in rows


def test_memory_measurement_counts_the_tensors(tmp_path):
    out = tmp_path / "mem.json"
    p = _bench("--quick", "--json", str(out), "--backends", "numpy", "--ops", "res_28",
               "--repeat", "1", "--no-progress", "--memory")
    assert p.returncode == 0, p.stdout + p.stderr
    (m,) = json.loads(out.read_text())["memory"]
    # res_28 quick: x, y, grad_x (2,8,7,7); w, grad_w (8,8,3,3); b, grad_b (8,); float32
    assert m["tensor_bytes"] == 4 * (3 * 2 * 8 * 49 + 2 * 8 * 8 * 9 + 2 * 8)
    assert m["peak_rss_growth_bytes"] >= 0
    assert m["ratio"] == pytest.approx(m["peak_rss_growth_bytes"] / m["tensor_bytes"])
    assert "peak RSS growth" in p.stdout


def test_only_restricts_one_backend(tmp_path):
    out = tmp_path / "only.json"
    p = _bench("--quick", "--json", str(out), "--backends", "numpy,cpu", "--ops",
               "pw_14,avgpool_3x3s2", "--only", "numpy=pool", "--repeat", "1", "--no-progress")
    rows = json.loads(out.read_text())["results"]
    assert {r["op"]: sorted(r["medians_ms"]) for r in rows} == {
        "pw_14": ["cpu"], "avgpool_3x3s2": ["cpu", "numpy"]}, p.stdout + p.stderr


def test_no_progress_bar_when_stderr_is_not_a_terminal():
    p = _bench("--quick", "--backends", "numpy", "--ops", "nms,bn_train", "--repeat", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "\r" not in p.stderr and "bn_train forward" not in p.stderr, p.stderr


def test_bad_arguments_are_refused_with_a_message():
    p = _bench("--backends", "nosuch", "--quick")
    assert p.returncode == 2 and "unknown backend 'nosuch'" in p.stderr
    p = _bench("--ops", "res_99", "--quick", "--backends", "numpy")
    assert p.returncode == 2 and "unknown op(s) res_99" in p.stderr
    p = _bench("--quick", "--backends", "numpy", "--only", "cpu=conv")
    assert p.returncode == 2 and "--only 'cpu=conv'" in p.stderr


# ------------------------------------------------------------------------------- in process
def test_full_table_matches_the_issue():
    rows = {c.name: c for c in B.CASES}
    spec = {"lenet_c1": (64, 1, 28, 28, 6, 5, 1, 2, 1), "vgg_56": (8, 64, 56, 56, 64, 3, 1, 1, 1),
            "res_28": (8, 128, 28, 28, 128, 3, 1, 1, 1),
            "res_14": (8, 256, 14, 14, 256, 3, 1, 1, 1),
            "pw_14": (8, 256, 14, 14, 1024, 1, 1, 0, 1),
            "stem_224": (8, 3, 224, 224, 64, 7, 2, 3, 1),
            "rpn_3x3": (1, 512, 38, 50, 512, 3, 1, 1, 1),
            "rpn_cls1x1": (1, 512, 38, 50, 18, 1, 1, 0, 1),
            "dw_56": (8, 128, 56, 56, 128, 3, 1, 1, 128)}
    for name, t in spec.items():
        c = rows[name]
        assert (c.N, c.C, c.H, c.W, c.F, c.K, c.stride, c.pad, c.groups) == t
        assert c.first_layer == (name == "stem_224")
    # vgg_56 forward: 2*8*64*56*56*64*9 flops
    assert rows["vgg_56"].flops_forward() == 2 * 8 * 64 * 56 * 56 * 64 * 9
    assert rows["stem_224"].out_hw == (112, 112)
    assert {c.name for c in B.QUICK_CASES} == set(rows)
    assert rows["nms"].n == 6000 and rows["roi_align"].K == 512
    assert rows["maxpool_3x3s2"].out_shape == (8, 64, 56, 56)


def test_bench_shapes_reexports_the_same_table():
    spec = importlib.util.spec_from_file_location("bench_shapes", ROOT / "bench" / "shapes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.CASES is B.CASES and mod.QUICK_CASES is B.QUICK_CASES


def test_select_cases_by_name_and_family():
    names = [c.name for c in B.select_cases("pool,res_28")]
    assert names == ["res_28", "maxpool_3x3s2", "maxpool_2x2s2", "avgpool_3x3s2"]
    assert len(B.select_cases(None)) == len(B.CASES)
    with pytest.raises(ValueError, match="unknown op"):
        B.select_cases("conv,bogus")


def test_generated_boxes_lie_inside_the_image():
    rng = np.random.default_rng(0)
    rois = B.random_rois(rng, 512, 2, (800, 1088))
    assert rois.shape == (512, 5) and set(np.unique(rois[:, 0])) <= {0.0, 1.0}
    assert (rois[:, 1] >= 0).all() and (rois[:, 3] <= 1088).all()
    assert (rois[:, 2] >= 0).all() and (rois[:, 4] <= 800).all()
    assert (rois[:, 3] - rois[:, 1] >= 16 - 1e-3).all()
    boxes, scores = B.clustered_boxes(rng, 6000, (800, 1088), 300)
    assert boxes.shape == (6000, 4) and scores.shape == (6000,)
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    # "realistic overlapping": NMS at 0.7 removes a good share, but not nearly all
    keep = convkit.get_backend("numpy").nms(boxes, scores, 0.7)
    assert 300 <= len(keep) <= 4000


def test_compare_outputs_flags_real_differences():
    a = np.linspace(-2, 2, 24, dtype=np.float32).reshape(2, 3, 4)
    assert B.compare_outputs([a], [a.copy()]) is None
    b = a.copy()
    b[1, 2, 3] += 0.01
    assert "max abs error" in B.compare_outputs([b], [a])
    assert "shape" in B.compare_outputs([a[:1]], [a])
    assert "integers differ" in B.compare_outputs([np.array([0, 2])], [np.array([0, 1])])
    nan = a.copy()
    nan[0, 0, 0] = np.nan
    assert B.compare_outputs([nan], [a]) is not None
    assert "outputs" in B.compare_outputs([a], [a, a])


def test_ratios_summary_and_targets_on_hand_made_rows():
    r1 = B.Row("res_28", "conv", B.FWD, "", "GFLOP/s", 2e9, medians_ms={"cpu": 10.0, "torch": 9.0})
    r2 = B.Row("res_28", "conv", B.FB, "", "GFLOP/s", 6e9, medians_ms={"cpu": 20.0, "torch": 40.0})
    r3 = B.Row("nms", "nms", B.FWD, "", None, None, medians_ms={"cpu": 1.0, "numpy": 30.0})
    assert r1.ratio("torch", "cpu") == pytest.approx(0.9)
    assert r1.throughput("cpu") == pytest.approx(200.0)      # 2 GFLOP in 10 ms
    assert r3.throughput("cpu") is None and r3.ratio("torch", "cpu") is None
    s = B.summarize([r1, r2, r3], ["cpu", "torch"])
    assert s["cpu"]["rows"] == 2 and s["cpu"]["geomean"] == pytest.approx(math.sqrt(0.9 * 2.0))
    mem = [{"op": "res_28", "backend": "cpu", "ratio": 2.5}]
    t = {x["what"].split(":")[0]: x for x in B.evaluate_targets([r1, r2, r3], s, mem)}
    assert t["res_28 forward"]["met"] is True              # 0.9 >= 0.85
    assert t["res_28 forward+backward"]["met"] is True     # 2.0 >= 0.85
    assert t["nms forward"]["met"] is True                 # 30 >= 20
    mem_row = next(v for k, v in t.items() if k.startswith("res_28 forward+backward peak"))
    assert mem_row["met"] is False                         # 2.5 > 2
    geo = next(v for k, v in t.items() if k.startswith("geomean"))
    assert geo["met"] is True and geo["got"] == pytest.approx(math.sqrt(1.8))
    assert B.geomean([2.0, 8.0]) == pytest.approx(4.0) and B.geomean([]) is None
    # quartiles of the per-round ratios: rounds (4/2, 6/2, 8/2, 10/2) = (2, 3, 4, 5)
    r4 = B.Row("x", "conv", B.FWD, "", None, None,
               times_ms={"torch": [4.0, 6.0, 8.0, 10.0], "cpu": [2.0, 2.0, 2.0, 2.0]})
    assert r4.ratio_spread("torch", "cpu") == pytest.approx((2.25, 4.75))   # "exclusive" method
    assert r4.ratio_spread("cpu", "cpu") is None and r1.ratio_spread("torch", "cpu") is None


def test_measure_interleaves_and_times_every_runner():
    calls = []

    def runner(name, result):
        return B.Runner(name, {B.FWD: lambda: calls.append(name) or result},
                        lambda: __import__("contextlib").nullcontext(), lambda: None)

    case = B.QUICK_CASES[0]
    good = np.ones(3, np.float32)
    row = B.measure(case, B.FWD, [runner("numpy", good), runner("cpu", good + 1)], repeat=4,
                    warmup=1, device_sync=False)
    # first calls, one warm-up round, then 4 rounds with the order rotated each round
    assert calls == ["numpy", "cpu"] * 2 + ["numpy", "cpu", "cpu", "numpy"] * 2
    assert len(row.times_ms["numpy"]) == 4 and len(row.times_ms["cpu"]) == 4
    assert row.check == {"reference": "numpy", "cpu": row.check["cpu"]}
    assert "max abs error" in row.check["cpu"]      # a wrong result is reported, not hidden


def test_summary_per_family_and_user_targets_on_hand_made_rows():
    rows = [B.Row("res_28", "conv", B.FWD, "", None, None, medians_ms={"cpu": 10.0, "torch": 8.0}),
            B.Row("res_28", "conv", B.FB, "", None, None, medians_ms={"cpu": 10.0, "torch": 20.0}),
            B.Row("maxpool_2x2s2", "pool", B.FWD, "", None, None,
                  medians_ms={"cpu": 1.0, "torch": 3.0, "numpy": 9.0}),
            B.Row("nms", "nms", B.FWD, "", None, None, medians_ms={"cpu": 1.0, "numpy": 30.0})]
    fams = {(f["family"], f["reference"]): f for f in B.family_summaries(rows, "cpu")}
    assert set(fams) == {("conv", "torch"), ("pool", "torch"), ("pool", "numpy"),
                         ("nms", "numpy")}
    assert fams["conv", "torch"]["geomean"] == pytest.approx(math.sqrt(0.8 * 2.0))
    assert fams["conv", "torch"]["slowest"] == "res_28 forward"
    assert fams["conv", "torch"]["slowest_ratio"] == pytest.approx(0.8)
    assert fams["pool", "numpy"]["geomean"] == pytest.approx(9.0)
    s = B.summarize(rows, ["cpu", "torch", "numpy"])
    mem = [{"op": "res_28", "backend": "cpu", "ratio": 1.5}]
    user = B.user_targets(s, mem, "cpu")
    layer = B.layer_targets(rows, "cpu")
    assert B.evaluate_targets(rows, s, mem, "cpu") == layer + user
    assert [t["met"] for t in user] == [True, True]      # geomean (0.8*2*3)^(1/3) >= 1; 1.5 <= 2
    buf = io.StringIO()
    B.print_summary(rows, ["numpy", "cpu", "torch"], user, layer, file=buf)
    text = buf.getvalue()
    assert "  convolution layers  torch/cpu 1.26x over 2 rows (geometric mean; slowest res_28 " \
           "forward 0.8x)" in text
    assert "  pooling             torch/cpu 3x over 1 row\n" in text
    assert "                      numpy/cpu 9x over 1 row\n" in text      # same family: no title
    assert "  NMS                 numpy/cpu 30x over 1 row\n" in text
    assert "met      geomean torch/cpu over 3 rows: 1.69x, want >= 1x" in text
    assert "met      res_28 forward+backward peak RSS growth / tensor bytes (cpu): 1.5x" in text
    # res_28 fwd 0.8 < 0.85 and fwd+bwd 2.0 >= 0.85; maxpool 3 >= 2; nms 30 >= 20
    assert "per-layer development goals (bench/RESULTS.md): 3 of 4 measured met" in text


def test_set_mallopt_is_applied_once_and_says_so():
    msg = B.set_mallopt()
    assert "mallopt" in msg and B.set_mallopt() is msg


def test_every_case_class_declares_its_own_dataclass_fields():
    """A case subclass without @dataclass keeps its parent's __init__, which sets the parent's
    defaults on the instance: a DeformCase once timed plain conv2d as family "conv"."""
    from convkit.benchmark.cases import CASES, QUICK_CASES

    for case in CASES + QUICK_CASES:
        assert "__dataclass_fields__" in vars(type(case)), type(case).__name__
    assert {c.family for c in CASES if c.name == "deform_conv"} == {"deform"}


def test_numpy_reference_runs_with_blas_pinned_to_one_thread():
    """The numpy runner's context pins every BLAS to one thread (its GEMMs must not leave
    OpenBLAS threads spinning into the next timed op) and gives the counts back on exit."""
    from convkit._config import _blas_thread_calls

    calls = _blas_thread_calls()
    if not calls:
        pytest.skip("no BLAS thread controls in this process (threadpoolctl missing)")
    case = next(c for c in B.QUICK_CASES if c.family == "deform")
    saved = [get() for get, _ in calls]
    try:
        for _, set_ in calls:       # two threads each, so that a missing pin shows
            set_(2)
        runner = B.make_runner(case, "numpy", case.inputs(np.random.default_rng(0)))
        with runner.context():
            seen = [get() for get, _ in calls]
            assert convkit.get_backend().name == "numpy"
            runner.fns[B.FWD]()
        assert seen == [1] * len(calls)
        assert [get() for get, _ in calls] == [2] * len(calls)
        cpu = B.make_runner(case, "cpu", case.inputs(np.random.default_rng(0)))
        with cpu.context():     # the cpu op pins its own GEMMs; its runner leaves BLAS alone
            assert [get() for get, _ in calls] == [2] * len(calls)
    finally:
        for (_, set_), n in zip(calls, saved):
            set_(n)


def test_pair_round_trip_reads_a_plausible_latency_or_none():
    """csrc/pingpong.h through convkit.cpu._omp: a number of ns on a machine with two CPUs (a
    round trip through a cache line costs tens to hundreds of ns, never under 5), None where the
    process may use one CPU, and bad arguments refused."""
    import os

    omp = pytest.importorskip("convkit.cpu._omp")
    ns = omp.pair_round_trip_ns(2000, 3)
    if len(os.sched_getaffinity(0)) < 2 or not omp.built_with_openmp():
        assert ns is None
    else:
        assert ns is None or 5 < ns < 1e6     # None: the 50 ms budget ran out on a busy host
    with pytest.raises(ValueError, match="reps and rounds"):
        omp.pair_round_trip_ns(0, 1)
