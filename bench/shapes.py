"""The layer-shape table of ``pytest bench/`` -- the very objects ``convkit bench`` times.

The table is defined once, in :mod:`convkit.benchmark`; this module only re-exports it, so the
two front ends can never drift apart.
"""
from convkit.benchmark import (CASES, FAMILIES, FB, FWD, QUICK_CASES, TARGETS, BatchNormCase,
                               ConvCase, NmsCase, PoolCase, RoiCase, select_cases)

__all__ = ["CASES", "QUICK_CASES", "FAMILIES", "FWD", "FB", "TARGETS", "ConvCase", "PoolCase",
           "BatchNormCase", "RoiCase", "NmsCase", "select_cases"]
