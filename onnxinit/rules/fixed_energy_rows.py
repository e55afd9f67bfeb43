"""Row statistics of a row of fixed energy: a LayerNorm written out (the TorchScript exporter
at opset < 17: ``n = (x - mean x) / sqrt(mean((x - mean x)^2) + eps)``; an RMSNorm's ``x *
rsqrt(mean(x^2) + eps)``) times a gamma and plus a beta that are the same for every feature
(their values at initialization), and a residual sum ``s = h + f`` of such an h.

A post-norm transformer (BERT, DistilBERT, ELECTRA, ALBERT) adds a small sublayer output f
(variance ~1e-4 of h's) to the previous LayerNorm's output h and normalises the sum; written
out, the norm takes ``v = mean_d c_d^2`` of the centred ``c = s - mean(s)``. The Pairs' energy
law (:mod:`.pair_algebra`: ``Var S = 2 tr C^2 + excess (tr C)^2``) reads ``Var S`` there as the
small remainder of two large terms that cancel for h (its ``excess = -2 q``): each node between
the norm and the mean square re-estimates ``q`` from its own moments, and a relative error of
1e-4 in the cancellation made v 40-1400x the measured variance (DistilBERT, ELECTRA at opset
14). Here the fixed part is carried exactly. With ``h' = P h`` (``P`` the centring; ``P h = h``
for a centred h) and ``f' = P f``, ``D v = |h'|^2 + 2 h'.f' + |f'|^2``, h and f independent
(f's dependence on h through the sublayer is second order for a small f):

* ``Var[D v] = Var|h'|^2 + 4 Var[h'.f'] + Var|f'|^2 + 8 sum_d mu_h'd mu_f'd nu_fd``, with
  ``Var[h'.f'] = tr(C_h C_f) + mu_h'^T C_f mu_h' + mu_f'^T C_h mu_f'``: each term's diagonal
  plus its off-diagonal sum read from the mean correlations (``signed``) of the two rows,
  ``sum_{d != e} a_d a_e rho_de = signed ((sum a)^2 - sum a^2)``; ``Var|f'|^2 = 2 tr C_f^2 +
  excess_f (tr C_f)^2 + 4 sum mu_f'^2 nu_f`` (f's Pairs); ``Var|h'|^2`` is eps's share: the
  energy ``D s g(s)^2`` (s the norm's mean square, g its factor) moves by ``rho d log s``,
  ``rho = eps / (s + eps)``, so ``Var|h'|^2 = E[rho^2] (Var s / E[s]^2) |h'|^4`` to first order;
* ``E[D v] = |h'|^2 + sum (nu_f + mu_f'^2) - D Var(mean f) + 2 mu_h'.mu_f'``, ``|h'|^2 = D
  gamma^2 s g(s)^2`` per row at the row's ``E[s]`` (a class token's row differs from the
  patches'), ``Var(mean f)`` the row mean's predicted variance (that of ``mean(s)``: h's rows
  sum to a constant).

f = 0 (the mean square of a LayerNorm's output: CLIP's first block reads the pre-LayerNorm's)
is the same with the f terms 0. Without the centring (an RMSNorm-type mean square of ``s``
itself) the same holds with ``P = 1`` where ``|h|^2`` is fixed: n centred (``|h|^2 = gamma^2
|n|^2 + D beta^2``) or beta 0. The norm must normalise (:func:`.row_norm.normalisation_degree`
at most ``_KEPT``); a gamma that differs between features, or any other h, leaves the Pairs' law
in charge. Only one Add deep: see :func:`_parts`. Where no term is such a row, a term that is
a dense layer of one (an embedding projection) takes its energy's mean and variance from
:mod:`.projected_norm_energy` in place of the fixed ``|h'|^2``.

The row mean of such an h with n centred is the shift ``beta`` exactly (variance 0): the Pairs'
``signed`` for centred rows makes it 0 only at the variances it was set at, and a field's ``1^T
S 1`` of a rescaled ``P S P`` not at all (CLIP: 1.2e-6 and 1.4e-5 against 1.9e-16 measured, the
float32 rounding of a sum that is 0).
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np

from ..moments import Moments
from .centred_rows import centred_input
from .context import RuleContext
from .pair_algebra import NONE, Pairs, independent_sum
from .row_norm import normalisation_degree, row_scale, without_casts
from .projected_norm_energy import projected_energy

_KEPT = 1e-3  # E[rho^2] of the norm above which its rows' energy is not fixed (eps dominates)


def _producer(ctx: RuleContext, name: str):
    node_id = ctx.graph.producer.get(name)
    return (None, None) if not node_id else (node_id, ctx.graph.node(node_id))


def _squared(ctx: RuleContext, name: str) -> str | None:
    """x when ``name`` is ``Pow(x, 2)`` or ``x * x``, else None."""
    node_id, node = _producer(ctx, name)
    if node is None or len(node.input) != 2:
        return None
    if node.op_type == "Mul":
        return node.input[0] if node.input[0] == node.input[1] else None
    if node.op_type != "Pow":
        return None
    e = ctx.for_node(node_id).const(1)
    return node.input[0] if e is not None and np.size(e) == 1 and float(np.ravel(e)[0]) == 2.0 \
        else None


def _uniform(ctx: RuleContext, node_id: str, node) -> tuple[int, float] | None:
    """(the signal input's index, the constant) when the node is a Mul/Add/Sub of a signal by
    a constant whose elements are all equal, else None."""
    sub = ctx.for_node(node_id)
    for i in (0, 1):
        c = sub.const(i)
        if c is not None and np.size(c) >= 1 and ctx.graph.is_signal(node.input[1 - i]):
            c = np.asarray(c, np.float64)
            if np.all(c == c.flat[0]) and not (node.op_type == "Sub" and i == 0):
                return 1 - i, float(c.flat[0])
    return None


class Norm(NamedTuple):
    """A row ``n * g + b`` of a normalised n (:func:`_normalised_row`)."""

    centred: bool  # n is a LayerNorm's (its rows sum to 0), not an RMSNorm's
    shift: float  # the row's mean when centred (b, through the gammas after it)
    relvar: float  # Var|n|^2 / E[|n|^2]^2: E[rho^2] times the mean square's relative variance
    energy: np.ndarray  # E|n * g|^2 / D per row of n's mean square (``s g(s)^2``, at E[s])
    source: str = ""  # the row normalised (t of ``t - mean(t)``)
    scale: float = 1.0  # the gammas' product
    g: object = None  # the norm's factor as a function of the mean square


def _normalised_row(ctx: RuleContext, name: str) -> Norm | None:
    """``name`` as ``n * g + b`` (each optional, repeated, g and b the same for every feature;
    an inference-mode Dropout passes) with n a row normalised by its own root mean square,
    written out: a Mul/Div of x by a function of ``mean(x^2)`` (centred when x is ``t -
    mean(t)``) that normalises (:func:`.row_norm.normalisation_degree` at most ``_KEPT``); else
    None. Its energy ``D s g(s)^2`` moves by ``rho d log s`` (``rho = eps / (s + eps)`` for a
    LayerNorm), so ``relvar = E[rho^2] Var s / E[s]^2`` to first order."""
    scale, shift = 1.0, 0.0
    for _ in range(6):
        node_id, node = _producer(ctx, without_casts(ctx, name))
        if node is None:
            return None
        if node.op_type == "Dropout" and not ctx.settings.dropout:  # the identity
            name = node.input[0]
            continue
        if node.op_type in ("Mul", "Add", "Sub"):
            u = _uniform(ctx, node_id, node)
            if u is not None:
                if node.op_type == "Mul":
                    scale *= u[1]
                else:
                    shift += scale * (u[1] if node.op_type == "Add" else -u[1])
                name = node.input[u[0]]
                continue
        if node.op_type not in ("Mul", "Div"):
            return None
        sub = replace(ctx.for_node(node_id), known=ctx.known)
        found = row_scale(sub)
        kept = normalisation_degree(sub)
        if found is None or kept is None or kept > _KEPT:
            return None
        s = (ctx.known or {}).get(_mean_square(ctx, node.input[1 - found[0]]) or "")
        if s is None:
            return None
        mean, var = np.broadcast_arrays(np.asarray(s.mean, np.float64),
                                        np.asarray(s.var, np.float64))
        rel = var[mean > 0] / mean[mean > 0] ** 2
        x_id, _ = _producer(ctx, without_casts(ctx, node.input[found[0]]))
        t = centred_input(ctx.for_node(x_id)) if x_id is not None else None
        with np.errstate(all="ignore"):
            energy = scale * scale * mean * np.asarray(found[1](mean), np.float64) ** 2
        return Norm(t is not None, shift, kept * float(np.mean(rel)) if rel.size else 0.0,
                    energy, t or "", scale, found[1])
    return None


def _mean_square(ctx: RuleContext, name: str) -> str | None:
    """The ReduceMean that ``name`` (a norm's scale: ``sqrt(v + eps)``) is a function of."""
    for _ in range(6):
        node_id, node = _producer(ctx, without_casts(ctx, name))
        if node is None:
            return None
        if node.op_type == "ReduceMean":
            return name
        signals = [n for n in node.input if n and ctx.graph.is_signal(n)]
        if len(signals) != 1:
            return None
        name = signals[0]
    return None


def fixed_row_mean(ctx: RuleContext, out: Moments) -> Moments | None:
    """A ReduceMean over the last axis of a LayerNorm's rows times and plus constants the same
    for every feature: the rows sum to 0, so the mean is the constant shift (variance 0; the
    Pairs' ``signed`` makes it 0 only at the variances it was set at). None otherwise (of a
    residual sum of such rows: :mod:`.shifted_row_mean`)."""
    if ctx.node.op_type != "ReduceMean":
        return None
    norm = _normalised_row(ctx, ctx.node.input[0])
    if norm is None or not norm.centred:
        return None
    return replace(out, mean=np.full(np.shape(out.mean), norm.shift),
                   var=np.zeros(np.shape(out.var)), source=None, mixture=None, tokens=None)


def _rows(m: Moments, shape) -> tuple[np.ndarray, np.ndarray]:
    """(mean, var) as [rows, D] float64 arrays over ``shape``."""
    mean, var = (np.broadcast_to(np.asarray(a, np.float64), shape).reshape(-1, shape[-1])
                 for a in (m.mean, m.var))
    return mean, var


def _off(signed: float, a: np.ndarray) -> np.ndarray:
    """Per row, ``signed ((sum a)^2 - sum a^2)``: the off-diagonal sum of ``a_d a_e rho_de``."""
    return signed * (a.sum(axis=1) ** 2 - (a * a).sum(axis=1))


def fixed_energy_mean_square(ctx: RuleContext, out: Moments, table: dict,
                             d: int) -> Moments | None:
    """The node's (a mean over the last axis of ``c^2``) Moments when c is a residual sum
    ``h + f`` of a fixed-energy row h, or such a sum centred (module docstring); else None."""
    if ctx.node.op_type != "ReduceMean":
        return None
    c = _squared(ctx, ctx.node.input[0])
    if c is None:
        return None
    s, mean_name = without_casts(ctx, c), None
    sub_id, sub = _producer(ctx, s)
    if sub is not None and sub.op_type == "Sub" and centred_input(ctx.for_node(sub_id)):
        s, mean_name = centred_input(ctx.for_node(sub_id)), sub.input[1]
    shape = ctx.graph.shape(s)
    if not shape or shape[-1] != d or d < 2:
        return None
    known = ctx.known or {}
    row_mean = known.get(mean_name) if mean_name is not None else None
    if mean_name is not None and row_mean is None:
        return None
    terms = {n: _term(ctx, known, n) for _, others in _parts(ctx, s, constants=True)
             for n in others}
    parts = [p for p in _parts(ctx, s, constants=True)
             if p[0] in known and all(terms[n] is not None for n in p[1])]
    for (h_name, others), projected in [(p, False) for p in parts] + [(p, True) for p in parts]:
        norm = None if projected else _normalised_row(ctx, h_name)
        if norm is not None and (norm.centred or (mean_name is None and norm.shift == 0.0)):
            # |P h|^2 is fixed for centred n, |h|^2 for centred n or no shift
            energy = _row_energy(norm, shape, d, centred=mean_name is not None)
            spread = None if energy is None else norm.relvar * energy**2
        elif projected:  # then a dense layer of one: its energy a ratio of quadratic forms
            found = projected_energy(ctx, h_name, mean_name is not None, tuple(shape),
                                     _normalised_row)
            if found is None:
                continue
            energy, spread = found
        else:
            continue
        h = known[h_name]
        f, fp = _rest(known[s], h, [(terms[n], table.get(n) or NONE) for n in others])
        return _moments(out, h, table.get(h_name) or NONE, spread, energy, f, fp,
                        row_mean, tuple(shape), d, bool(ctx.attr("keepdims", 1)))
    return None


def _parts(ctx: RuleContext, s: str, depth: int = 1,
           constants: bool = False) -> list[tuple[str, list[str]]]:
    """(h, the other terms) for each way of reading ``s`` as a sum ``h + f_1 + f_2 ...`` of
    nested Adds up to ``depth`` (``s`` itself, h = s, first). One Add: deeper, a pre-norm
    stream (CLIP's second block: the embedding plus the first block's attention and MLP
    outputs, whose MLP reads h) is far from h + an independent f: 11.5x the measured variance
    against the Pairs' 6.6x. With ``constants``, an Add of a signal and a constant (a
    positional table added to a normalised patch embedding: AIMv2) is a term too, one that
    does not count towards the depth (a constant reads nothing), and the Adds are read through
    float Casts."""
    found = [(s, [])]
    _, add = _producer(ctx, s)
    if add is None or add.op_type != "Add" or len(add.input) != 2:
        return found
    signal = [ctx.graph.is_signal(n) for n in add.input]
    term = (lambda n: without_casts(ctx, n)) if constants else (lambda n: n)
    if depth and all(signal):
        for i in (0, 1):
            found += [(h, others + [add.input[1 - i]])
                      for h, others in _parts(ctx, term(add.input[i]), depth - 1, constants)]
    elif constants and sum(signal) == 1 and ctx.graph.value(add.input[signal[0]]) is not None:
        i = 0 if signal[0] else 1  # the signal's index; the other input is a constant
        found += [(h, others + [add.input[1 - i]])
                  for h, others in _parts(ctx, term(add.input[i]), depth, constants)]
    return found


def _term(ctx: RuleContext, known: dict, name: str) -> Moments | None:
    """A term's Moments: a signal's propagated ones, a constant's values (variance 0)."""
    if name in known:
        return known[name]
    value = ctx.graph.value(name) if not ctx.graph.is_signal(name) else None
    if value is None:
        return None
    value = np.asarray(value, np.float64)
    return Moments(value, np.zeros_like(value))


def _rest(s: Moments, h: Moments, others: list) -> tuple[Moments | None, Pairs]:
    """f = s - h (its moments: s's less h's, the terms independent) and its Pairs (the other
    terms' summed, :func:`.pair_algebra.independent_sum`)."""
    if not others:
        return None, NONE
    pairs, m = others[0][1], others[0][0]
    for om, op in others[1:]:
        pairs = independent_sum(pairs, m, op, om)
        m = Moments(np.asarray(m.mean) + np.asarray(om.mean),
                    np.asarray(m.var) + np.asarray(om.var))
    if len(others) == 1:
        return m, pairs
    mean, var = np.broadcast_arrays(np.asarray(s.mean, np.float64) - np.asarray(h.mean),
                                    np.asarray(s.var, np.float64) - np.asarray(h.var))
    return Moments(mean, np.maximum(var, 0.0)), pairs


def _row_energy(norm: Norm, shape, d: int, centred: bool) -> np.ndarray | None:
    """|h'|^2 per row (``D (s g(s)^2 + shift^2)``, the shift's part only uncentred), None where
    the mean square's rows do not match h's."""
    try:
        e = np.broadcast_to(norm.energy, tuple(shape[:-1]) + (1,)).reshape(-1)
    except ValueError:
        return None
    e = d * (e + (0.0 if centred else norm.shift**2))
    return e if np.all(np.isfinite(e)) else None


def _moments(out: Moments, h: Moments, hp: Pairs, spread, energy: np.ndarray | None,
             f: Moments | None, fp: Pairs, row_mean: Moments | None, shape: tuple, d: int,
             keepdims: bool) -> Moments | None:
    mu_h, nu_h = _rows(h, shape)
    mu_f, nu_f = _rows(f, shape) if f is not None else (np.zeros_like(mu_h),) * 2
    if row_mean is not None:  # P h, P f: the rows' means taken out
        mu_h = mu_h - mu_h.mean(axis=1, keepdims=True)
        mu_f = mu_f - mu_f.mean(axis=1, keepdims=True)
        var_mean_f = float(np.mean(row_mean.var)) if f is not None else 0.0
    else:
        var_mean_f = 0.0
    energy_h = energy if energy is not None else float(np.mean(nu_h + mu_h * mu_h)) * d
    sd_h, sd_f = np.sqrt(nu_h), np.sqrt(nu_f)
    cross = ((nu_h * nu_f).sum(axis=1) + hp.signed * fp.signed * (
        (sd_h * sd_f).sum(axis=1) ** 2 - (nu_h * nu_f).sum(axis=1))
        + (mu_h * mu_h * nu_f).sum(axis=1) + _off(fp.signed, mu_h * sd_f)
        + (mu_f * mu_f * nu_h).sum(axis=1) + _off(hp.signed, mu_f * sd_h))
    tr, tr2 = nu_f.sum(axis=1), (nu_f * nu_f).sum(axis=1)
    energy_f = (2 * (tr2 + fp.squared * (tr * tr - tr2)) + fp.excess * tr * tr
                + 4 * (1 + fp.mean_cross) * (mu_f * mu_f * nu_f).sum(axis=1))
    var = ((0.0 if spread is None else spread) + 4 * cross + np.maximum(energy_f, 0.0)
           + 8 * (mu_h * mu_f * nu_f).sum(axis=1)) / d**2
    mean = (energy_h + (nu_f + mu_f * mu_f).sum(axis=1) - d * var_mean_f
            + 2 * (mu_h * mu_f).sum(axis=1)) / d
    if not (np.all(np.isfinite(var)) and np.all(np.isfinite(mean))):
        return None
    rows = shape[:-1] + (1,) if keepdims else shape[:-1]
    return replace(out, mean=mean.reshape(rows), var=np.maximum(var, 0.0).reshape(rows),
                   source=None, mixture=None, tokens=None)


def squares_normalised_term(ctx: RuleContext) -> bool:
    """The node (ReduceMean/ReduceSum) reduces the squares of a row (centred or not) that is a
    normalised row or a sum with one among its terms (nested Adds, three deep): its energy is
    not a Gaussian's, so a covariance field's Gaussian law of the squares
    (:func:`.correlated_means.field_sum_factor`) does not hold for it (CLIP's second block at
    opset 14, 6.5x with the field carried past the class token's Concat); the Pairs do."""
    c = _squared(ctx, ctx.node.input[0]) if ctx.node.input else None
    if c is None:
        return False
    s = without_casts(ctx, c)
    sub_id, sub = _producer(ctx, s)
    if sub is not None and sub.op_type == "Sub" and centred_input(ctx.for_node(sub_id)):
        s = centred_input(ctx.for_node(sub_id))
    return any(_normalised_row(ctx, h) is not None for h, _ in _parts(ctx, s, depth=3))


def fixed_row_statistic(ctx: RuleContext, out: Moments, table: dict, d: int) -> Moments | None:
    """:func:`fixed_row_mean` or :func:`fixed_energy_mean_square`, whichever applies."""
    found = fixed_row_mean(ctx, out)
    return found if found is not None else fixed_energy_mean_square(ctx, out, table, d)


normalised_row, residual_parts, term_moments = _normalised_row, _parts, _term  # shifted_row_mean

__all__ = ["fixed_energy_mean_square", "fixed_row_mean", "fixed_row_statistic",
           "normalised_row", "residual_parts", "squares_normalised_term", "term_moments"]
