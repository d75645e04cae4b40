"""Time every (op, pass, backend) of the shared table with pytest-benchmark and check the result.

Run: ``pytest bench/`` (add ``--benchmark-columns=median,iqr,rounds`` or
``--benchmark-json=FILE`` as usual).  For the interleaved A/B medians and the ratios to torch
use ``convkit bench``, which times the same table.
"""
import numpy as np

from convkit import benchmark as B


def test_layer(benchmark, bench_case, bench_pass, bench_backend, bench_rounds):
    case, pas = bench_case, bench_pass
    runner = B.make_runner(case, bench_backend, case.inputs(np.random.default_rng(0)))
    fn = runner.fns[pas]

    def call():
        with runner.context():
            out = fn()
            runner.sync()   # GPU: time the kernels, not the launches
        return out

    unit, work = case.work(pas)
    benchmark.group = f"{case.name} {pas}"
    benchmark.extra_info.update(op=case.name, shape=case.describe(), backend=bench_backend,
                                unit=unit, work=work)
    out = benchmark.pedantic(call, rounds=bench_rounds, warmup_rounds=1, iterations=1)
    if unit is not None and benchmark.stats is not None:
        median_s = benchmark.stats.stats.median
        benchmark.extra_info["throughput"] = work / 1e9 / median_s

    got = B.to_host(out)
    assert got and all(a.size for a in got), "the op returned nothing"
    ref = B.reference_outputs(case, pas, exclude=bench_backend)
    if ref is not None:
        name, want = ref
        problem = B.compare_outputs(got, want)
        assert problem is None, f"{bench_backend} vs {name}: {problem}"
