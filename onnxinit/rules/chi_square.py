"""A mean of squares as a scaled chi-square: the law of RMSNorm's (and LayerNorm's written out)
``s = mean_d x_d^2`` over a row, for the element-wise chain after it (``+ eps``, Sqrt, the
reciprocal).

``s`` is a quadratic form in the row's features; for Gaussian features it is a weighted sum of
chi-squares, which Satterthwaite's approximation matches on its mean and variance by a scaled
chi-square, a gamma of shape ``k = E[s]^2 / Var[s]`` and scale ``E[s] / k`` (exact for K
independent features of one variance: ``k = K / 2``; features correlated within the row, whose
mean square varies more, get fewer degrees of freedom). Described by its mean and variance
alone, ``s`` was taken as Gaussian, whose left tail reaches 0: ``1/sqrt(s)`` over a head of 16
features (Qwen3's per-head q_norm/k_norm, ``k = 8``) read 1.15-1.24x of its measured variance.

The law is a source, ``s = Q_k(Phi(z)) E[s] / k``, ``z ~ N(0, 1)``, Q_k the gamma quantile:
by the Wilson-Hilferty cube ``k (a + b z)^3 / (a^3 + 3 a b^2)``, ``a = 1 - 1/(9k)``, ``b =
1/(3 sqrt(k))`` (the mean exact; the variance within 0.05% and ``Var[1/sqrt s]`` on the
composite rule within 0.7% of the gamma's at k = 8, 1.4% at k = 6) where every ``k >=
WILSON_HILFERTY``, the exact quantile otherwise (the cube's root at ``z = -a/b`` lies within
reach of the quadrature for a small k: 2.3x at k = 3).

The law is not carried from the mean square on (a per-token variance pooled into the token
field would drop it): each element-wise rule after it rebuilds it from the mean square's
moments, spelled out per token (:func:`mean_square_law`).

Not modelled: features whose own law is not Gaussian beyond what the variance says (a heavy
tail shared by the row: the mean square's third cumulant).
"""

from __future__ import annotations

import numpy as np

from .. import special
from ..moments import Elementwise, Moments, Source
from .context import RuleContext
from .elementwise import digest, input_law, is_smooth, node_function, refinement
from .gaussian import compose, expand, gaussian_moments
from .table_rows import squared_input
from .token_field import profile_grid
from .zero_rows import has_zero_rows
from .zero_streams import mean_square_component, regular

WILSON_HILFERTY = 6.0  # the smallest shape that takes the cube (see the module docstring)
_MEMO = 32  # exact quantiles kept (gamma_of_normal)
_QUANTILES: dict[tuple, np.ndarray] = {}
MAX_CHAIN = 8  # element-wise nodes between the mean square and the tensor that reads its law


def gamma_of_normal(k: np.ndarray, scale: np.ndarray) -> Elementwise:
    """``z -> scale Q_k(Phi(z))`` element by element, ``k`` and ``scale`` broadcasting with
    the tensor (module docstring)."""
    k, scale = np.asarray(k, dtype=np.float64), np.asarray(scale, dtype=np.float64)
    a, b = 1.0 - 1.0 / (9.0 * k), 1.0 / (3.0 * np.sqrt(k))
    norm = scale * k / (a**3 + 3.0 * a * b * b)
    cube = bool(np.all(k >= WILSON_HILFERTY))

    key = ("ChiSquare", *digest(k), *digest(scale))

    def fn(z):
        z = np.asarray(z, dtype=np.float64)
        if cube:
            return norm * (a + b * z) ** 3
        # the exact quantile is costly (0.1 s on a few thousand nodes) and each rule after
        # the mean square integrates it again on the same nodes: kept for the process
        memo = (key, digest(z))
        if memo not in _QUANTILES:
            if len(_QUANTILES) >= _MEMO:
                _QUANTILES.pop(next(iter(_QUANTILES)))
            _QUANTILES[memo] = scale * special.gammaincinv(k, special.ndtr(z))
        return _QUANTILES[memo]

    return Elementwise(key, fn)


def chi_square(m: Moments, rank: int) -> Moments:
    """``m`` (a mean of squares) with the scaled chi-square of its mean and variance as its
    source; unchanged where a mean or variance is not positive and finite."""
    mean, var = expand(m.mean, rank), expand(m.var, rank)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var)) and np.all(mean > 0)
            and np.all(var > 0)):
        return m
    k = mean * mean / var
    shape = np.broadcast_shapes(mean.shape, var.shape)
    source = Source(np.zeros(shape), np.ones(shape), (gamma_of_normal(k, var / mean),))
    return Moments(m.mean, m.var, source, None, m.tokens, m.rows, m.spatial)


def chain_from(ctx: RuleContext, name: str, is_start) -> tuple[str, tuple] | None:
    """(the tensor ``t``, the element-wise chain from it to ``name``) for the first ``t`` back
    from ``name`` whose producer ``is_start(node)`` holds, through element-wise nodes only
    (at most ``MAX_CHAIN``), else None."""
    graph, chain = ctx.graph, []
    for _ in range(MAX_CHAIN):
        node_id = graph.producer.get(name)
        if not node_id:
            return None
        node = graph.node(node_id)
        if is_start(node):
            return name, tuple(reversed(chain))
        found = node_function(ctx.for_node(node_id))
        if found is None or found[0] is None:
            return None
        chain.append(found[0].elementwise)
        name = node.input[found[1]]
    return None


def mean_square_chain(ctx: RuleContext, name: str) -> tuple[str, tuple] | None:
    """(the mean or sum of squares, the element-wise chain from it to ``name``) when ``name``
    is an element-wise function of a ReduceMean/ReduceSum of ``x^2`` (``+ eps``, Sqrt, the
    reciprocal), else None."""
    found = chain_from(ctx, name, lambda node: node.op_type in ("ReduceMean", "ReduceSum"))
    if found is None:
        return None
    node = ctx.graph.node(ctx.graph.producer[found[0]])
    return found if squared_input(ctx.graph, node.input[0]) is not None else None


@input_law
def mean_square_law(x: Moments, ctx: RuleContext, name: str) -> Moments:
    """``x`` with the scaled chi-square law when it is an element-wise chain of a mean (sum)
    of squares (``+ eps``, then Sqrt, before the reciprocal), each token's variance its own
    (the token field's profile spelled out: a causal attention's first tokens vary most);
    ``x`` itself otherwise."""
    if x is None or x.source is not None or x.spatial is not None or x.mixture is not None:
        return x
    found = mean_square_chain(ctx, name)
    if found is None:
        return x
    s_name, chain = found
    s, shape = (ctx.known or {}).get(s_name), ctx.graph.shape(s_name)
    if s is None or shape is None:
        return x
    component = mean_square_component(ctx, s_name)
    if component is not None:  # the tokens of a zero row: mixed in after the rule
        s = regular(s, *component)[0]
    spelled = profile_grid(s, shape) if s.tokens is not None else None
    law = chi_square(spelled if spelled is not None else s, len(shape)).source
    if law is None:
        return x
    return Moments(x.mean, x.var, Source(law.mean, law.var, law.chain + chain), None, x.tokens,
                   x.rows)


@refinement
def zero_row_tokens(y: Moments, ctx: RuleContext) -> Moments:
    """``y``, an element-wise function ``f`` of a mean of squares whose rows are zero for a
    share p of the tokens (:mod:`.zero_rows`; its others' law by :func:`mean_square_law`) or
    a residual stream that lacks such a row (:mod:`.zero_streams`), mixed with ``f`` over the
    component's law for those tokens: ``(1 - p) y + p f(s_c)``, ``f(0)`` for a zero row;
    ``y`` otherwise."""
    if not has_zero_rows(ctx.graph):
        return y
    found = mean_square_chain(ctx, ctx.node.output[0])
    component = mean_square_component(ctx, found[0]) if found is not None else None
    s = (ctx.known or {}).get(found[0]) if component is not None else None
    if s is None:
        return y
    p, m_c = component
    with np.errstate(all="ignore"):
        if np.all(np.asarray(m_c) == 0):
            e_c = float(np.ravel(compose(found[1])(np.zeros(1)))[0])
            v_c = 0.0
        else:
            rank = len(ctx.graph.shape(found[0]) or ())
            c = expand(np.asarray(m_c, dtype=np.float64), rank)
            law = chi_square(Moments(c, np.mean(regular(s, p, m_c)[1]) * c * c), rank).source
            if law is None:
                return y
            chain = law.chain + found[1]
            e_c, v_c = gaussian_moments(chain, law.mean, law.var, smooth=is_smooth(chain),
                                        rank=rank)
    if not (np.all(np.isfinite(e_c)) and np.all(np.isfinite(v_c))):
        return y
    mean = (1.0 - p) * y.mean + p * e_c
    second = (1.0 - p) * (y.var + y.mean * y.mean) + p * (v_c + e_c * e_c)
    return Moments(mean, np.maximum(second - mean * mean, 0.0), y.source, None, y.tokens,
                   y.rows)


__all__ = ["MAX_CHAIN", "WILSON_HILFERTY", "chain_from", "chi_square", "gamma_of_normal",
           "mean_square_chain", "mean_square_law", "zero_row_tokens"]
