"""A Conv's map seen through a per-sample normalisation: the correlation a GroupNorm'd map keeps.

A GroupNorm maps each sample's group affinely, ``y = (x - m_g) / s_g * gamma + beta``, with
``m_g``, ``s_g`` the sample's own statistics of the group (a LayerNorm over the whole map: one
group). Within a sample the group's values share ``s_g``, and over samples ``s_g``
concentrates (relative spread ``O(1/sqrt(K))`` for K values), so y correlates across channels
and offsets as x does, ``Corr(y_j(p), y_k(p + d)) ~ R_x[j, k, d]`` (the centring takes the
group mean's share, ``O(1/K)`` of a value's variance, out); y's per-channel moments are the
normalisation rule's. :func:`normalised_conv` walks back from a tensor ``t`` laid out as a
Conv's map ``[N, C, *S]`` through

- element-wise functions (one signal, constants that broadcast in t's layout; ``x *
  Sigmoid(x)`` and other fused binary nodes of one tensor), which it returns, after the
  normalisation only;
- layout ops (Transpose, Reshape, Squeeze, Unsqueeze, Identity; the batch axis kept first), whose
  composition from the Conv's output to t must be the identity (tf2onnx's channels-last
  GroupNorm: Transpose, Reshape to ``[N, H, W, G, C/G]``, the moments, a Reshape and a
  Transpose back to the next Conv);
- the normalisation: InstanceNormalization or GroupNormalization, or the binary nodes of one
  written out (``x * s``, ``x - m``, ``(x - m) / s``, ``x * s + b``: a full operand and a
  per-sample statistic, at most one value per channel, computed from a mean with fewer values
  per sample than the map has channels), at least one of them;

to a Conv's output z, and returns (z, the element-wise functions after the normalisation, the
normalised tensor's mean and variance per channel of z). None where the walk does not reach a
Conv that way.
"""

from __future__ import annotations

import numpy as np

from .context import RuleContext, RuleError
from .elementwise import elementwise
from .fusion import common_ancestor, fused_function

_LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity")
_AFFINE = ("Add", "Sub", "Mul", "Div")
_NORMS = ("InstanceNormalization", "GroupNormalization")
MAX_NODES = 48


def _per_sample(shape) -> int:
    return int(np.prod(shape[1:])) if shape else 0


def _statistic_step(ctx: RuleContext, node, channels: int) -> str | None:
    """The full operand of a binary node of a written-out normalisation, else None."""
    graph = ctx.graph
    if node.op_type not in _AFFINE or len(node.input) != 2:
        return None
    if any(graph.is_constant(i) for i in node.input):
        return None
    out = graph.shape(node.output[0])
    shapes = [graph.shape(i) for i in node.input]
    if not out or any(not s or len(s) != len(out) or s[0] != out[0] for s in shapes):
        return None
    full = [i for i, s in zip(node.input, shapes)
            if tuple(s) == tuple(out) and not _scaled_statistic(graph, i, channels)]
    if len(full) != 1 or (node.op_type in ("Sub", "Div") and full[0] != node.input[0]):
        return None
    stat = node.input[1] if full[0] == node.input[0] else node.input[0]
    if not _scaled_statistic(graph, stat, channels) or not _group_statistic(graph, stat, channels):
        return None
    return full[0]


def _scaled_statistic(graph, t: str, channels: int, depth: int = 4) -> bool:
    """``t`` holds at most ``channels`` values per sample, or is a product (quotient,
    negation) of such tensors and constants: a per-sample statistic broadcast by a constant
    laid out over the map (Keras' LayerNorm over ``axis=[1, 2, 3]``: ``rstd * gamma``, gamma
    one value per element)."""
    if _per_sample(graph.shape(t)) <= channels:
        return True
    node_id = graph.producer.get(t)
    if depth == 0 or node_id is None:
        return False
    node = graph.node(node_id)
    if node.op_type not in ("Mul", "Div", "Neg"):
        return False
    signals = [i for i in node.input if i and not graph.is_constant(i)]
    return bool(signals) and all(_scaled_statistic(graph, i, channels, depth - 1)
                                 for i in signals)


def _group_statistic(graph, t: str, channels: int) -> bool:
    """Whether ``t`` is computed from a mean (sum) with fewer values per sample than the map
    has channels (a group's or the whole sample's statistic, not a channel's: a
    squeeze-excite gate is no normalisation), within ``MAX_NODES`` producers back."""
    stack, seen = [t], set()
    while stack and len(seen) < MAX_NODES:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node_id = graph.producer.get(name)
        if node_id is None:
            continue
        node = graph.node(node_id)
        if node.op_type in ("ReduceMean", "ReduceSum") and 0 < _per_sample(
                graph.shape(node.output[0])) < channels:
            return True
        stack.extend(i for i in node.input if i and not graph.is_constant(i))
    return False


def _function(ctx: RuleContext, node_id: str, node):
    """(input, fn) for an element-wise node of one signal or a fused binary node, else None."""
    graph = ctx.graph
    signals = [i for i in node.input if i and not graph.is_constant(i)]
    if len(signals) == 1:
        f = elementwise(node, ctx)
        return (signals[0], f.fn) if f is not None else None
    if node.op_type in _AFFINE and len(signals) == 2:
        found = common_ancestor(ctx.for_node(node_id))
        if found is not None:
            return found[0], fused_function(node.op_type, found[1], found[2]).fn
    return None


def _walk(ctx: RuleContext, t: str, channels: int):
    """(z, layout nodes z -> t in order, fns after the normalisation, the normalised tensor,
    the layout nodes z -> that tensor), or None."""
    graph = ctx.graph
    layout, fns, normalised, at_norm = [], [], None, 0
    for _ in range(MAX_NODES):
        node_id = graph.producer.get(t)
        if node_id is None:
            return None
        node = graph.node(node_id)
        if node.op_type == "Conv":
            if normalised is None:
                return None
            nodes = layout[::-1]
            return t, nodes, fns[::-1], normalised, nodes[:len(nodes) - at_norm]
        if node.op_type in _LAYOUT:
            layout.append(node)
            t = node.input[0]
            continue
        if node.op_type in _NORMS:
            full = node.input[0]
        else:
            full = _statistic_step(ctx, node, channels)
        if full is not None:
            if normalised is None:
                normalised, at_norm = node.output[0], len(layout)
            t = full
            continue
        if normalised is not None:
            return None  # only layout and the normalisation's own steps before it
        found = _function(ctx, node_id, node)
        if found is None:
            return None
        fns.append(found[1])
        t = found[0]
    return None


def sample_indices(graph, z: str, nodes) -> np.ndarray | None:
    """z's flat index (one sample) carried through the layout nodes; None where a node moves
    the batch axis."""
    shape = graph.shape(z)
    idx = np.arange(_per_sample(shape)).reshape((1,) + tuple(shape[1:]))
    for node in nodes:
        out = graph.shape(node.output[0])
        if not out or out[0] != shape[0]:
            return None
        if node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"),
                        list(range(idx.ndim))[::-1])
            if perm[0] != 0:
                return None
            idx = np.transpose(idx, perm)
        idx = idx.reshape((1,) + tuple(out[1:]))
    return idx


def _per_channel(values, idx: np.ndarray, channels: int, positions: int) -> np.ndarray:
    full = np.broadcast_to(np.asarray(values, dtype=np.float64), idx.shape).reshape(-1)
    chan = idx.reshape(-1) // positions
    return np.bincount(chan, weights=full, minlength=channels) / np.bincount(
        chan, minlength=channels)


def normalised_conv(ctx: RuleContext, t: str, max_size: int = 4_000_000):
    """(z, fns, mean ``[C]``, var ``[C]``) for ``t`` a (chain of a) per-sample normalisation of
    Conv output z laid out as z (module docstring); None otherwise."""
    shape = ctx.graph.shape(t)
    if not shape or len(shape) < 3 or _per_sample(shape) > max_size:
        return None
    channels, positions = int(shape[1]), int(np.prod(shape[2:]))
    try:
        found = _walk(ctx, t, channels)
    except RuleError:
        return None
    if found is None:
        return None
    z, nodes, fns, normalised, to_norm = found
    if tuple(ctx.graph.shape(z) or ()) != tuple(shape) or normalised not in ctx.known:
        return None
    idx = sample_indices(ctx.graph, z, nodes)
    if idx is None or not np.array_equal(idx.reshape(-1), np.arange(idx.size)):
        return None
    at = sample_indices(ctx.graph, z, to_norm)
    norm_shape = ctx.graph.shape(normalised)
    if at is None or tuple(at.shape[1:]) != tuple(norm_shape[1:]):
        return None
    m = ctx.known[normalised]
    rank = at.ndim
    mean = np.reshape(m.mean, (1,) * (rank - np.ndim(m.mean)) + np.shape(m.mean))
    var = np.reshape(m.var, (1,) * (rank - np.ndim(m.var)) + np.shape(m.var))
    if mean.ndim != rank or var.ndim != rank:
        return None
    mu = _per_channel(mean, at, channels, positions)
    nu = _per_channel(var, at, channels, positions)
    if not np.all(nu > 0):
        return None
    return z, fns, mu, nu


__all__ = ["MAX_NODES", "normalised_conv", "sample_indices"]
