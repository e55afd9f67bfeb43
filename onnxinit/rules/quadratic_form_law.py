"""The law of a sum (mean) of squares over a map's channels at one position, where the channels
are element-wise functions of correlated Gaussians (a Conv's channels, with their field), for
the reduce itself and for the element-wise chain after it (``+ eps``, Sqrt, the reciprocal:
Keras' UnitNormalization and ``LayerNormalization()`` over a Conv map's channels as tf2onnx
writes them, an RMS norm over channels).

:mod:`.chi_square` matches the sum by a gamma of its mean and variance (Satterthwaite), and
the reduce rule sums the squares as independent up to a correlation factor. For Gaussian
channels ``x ~ N(mu, S)``, ``Q = x^T x = sum_i lambda_i (y_i + delta_i)^2`` is a weighted sum
of as many chi-squares as S has positive eigenvalues: near 0 its density goes as ``q^(r/2 -
1)``, r the rank, while the matched gamma's shape is ``(tr S)^2 / (2 tr S^2)`` (zero mean),
much smaller where the eigenvalues spread; the inverse powers a normalisation takes live in
that left tail. A 3x3 Conv of one channel into 16 (rank 9, the gamma's shape 2.8) read ``Var
1/sqrt(Q)`` 0.115 against 0.082 (Monte Carlo, 2e6 draws; the Keras sweep's ``unitnorm``,
1.40x). ReLU channels of such a map, centred on their mean over the channels (a LayerNorm's
variance statistic), are far from the gamma too: their squares move together.

Here, where the squared tensor is ``f(z)`` or ``f(z) - mean_c f(z)`` for a Gaussian z (its
source chain f through element-wise nodes of one signal) that carries a channel field
(:func:`.channel_covariance.covariance`, the same-position covariance), ``SAMPLES`` seeded
draws of ``z ~ N(mu, s R s)`` (R the field's correlation, s z's own per-channel deviations)
give Q's draws. The reduce takes their relative variance ``Var Q / E[Q]^2`` at its own mean in
each cell (:func:`drawn_square_sum`), and the chain after it their empirical quantile ``z ->
Q(Phi(z))``, scaled to each cell's mean. Not modelled: a law of another shape per position
class (a padded Conv's border positions sum fewer taps: the interior's shape at their own
scale; on an 8x8 map, 44% borders, the variance statistic reads 0.91-0.97x), the channels'
correlation across taps, which the field leaves out.
"""

from __future__ import annotations

import weakref

import numpy as np

from .. import special
from ..moments import Elementwise, Moments, Source, Spatial
from ..spatial import attach
from .channel_covariance import covariance, row_covariance
from .channel_centring import centred_over
from .chi_square import mean_square_chain
from .context import RuleContext, RuleError
from .elementwise import UNARY, digest, input_law
from .gaussian import compose, expand
from .table_rows import squared_input

SAMPLES = 1 << 15
_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
MAX_CHANNELS = 256
AGREEMENT = 0.25  # the draws' relative variance against a row reduce's (:func:`_agrees`)


def _draws(mu: np.ndarray, s: np.ndarray) -> np.ndarray:
    """SAMPLES draws [SAMPLES, C] of ``z ~ N(mu, S)`` (seeded: the same for a graph)."""
    lam, u = np.linalg.eigh(s)
    root = u * np.sqrt(np.clip(lam, 0.0, None))
    return mu + np.random.default_rng(0).standard_normal((SAMPLES, mu.size)) @ root.T


def _quantile(draws: np.ndarray, scale: np.ndarray) -> Elementwise:
    """``z -> scale Q(Phi(z))``, Q the sorted draws' empirical quantile, ``scale``
    broadcasting with the tensor."""
    def fn(z):
        i = special.ndtr(np.asarray(z, dtype=np.float64)) * draws.size
        return scale * draws[np.clip(i.astype(np.int64), 0, draws.size - 1)]

    return Elementwise(("QuadraticForm", *digest(draws), *digest(scale)), fn)


def _gaussian_base(ctx: RuleContext, name: str):
    """(z, chain) with ``name = chain(z)``: ``name``'s source chain, walked back through as
    many element-wise nodes of one signal to z, a Gaussian tensor (no source chain); None
    otherwise."""
    graph, known = ctx.graph, ctx.known or {}
    x = known.get(name)
    if x is None:
        return None
    chain = x.source.chain if x.source is not None else ()
    z = name
    for _ in range(len(chain)):
        node_id = graph.producer.get(z)
        node = graph.node(node_id) if node_id else None
        signals = [i for i in node.input if i and graph.is_signal(i)] if node else []
        if node is None or node.op_type not in UNARY or signals != [node.input[0]]:
            return None
        z = node.input[0]
    base = known.get(z)
    if base is None or (base.source is not None and base.source.chain):
        return None
    return z, chain


def channel_square_sum_draws(ctx: RuleContext, s_name: str) -> np.ndarray | None:
    """:func:`_square_sum_draws`, kept per graph while the squared tensor's moments are the
    same object (the reduce and each node of the chain after it ask for the same draws)."""
    graph, known = ctx.graph, ctx.known or {}
    node_id = graph.producer.get(s_name)
    key = graph.node(node_id).input[0] if node_id else None
    memo = _MEMO.setdefault(graph, {})
    hit = memo.get(s_name)
    if hit is not None and hit[0] is known.get(key):
        return hit[1]
    q = _square_sum_draws(ctx, s_name)
    memo[s_name] = (known.get(key), q)
    return q


def _square_sum_draws(ctx: RuleContext, s_name: str) -> np.ndarray | None:
    """Sorted draws of Q (module docstring) for ``s_name``, a ReduceSum or ReduceMean over
    axis 1 of the square of ``f(z)`` or of ``f(z) - mean_c f(z)``, z a Gaussian map with a
    channel field; None where it does not apply."""
    graph, known = ctx.graph, ctx.known or {}
    node_id = graph.producer.get(s_name)
    node = graph.node(node_id) if node_id else None
    if node is None or node.op_type not in ("ReduceSum", "ReduceMean"):
        return None
    y = squared_input(graph, node.input[0])
    shape, out = graph.shape(y), graph.shape(s_name)
    if not shape or len(shape) < 3 or not out or len(out) != len(shape):
        return None
    axis = _summed_axis(shape, out)
    if axis is None:
        return None  # not over the channels (a row's features) alone, keepdims
    producer = graph.node(graph.producer[y]) if graph.producer.get(y) else None
    over = centred_over(ctx, producer) if producer is not None else None
    if over is not None and over[1] != axis:
        return None
    found = _gaussian_base(ctx, over[0] if over is not None else y)
    c = shape[axis]
    if found is None or not isinstance(c, int) or c > MAX_CHANNELS:
        return None
    z_name, chain = found
    z = known[z_name]
    try:
        f = covariance(ctx, z_name) if axis == 1 else row_covariance(ctx, z_name)
    except RuleError:
        return None
    if f is None or f.axis != axis or f.head_axis is not None or np.shape(f.cov) != (c, c):
        return None
    mu, nu = (np.broadcast_to(a, (c,)).astype(np.float64) for a in z.values_along(axis, c))
    cov = np.asarray(f.cov, dtype=np.float64)
    if not (np.all(np.isfinite(cov)) and np.all(np.isfinite(mu))) or np.any(np.diag(cov) <= 0):
        return None
    sd = np.sqrt(nu / np.diag(cov))  # the field's correlation at z's own variances
    rank = len(out)
    # the draws laid out as the tensor's cells: the summed axis holds the c values of a draw
    layout = (SAMPLES,) + tuple(c if i == axis else 1 for i in range(1, rank))
    x = _draws(mu, sd[:, None] * cov * sd[None, :]).reshape(layout)
    with np.errstate(all="ignore"):
        x = compose(chain)(x) if chain else x
    if np.shape(x) != layout or not np.all(np.isfinite(x)):
        return None
    x = x.reshape(SAMPLES, c)
    if over is not None:
        x = x - x.mean(axis=1, keepdims=True)
    q = np.sort((x * x).sum(axis=1) / (c if node.op_type == "ReduceMean" else 1))
    return q if q.mean() > 0 else None


def _summed_axis(shape, out) -> int | None:
    """The one axis a keepdims reduce sums: the channels (axis 1), or a row's features (the
    last axis, where axis 1 is kept); None for any other reduce."""
    differ = [i for i, (a, b) in enumerate(zip(shape, out)) if a != b]
    if len(differ) == 1 and out[differ[0]] == 1 and differ[0] in (1, len(shape) - 1):
        return differ[0]
    return None


def _scaled_law(q: np.ndarray, mean) -> Source | None:
    """The draws' law scaled to ``mean`` in each cell."""
    if not np.all(np.isfinite(mean)) or np.any(mean <= 0):
        return None
    scale = mean / q.mean()
    return Source(np.zeros(scale.shape), np.ones(scale.shape), (_quantile(q, scale),))


def _with_law(m: Moments, q: np.ndarray, s: Moments, chain: tuple, rank: int) -> Moments:
    """``m`` (Moments of ``chain(s)``) with the draws' law as its source, per position class
    where s has them (each class at its own mean); ``m`` itself where it does not fit."""
    if m.spatial is None:
        if s.spatial is not None:
            return m
        law = _scaled_law(q, expand(np.asarray(s.mean, dtype=np.float64), rank))
        return m if law is None else Moments(m.mean, m.var, Source(
            law.mean, law.var, law.chain + chain), None, m.tokens, m.rows)
    cells, s_cells = m.spatial.cells, s.spatial.cells if s.spatial is not None else None
    if s_cells is None or np.ndim(s_cells.mean) != np.ndim(cells.mean) or not _is_law(
            cells, chain):
        return m
    law = _scaled_law(q, np.asarray(s_cells.mean, dtype=np.float64))
    if law is None:
        return m
    cells = Moments(cells.mean, cells.var, Source(law.mean, law.var, law.chain + chain))
    return Moments(m.mean, m.var, m.source, m.mixture, m.tokens, m.rows,
                   Spatial(m.spatial.maps, cells, m.spatial.given))


def _is_law(m: Moments, chain: tuple) -> bool:
    """``m`` has no source, or the gamma law of :mod:`.chi_square` through ``chain``."""
    if m.mixture is not None:
        return False
    src = m.source
    return src is None or (len(src.chain) == len(chain) + 1 and src.chain[0].key[0] == "ChiSquare"
                           and tuple(src.chain[1:]) == tuple(chain))


def drawn_square_sum(ctx: RuleContext, out: Moments) -> Moments:
    """The reduce's output ``out`` (Q itself) with the draws' mean and variance where the map
    has no position classes; with the draws' variance scaled in each cell (position class) to
    the cell's mean, ``Var Q = (E_cell / E draws)^2 Var draws``, where it has; ``out`` where the
    draws do not apply."""
    shape, out_shape = ctx.graph.shape(ctx.node.input[0]), ctx.graph.shape(ctx.node.output[0])
    if not shape or not out_shape or _summed_axis(shape, out_shape) != 1:
        return out  # a row's features: the reduce rule's field factor holds the sum's variance
    q = channel_square_sum_draws(ctx, ctx.node.output[0])
    if q is None or out.mixture is not None:
        return out
    relative = q.var() / q.mean() ** 2
    if out.spatial is None:  # one law for every position: the draws' own mean and variance
        if not _is_law(out, ()):
            return out
        shape = np.shape(out.mean)
        return Moments(np.full(shape, q.mean()), np.full(shape, q.var()), None, None,
                       out.tokens, out.rows)
    cells = out.spatial.cells
    cells = Moments(cells.mean, relative * np.asarray(cells.mean, dtype=np.float64) ** 2)
    return attach(cells, out.spatial.maps, out.spatial.given)


@input_law
def channel_square_sum(x: Moments, ctx: RuleContext, name: str) -> Moments:
    """``x`` with Q's law (module docstring) as its source when it is an element-wise chain of
    such a sum of squares (in place of :mod:`.chi_square`'s gamma), per position class; ``x``
    itself otherwise."""
    if x is None:
        return x
    found = mean_square_chain(ctx, name)
    if found is None:
        return x
    s_name, chain = found
    if x.spatial is None and not _is_law(x, tuple(chain)):
        return x
    q = channel_square_sum_draws(ctx, s_name)
    s, shape = (ctx.known or {}).get(s_name), ctx.graph.shape(s_name)
    if q is None or s is None or not shape or not _agrees(ctx, s_name, s, q):
        return x
    return _with_law(x, q, s, tuple(chain), len(shape))


def _agrees(ctx: RuleContext, s_name: str, s: Moments, q: np.ndarray) -> bool:
    """Over a row's features (the last axis), whether the draws' relative variance is the
    reduce's within ``AGREEMENT``: the reduce rules know rows the Gaussian draws do not (a
    normalised row's fixed energy plus a table, :mod:`.fixed_energy_rows`: the draws read its
    mean square's variance 7x). Over the channels: always (the reduce takes the draws)."""
    node_id = ctx.graph.producer.get(s_name)
    node = ctx.graph.node(node_id) if node_id else None
    shape = ctx.graph.shape(node.input[0]) if node is not None else None
    out = ctx.graph.shape(s_name)
    if not shape or not out or _summed_axis(shape, out) == 1:
        return True
    mean, var = s.total()
    if not (mean > 0 and var > 0):
        return False
    return abs((q.var() / q.mean() ** 2) / (var / mean**2) - 1.0) <= AGREEMENT


__all__ = ["channel_square_sum", "channel_square_sum_draws", "drawn_square_sum"]
