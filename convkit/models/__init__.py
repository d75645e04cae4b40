"""Models built from convkit.nn layers: classifiers and the Faster R-CNN detector."""
from .classifiers import *  # noqa: F401,F403
from .detection import *  # noqa: F401,F403
