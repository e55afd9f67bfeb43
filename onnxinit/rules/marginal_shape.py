"""The marginal shape of a row's elements where it is not a Gaussian's: rows gathered from a
constant table (an embedding), and the square of such elements.

A gathered row's element takes the values of its table column over the ids, so its skewness
and excess kurtosis are the column's: Keras initialises embeddings uniform on ``(-0.05,
0.05)``, excess kurtosis -1.2. :class:`.pair_algebra.Pairs` carries them (a sum of independent
signals pools them as cumulants, a dense layer turns them into energy excess), and the square
of an element reads them: ``Var x^2 = (2 + k) nu^2 + 4 mu^2 nu + 4 mu s nu^(3/2)`` for
skewness s and excess kurtosis k, where the rules take x Gaussian (``k = s = 0``; not where x
is an element-wise chain of a Gaussian, whose square the rule integrates with its own shape). A Keras
text encoder's first LayerNorm (embedding + position embedding + attention) squares such
elements: its squared deviations read 1.24x of onnxruntime's variance as Gaussians. Only the
elements' own shape is added here; a row's shared scale (its energy excess, which also shows
in the marginal kurtosis) is :func:`.shared_row_pairs.squared_row`'s. A row with a normalised
part (a negative energy excess) is left Gaussian: the elements' shape changes each square's
variance but not the normalised part's fixed energy, a cancellation the mean over the row
does not see from the squares' variance (adding it there read the next norm's variance
statistic 0.83x, and cancelling it in the excess 1.13-1.48x).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..moments import Moments
from .context import RuleContext
from .pair_algebra import NONE, Pairs, concentration, scale_kurtosis

_MAX_ROWS = 4096  # table rows read for the column moments (evenly spaced beyond)


def table_pairs(ctx: RuleContext) -> Pairs | None:
    """Pairs of rows gathered (axis 0) from a constant 2-D float table: the columns' pooled
    skewness and excess kurtosis (each column standardised), no correlation; None when the
    node is not such a Gather or the table is Gaussian-shaped (within 0.05)."""
    node = ctx.node
    if node.op_type != "Gather" or len(node.input) != 2 or ctx.attr("axis", 0) != 0:
        return None
    table = ctx.graph.value(node.input[0])
    if table is None or np.ndim(table) != 2 or not np.issubdtype(np.asarray(table).dtype,
                                                                  np.floating):
        return None
    t = np.asarray(table)
    if t.shape[0] < 8:
        return None
    if t.shape[0] > _MAX_ROWS:
        t = t[np.linspace(0, t.shape[0] - 1, _MAX_ROWS).astype(np.int64)]
    t = np.asarray(t, np.float64)
    sd = t.std(axis=0)
    keep = sd > 0
    if not np.any(keep):
        return None
    z = (t[:, keep] - t[:, keep].mean(axis=0)) / sd[keep]
    skew, kurtosis = float(np.mean(z**3)), float(np.mean(z**4) - 3.0)
    if not (np.isfinite(skew) and np.isfinite(kurtosis)) or max(abs(skew), abs(kurtosis)) < 0.05:
        return None
    return replace(NONE, skew=skew, kurtosis=kurtosis)


def _is_square(ctx: RuleContext) -> bool:
    node = ctx.node
    if node.op_type == "Mul":
        return len(node.input) == 2 and node.input[0] == node.input[1]
    if node.op_type == "Pow" and len(node.input) > 1:
        e = ctx.const(1)
        return e is not None and np.size(e) == 1 and float(np.ravel(e)[0]) == 2.0
    return False


def shaped_square(ctx: RuleContext, x: Moments, xp: Pairs, out: Moments) -> Moments | None:
    """``x^2``'s moments with the variance of x's own skewness and kurtosis added
    (module docstring; the part of the kurtosis that the row's shared scale makes is left
    out); None when the node is not a square or x is Gaussian-shaped."""
    if not _is_square(ctx) or xp.excess < 0:
        return None  # a (partly) normalised row: its fixed energy takes the elements' shape
    cells = x.spatial.cells if x.spatial is not None else x
    if cells.source is not None and cells.source.chain:
        return None  # the rule squared x's own law (a chain of a Gaussian), shape included
    shape = ctx.graph.shape(ctx.node.input[0])
    d = int(shape[-1]) if shape and shape[-1] else 0
    own = xp.kurtosis - scale_kurtosis(xp.excess, concentration(xp.squared, d))
    if own == 0.0 and xp.skew == 0.0:
        return None
    mean, var = (np.asarray(a, np.float64) for a in (x.mean, x.var))
    extra = own * var * var + 4.0 * mean * xp.skew * np.maximum(var, 0.0) ** 1.5
    try:
        new = np.maximum(np.asarray(out.var, np.float64) + extra, 0.0)
    except ValueError:
        return None
    if not np.all(np.isfinite(new)):
        return None
    return replace(out, var=new, source=None, mixture=None)


__all__ = ["shaped_square", "table_pairs"]
