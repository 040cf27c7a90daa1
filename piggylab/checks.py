"""Argument checks shared by the whole lab, so that every refusal reads the same way.

Each check returns the value (converted where that is safe) or raises `ValueError` (or
`TypeError` for a value of the wrong kind) naming what was wrong and what is allowed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any


def check_choice(value: Any, choices: Collection[str], what: str) -> str:
    """`value` if it is one of `choices`, else a ValueError naming them."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


def finite_number(value: Any, what: str, *, positive: bool = False) -> float:
    """A finite number >= 0 (> 0 with `positive`), as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "a positive" if positive else "a non-negative"
        raise ValueError(f"{what} must be {kind} finite number, got {value!r}")
    return value


def positive_int(value: Any, what: str) -> int:
    """An integer >= 1: 3 and 3.0 pass, 2.7, True and "ten" do not."""
    integral = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)
