"""The layer-shape table of ``pytest bench/`` -- the very objects ``convkit bench`` times.

The table is defined once, in :mod:`convkit.benchmark.cases`; this module only re-exports it, so
the two front ends can never drift apart.
"""
from convkit.benchmark.cases import (CASES, FAMILIES, FB, FWD, QUICK_CASES, BatchNormCase,
                                     ConvCase, NmsCase, PoolCase, RoiCase, select_cases)
from convkit.benchmark.summary import TARGETS

__all__ = ["CASES", "QUICK_CASES", "FAMILIES", "FWD", "FB", "TARGETS", "ConvCase", "PoolCase",
           "BatchNormCase", "RoiCase", "NmsCase", "select_cases"]
