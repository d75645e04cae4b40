"""``convkit demo NAME``: train a model end to end on the active (or ``--backend``) backend.

Each demo is a module of this package with ``add_arguments(parser)`` and ``run(args) -> int``,
listed in :data:`DEMOS`; what they share (common arguments, backend selection, progress) is in
``_common``.
"""
from __future__ import annotations

import importlib

DEMOS = {
    "classify": "LeNet5 (or a small VGG / ResNet) on scikit-learn's digits",
    "detect": "Faster R-CNN on synthetic shapes",
}
"""Demo name -> one-line help; ``convkit.demos.<name>`` implements it."""


def _module(name):
    return importlib.import_module(f"{__name__}.{name}")


def add_arguments(p):
    sub = p.add_subparsers(dest="demo", required=True, metavar="NAME")
    for name, help_ in DEMOS.items():
        mod = _module(name)
        mod.add_arguments(sub.add_parser(name, help=help_,
                                         description=mod.__doc__.split("\n\n")[0]))


def run(args) -> int:
    return _module(args.demo).run(args)
