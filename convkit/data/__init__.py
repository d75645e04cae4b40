"""Data: scikit-learn's handwritten digits and a seeded synthetic-shapes detection set."""
from .digits import *  # noqa: F401,F403
from .shapes import *  # noqa: F401,F403
