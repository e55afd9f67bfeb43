"""The row mean of a residual sum ``s = h + f`` whose h is a LayerNorm's output written out
(TorchScript below opset 17: the next norm's ``ReduceMean(s)``): h's rows sum to its shift
exactly, so only f's row mean varies (:func:`shifted_row_mean`). The rows of h alone:
:func:`.fixed_energy_rows.fixed_row_mean`."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..moments import Moments
from .channel_covariance import row_covariance
from .context import RuleContext
from .fixed_energy_rows import normalised_row, residual_parts, term_moments
from .pair_algebra import NONE, independent_sum, row_mean_factor


def _row_sum(a, shape: tuple) -> np.ndarray:
    """``a`` (broadcasting to ``shape``) summed over the last axis, keepdims, still compact."""
    a = np.asarray(a, np.float64)
    a = a.reshape((1,) * (len(shape) - a.ndim) + a.shape)
    return a.sum(axis=-1, keepdims=True) * (shape[-1] if a.shape[-1] == 1 else 1)


def _term_row_mean_var(ctx: RuleContext, name: str, m: Moments, pairs, shape: tuple):
    """The variance of one term's row mean: ``1^T S 1 / D^2`` from its covariance field over
    the features where it carries one and its rows share their means
    (:func:`.channel_covariance.row_covariance`; exact for Gaussian rows: a post-norm dense
    sublayer 0.98-1.00x), else its variances' sum times the Pairs' row-mean factor. The field
    pools the rows: where their means differ (a position table before the norm), its part
    within a row is not the pooled covariance less the means' spread, each row normalised by
    its own scale (1.11-1.18x, the Pairs 0.95-1.03x in tests/rules/test_shifted_row_mean.py)."""
    d = shape[-1]
    field = row_covariance(ctx, name) if ctx.graph.is_signal(name) else None
    means = _row_sum(m.mean, shape) / d
    spread = float(np.var(np.broadcast_to(means, tuple(shape[:-1]) + (1,))))
    if (field is not None and field.head_axis is None and field.axis == len(shape) - 1
            and field.cov.shape == (d, d) and spread <= 1e-9 * abs(float(np.sum(field.cov)))):
        return float(np.sum(field.cov)) / d**2
    return _row_sum(m.var, shape) / d**2 * row_mean_factor(pairs, m, d)


def shifted_row_mean(ctx: RuleContext, out: Moments, table: dict, d: int) -> Moments | None:
    """The row mean of ``s = h + f`` (f one term or two, independent: a pre-norm block's
    attention and MLP outputs; signals or constants) with h a LayerNorm's rows times and plus
    constants the same for every feature: h's row mean is its shift exactly, so ``mean(s) =
    shift + mean(f)``,

        E = shift + (1/D) sum_d E f_d,   Var = Var(mean f) = 1^T C_f 1 / D^2

    (h and f need not be independent; the two terms of f are taken as independent). The
    variance of f's row mean is ``1^T S 1 / D^2`` where f carries a covariance field over its
    features, else its Pairs' (their mean correlation ``signed``: right on average over the
    weights, not for the weights at hand, :mod:`.row_mean_field`). The rule on s read h's
    D-fold cancelling variance beside f's small one: SegFormer's ``layernorm_after`` mean at
    opset 14 12-118x the measured, s's field 1.2-1.5x where h has per-token means."""
    s = ctx.node.input[0]
    shape = ctx.graph.shape(s)
    known = ctx.known or {}
    if ctx.node.op_type != "ReduceMean" or not shape or shape[-1] != d or d < 2 \
            or s not in known:
        return None
    for h_name, others in residual_parts(ctx, s, depth=2, constants=True)[1:]:
        norm = normalised_row(ctx, h_name)
        terms = [term_moments(ctx, known, n) for n in others]
        if norm is None or not norm.centred or None in terms:
            continue
        f = terms[0]
        for m in terms[1:]:  # the other terms, independent
            f = Moments(*np.broadcast_arrays(np.asarray(f.mean) + np.asarray(m.mean),
                                             np.asarray(f.var) + np.asarray(m.var)))
        var = sum(_term_row_mean_var(ctx, n, m, table.get(n) or NONE, tuple(shape))
                  for n, m in zip(others, terms))
        mean = norm.shift + _row_sum(f.mean, tuple(shape)) / d
        mean, var = np.broadcast_arrays(mean, np.asarray(var, np.float64))
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
            return None
        if not ctx.attr("keepdims", 1):
            mean, var = mean[..., 0], var[..., 0]
        return replace(out, mean=np.array(mean), var=np.array(var), source=None, mixture=None, tokens=None)
    return None


__all__ = ["shifted_row_mean"]
