"""A row shifted by its own maximum, ``d = x - max_A x``, and the sum ``S = sum_A exp(d)``.

TensorFlow's ``reduce_logsumexp`` (and hand-written stable log-sum-exps) subtract the row's
maximum over the reduced axes A before the exponential. The shift is a function of the row:

    d_k = x_k - M <= 0,  M = max_j x_j  (one element of each row is exactly 0)
    Var d = Var x + Var M - 2 Cov(x_k, M)
    S = sum_k exp(d_k) = 1 + sum_{k != argmax} exp(x_k - M),  1 <= S <= K

The binary rule took x and M as independent (``Var x + Var M``: d 1.08x high, exp(d) 1.46x
high), and the sum's terms, which share M, as independent (S 0.36x low, log S 0.32x low on a
Dense ReLU's 32 positions).

Here the rows are drawn: n rows of x from its law (:func:`.elementwise.base_source`: a Gaussian
and its element-wise chain, each element independent with its own statistics, every reduced
axis drawn in full), d and S evaluated on them, ``E = mean``, ``Var = var`` over the draws and
the cells (one law for the tensor: the total). The law goes on as the quantile function of the
draws, ``z -> Q(Phi(z))`` with z ~ N(0, 1), so that an element-wise op after it (``exp(d)``,
``log S``) integrates the drawn law, not a Gaussian of its moments. Refused (the other rules
take the node) when x carries a token field or position classes (its elements are not
independent), the reduction includes the batch axis, or fewer than ``MIN_ROWS`` rows (or
``MIN_POOLED`` rows times the cells a sum is pooled over) fit in ``MAX_DRAWS`` elements.
"""

from __future__ import annotations

import numpy as np

from .. import special
from ..moments import Elementwise, Moments, Source
from .context import RuleContext, RuleError
from .elementwise import base_source, digest
from .gaussian import expand
from .reduce_axes import reduced_axes
from .shift_root import producer, root

MAX_DRAWS = 1 << 20  # elements drawn for one node, at most
MAX_ROWS = 1 << 14  # rows drawn, at most
MIN_ROWS = 256  # rows drawn, at least (else refused)
MIN_POOLED = 1 << 14  # rows times the cells one sum pools over, at least (else refused)
QUANTILES = 1024  # points of the law's quantile function


def shifted_row(graph, tensor: str) -> tuple[str, str] | None:
    """(x, the ReduceMax's node id) when ``tensor`` is ``Sub(x, s)`` with ``root(s)`` a
    ReduceMax of ``root(x)`` (:func:`.shift_root.root`), else None."""
    _, sub = producer(graph, tensor)
    if sub is None or sub.op_type != "Sub" or len(sub.input) != 2:
        return None
    x = sub.input[0]
    max_id, red = producer(graph, root(graph, sub.input[1]))
    if red is None or red.op_type != "ReduceMax" or root(graph, red.input[0]) != root(graph, x):
        return None
    return x, max_id


def _row_axes(ctx: RuleContext, sub_out: str) -> tuple[str, tuple, tuple[int, ...]] | None:
    """(x, x's shape, the reduced axes) of the shifted row ``sub_out``, else None."""
    graph = ctx.graph
    found = shifted_row(graph, sub_out)
    if found is None:
        return None
    x, max_id = found
    _, sub = producer(graph, sub_out)
    shape, s_shape = graph.shape(x), graph.shape(sub.input[1])
    if shape is None or s_shape is None or graph.shape(sub_out) != shape:
        return None
    rank = len(shape)
    try:
        axes = reduced_axes(ctx.for_node(max_id), rank)
    except RuleError:
        return None
    if not axes or 0 in axes or len(s_shape) > rank:
        return None
    s_full = (1,) * (rank - len(s_shape)) + tuple(s_shape)
    if any(s_full[a] != 1 for a in axes):
        return None
    return x, tuple(shape), axes


def _shifted_draws(ctx: RuleContext, x: str, shape, axes) -> np.ndarray | None:
    """``[n, *grid]`` draws of ``d = x - max_axes x``, grid the cells of x's statistics with
    every reduced axis in full; None where refused (module docstring)."""
    m = ctx.known.get(x) if ctx.known is not None else None
    if m is None or m.tokens is not None or m.spatial is not None or m.rows is not None:
        return None
    rank = len(shape)
    src = base_source(m, rank)
    mean, var = expand(src.mean, rank), expand(src.var, rank)
    grid = list(np.broadcast_shapes(mean.shape, var.shape))
    if len(grid) != rank or grid[0] != 1:
        return None
    for a in axes:
        grid[a] = shape[a]
    cells = max(1, int(np.prod(grid)))
    kept = cells // max(1, int(np.prod([shape[a] for a in axes])))
    n = min(MAX_ROWS, MAX_DRAWS // cells)
    if n < MIN_ROWS or n * kept < MIN_POOLED:
        return None
    with np.errstate(all="ignore"):
        values = Source(mean, var, src.chain).sample(ctx.rng(), (n, *grid))
        d = values - values.max(axis=tuple(a + 1 for a in axes), keepdims=True)
    return d if np.all(np.isfinite(d)) else None


def _law(values: np.ndarray) -> Moments:
    """Scalar Moments of the pooled ``values`` with their quantile function as the source."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    probs = (np.arange(QUANTILES) + 0.5) / QUANTILES
    q = np.quantile(flat, probs)

    def fn(z):
        return np.interp(special.ndtr(np.asarray(z, dtype=np.float64)), probs, q)

    law = Elementwise(("RowQuantiles", *digest(q)), fn)
    mean, var = float(flat.mean()), float(flat.var())
    return Moments(np.float64(mean), np.float64(var),
                   Source(np.float64(0.0), np.float64(1.0), (law,)))


def max_shifted(ctx: RuleContext) -> Moments | None:
    """The Sub ``x - max_A x`` (module docstring), else None."""
    if ctx.node.op_type != "Sub" or not ctx.node.output[0]:
        return None
    found = _row_axes(ctx, ctx.node.output[0])
    if found is None:
        return None
    d = _shifted_draws(ctx, *found)
    return None if d is None else _law(d)


def shifted_exp_sum(ctx: RuleContext) -> Moments | None:
    """ReduceSum over A of ``exp(x - max_A x)`` (module docstring), else None."""
    node, graph = ctx.node, ctx.graph
    if node.op_type != "ReduceSum" or not node.input:
        return None
    _, exp = producer(graph, node.input[0])
    if exp is None or exp.op_type != "Exp":
        return None
    found = _row_axes(ctx, exp.input[0])
    if found is None:
        return None
    x, shape, axes = found
    try:
        if reduced_axes(ctx, len(shape)) != axes:
            return None
    except RuleError:
        return None
    d = _shifted_draws(ctx, x, shape, axes)
    if d is None:
        return None
    return _law(np.exp(d).sum(axis=tuple(a + 1 for a in axes)))


__all__ = ["max_shifted", "shifted_exp_sum", "shifted_row"]
