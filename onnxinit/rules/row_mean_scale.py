"""A row's mean times a function of the same row's variance: the ``-mean * (gamma * rstd)``
term of a LayerNorm written out as ``x * s - mean * s`` (tf2onnx's Keras LayerNormalization,
``s = gamma / sqrt(var + eps)``), ``y = c h(m) g(v)`` with

``m = mean_f x_f``, ``v = mean_f (x_f - m)^2`` over one axis of D features (keepdims), ``h`` and
``g`` element-wise chains (Neg; ``+ eps``, Sqrt, the reciprocal) and ``c`` a constant.

Taken as independent factors, ``Var[m s]`` reads the spread of ``m`` and of ``s`` twice: for a
row of non-negative features (a ReLU map's channels at one position) a row of larger scale has
both the larger mean and the smaller ``s``, and ``m / sqrt(v)`` depends on the row's shape only
(a ratio of two statistics of one row, scale-invariant but for eps): 4.8x high.

Their joint law, the delta method about the features' law, the features of a row taken as
independent with per-feature moments ``mu_f``, ``sigma_f^2``, third and fourth central moments
``k3_f``, ``k4_f`` (from the input's source chain of a Gaussian, else Gaussian: ``k3 = 0``,
``k4 = 3 sigma^4``), ``d_f = mu_f - mu``, ``mu = mean_f mu_f``:

- ``E[m] = mu``, ``Var[m] = mean_f sigma_f^2 / D``
- ``E[v] = V = mean_f (sigma_f^2 + d_f^2) - Var[m]``
- ``Cov[m, v] = mean_f (k3_f + 2 d_f sigma_f^2) / D``
- ``Var[v] = mean_f (k4_f - sigma_f^4 + 4 d_f k3_f + 4 d_f^2 sigma_f^2) / D``

and with ``a = c h'(mu) g(V)``, ``b = c h(mu) g'(V)``: ``E[y] = c h(mu) g(V)``,
``Var[y] = a^2 Var[m] + b^2 Var[v] + 2 a b Cov[m, v]``. A scale common to the row's features
cancels in ``m g(v)`` to first order (but for eps), so the within-row law is the one that
counts. Only one reduced axis (a token's features, a map's channels at one position).

The sum ``x * S - m * S`` (an Add of ``-m * S``, or a Sub of ``m * S``) with ``S = c g(v)`` is
``(x - m) * S``: the centred row ``d = x - m`` (the Sub the variance squares) scaled by a function
of its own mean square, as :func:`.row_norm.row_normalised` reads it
(``E[y_f^2] = E[d_f^2] / mean_g E[d_g^2] * E[v g(v)^2]``); taken as a sum of two correlated
terms it read 1.15-1.28x high.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from onnx import helper

from ..moments import Moments
from .chi_square import chain_from
from .context import RuleContext, RuleError
from .gaussian import compose, gaussian_moments
from .mixture import lift
from .row_norm import row_normalised, skip_casts
from .table_rows import squared_input

_LAYOUT = ("Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze", "Flatten")
_STEP = 1e-4  # relative step of the central differences


def _reduce_mean(ctx: RuleContext, name: str):
    """(input, reduced axis) of a keepdims ReduceMean over one axis producing ``name``, else
    None."""
    node_id = ctx.graph.producer.get(name)
    if not node_id:
        return None
    node = ctx.graph.node(node_id)
    if node.op_type != "ReduceMean":
        return None
    nctx = ctx.for_node(node_id)
    try:
        shape_in, shape_out = nctx.in_shape(0), nctx.out_shape(0)
    except RuleError:
        return None
    if len(shape_in) != len(shape_out):
        return None
    changed = [a for a, (i, o) in enumerate(zip(shape_in, shape_out)) if i != o]
    if len(changed) != 1 or shape_out[changed[0]] != 1 or not isinstance(shape_in[changed[0]], int):
        return None
    return node.input[0], changed[0], int(shape_in[changed[0]])


def _start(node) -> bool:
    return node.op_type == "ReduceMean"


def _centred_variance(ctx: RuleContext, v_name: str, m_name: str, x: str) -> bool:
    """``v_name`` is ``mean((x - m)^2)`` with ``m`` (through layout ops) ``m_name``."""
    found = _reduce_mean(ctx, v_name)
    if found is None:
        return False
    d = squared_input(ctx.graph, found[0])
    node_id = ctx.graph.producer.get(d) if d else None
    if not node_id:
        return False
    node = ctx.graph.node(node_id)
    return (node.op_type == "Sub" and node.input[0] == x
            and skip_casts(ctx.graph, node.input[1], _LAYOUT) == m_name)


def _mean_and_scale(ctx: RuleContext):
    """(x, axis, D, chain on m, chain on v) for a Mul of ``h(m)`` by ``c g(v)``, else None."""
    node = ctx.node
    for mi in (0, 1):
        a = chain_from(ctx, node.input[mi], _start)
        b = chain_from(ctx, node.input[1 - mi], _start)
        if a is None or b is None:
            continue
        m = _reduce_mean(ctx, a[0])
        if m is None or _reduce_mean(ctx, b[0]) is None:
            continue
        x, axis, d = m
        if _reduce_mean(ctx, b[0])[1] == axis and _centred_variance(ctx, b[0], a[0], x):
            return x, axis, d, a[1], b[1]
    return None


def _feature_moments(x: Moments, rank: int):
    """(mu_f, sigma_f^2, k3_f, k4_f) at ``rank``: from the source's chain of a Gaussian where
    it has one, else Gaussian."""
    mean, var = lift(x.mean, rank), lift(x.var, rank)
    src = x.source
    if src is None or max(np.ndim(src.mean), np.ndim(src.var)) > rank:
        return mean, var, np.zeros_like(var), 3.0 * var**2
    fn = compose(src.chain)
    try:
        raw = [lift(gaussian_moments(lambda z, k=k: fn(z) ** k, src.mean, src.var,
                                     rank=rank)[0], rank) for k in (1, 2, 3, 4)]
    except RuleError:
        return mean, var, np.zeros_like(var), 3.0 * var**2
    mu = raw[0]
    s2 = np.maximum(raw[1] - mu**2, 0.0)
    k3 = raw[2] - 3 * mu * raw[1] + 2 * mu**3
    k4 = raw[3] - 4 * mu * raw[2] + 6 * mu**2 * raw[1] - 3 * mu**4
    return mu, s2, k3, np.maximum(k4, s2**2)


def mean_times_scale(inputs, ctx: RuleContext, rank: int
                     ) -> tuple[np.ndarray, np.ndarray] | None:
    """``y = h(m) * c g(v)`` of one row's mean ``m`` and centred variance ``v`` by the delta
    method on their joint law (module docstring). (mean, var) at ``rank``; None when the node
    is not such a product."""
    node = ctx.node
    if node.op_type != "Mul" or len(inputs) != 2 or any(m is None for m in inputs):
        return None
    found = _mean_and_scale(ctx)
    if found is None:
        return None
    x_name, axis, d, h_chain, g_chain = found
    x = (ctx.known or {}).get(x_name)
    if x is None or d < 2:
        return None
    x_rank = len(ctx.graph.shape(x_name) or ())
    if x_rank != rank:
        return None
    mu_f, s2_f, k3_f, k4_f = np.broadcast_arrays(*_feature_moments(x, rank))
    row = lambda a: np.mean(a, axis=axis, keepdims=True) if np.ndim(a) == rank else a  # noqa: E731
    mu = row(mu_f)
    dev = mu_f - mu
    var_m = row(s2_f) / d
    big_v = np.maximum(row(s2_f + dev**2) - var_m, 0.0)
    cov = row(k3_f + 2 * dev * s2_f) / d
    var_v = np.maximum(row(k4_f - s2_f**2 + 4 * dev * k3_f + 4 * dev**2 * s2_f), 0.0) / d
    h, g = compose(h_chain), compose(g_chain)
    with np.errstate(all="ignore"):
        hm, gv = h(mu), g(big_v)
        step_m = _STEP * np.maximum(np.sqrt(row(s2_f + dev**2)), 1e-30)
        step_v = _STEP * np.maximum(big_v, 1e-30)
        dh = (h(mu + step_m) - h(mu - step_m)) / (2 * step_m)
        dg = (g(big_v + step_v) - g(big_v - step_v)) / (2 * step_v)
        a, b = dh * gv, hm * dg
        out_mean = hm * gv
        out_var = a * a * var_m + b * b * var_v + 2 * a * b * cov
    if not (np.all(np.isfinite(out_mean)) and np.all(np.isfinite(out_var))):
        return None
    return out_mean, np.maximum(out_var, 0.0)


def _scaled_by(ctx: RuleContext, name: str):
    """(the two operands) of the Mul producing ``name``, else None."""
    node_id = ctx.graph.producer.get(name)
    if not node_id:
        return None
    node = ctx.graph.node(node_id)
    return tuple(node.input) if node.op_type == "Mul" and len(node.input) == 2 else None


def centred_sum(inputs, ctx: RuleContext, rank: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``x * S - m * S`` (Add of ``h(m) * S`` with ``h(m) = -m``, or Sub of ``m * S``) read as
    ``(x - m) * S`` (module docstring). (mean, var) at ``rank``; None when the node is not
    such a sum."""
    node, known = ctx.node, ctx.known or {}
    if node.op_type not in ("Add", "Sub") or len(node.input) != 2 or any(
            m is None for m in inputs):
        return None
    sign = -1.0 if node.op_type == "Add" else 1.0
    orders = ((0, 1), (1, 0)) if node.op_type == "Add" else ((0, 1),)
    for xi, mi in orders:
        left, right = _scaled_by(ctx, node.input[xi]), _scaled_by(ctx, node.input[mi])
        if left is None or right is None:
            continue
        for s_name in set(left) & set(right):
            x_name = left[1] if left[0] == s_name else left[0]
            hm_name = right[1] if right[0] == s_name else right[0]
            d_name = _row_centred(ctx, x_name, hm_name, s_name, sign)
            if d_name is None or known.get(d_name) is None or known.get(s_name) is None:
                continue
            stand = helper.make_node("Mul", [d_name, s_name], [node.output[0]])
            return row_normalised([known[d_name], known[s_name]],
                                  replace(ctx, node=stand, fusion=None), rank)
    return None


def _row_centred(ctx: RuleContext, x_name: str, hm_name: str, s_name: str,
                 sign: float) -> str | None:
    """The tensor ``d = x - m`` whose mean square ``v`` gives ``S = c g(v)``, when ``hm_name``
    is ``sign * m`` of the same row's mean ``m``, else None."""
    a = chain_from(ctx, hm_name, _start)
    b = chain_from(ctx, s_name, _start)
    if a is None or b is None or _reduce_mean(ctx, a[0]) is None:
        return None
    x, axis, _ = _reduce_mean(ctx, a[0])
    found = _reduce_mean(ctx, b[0])
    if x != x_name or found is None or found[1] != axis or not _centred_variance(
            ctx, b[0], a[0], x):
        return None
    probe = np.array([0.5, 2.0])
    with np.errstate(all="ignore"):
        if not np.allclose(compose(a[1])(probe), sign * probe):
            return None
    return squared_input(ctx.graph, ctx.graph.node(ctx.graph.producer[b[0]]).input[0])


__all__ = ["centred_sum", "mean_times_scale"]
