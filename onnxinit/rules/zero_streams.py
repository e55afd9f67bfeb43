"""Tokens that draw a zero padding row, past the residual Add: their stream is the other terms
alone.

A token that draws the table's zero row (share p, :mod:`.zero_rows`) has a zero embedding; the
residual stream adds the blocks' outputs to it, so for that token the stream is the sum of
the other terms only: ``h = 0 + attn`` after the first Add, ``h + mlp`` after the next. Its
blocks read a normalised stream, so their outputs there have about the law of everyone's: the
component's moments are the other terms' (independent), ``E_c[h] = sum_j E[b_j]``,
``Var_c[h] = sum_j Var[b_j]``. Its energy is far below the others' where the embeddings
dominate the stream (Gemma scales them by ``sqrt(D)``), so the next norm's reciprocal is large
there: Gemma's post-attention ``1/rms`` 23 against 0.37 (0.004x of the variance as one law).

A mean of squares of such a stream is the mixture of the others' law (the rule's) and the
component's, whose mean is ``mean_f E_c[h_f^2]`` and whose relative variance is taken as the
others' (``rho = v / m^2``: the same number of terms); the element-wise chain after it
integrates each component's gamma law (:mod:`.chi_square`) and mixes them. The point mass of
:mod:`.zero_rows` is the case ``m_c = 0``.

Not modelled: the blocks' outputs for that token differing from everyone's (its attention
sees the others but not itself), and the first token, whose causal attention sees only itself
(its stream stays zero through the layers).
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .gaussian import expand
from .table_rows import gathered_rows, squared_input
from .token_field import per_token, profile_grid
from .zero_rows import has_zero_rows, zero_mean_square, zero_rows

_THROUGH = ("Cast", "Identity", "Dropout")
MAX_TERMS = 512  # residual Adds followed back from one stream


def stream_component(ctx, name: str) -> tuple[float, Moments] | None:
    """(p, the stream's moments at the tokens of a zero row) when ``name`` is a residual sum
    one of whose terms is a zero row (module docstring), else None."""
    graph, known = ctx.graph, ctx.known or {}
    terms, p = [], None
    for _ in range(MAX_TERMS):
        state = zero_rows(graph, name)
        if state is not None:
            p = state.p
            break
        node_id = graph.producer.get(name)
        node = graph.node(node_id) if node_id else None
        if node is None:
            return None
        if node.op_type in _THROUGH:
            name = node.input[0]
            continue
        if node.op_type != "Add" or len(node.input) != 2:
            return None
        a, b = node.input
        if graph.is_constant(a) or graph.is_constant(b):
            return None
        # the stream is the operand that leads back to the zero row: the one not a block's
        # output read from a norm (a residual Add's skip operand comes from an earlier Add)
        ahead = _leads_back(graph, a)
        name, other = (a, b) if ahead else (b, a)
        if other not in known:
            return None
        terms.append(known[other])
    if p is None or not terms:
        return None
    shape = graph.shape(name)
    if shape is None:
        return None
    rank = len(shape)
    mean = sum(expand(t.mean, rank) for t in terms)
    var = sum(_feature_mean_variance(t, shape) for t in terms)
    return p, Moments(mean, var)


def _feature_mean_variance(t: Moments, shape) -> np.ndarray:
    """``mean_f Var[t_f]`` per token (the token field's profile ``nu_f p_t`` where it has
    one), kept along the features with size 1."""
    var = expand(t.var, len(shape))
    found = per_token(t, shape) if t.tokens is not None else None
    if found is not None and found[1].shape[-1] != 1:  # a profile along the features too
        return np.mean(profile_grid(t, shape).var, axis=-1, keepdims=True)
    var = np.mean(var, axis=-1, keepdims=True)
    return var if found is None else var * found[1]


def _leads_back(graph, name: str) -> bool:
    """``name`` is a zero row or a residual Add (through Cast, Identity, Dropout)."""
    for _ in range(8):
        if zero_rows(graph, name) is not None:
            return True
        node_id = graph.producer.get(name)
        node = graph.node(node_id) if node_id else None
        if node is None:
            return False
        if node.op_type == "Add":  # a residual sum: two computed terms (not a bias)
            return not any(graph.is_constant(i) for i in node.input)
        if node.op_type not in _THROUGH:
            return False
        name = node.input[0]
    return False


def mean_square_component(ctx, name: str) -> tuple[float, np.ndarray | float] | None:
    """(p, the component's mean square, per token where the terms' variance is: a causal
    attention's first tokens vary most) when ``name`` is a ReduceMean/ReduceSum of ``x^2``
    over the features of a tensor that is a zero row (0) or a residual stream that lacks one
    (``mean_f E_c[x_f^2]``) for a share p of the tokens, else None."""
    graph = ctx.graph
    if not has_zero_rows(graph):  # every reduce node asks: most graphs have no zero row
        return None
    p = zero_mean_square(graph, name)
    if p is not None:
        return p, 0.0
    node_id = graph.producer.get(name)
    node = graph.node(node_id) if node_id else None
    if node is None or node.op_type not in ("ReduceMean", "ReduceSum"):
        return None
    x = squared_input(graph, node.input[0])
    shape = graph.shape(x) if x is not None else None
    if shape is None or gathered_rows(graph, x) or not _last_axis(graph, node, len(shape)):
        return None
    found = stream_component(ctx, x)
    if found is None:
        return None
    p, c = found
    second = expand(c.var, len(shape)) + expand(c.mean, len(shape)) ** 2
    second = np.broadcast_to(second, second.shape[:-1] + shape[-1:])
    m_c = second.mean(axis=-1, keepdims=bool(next(
        (a.i for a in node.attribute if a.name == "keepdims"), 1)))
    return p, m_c * (shape[-1] if node.op_type == "ReduceSum" else 1.0)


def _last_axis(graph, node, rank: int) -> bool:
    """The reduce node's axes are the last one alone."""
    if len(node.input) > 1 and node.input[1]:
        axes = graph.value(node.input[1]) if graph.is_constant(node.input[1]) else None
    else:
        axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    return axes is not None and [int(a) % rank for a in np.ravel(axes)] == [rank - 1]


def mixed(m: Moments, p: float, m_c) -> Moments:
    """``m`` (the others' mean square, or a function of it) mixed with the component of share
    p whose mean is ``m_c`` and whose relative variance is ``m``'s."""
    rho = np.where(m.mean != 0, m.var / np.where(m.mean != 0, m.mean, 1.0) ** 2, 0.0)
    mean = (1.0 - p) * m.mean + p * m_c
    second = (1.0 - p) * (m.var + m.mean**2) + p * (1.0 + rho) * m_c**2
    return Moments(mean, np.maximum(second - mean * mean, 0.0), m.source, None, m.tokens,
                   m.rows)


def regular(m: Moments, p: float, m_c) -> tuple[Moments, np.ndarray]:
    """(the others' component of the mixture ``m`` from :func:`mixed`, the relative variance
    ``rho`` both components share)."""
    mean = (m.mean - p * m_c) / (1.0 - p)
    second = m.var + m.mean**2
    scale = (1.0 - p) * mean**2 + p * m_c**2
    rho = np.where(scale > 0, second / np.where(scale > 0, scale, 1.0) - 1.0, 0.0)
    rho = np.maximum(rho, 0.0)
    mean, var = _collapsed(mean), _collapsed(rho * mean**2)
    return Moments(mean, var, m.source, m.mixture, m.tokens, m.rows), rho


def _collapsed(a: np.ndarray) -> np.ndarray:
    """``a`` reduced to size 1 along every axis it does not vary along (beyond rounding): the
    others' law, token-uniform where the rule made it so, stays one law (a per-token
    component's mean square spells the mixture out per token)."""
    a = np.asarray(a, dtype=np.float64)
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    for axis in range(a.ndim):
        if a.shape[axis] > 1 and float(np.max(np.ptp(a, axis=axis))) <= 1e-9 * scale:
            a = a.mean(axis=axis, keepdims=True)
    return a


__all__ = ["MAX_TERMS", "mean_square_component", "mixed", "regular", "stream_component"]
