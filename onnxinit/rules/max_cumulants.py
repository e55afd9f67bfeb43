"""The skewness and kurtosis of a MaxPool's output, for the Edgeworth terms of the element-wise
chain after it (:mod:`.edgeworth`): a pre-activation block (BatchNorm, ReLU) right after a max
pool (DenseNet's and ResNetV2's stems) reads a maximum of K taps, right-skewed, which the moment
rules describe as a Gaussian (DenseNet121 at 96px: skewness 0.39 after the pool, the ReLU after
its BatchNorm 0.87x of the measured variance with the Gaussian).

Per channel, for the taps of an interior window (the pool's most frequent class) drawn from the
input's Gaussian ``z ~ N(m, s^2)`` through its non-decreasing chain f (a ReLU ...), at the
window's one common correlation r (:func:`.max_windows.common_correlation`),
``z_t = m + s (sqrt(r) w + sqrt(1 - r) e_t)`` with w, e_t independent standard normals, so
given w the taps are independent and ``max_t f(z_t) = f(m + s sqrt(r) w + s sqrt(1 - r) M_K)``
with ``M_K`` the maximum of K standard normals, of density ``K Phi(t)^(K-1) phi(t)``:

    E[Y^p] = sum_q p_q sum_t u_t K Phi(t)^(K-1) f(m + s sqrt(r) w_q + s sqrt(1 - r) t)^p

(Gauss-Hermite nodes w_q, p_q; the composite Gauss-Legendre nodes t, u_t of :mod:`.edgeworth`,
u_t including phi), and the central cumulants ``k3 = E[(Y - E Y)^3]``,
``k4 = E[(Y - E Y)^4] - 3 Var(Y)^2``. Border windows (fewer taps) take the interior's.
"""

from __future__ import annotations

import numpy as np

from .. import special
from ..moments import Moments, Source
from ..spatial import class_weights, positions
from .context import RuleContext
from .gaussian import composite_rule, compose, expand
from .max_windows import common_correlation
from .monotone import non_decreasing

_T, _U = composite_rule(8.0, 24, 4)  # the maximum's standard-normal variable
_W, _P = np.polynomial.hermite_e.hermegauss(24)  # the shared part w
_P = _P / _P.sum()


def max_pool_shape(pool: RuleContext, x: Moments) -> tuple[np.ndarray, np.ndarray] | None:
    """(gamma, kappa) per channel ``[C, 1, ...]`` of the MaxPool ``pool``'s output for input moments
    ``x`` (module docstring); None where the input is not a Gaussian per cell through a
    non-decreasing chain, or the window is not one plain kernel."""
    x_shape = pool.in_shape(0)
    kernel = pool.attr("kernel_shape")
    if x_shape is None or len(x_shape) < 3 or not kernel:
        return None
    sp = positions(x, x_shape)
    if sp is None:
        return None
    cells = sp.cells
    if cells.source is None and cells.mixture is not None:
        return None
    src = cells.source if cells.source is not None else Source(cells.mean, cells.var)
    rank = len(x_shape)
    mean, var = np.broadcast_arrays(expand(np.asarray(src.mean, np.float64), rank),
                                    expand(np.asarray(src.var, np.float64), rank))
    mean, var = mean[0], var[0]  # [C or 1, classes...]
    if mean.shape[1:] == tuple(sp.classes) and any(n > 1 for n in mean.shape[1:]):
        index = np.unravel_index(int(np.argmax(class_weights(sp.maps))), tuple(sp.classes))
        pick = (slice(None),) + tuple(slice(i, i + 1) for i in index)
        mean, var = mean[pick], var[pick]
    elif any(n > 1 for n in mean.shape[1:]):
        return None
    mean, var = mean.reshape(-1), var.reshape(-1)
    channels = int(x_shape[1])
    if not non_decreasing(src.chain, mean, var):
        return None
    mean, var = np.broadcast_to(mean, (channels,)), np.broadcast_to(var, (channels,))
    r = np.clip(common_correlation(sp, pool, channels), 0.0, 1.0)
    k = int(np.prod(kernel))
    u = _U * k * special.ndtr(_T) ** (k - 1)
    u = u / u.sum()
    s = np.sqrt(np.maximum(var, 0.0))
    # the maximum's standard variable at [q, t, c]
    z = (mean + s * np.sqrt(r) * _W[:, None, None] + s * np.sqrt(1.0 - r) * _T[None, :, None])
    with np.errstate(all="ignore"):
        y = np.asarray(compose(src.chain)(z), dtype=np.float64) if src.chain else z
    y = np.broadcast_to(y, z.shape)
    if not np.all(np.isfinite(y)):
        return None
    weights = (_P[:, None] * u[None, :])[..., None]
    d = y - (weights * y).sum(axis=(0, 1))
    d2 = d * d
    k2 = (weights * d2).sum(axis=(0, 1))
    k3 = (weights * d2 * d).sum(axis=(0, 1))
    k4 = (weights * d2 * d2).sum(axis=(0, 1)) - 3 * k2**2
    lead = (channels,) + (1,) * (rank - 2)
    k2 = np.where(k2 > 0, k2, np.inf)
    return (k3 / k2**1.5).reshape(lead), (k4 / k2**2).reshape(lead)


_AFFINE = ("BatchNormalization", "Mul", "Div", "Add", "Sub", "Identity")


def affine_steps(ctx: RuleContext, tensor: str, stop: str, channels: int):
    """``[(name, sign)]`` from ``tensor`` back to ``stop`` (its last entry) through per-channel
    affine nodes, ``sign`` ``[C]`` the sign of the map from ``stop`` to ``name``; None where
    another node, or a scale that is not one per channel, is met (at most 8 nodes)."""
    graph = ctx.graph
    path = []
    for _ in range(8):
        path.append(tensor)
        if tensor == stop:
            break
        node_id = graph.producer.get(tensor)
        if node_id is None or graph.node(node_id).op_type not in _AFFINE:
            return None
        node_ctx = ctx.for_node(node_id)
        node = node_ctx.node
        operands = [i for i in range(len(node.input)) if node_ctx.const(i) is None]
        if len(operands) != 1 or (node.op_type == "BatchNormalization" and operands != [0]):
            return None
        tensor = node.input[operands[0]]
        path[-1] = (path[-1], node.op_type, node_ctx, operands[0])
    else:
        return None
    if path[-1] != stop:
        return None
    steps, sign = [(stop, np.ones(channels))], np.ones(channels)
    for name, op, node_ctx, which in reversed(path[:-1]):
        factor = _step_sign(op, node_ctx, which, channels)
        if factor is None:
            return None
        sign = sign * factor
        steps.append((name, sign))
    return list(reversed(steps))


def _step_sign(op: str, node_ctx: RuleContext, which: int, channels: int) -> np.ndarray | None:
    """The sign per channel by which one affine node multiplies its signal operand."""
    if op in ("Identity", "Add"):
        return np.ones(channels)
    if op == "Sub":
        return np.full(channels, 1.0 if which == 0 else -1.0)
    if op == "Div" and which != 0:
        return None
    c = np.asarray(node_ctx.const(1 if op == "BatchNormalization" else 1 - which), np.float64)
    if c.size == 1:
        return np.full(channels, float(np.sign(c.reshape(-1)[0])))
    if c.size != channels or (op != "BatchNormalization" and c.ndim < 3):
        return None  # a scale along the last axis is not per channel
    return np.sign(c.reshape(-1))
