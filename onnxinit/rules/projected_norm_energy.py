"""The squared length of a dense layer of a LayerNorm written out (opset < 17), ``y = W^T (g n
+ beta) + b``, per row: its mean and variance as the ratio of quadratic forms of the norm's
input that :func:`.normalised_square_sum.quadratic_ratio_moments` integrates (ELECTRA's and
ALBERT's embedding projection, embedding size != hidden size, read by the first block's norm
through a residual sum). With ``M`` the centring over y's features where the reader centres
y (``P_E``), else ``I``: ``A = G W M W^T G``, ``h = G W M c``, ``c = W^T beta + b``, ``c2 =
c^T M c`` (g and beta the same for every feature, their values at initialization), eps read
from the norm's factor ``g(s) = 1 / sqrt(s + eps)``."""

from __future__ import annotations

import numpy as np

from .context import RuleContext
from .normalised_square_sum import MAX_WORK, quadratic_ratio_moments
from .row_norm import without_casts
from .token_field import grid, profile_grid


def _dense(ctx: RuleContext, name: str):
    """(z, W [D, E], b [E]) when ``name`` is ``z @ W (+ b)``, W a constant matrix."""
    graph, b = ctx.graph, None
    node_id = graph.producer.get(without_casts(ctx, name))
    node = graph.node(node_id) if node_id else None
    if node is not None and node.op_type == "Add" and len(node.input) == 2:
        consts = [i for i in node.input if graph.is_constant(i)]
        if len(consts) != 1:
            return None
        b = graph.value(consts[0])
        node_id = graph.producer.get(next(i for i in node.input if i != consts[0]))
        node = graph.node(node_id) if node_id else None
    if node is None or node.op_type != "MatMul" or not graph.is_constant(node.input[1]):
        return None
    w = graph.value(node.input[1])
    if w is None or np.ndim(w) != 2 or (b is not None and np.size(b) not in (1, w.shape[1])):
        return None
    b = np.zeros(w.shape[1]) if b is None else np.broadcast_to(
        np.asarray(b, np.float64).ravel(), (w.shape[1],))
    return node.input[0], np.asarray(w, np.float64), b


def _eps(g) -> float | None:
    """eps of a factor ``g(s) = 1 / sqrt(s + eps)``, None for another factor."""
    with np.errstate(all="ignore"):
        eps = 1.0 / float(g(np.float64(1.0))) ** 2 - 1.0
        check = float(g(np.float64(4.0))) * np.sqrt(4.0 + eps)
    return eps if np.isfinite(eps) and eps >= 0 and abs(check - 1.0) < 1e-6 else None


def projected_energy(ctx: RuleContext, name: str, centred: bool, shape: tuple,
                     find_norm) -> tuple[np.ndarray, np.ndarray] | None:
    """(E|M y|^2, Var|M y|^2) per row of ``shape[:-1]`` for ``name`` = y (module docstring),
    ``find_norm(ctx, z)`` the norm of z (:func:`.fixed_energy_rows._normalised_row`); None
    where y is not such a dense layer."""
    found = _dense(ctx, name)
    norm = find_norm(ctx, found[0]) if found is not None else None
    if norm is None or not norm.centred or not norm.source or norm.g is None:
        return None
    _, w, b = found
    eps = _eps(norm.g)
    x = (ctx.known or {}).get(norm.source)
    t_shape = ctx.graph.shape(norm.source)
    d, e = w.shape
    if eps is None or x is None or not t_shape or t_shape[-1] != d or e != shape[-1] \
            or tuple(t_shape[:-1]) != tuple(shape[:-1]) or x.spatial is not None:
        return None
    x = profile_grid(x, t_shape) or x
    mean, var = grid(x, len(t_shape))
    try:
        mu, n = (np.broadcast_to(a, tuple(t_shape)).reshape(-1, d) for a in (mean, var))
    except ValueError:
        return None
    if mu.shape[0] * d * d > MAX_WORK or not (np.all(np.isfinite(mu)) and np.all(np.isfinite(n))):
        return None
    p = np.eye(d) - 1.0 / d
    m = np.eye(e) - 1.0 / e if centred else np.eye(e)
    w_g = norm.scale * w
    c = w.T @ np.full(d, norm.shift) + b
    q_mean, q_var = quadratic_ratio_moments(mu, n, p @ (w_g @ m @ w_g.T) @ p, p @ (w_g @ m @ c),
                                            float(c @ m @ c), eps)
    return q_mean, q_var


__all__ = ["projected_energy"]
