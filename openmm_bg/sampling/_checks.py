"""Argument checks shared by the sampling modules (clear ValueErrors before any work)."""

from __future__ import annotations

import math


def check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def check_step(name: str, value) -> float:
    value = _number(name, value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be a finite step size > 0 (in units of x), got {value!r}")
    return value


def check_fraction(name: str, value, hint: str = "") -> float:
    value = _number(name, value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1){hint}, got {value!r}")
    return value
