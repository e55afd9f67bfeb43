"""The law of a sum (mean) of squares over a map's channels at one position whose channels are
correlated Gaussians, for the element-wise chain after it (``+ eps``, Sqrt, the reciprocal:
Keras' UnitNormalization and TensorFlow's ``l2_normalize`` over a Conv's channels, an RMS norm
over channels).

:mod:`.chi_square` matches the sum by a gamma of its mean and variance (Satterthwaite). For
``x ~ N(mu, S)`` over the C channels, ``Q = x^T x = sum_i lambda_i (y_i + delta_i)^2`` (``S =
U diag(lambda) U^T``, ``delta = U^T mu / sqrt(lambda)``, y standard normal) is a weighted sum of
as many chi-squares as S has positive eigenvalues: near 0 its density goes as ``q^(r/2 - 1)``,
r the rank, while the matched gamma's shape is ``(tr S)^2 / (2 tr S^2)`` (for zero mean), much
smaller where the eigenvalues spread. The inverse powers that a normalisation takes live in that
left tail: a 3x3 Conv of one channel into 16 (rank 9, the gamma's shape 2.8) read ``Var
1/sqrt(Q)`` 0.115 against 0.082 (Monte Carlo, 2e6 draws; the Keras sweep's ``unitnorm``,
1.40x).

Here, where the squared tensor is Gaussian (no element-wise chain on its source) and carries a
channel field (:func:`.channel_covariance.covariance`, the same-position covariance), Q's law is
``SAMPLES`` seeded draws of that sum, as an empirical quantile ``z -> Q(Phi(z))``, scaled in
each cell to the cell's predicted mean (a border position of a padded Conv sums fewer taps: its
law is taken as the interior's shape at its own scale). Not modelled: channels that are not
Gaussian (a ReLU's; the gamma is kept), a law of another shape per position class.
"""

from __future__ import annotations

import numpy as np

from .. import special
from ..moments import Elementwise, Moments, Source
from .channel_covariance import covariance
from .chi_square import mean_square_chain
from .context import RuleContext, RuleError
from .elementwise import digest, input_law
from .gaussian import expand
from .table_rows import squared_input

SAMPLES = 1 << 15
MAX_CHANNELS = 256


def _draws(mu: np.ndarray, s: np.ndarray) -> np.ndarray:
    """SAMPLES sorted draws of ``x^T x`` for ``x ~ N(mu, S)`` (seeded: the same for a graph)."""
    lam, u = np.linalg.eigh(s)
    keep = lam > lam.max() * 1e-10
    lam, u = lam[keep], u[:, keep]
    delta = (u.T @ mu) / np.sqrt(lam)
    rest = float(mu @ mu - (u.T @ mu) @ (u.T @ mu))  # the mean outside S's range: fixed
    y = np.random.default_rng(0).standard_normal((SAMPLES, lam.size)) + delta
    return np.sort((y * y) @ lam + max(rest, 0.0))


def _quantile(draws: np.ndarray, scale: np.ndarray) -> Elementwise:
    """``z -> scale Q(Phi(z))``, Q the draws' empirical quantile, ``scale`` broadcasting with
    the tensor."""
    def fn(z):
        i = special.ndtr(np.asarray(z, dtype=np.float64)) * draws.size
        return scale * draws[np.clip(i.astype(np.int64), 0, draws.size - 1)]

    return Elementwise(("QuadraticForm", *digest(draws), *digest(scale)), fn)


def channel_square_sum_law(ctx: RuleContext, s_name: str) -> Source | None:
    """Q's law (module docstring) for ``s_name``, a ReduceSum or ReduceMean over axis 1 of the
    square of a Gaussian map with a channel field; None where it does not apply."""
    graph, known = ctx.graph, ctx.known or {}
    node_id = graph.producer.get(s_name)
    node = graph.node(node_id) if node_id else None
    s = known.get(s_name)
    if node is None or s is None or node.op_type not in ("ReduceSum", "ReduceMean"):
        return None
    x_name = squared_input(graph, node.input[0])
    x, shape, out = known.get(x_name), graph.shape(x_name), graph.shape(s_name)
    if x is None or not shape or len(shape) < 3 or not out or len(out) != len(shape):
        return None
    if any(a != b for i, (a, b) in enumerate(zip(shape, out)) if i != 1) or out[1] != 1:
        return None  # not over the channels alone, keepdims
    c = shape[1]
    if not isinstance(c, int) or c > MAX_CHANNELS or (x.source is not None and x.source.chain):
        return None
    try:
        f = covariance(ctx, x_name)
    except RuleError:
        return None
    if f is None or f.axis != 1 or f.head_axis is not None or np.shape(f.cov) != (c, c):
        return None
    mu = np.broadcast_to(x.values_along(1, c)[0], (c,)).astype(np.float64)
    cov = np.asarray(f.cov, dtype=np.float64)
    if not (np.all(np.isfinite(cov)) and np.all(np.isfinite(mu))) or np.trace(cov) <= 0:
        return None
    draws = _draws(mu, cov)
    if node.op_type == "ReduceMean":
        draws = draws / c
    rank = len(out)
    mean = expand(np.asarray(s.mean, dtype=np.float64), rank)
    if not np.all(np.isfinite(mean)) or np.any(mean <= 0):
        return None
    scale = mean / draws.mean()
    return Source(np.zeros(scale.shape), np.ones(scale.shape), (_quantile(draws, scale),))


@input_law
def channel_square_sum(x: Moments, ctx: RuleContext, name: str) -> Moments:
    """``x`` with Q's law (module docstring) as its source when it is an element-wise chain of
    such a sum of squares (in place of :mod:`.chi_square`'s gamma); ``x`` itself otherwise."""
    if x is None or x.spatial is not None or x.mixture is not None:
        return x
    if x.source is not None and not (x.source.chain and x.source.chain[0].key[0] == "ChiSquare"):
        return x
    found = mean_square_chain(ctx, name)
    if found is None:
        return x
    s_name, chain = found
    if x.source is not None and x.source.chain[len(x.source.chain) - len(chain):] != chain:
        return x
    law = channel_square_sum_law(ctx, s_name)
    if law is None:
        return x
    return Moments(x.mean, x.var, Source(law.mean, law.var, law.chain + tuple(chain)), None,
                   x.tokens, x.rows)


__all__ = ["channel_square_sum", "channel_square_sum_law"]
