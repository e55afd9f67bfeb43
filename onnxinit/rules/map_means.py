"""A mean (sum) over the channels and every position of a Conv's map together: LayerNorm over
``[C, H, W]`` written out (``ReduceMean`` of x, of ``(x - mean)^2``), a mean square over a
whole feature map, whatever exporter wrote it.

The reduce rule takes the ``K = C P`` values as independent. Two values of a Conv's output
``z = W * x`` (x with independent channels and positions, variances ``nu_i``) correlate
across channels and offsets: for output offset ``d`` (stride s, dilation e, input offset
``s d = e L``)::

    Cov(z_j(p), z_k(p + d)) = sum_i nu_i sum_t W_j,i,t+L W_k,i,t        (kernel lag L)

and the reduced values ``y = g(z)`` (an element-wise chain: :func:`.correlated_means.chain`)
with Mehler's formula per pair of channels and offset, ``rho = Cov / sqrt(V_j V_k)``::

    Var(sum y) = sum_d n(d) sum_jk Cov(g_j, g_k)(rho_jk(d)),    n(d) = prod_a (S_a - |d_a|)

(positions taken as stationary: the interior's statistics). The reduce rule's independent
variance is replaced by this over its interior diagonal ``P sum_j Var g_j``, times that diagonal
summed over the position classes (border positions have fewer taps), over ``K^2``. On a ReLU Conv's map
(3 -> 16 channels, 16x16) the channels' means correlate through the kernels' tap sums (the
pre-activation mean over the map is a single Conv's with the taps summed) and through the
squared correlations Mehler's second order adds (all positive): the mean's variance 4x the
independent one. Cost ``(2k - 1)^n C_out^2 C_in k^n``; None above ``BUDGET``, where the
Conv's input carries a correlation of its own (positions or channels), or the chain does not
reach a Conv.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..spatial import class_weights, positions
from .channel_covariance import covariance
from .context import RuleContext
from .correlated_means import chain, coefficients, covariance_sum
from .covariance_layout import attr, within
from .pool_windows import cell_arrays

BUDGET = 5e7  # multiply-adds of the kernel lags


def _full_kernel(w: np.ndarray, c_in: int) -> np.ndarray | None:
    """``[C_out, C_in, *k]`` with the groups' blocks on the diagonal."""
    c_out, per_group = w.shape[:2]
    groups = c_in // per_group
    if groups < 1 or groups * per_group != c_in or c_out % groups:
        return None
    if groups == 1:
        return w
    full = np.zeros((c_out, c_in) + w.shape[2:])
    block = c_out // groups
    for g in range(groups):
        full[g * block:(g + 1) * block, g * per_group:(g + 1) * per_group] = w[
            g * block:(g + 1) * block]
    return full


def lag_covariances(w: np.ndarray, nu: np.ndarray, strides, dilations
                    ) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """[(output offset d, Cov(z_j(p), z_k(p + d)) [C_out, C_out])] over the kernel's lags
    that land on the output grid (module docstring)."""
    c_out = w.shape[0]
    k = w.shape[2:]
    scaled = w * np.sqrt(nu).reshape((1, -1) + (1,) * len(k))
    out = []
    for lag in itertools.product(*(range(-(n - 1), n) for n in k)):
        d = []
        for a, (L, s, e) in enumerate(zip(lag, strides, dilations)):
            if (e * L) % s:
                break
            d.append(e * L // s)
        if len(d) != len(k):
            continue
        first = tuple(slice(max(0, -L), n - max(0, L)) for L, n in zip(lag, k))
        second = tuple(slice(max(0, L), n - max(0, -L)) for L, n in zip(lag, k))
        a = scaled[(slice(None), slice(None)) + second].reshape(c_out, -1)
        b = scaled[(slice(None), slice(None)) + first].reshape(c_out, -1)
        out.append((tuple(d), a @ b.T))
    return out


def _own_variance(ctx: RuleContext, z: str, shape_z, fns) -> float | None:
    """``sum_p sum_j Var g_j(z_j(p))`` over z's position classes (a zero-padded Conv's border
    positions have fewer taps)."""
    sp = positions(ctx.known[z], shape_z)
    if sp is None:
        return None
    c = shape_z[1]
    mu, nu = cell_arrays(sp, c)
    weights = class_weights(sp.maps)
    total = 0.0
    for cell in np.ndindex(*weights.shape):
        found = coefficients(fns, np.ascontiguousarray(mu[(slice(None),) + cell]),
                             np.ascontiguousarray(nu[(slice(None),) + cell]), 1, len(shape_z))
        if found is None:
            return None
        total += weights[cell] * float(((found[0][1:] ** 2).sum(axis=0) + found[1]).sum())
    return total * float(np.prod(shape_z[2:]))


def map_mean_variance(ctx: RuleContext, axes: tuple[int, ...]) -> float | None:
    """The variance of the mean of the node's input 0 over its channels and every position
    (module docstring): the stationary sum over the interior's own terms, times the own terms
    over the position classes, over ``K^2``; None where it does not apply."""
    shape = ctx.graph.shape(ctx.node.input[0])
    if not shape or len(shape) < 3 or tuple(axes) != tuple(range(1, len(shape))):
        return None
    found = chain(ctx, ctx.node.input[0], axes)
    if found is None:
        return None
    z, fns = found
    node_id = ctx.graph.producer.get(z)
    node = ctx.graph.node(node_id) if node_id is not None else None
    if node is None or node.op_type != "Conv" or len(node.input) < 2:
        return None
    x = node.input[0]
    w = ctx.graph.value(node.input[1])
    shape_x, shape_z = ctx.graph.shape(x), ctx.graph.shape(z)
    if (w is None or x not in ctx.known or not shape_x or not shape_z
            or len(shape_z) != len(shape) or np.ndim(w) != len(shape)):
        return None
    sp = positions(ctx.known[x], shape_x)
    if (sp is None or sp.corr is not None or covariance(ctx, x) is not None
            or ctx.known[x].tokens is not None):
        return None  # the input's own correlation is not modelled here
    w = _full_kernel(np.asarray(w, dtype=np.float64), shape_x[1])
    if w is None:
        return None
    c_out, c_in, taps = w.shape[0], w.shape[1], int(np.prod(w.shape[2:]))
    lags = int(np.prod([2 * n - 1 for n in w.shape[2:]]))
    if lags * c_out * c_out * c_in * taps > BUDGET:
        return None
    n = len(shape) - 2
    strides = attr(node, "strides") or [1] * n
    dilations = attr(node, "dilations") or [1] * n
    nu = within(ctx.known[x], shape_x)
    pairs = [(d, cov) for d, cov in lag_covariances(w, nu, strides, dilations)
             if all(abs(o) < s for o, s in zip(d, shape_z[2:]))]
    centre = dict(pairs).get((0,) * n)
    if centre is None:
        return None
    var = np.diag(centre).copy()
    if np.any(var <= 0):
        return None
    mean = np.broadcast_to(ctx.known[z].values_along(1, c_out)[0], (c_out,)).astype(np.float64)
    found = coefficients(fns, mean, var, 1, len(shape))
    if found is None:
        return None
    c, rem = found
    sd = np.sqrt(var)
    rho = np.stack([cov / np.outer(sd, sd) for _, cov in pairs], axis=-1)  # [C, C, offsets]
    counts = np.array([np.prod([s - abs(o) for o, s in zip(d, shape_z[2:])]) for d, _ in pairs],
                      dtype=np.float64)
    total = float((covariance_sum(c, rem, rho).sum(axis=(0, 1)) * counts).sum())
    own = float(((c[1:] ** 2).sum(axis=0) + rem).sum()) * float(np.prod(shape_z[2:]))
    if not (own > 0 and np.isfinite(total)):
        return None
    spread = _own_variance(ctx, z, shape_z, fns)  # P sum_j Var g_j over the position classes
    if spread is None:
        return None
    return max(total, 0.0) / own * spread / float(np.prod(shape[1:])) ** 2
