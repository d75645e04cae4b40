"""The ``convkit`` command: ``info``, ``bench``, ``demo classify|detect``."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="convkit", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, backends and whether each loads, threads, BLAS, GPUs")
    from . import benchmark, demo

    benchmark.add_arguments(sub.add_parser("bench", help="time the layer suite: convkit backends "
                                                         "vs torch, side by side"))
    demo.add_arguments(sub.add_parser("demo", help="train a classifier or a detector"))
    args = p.parse_args(argv)
    if args.cmd == "info":
        from ._info import show_config

        show_config()
        return 0
    if args.cmd == "bench":
        return benchmark.run(args)
    return demo.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
