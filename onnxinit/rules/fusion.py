"""Fusing element-wise sub-graphs: ``x * Sigmoid(x)``, ``0.5 * x * (1 + Erf(x / sqrt(2)))``,
``x * x``, ``x * Tanh(Softplus(x))``, ``Max(x, 0.2 x)``.

A binary node whose two signal operands are both element-wise functions of one tensor T is
itself an element-wise function of T: ``y = h(T)``, ``h(z) = op(f_a(z), f_b(z))``; its moments
are integrated over T's distribution instead of taking the (correlated) operands as
independent. :func:`common_ancestor` finds T from the graph alone (walking back through
element-wise nodes, and through binary nodes that themselves fuse: chains of up to 16 nodes,
64 visited in all); the
propagator looks up T's moments and hands both to the rule as ``RuleContext.fusion``
(:class:`~onnxinit.rules.context.CommonAncestor`); :func:`fused_elementwise` integrates.
"""

from __future__ import annotations

import weakref

import numpy as np

from ..moments import Elementwise, Moments
from .boolean_steps import step_of
from .context import RuleContext, RuleError
from .elementwise import (ElementwiseFn, apply_fn, base_source, guard, node_function, rank_of,
                          refined)
from .gaussian import compose
from .piecewise import closed_moments, fused_pieces

MAX_DEPTH = 16  # nodes of the chains found from the two operands (GPT-2's tanh GELU: 12)
MAX_WORK = 64  # nodes visited in all, failed inner attempts included
_BINARY = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide,
           "Pow": np.power}


def _ancestry(tensor: str, ctx: RuleContext, budget: list[int]) -> list[tuple[str, tuple]]:
    """[(ancestor, chain from the ancestor to ``tensor``)], nearest first, (tensor, ()) first."""
    graph = ctx.graph
    out = [(tensor, ())]
    current, chain = tensor, ()
    while budget[0] > 0 and budget[1] > 0:
        node_id = graph.producer.get(current)
        if node_id is None:
            break
        budget[0] -= 1
        budget[1] -= 1
        node = graph.node(node_id)
        nctx = ctx.for_node(node_id)
        try:
            found = node_function(nctx)
        except RuleError:
            found = None
        step = step_of(nctx) if found is None else None
        if found is not None and found[0] is not None:
            current = node.input[found[1]]
            chain = (found[0].elementwise,) + chain
        elif step is not None:  # a mask of one signal: a step function of it
            current, chain = step[0], (step[1],) + chain
        else:
            # a failed attempt walks nodes of no chain (a Mul of a conv by its own RMS scale):
            # only a found fusion spends depth, so that the search past it still can; every
            # visit spends work, which bounds the search
            trial = [budget[0], budget[1]]
            fused = _fused_binary(nctx, trial)
            budget[1] = trial[1]
            if fused is None:
                break
            budget[0] = trial[0]
            current, h = fused
            chain = (h,) + chain
        out.append((current, chain))
    return out


def ancestry(tensor: str, ctx: RuleContext) -> list[tuple[str, tuple]]:
    """[(ancestor, element-wise chain from it to ``tensor``)], nearest first: the tensors
    ``tensor`` is an element-wise function of (through fused binary nodes too)."""
    return _ancestry(tensor, ctx, [MAX_DEPTH, MAX_WORK])


def _two_signals(ctx: RuleContext) -> bool:
    node, graph = ctx.node, ctx.graph
    return len(node.input) == 2 and all(graph.is_signal(n) for n in node.input)


def _commons(ctx: RuleContext, budget: list[int]) -> list[tuple[str, tuple, tuple]]:
    """Every common ancestor (T, chain_a, chain_b) of the two operands, nearest first."""
    left = _ancestry(ctx.node.input[0], ctx, budget)
    right = dict(_ancestry(ctx.node.input[1], ctx, budget))
    return [(t, chain, right[t]) for t, chain in left if t in right]


def _common(ctx: RuleContext, budget: list[int]) -> tuple[str, tuple, tuple] | None:
    found = _commons(ctx, budget)
    return found[0] if found else None


def fused_function(op_type: str, chain_a: tuple, chain_b: tuple) -> Elementwise:
    """``h(z) = op(chain_a(z), chain_b(z))`` for a binary op (Mul, Add, Sub, Div, Pow)."""
    fa, fb, op = compose(chain_a), compose(chain_b), _BINARY[op_type]
    key = ("Fused", op_type, tuple(f.key for f in chain_a), tuple(f.key for f in chain_b))
    return Elementwise(key, lambda z: op(fa(z), fb(z)))


def _fused_binary(ctx: RuleContext, budget: list[int]) -> tuple[str, Elementwise] | None:
    """(ancestor T, h) with the node's output = h(T), for an upstream binary node whose two
    signal operands are both element-wise functions of T."""
    node = ctx.node
    if node.domain not in ("", "ai.onnx") or node.op_type not in _BINARY or not _two_signals(ctx):
        return None
    found = _common(ctx, budget)
    if found is None:
        return None
    tensor, chain_a, chain_b = found
    return tensor, fused_function(node.op_type, chain_a, chain_b)


# graph -> {node id: (graph.generation, common_ancestors' answer)}
_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def common_ancestor(ctx: RuleContext) -> tuple[str, tuple, tuple] | None:
    """(T, chain_a, chain_b) when the node's two signal operands are ``chain_a(T)`` and
    ``chain_b(T)``, else None. Reads the graph only, so it is memoised per graph object and
    node while the graph's values are unchanged (``generation``): the propagator and the
    cumulant rules downstream (:mod:`.kurtosis`, :mod:`.pool_skewness`) ask for the same node,
    and a residual Add's search walks back through every Add before it."""
    found = common_ancestors(ctx)
    return found[0] if found else None


def common_ancestors(ctx: RuleContext) -> list[tuple[str, tuple, tuple]]:
    """Every (T, chain_a, chain_b) of :func:`common_ancestor`, nearest first (memoised)."""
    if ctx.node.domain not in ("", "ai.onnx") or not _two_signals(ctx):
        return []
    memo = _MEMO.setdefault(ctx.graph, {})
    hit = memo.get(ctx.node_id)
    if hit is not None and hit[0] == ctx.graph.generation:
        return hit[1]
    found = _commons(ctx, [MAX_DEPTH, MAX_WORK])
    memo[ctx.node_id] = (ctx.graph.generation, found)
    return found


def described_ancestor(ctx: RuleContext, known) -> tuple[str, tuple, tuple] | None:
    """The common ancestor whose moments in ``known`` describe its law: the nearest, unless a
    rule left it a bare Gaussian (no source, mixture or position classes) although it is a
    non-affine element-wise function of a farther common ancestor (a token field pooled the
    per-token variance of ``Relu(u)``: ``Relu(u) * Relu(u)`` integrated as the square of a
    Gaussian read 0.38x): then the farther one, through the function's chain."""
    found = [c for c in common_ancestors(ctx) if c[0] in known]
    for i, (tensor, _, _) in enumerate(found[:-1]):
        m = known[tensor]
        if m.source is not None or m.mixture is not None or m.spatial is not None:
            return found[i]
        if not _non_affine_output(tensor, ctx) or not _same_rank(tensor, found[i + 1][0], ctx):
            return found[i]
    return found[-1] if found else None


def _same_rank(a: str, b: str, ctx: RuleContext) -> bool:
    """Both tensors' static shapes known and of one rank (the fused rule needs its
    ancestor at the output's rank)."""
    sa, sb = ctx.graph.shape(a), ctx.graph.shape(b)
    return sa is not None and sb is not None and len(sa) == len(sb)


def _non_affine_output(tensor: str, ctx: RuleContext) -> bool:
    node_id = ctx.graph.producer.get(tensor)
    if node_id is None:
        return False
    try:
        fn = node_function(ctx.for_node(node_id))
    except RuleError:
        return True
    return fn is None or fn[0] is None or fn[0].affine is None


def fused_elementwise(inputs: list, ctx: RuleContext) -> list[Moments] | None:
    """Moments of a binary node (Mul, Add, Sub, Div, Pow) whose two signal operands are both
    element-wise functions of one common ancestor T (``ctx.fusion``): y = h(T) with
    h(z) = op(f_a(z), f_b(z)), so E = int h N, Var = int h^2 N - E^2 over T's source (or T's
    Gaussian). None when there is no common ancestor (or the integral is refused)."""
    fusion = ctx.fusion
    if fusion is None:
        return None
    h = fused_function(ctx.node.op_type, fusion.chain_a, fusion.chain_b)
    pieces = fused_pieces(ctx.node.op_type, [f.key for f in fusion.chain_a],
                          [f.key for f in fusion.chain_b])
    rank = rank_of(ctx)
    shape = ctx.graph.shape(fusion.tensor)
    if rank is not None and shape is not None and len(shape) != rank:
        return None
    try:
        if ctx.node.op_type == "Div":  # the denominator must keep one sign
            src = base_source(fusion.moments, rank)
            guard("nonzero", src.chain + fusion.chain_b, src, rank)
        closed = None if pieces is None else closed_moments(pieces)  # x * Relu6(x + 3) / 6
        out = apply_fn(fusion.moments, ElementwiseFn(h.key, h.fn, closed=closed), rank)
    except RuleError:
        return None
    return [refined(out, ctx)]
