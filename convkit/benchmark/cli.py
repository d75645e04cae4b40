"""``convkit bench``'s arguments and its run: parse, time every case on every backend, report."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import numpy as np

from ..cli import Progress
from .adapters import TORCH_NAMES, _has_torchvision, _torch, is_gpu_backend, make_runner
from .cases import CASES, FAMILIES, select_cases
from .memory import measure_memory
from .plot import save_plot
from .probe import core_probe, machine_info, pair_round_trip, probe_kernel
from .report import markdown_report, print_report, print_summary
from .summary import layer_targets, summarize, user_targets
from .timing import measure, set_mallopt


def add_arguments(p: argparse.ArgumentParser):
    import convkit.benchmark as pkg

    p.description = pkg.__doc__.split("\n\n")[0]
    p.add_argument("--backends", default=None,
                   help="comma list of numpy, cpu, cuda, torch, torch-cuda (default: the usable "
                        "convkit backends except numpy, plus torch when importable)")
    p.add_argument("--ops", default=None,
                   help="comma list of op names and/or families (" + ", ".join(FAMILIES) + "); "
                        "default all. Ops: " + ", ".join(c.name for c in CASES))
    p.add_argument("--only", action="append", default=[], metavar="BACKEND=OPS",
                   help="restrict one backend to some ops or families, e.g. "
                        "numpy=pool,bn,roi,nms (repeatable)")
    p.add_argument("--repeat", type=int, default=7, help="timed calls per backend")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed rounds after the first call")
    p.add_argument("--quick", action="store_true", help="tiny shapes (for tests)")
    p.add_argument("--json", metavar="FILE", help="write every measurement as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    p.add_argument("--plot", metavar="FILE.png", help="bar chart of the ratios (matplotlib)")
    p.add_argument("--summary", action="store_true",
                   help="print how each convkit backend compares with torch per op family, and "
                        "the targets for the cpu backend")
    p.add_argument("--memory", action="store_true",
                   help="also measure peak RSS growth of forward+backward in a fresh process "
                        "(res_28, or the conv ops named in --ops) against its tensors' bytes")
    sync = p.add_mutually_exclusive_group()
    sync.add_argument("--device-sync", dest="device_sync", action="store_true", default=None,
                      help="synchronise GPU work before reading the clock (default: on when a "
                           "GPU backend runs)")
    sync.add_argument("--no-device-sync", dest="device_sync", action="store_false",
                      help="read the clock without waiting for the GPU (times launches only)")
    p.add_argument("--no-mallopt", action="store_true",
                   help="leave glibc's allocator thresholds at their defaults")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (one is drawn only when stderr is a terminal)")
    p.add_argument("--seed", type=int, default=0, help="seed of the input generator")


def default_backends():
    import convkit

    names = [b for b in convkit.available_backends() if b != "numpy"]
    if not names:
        print("note: no compiled convkit backend is usable here; timing the numpy backend",
              file=sys.stderr)
        names = ["numpy"]
    t = _torch()
    if t is not None:
        names.append("torch")
        if "cuda" in names and t.cuda.is_available():
            names.append("torch-cuda")
    return names


def parse_backends(spec):
    import convkit

    if not spec:
        return default_backends()
    names = []
    for n in (s.strip().lower() for s in spec.split(",")):
        if not n or n in names:
            continue
        if n in TORCH_NAMES:
            t = _torch()
            if t is None:
                raise ValueError(f"backend {n!r}: torch is not importable")
            if n == "torch-cuda" and not t.cuda.is_available():
                raise ValueError("backend 'torch-cuda': torch.cuda.is_available() is False")
        elif n in convkit.known_backends():
            ok, why = convkit.backend_status(n)
            if not ok:
                raise ValueError(why)
        else:
            raise ValueError(f"unknown backend {n!r}; known: "
                             f"{', '.join(convkit.known_backends() + list(TORCH_NAMES))}")
        names.append(n)
    return names


def parse_only(specs, backends, quick):
    """``["numpy=pool,bn"]`` -> {"numpy": {op names}}: the ops each restricted backend runs."""
    only = {}
    for spec in specs:
        b, sep, ops = spec.partition("=")
        b = b.strip().lower()
        if not sep or b not in backends:
            raise ValueError(f"--only {spec!r}: expected BACKEND=OPS with BACKEND one of "
                             f"{', '.join(backends)}")
        only[b] = {c.name for c in select_cases(ops, quick)}
    return only


def run(args) -> int:
    import convkit

    try:
        backends = parse_backends(args.backends)
        cases = select_cases(args.ops, args.quick)
        only = parse_only(args.only, backends, args.quick)
    except ValueError as e:
        print(f"convkit bench: {e}", file=sys.stderr)
        return 2
    if args.repeat < 1 or args.warmup < 0:
        print("convkit bench: --repeat must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    print(set_mallopt() if not args.no_mallopt else
          "allocator: default glibc settings (--no-mallopt)")
    threads = convkit.get_num_threads()
    torch = _torch()
    if torch is not None and any(b in TORCH_NAMES for b in backends):
        torch.set_num_threads(threads)
    gpu = any(is_gpu_backend(b) for b in backends)
    device_sync = gpu if args.device_sync is None else args.device_sync
    if gpu and not device_sync:
        print("warning: --no-device-sync with a GPU backend times kernel launches, not kernels",
              file=sys.stderr)
    if "numpy" in backends and not args.quick and any(
            c.family == "conv" and c.name in only.get("numpy", {c.name}) for c in cases):
        print("warning: numpy is the readable reference, not a fast path: full-size conv layers "
              "can take seconds per call there (time them with --ops conv --repeat 3, or give "
              "numpy only --ops pool,bn,roi,nms)", file=sys.stderr)
    tv = _has_torchvision()
    info = machine_info()
    torch_threads = (f" (torch.set_num_threads({threads}))"
                     if any(b in TORCH_NAMES for b in backends) else "")
    print(f"convkit bench: backends {', '.join(backends)}; {threads} threads{torch_threads}; "
          f"{args.repeat} timed calls after "
          f"{1 + args.warmup} untimed; device sync {'on' if device_sync else 'off'}; "
          f"torchvision {'present' if tv else 'absent (RoI/NMS compared with numpy only)'}")
    probe = [core_probe()]
    print(f"machine: {info.get('cpu_model')}, {info.get('logical_cpus')} logical CPUs, "
          f"load {info.get('load_avg')}"
          + (f"; one-core probe {probe[0]} GFLOP/s ({probe_kernel()} 64x147x784)"
             if probe[0] is not None else ""))
    pair = [pair_round_trip()]
    if pair[0] is not None:
        print(f"placement: a cache line's round trip between two threads {pair[0]} ns (50-100: "
              f"cores sharing an L3; 200 and more: cores apart, where multi-threaded rows "
              f"read lower)")

    steps = sum(len(c.passes) for c in cases)
    progress = Progress(steps, enabled=not args.no_progress, unit="op")
    rows = []
    notes = set()
    try:
        for case in cases:
            data = case.inputs(np.random.default_rng(args.seed))
            runners = []
            for b in backends:
                if case.name not in only.get(b, {case.name}):
                    continue
                if b in TORCH_NAMES and case.family in ("roi", "nms", "deform") and not tv:
                    notes.add(f"{b}: torchvision is not importable, so no {b} timing for "
                              f"RoI ops, NMS and deform_conv2d")
                    continue
                try:
                    runners.append(make_runner(case, b, data))
                except Exception as e:
                    notes.add(f"{b} {case.name}: could not set up ({type(e).__name__}: {e})")
            for pas in case.passes:
                progress.describe(f"{case.name} {pas}")
                rows.append(measure(case, pas, runners, args.repeat, args.warmup, device_sync))
                progress.update()
            del runners, data
    finally:
        progress.close()

    memory = []
    if args.memory:
        mem_ops = [c.name for c in cases if c.family == "conv"] if args.ops else ["res_28"]
        for op in mem_ops:
            for b in backends:
                if not is_gpu_backend(b) and op in only.get(b, {op}):
                    memory.append(measure_memory(op, b, args.quick, threads))

    summary = summarize(rows, backends)
    layer, user = ((layer_targets(rows, "cpu"), user_targets(summary, memory, "cpu"))
                   if "cpu" in backends else ([], []))
    targets = layer + user    # as evaluate_targets: the JSON and Markdown list them all
    print()
    print_report(rows, backends, summary, memory, args.summary)
    for n in sorted(notes):
        print("note: " + n)
    loads = [r.load_avg for r in rows if r.load_avg is not None]
    if loads:
        print(f"1-minute load average during the run: {min(loads):.2f} to {max(loads):.2f} "
              f"on {os.cpu_count()} logical CPUs")
    probe.append(core_probe())
    if probe[0] is not None:
        print(f"one-core probe: {probe[0]} GFLOP/s at the start, {probe[1]} at the end (a drop "
              f"between runs means the host gave less arithmetic; compare ratios from runs "
              f"with similar readings)")
    pair.append(pair_round_trip())
    if pair[0] is not None and pair[1] is not None:
        print(f"placement: {pair[0]} ns at the start, {pair[1]} at the end")
    if args.summary:
        print_summary(rows, backends, user, layer)

    if args.json:
        doc = {"meta": {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
                                                                     timespec="seconds"),
                        "command": "convkit bench " + " ".join(sys.argv[2:])
                        if sys.argv[1:2] == ["bench"] else " ".join(sys.argv),
                        "backends": backends, "only": {b: sorted(v) for b, v in only.items()},
                        "repeat": args.repeat, "warmup": args.warmup,
                        "quick": args.quick, "device_sync": device_sync,
                        "allocator": None if args.no_mallopt else set_mallopt(),
                        "notes": sorted(notes), "core_probe_gflops": probe,
                        "pair_round_trip_ns": pair, **info},
               "results": [r.to_json(backends) for r in rows],
               "summary": summary, "targets": targets, "memory": memory}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown_report(rows, backends, summary, targets, memory))
    if args.plot:
        try:
            save_plot(args.plot, rows, backends)
        except ImportError:
            print("--plot needs matplotlib (pip install matplotlib); no plot written",
                  file=sys.stderr)
        except ValueError as e:
            print(f"--plot: {e}; no plot written", file=sys.stderr)
    failed = any(r.errors for r in rows) or any(
        c != "ok" for r in rows for b, c in r.check.items() if b != "reference") or any(
        "error" in m for m in memory)
    return 1 if failed else 0
