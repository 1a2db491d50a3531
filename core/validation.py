"""Input checks shared by the pure domain functions: each raises ValueError naming the input that is wrong."""

from __future__ import annotations

import math

__all__ = ["require_finite", "require_finite_non_negative", "require_positive", "require_whole_shares"]


def require_finite(name: str, value: float) -> float:
    """Return `value` as a float if it is a finite number (any sign), else raise ValueError naming `name`."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return v


def require_positive(name: str, value: float) -> float:
    """Return `value` as a float if it is a finite number > 0, else raise ValueError naming `name`."""
    v = require_finite(name, value)
    if v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def require_finite_non_negative(name: str, value: float) -> float:
    """Return `value` as a float if it is a finite number >= 0, else raise ValueError naming `name`."""
    v = require_finite(name, value)
    if v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def require_whole_shares(name: str, value: int) -> int:
    """Return `value` as an int if it is a whole number of shares (any sign), else raise ValueError naming `name`."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a whole number of shares, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number of shares, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise ValueError(f"{name} must be a whole number of shares, got {value!r}")
    return int(f)
