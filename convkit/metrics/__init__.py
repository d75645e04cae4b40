"""Metrics: accuracy; VOC-style AP@0.5 and mAP, COCO-style mAP@[.5:.95]; proposal recall."""
from .classification import *  # noqa: F401,F403
from .detection import *  # noqa: F401,F403
