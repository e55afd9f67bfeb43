"""Parsing the command line's tensor specs: ``--input-shape NAME:DIMS`` and
``--stats NAME:MEAN,VAR``."""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from ..errors import InvalidOptionError

_SHAPE_SPEC = re.compile(r"^([^:]+):(\d+(?:[x,]\d+)*)$")
_STATS_SPEC = re.compile(r"^([^:]+):([^,]+),([^,]+)$")


def parse_input_shapes(specs: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """``["x:1x3x224x224", ...]`` -> ``{"x": (1, 3, 224, 224)}``."""
    shapes = {}
    for spec in specs:
        match = _SHAPE_SPEC.match(spec.strip())
        if not match:
            raise InvalidOptionError(
                f"--input-shape {spec!r}: expected NAME:DIMS like x:1x3x224x224"
            )
        shapes[match.group(1)] = tuple(int(d) for d in re.split("[x,]", match.group(2)))
    return shapes


def parse_stats(specs: Iterable[str]) -> dict[str, tuple[float, float]]:
    """``["x:0,1"]`` -> ``{"x": (0.0, 1.0)}`` (mean, variance)."""
    stats = {}
    for spec in specs:
        match = _STATS_SPEC.match(spec.strip())
        try:
            if not match:
                raise ValueError
            mean, var = float(match.group(2)), float(match.group(3))
            if var < 0 or not np.isfinite(mean) or not np.isfinite(var):
                raise ValueError
        except ValueError:
            raise InvalidOptionError(
                f"--stats {spec!r}: expected NAME:MEAN,VAR with VAR >= 0, like x:0,1"
            ) from None
        stats[match.group(1)] = (mean, var)
    return stats
