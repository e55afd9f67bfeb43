"""Heads that share their values (grouped-query and multi-query attention): the key/value
heads are repeated (``repeat_kv``: Unsqueeze, Expand, Reshape) to the query heads' count, each
query head mixes its copy with its own probabilities ``P_h``, and the heads are merged into one
row before the output projection.

The merged row then holds each value feature ``g`` times (g query heads per key/value head),
correlated ``rho`` across the copies, ``rho = E[w_h . w_h'] / E[|w_h|^2]``-like: 1 where the
heads' probabilities are alike (nearly uniform attention at init). A row of ``D`` features that
is ``g`` copies of a row of ``D / g`` keeps that row's concentration ``q = tr C^2 / (tr C)^2``
(``tr C`` and ``tr C^2`` both grow by ``g`` and ``g^2``), where the Pairs kept through the
layout ops would read its ``squared`` as that of ``D`` generic features: ``q`` is ``1/g`` of the
unique row's distinct-feature part too low (OLMo-2's and Gemma 2's attention outputs: ``tr C^2 /
(tr C)^2`` 0.043 predicted, 0.066-0.070 measured, 2 heads per key/value head). Each feature has
``g - 1`` copies among the ``D - 1`` others, so

    ``squared' = squared + (g - 1) (rho^2 - squared) / (D - 1)``,
    ``signed' = signed + (g - 1) (rho - signed) / (D - 1)``;

the row's energy is ``g`` times the unique row's, so its relative variance and the excess are
the unique row's (at ``rho = 1``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .context import RuleContext, RuleError
from .pair_algebra import Pairs

_STEPS = 12  # layout ops walked back from the merge to the repeat
_PASS = frozenset(("Transpose", "Reshape", "Dropout", "Cast", "CastLike", "Identity",
                   "Unsqueeze", "Squeeze"))


def _size(shape) -> int | None:
    if not shape or any(not isinstance(s, (int, np.integer)) or s <= 0 for s in shape):
        return None
    return int(np.prod(shape))


def _repeat(ctx: RuleContext, node_id: str) -> int:
    """g for an Expand that repeats its input g times along axes of size 1 other than the last
    (the input's elements each g times, the last axis untouched), else 1."""
    nctx = ctx.for_node(node_id)
    try:
        x, y = nctx.in_shape(0), nctx.out_shape(0)
    except RuleError:
        return 1
    nx, ny = _size(x), _size(y)
    if nx is None or ny is None or len(x) != len(y) or not x or x[-1] != y[-1] or ny <= nx:
        return 1
    if any(a != b and a != 1 for a, b in zip(x, y)):
        return 1
    return ny // nx


def copies(ctx: RuleContext) -> int:
    """g, the copies of each feature in the row a Reshape merges heads into (its last axis k > 1
    times its input's), when its input is, through layout ops and the value side of ``P V``, an
    Expand that repeated key/value heads ``g`` times (g dividing k); else 1."""
    node, graph = ctx.node, ctx.graph
    if node.op_type != "Reshape":
        return 1
    try:
        a, b = ctx.in_shape(0)[-1], ctx.out_shape(0)[-1]
    except (RuleError, IndexError):
        return 1
    if not a or not b or b <= a or b % a:
        return 1
    merged = b // a
    name, through_mix = node.input[0], False
    for _ in range(_STEPS):
        node_id = graph.producer.get(name)
        if not node_id:
            return 1
        prev = graph.node(node_id)
        if prev.op_type == "Expand":
            g = _repeat(ctx, node_id)
            return g if through_mix and 1 < g <= merged and merged % g == 0 else 1
        if prev.op_type == "MatMul" and len(prev.input) == 2 and all(
                graph.is_signal(n) for n in prev.input):
            if through_mix:
                return 1
            through_mix, name = True, prev.input[1]
            continue
        if prev.op_type not in _PASS or not prev.input:
            return 1
        name = prev.input[0]
    return 1


def with_copies(p: Pairs, d: int, g: int, rho: float = 1.0) -> Pairs:
    """The Pairs of a row of ``d`` features holding each feature ``g`` times (copies
    correlated ``rho``): ``squared + (g - 1) (rho^2 - squared) / (d - 1)``, ``signed`` likewise
    with ``rho``; the excess unchanged."""
    if g <= 1 or d < 2:
        return p
    share = (g - 1) / (d - 1)
    return replace(p, signed=float(p.signed + share * (rho - p.signed)),
                   squared=float(min(p.squared + share * (rho * rho - p.squared), 1.0)))


__all__ = ["copies", "with_copies"]
