"""``convkit demo classify|detect``: train a classifier or a detector on the active backend."""
from __future__ import annotations


def add_arguments(p):
    sub = p.add_subparsers(dest="demo", required=True)
    from . import demo_classify, demo_detect

    demo_classify.add_arguments(sub.add_parser("classify", help="LeNet5 on scikit-learn's digits"))
    demo_detect.add_arguments(sub.add_parser("detect", help="Faster R-CNN on synthetic shapes"))


def run(args) -> int:
    if args.demo == "classify":
        from .demo_classify import run as go
    else:
        from .demo_detect import run as go
    return go(args)
