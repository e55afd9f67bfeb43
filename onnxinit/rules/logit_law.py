"""The law of a softmax row's logits beyond independent Gaussians with one variance per row,
for the sampled softmax (``softmax.py``, ``key_groups.py``).

* The spread across queries of a row's variance over the keys: ``v(q) = q^T S q`` varies with
  the query (:func:`.covariance_readers.row_variance_spread`), and a softmax's variance is
  concave in its logits' variance once they are large, so each draw scales its deviations by
  ``sqrt(g)``, ``g ~ Gamma(1 / spread, spread)`` (mean 1, squared coefficient of variation
  ``spread``).
* Cosine logits (queries and keys both scaled to unit length: Swin V2's attention): given the
  query, a key's cosine is bounded; for keys isotropic in d dimensions it is ``2 B - 1``,
  ``B ~ Beta((d - 1) / 2, (d - 1) / 2)`` (variance ``1 / d``, excess kurtosis ``-6 / (d + 2)``,
  measured -0.19 on Swin V2-T's first stage, d = 32), a lighter tail than the Gaussian: the
  deviations are drawn from it. Measured there: with Gaussian deviations of the measured
  moments the softmax reads 1.30x its variance, with the measured marginals 1.10x.

Not modelled: the keys' anisotropy in the cosine law (a participation ratio below d), and the
law for the keys' shared components (the key groups' correlated draws stay Gaussian).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import special
from ..strict import fall_back
from .context import RuleContext
from .covariance_readers import row_variance_spread
from .logit_path import WINDOWED, qk_matmul
from .unit_rows import is_unit_rows


def row_scales(rng, count: int, spread: float) -> np.ndarray:
    """``sqrt(g)`` for ``count`` draws of g ~ Gamma(1 / spread, spread) (mean 1, squared
    coefficient of variation ``spread``): the scale of a row's logit deviations when its
    variance differs from query to query (:func:`row_spread`)."""
    return np.sqrt(rng.gamma(1.0 / spread, spread, size=count))


def row_spread(ctx: RuleContext) -> float:
    """The squared coefficient of variation of a row's logit variance across queries for the
    Softmax of ``ctx`` whose logits come from Q K^T (0 where not known): the sampled rows draw
    their deviations' scale from it (a softmax's variance is concave in its logits' variance
    once they are large: averaging over the rows' variances lowers it)."""
    qk = qk_matmul(ctx.graph, ctx.node.input[0], passing=WINDOWED)
    known = ctx.known
    if qk is None or known is None or any(t not in known for t in qk.input[:2]):
        return 0.0
    qctx = replace(ctx.for_node(ctx.graph.producer[qk.output[0]]), known=known)
    try:
        spread = row_variance_spread(qctx, known[qk.input[0]], known[qk.input[1]],
                                     _unit_rows_dim(ctx.graph, qk.input[0]) is not None)
    except (ValueError, IndexError) as exc:
        fall_back(exc)
        return 0.0
    return spread if spread is not None and np.isfinite(spread) and spread > 0 else 0.0


def _unit_rows_dim(graph, name: str) -> int | None:
    """d when ``name`` is rows of d features scaled to unit length (``F.normalize``), moved by
    Transposes (a key matrix transposed for Q K^T), else None."""
    for _ in range(4):
        node_id = graph.producer.get(name)
        if node_id is None:
            return None
        node = graph.node(node_id)
        if node.op_type == "Transpose":
            name = node.input[0]
            continue
        shape = graph.shape(name)
        if node.op_type != "Div" or not shape or not is_unit_rows(RuleContext(node, node_id, graph)):
            return None
        return int(shape[-1])
    return None


def cosine_dim(ctx: RuleContext) -> int | None:
    """d of the unit rows whose cosines the logits of the Softmax of ``ctx`` are (queries and
    keys both scaled to unit length, Swin V2's attention), else None."""
    qk = qk_matmul(ctx.graph, ctx.node.input[0], passing=WINDOWED)
    if qk is None:
        return None
    dims = [_unit_rows_dim(ctx.graph, t) for t in qk.input[:2]]
    return dims[0] if dims[0] is not None and dims[0] == dims[1] and dims[0] > 2 else None


_BETA_GRID = np.linspace(-8.0, 8.0, 2049)  # standard normal deviations the cosine law maps
_COSINE_LAWS: dict[int, np.ndarray] = {}


def cosine_deviates(d: int) -> np.ndarray:
    """The standardized deviations of a cosine between a fixed unit vector and an isotropic
    random one in d dimensions, ``sqrt(d) (2 B - 1)`` with ``B ~ Beta((d - 1) / 2, (d - 1) / 2)``
    (variance 1, excess kurtosis ``-6 / (d + 2)``, bounded by ``sqrt(d)``), at the quantiles of
    ``_BETA_GRID``'s normal deviations: a Gaussian draw z maps to ``interp(z)`` (kept per d)."""
    if d not in _COSINE_LAWS:
        a = (d - 1) / 2.0
        u = np.clip(special.ndtr(_BETA_GRID), 1e-300, 1 - 1e-16)
        _COSINE_LAWS[d] = np.sqrt(d) * (2 * special.betaincinv(a, a, u) - 1)
    return _COSINE_LAWS[d]


def cosine_of(z: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table`` interpolated linearly at the normal deviations z (the uniform ``_BETA_GRID``:
    the cell by arithmetic, 5x faster than ``np.interp``'s search)."""
    t = np.clip(z, _BETA_GRID[0], _BETA_GRID[-1])
    t -= _BETA_GRID[0]
    t *= (len(_BETA_GRID) - 1) / (_BETA_GRID[-1] - _BETA_GRID[0])
    i = np.minimum(t.astype(np.intp), len(_BETA_GRID) - 2)
    t -= i
    low = table[i]
    return np.add(low, t * (table[i + 1] - low), out=low)


def draw_scales(spread: float):
    """The per-draw scales of :func:`row_scales` as ``correlated_rows`` takes them."""
    return None if spread <= 0 else (lambda rng, count: row_scales(rng, count, spread))


__all__ = ["cosine_deviates", "cosine_dim", "cosine_of", "draw_scales", "row_scales",
           "row_spread"]
