"""Consecutive tensors grouped into stages, the rows of the report's table for a deep model.

A model has one tensor per node output, in topological order: a 500-layer network has thousands.
Its table is read by stage: the tensors are cut after each *end* (the output of a residual block,
or of a parametric layer when the model has no residual blocks), and consecutive pieces are
merged, equally many per row, until at most ``max_rows`` remain. A row is labelled by the node
names its tensors share (``/layer3/layer3.2`` for the tensors of one ResNet block).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MAX_ROWS = 64  # a table longer than this is read by stage


@dataclass(frozen=True)
class Stage:
    first: int  # index of its first tensor
    last: int  # index of its last tensor (inclusive)
    label: str  # the node-name prefix its tensors share ("" when none)


def pieces(count: int, ends: Iterable[int]) -> list[tuple[int, int]]:
    """``range(count)`` cut after each index in ``ends``: (first, last) pairs, inclusive."""
    cuts = sorted({e for e in ends if 0 <= e < count - 1})
    bounds = [-1, *cuts, count - 1]
    return [(a + 1, b) for a, b in zip(bounds, bounds[1:]) if a < b]


def merged(parts: Sequence[tuple[int, int]], max_rows: int) -> list[tuple[int, int]]:
    """Consecutive ``parts`` merged k at a time, k = ceil(len / max_rows), so that at most
    ``max_rows`` remain."""
    k = max(1, math.ceil(len(parts) / max_rows))
    return [(parts[i][0], parts[min(i + k, len(parts)) - 1][1]) for i in range(0, len(parts), k)]


_SEPARATOR = re.compile(r"[/.:]")


def shared_prefix(names: Iterable[str]) -> str:
    """The longest run of whole name components (split at ``/``, ``.`` and ``:``) that every
    name starts with, without a trailing separator: ``/layer1/layer1.0/conv1/Conv`` and
    ``/layer1/layer1.0/Add`` share ``/layer1/layer1.0``; ``""`` when they share none."""
    names = [n for n in names if n]
    if not names:
        return ""
    common = os.path.commonprefix(names)
    if all(len(n) == len(common) or _SEPARATOR.match(n[len(common)]) for n in names):
        cut = len(common)
    else:  # back to the last separator inside the common part
        cut = max((m.start() for m in _SEPARATOR.finditer(common)), default=0)
    return common[:cut].rstrip("/.:")


def label(nodes: Sequence[str], single: bool) -> str:
    """A stage's label: for one piece, the scope of its last node (``/layer1/layer1.0`` for
    ``/layer1/layer1.0/Add``: the block or layer it ends with; a post-norm block's first
    tensors belong to the block before), else the prefix all its nodes share."""
    last = nodes[-1] if nodes else ""
    scope = last[:max((m.start() for m in _SEPARATOR.finditer(last)), default=0)].rstrip("/.:")
    if single and scope:
        return scope
    return shared_prefix(nodes)


def stages(nodes: Sequence[str], ends: Iterable[int], max_rows: int = MAX_ROWS) -> list[Stage]:
    """The stages of a model whose tensors are produced by ``nodes`` (node id per tensor, ``""``
    for a graph input), cut after the indices in ``ends``."""
    parts = pieces(len(nodes), ends)
    rows = merged(parts, max_rows)
    single = len(rows) == len(parts)
    return [Stage(first, last, label(nodes[first:last + 1], single)) for first, last in rows]
