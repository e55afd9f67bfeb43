"""A sequence's token covariance as the spatial correlation of the feature map that a stretch of
layout ops folds it back into (the inverse of :mod:`.map_tokens`).

MobileViT folds its transformer's output ``[N*pA, nP, C]`` back into ``[N, C, H, W]``: the
sequence ``a`` fills the pixels at offset ``a`` of every ``p x p`` patch, so two pixels ``p``
apart hold two tokens of one sequence, and neighbouring pixels tokens of two sequences. After a
transformer whose attention averages nearly uniformly (random initialization), the tokens of a
sequence share most of their value (``moments.Tokens``: correlation near 1), so the folded map
is correlated 0.97 at offset 2 and not at offset 1, and the convolutions after it, and the
next block's unfold, see a strongly correlated map (measured 0.66 at offset 2 on the next
block's 4x4 map, where the correlation floor of :mod:`.position_floor` gave 0.004).

The stretch (Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Identity, Dropout, Cast) is
followed back from the map to the first tensor with the field, and composed on that tensor's
flat index: each element of the map knows its source element, hence its token index (the field's
digit of the token axes) and its sequence (every other coordinate but the feature axis, and the
outer and stride digits merged into the token axes). Per offset d of the map

    rho(d) = mean over the pairs (q, q + d) on the map of [same sequence] corr[t_q, t_q+d]

with ``corr`` the field as a correlation (its diagonal's per-token profile divided out); pairs
of different sequences count 0, as the field says (the tokens it describes are those of one
sequence). The correlation floor is the same mean over the pairs farther apart than the stored
offsets. Each channel must be one feature of the sequence (every element of a channel from
one feature index), so the correlation is one for all channels, as the field is. Modelled: the
field's covariance of each pair, averaged over the map's pairs at each offset (stationary).
Not modelled: the correlation between sequences (MobileViT's measured -0.14 at offset 1 counts
0), per-position variances, and channels' correlation with each other.
"""

from __future__ import annotations

import numpy as np

from .. import correlation as corr_model
from .context import RuleContext
from .map_tokens import LAYOUT_OPS, MAX_CHAIN, MAX_ELEMENTS, composed_index
from .token_field import token_axes


def _origin(ctx: RuleContext):
    """(tensor, its Moments, the layout nodes from it to ctx.node in order): the first tensor
    with a token field of the layout stretch that ends at ``ctx.node``, or None."""
    graph, known = ctx.graph, ctx.known or {}
    chain, found = [ctx.node], None
    tensor = ctx.node.input[0] if ctx.node.input else ""
    for _ in range(MAX_CHAIN):
        m = known.get(tensor)
        if m is None:
            break
        if m.tokens is not None:
            found = (tensor, m, chain[::-1])
        node_id = graph.producer.get(tensor)
        if node_id is None:
            break
        node = graph.node(node_id)
        if node.domain not in ("", "ai.onnx") or node.op_type not in LAYOUT_OPS or not node.input:
            break
        chain.append(node)
        tensor = node.input[0]
    return found


def _labels(m, shape, flat: np.ndarray):
    """(token index, sequence key, feature index) of the source elements ``flat``."""
    t = m.tokens
    rank = len(shape)
    axes = token_axes(t, rank)
    if axes is None or rank - 1 in axes:
        return None
    coords = np.unravel_index(flat, shape)
    span = [shape[a] for a in axes]
    digit = np.ravel_multi_index([coords[a] for a in axes], span)
    token = (digit // t.stride) % t.n
    outer = digit // (t.stride * t.n) * t.stride + digit % t.stride
    rest = [coords[a] for a in range(rank - 1) if a not in axes]
    key = np.ravel_multi_index(rest + [outer], [shape[a] for a in range(rank - 1)
                                                if a not in axes] + [int(np.prod(span)) + 1])
    return token, key, coords[rank - 1]


def _aligned(token: np.ndarray, key: np.ndarray, feature: np.ndarray) -> bool:
    """One feature per channel, and the tokens and sequences alike in every channel."""
    lead = (slice(None),) + (0,) * (feature.ndim - 2)
    per_channel = feature[(0,) + lead]
    return bool(np.all(feature == per_channel.reshape((1, -1) + (1,) * (feature.ndim - 2)))
                and np.all(token == token[:, :1]) and np.all(key == key[:, :1]))


def map_correlation(ctx: RuleContext, shape) -> corr_model.Correlation | None:
    """The correlation of the map ``shape`` (``[N, C, *S]`` with two or more position axes,
    ctx.node's output) that the token field of its layout stretch's first tensor implies
    (module docstring), or None. ``[N, F, T]`` is how attention reads its keys (``K^T``), not
    a map: one position axis is not taken for one."""
    found = _origin(ctx)
    if found is None or len(shape) < 4 or int(np.prod(shape)) > MAX_ELEMENTS:
        return None
    name, m, chain = found
    src_shape = ctx.graph.shape(name)
    if src_shape is None:
        return None
    idx = composed_index(ctx, tuple(src_shape), chain)
    if idx is None or tuple(idx.shape) != tuple(shape):
        return None
    # a probe of one sample and two channels first: most stretches fail there, and the
    # labels of every element of a large map cost 30 ms (Swin-T's window merges: 1.2 s)
    for part in (idx[:1, :2], idx):
        labels = _labels(m, tuple(src_shape), part)
        if labels is None or not _aligned(*labels):
            return None
    token, key, _ = labels
    token, key = token[:, 0], key[:, 0]  # [N, *S]
    cov = m.tokens.cov
    d = np.sqrt(np.maximum(np.diag(cov), 1e-300))
    corr = cov / np.outer(d, d)
    sizes = [int(s) for s in shape[2:]]
    radius = [min(corr_model.MAX_OFFSET, s - 1) for s in sizes]
    rho = np.zeros([2 * r + 1 for r in radius])
    far_sum, far_count = 0.0, 0
    for offset in np.ndindex(*[2 * s - 1 for s in sizes]):
        dd = [o - (s - 1) for o, s in zip(offset, sizes)]
        a = (slice(None),) + tuple(slice(max(0, -x), s - max(0, x)) for x, s in zip(dd, sizes))
        b = (slice(None),) + tuple(slice(max(0, x), s - max(0, -x)) for x, s in zip(dd, sizes))
        ta, tb, ka, kb = token[a], token[b], key[a], key[b]
        if ta.size == 0:
            continue
        values = np.where(ka == kb, corr[ta, tb], 0.0)
        if all(abs(x) <= r for x, r in zip(dd, radius)):
            rho[tuple(x + r for x, r in zip(dd, radius))] = float(values.mean())
        else:
            far_sum += float(values.sum())
            far_count += values.size
    floor = far_sum / far_count if far_count else 0.0
    c = int(shape[1])
    return corr_model.Correlation(np.broadcast_to(rho, (c,) + rho.shape).copy(),
                                  np.full(c, floor))


__all__ = ["map_correlation"]
