"""The values a numeric option accepts (methods' hyperparameters and command-line numbers).

Its own module so that the command line can check a number without importing every
initialization method (``onnxinit.methods`` imports them all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """The values a numeric option accepts: finite, and ``> gt``, ``>= ge``, ``< lt``,
    ``<= le`` for the bounds given."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def describe(self) -> str:
        """``> 0``, ``>= 1``, ``in [0, 1)``... ("" without bounds)."""
        low = (f"[{self.ge:g}" if self.ge is not None else
               f"({self.gt:g}" if self.gt is not None else None)
        high = (f"{self.le:g}]" if self.le is not None else
                f"{self.lt:g})" if self.lt is not None else None)
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        if high:
            return ("<= " if high[-1] == "]" else "< ") + high[:-1]
        return ""

    def problem(self, value: float) -> str | None:
        """Why ``value`` is refused, in words, or None when it is accepted."""
        if not math.isfinite(value):
            return f"must be a finite number {self.describe()}".rstrip()
        ok = ((self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
              and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))
        return None if ok else f"must be {self.describe()}"
