"""The covariance between the channels of a global spatial mean, read by the dense layer that
follows it (a classifier after global average pooling).

The rules give a pooled channel its own variance and treat the channels as independent, so a
dense layer ``y_j = sum_c W_jc g_c`` gets ``Var y_j = sum_c W_jc^2 Var g_c``. Where the pooled
tensor X carries a cross-channel field (``onnxinit.cross_channel``: sparse structured kernels,
IDInit's identity patterns), its channels are sums of the same pixels and their means over the
map co-vary: with ``R[c, c', d] = Corr(x_c(p), x_c'(p + d))`` and ``n(d)`` the pairs of the K
positions at offset d::

    Cov(g_c, g_c') = sd_c sd_c' sum_d n(d) R[c, c', d] / K^2

(zero beyond the stored offsets), normalised here by the same sum for c = c' so that the
diagonal is the pool rule's own variance (``Corr(g_c, g_c') = S_cc' / sqrt(S_cc S_c'c')``).
A dense layer adds the cross terms::

    Var y_j = sum_{c, c'} W_jc W_jc' Cov(g_c, g_c')

On ResNet-20 without BatchNorm after ``idinit,autoinit`` the classifier sums 6-7 pooled
channels with weights of one sign (IDInit's padded identity) whose correlation is 0.5-0.7:
the cross terms are 4/5 of its variance within a batch.
"""

from __future__ import annotations

import numpy as np

from .. import correlation

_LAYOUT = frozenset(("Flatten", "Reshape", "Squeeze", "Identity"))
_POOLS = frozenset(("GlobalAveragePool", "ReduceMean"))


def _pool_input(ctx, tensor: str, channels: int) -> str | None:
    """The tensor X whose mean over every spatial position ``tensor`` is, with its channels
    as ``tensor``'s features (layout ops with ``channels`` features between); None else."""
    found = pool_node(ctx, tensor, channels)
    return None if found is None else ctx.graph.node(found).input[0]


def pool_node(ctx, tensor: str, channels: int) -> str | None:
    """The id of the global spatial mean (GlobalAveragePool, ReduceMean over the spatial axes)
    ``tensor`` is, with its channels as ``tensor``'s features (layout ops between); None else."""
    graph = ctx.graph
    for _ in range(4):
        node_id = graph.producer.get(tensor)
        if node_id is None:
            return None
        node = graph.node(node_id)
        if node.op_type not in _LAYOUT:
            break
        tensor = node.input[0]
    else:
        return None
    if node.op_type not in _POOLS or not node.input:
        return None
    shape = graph.shape(node.input[0])
    if shape is None or len(shape) < 3 or shape[1] != channels:
        return None
    if node.op_type == "ReduceMean":
        pool = ctx.for_node(node_id)
        axes = pool.attr("axes")
        if axes is None and len(node.input) > 1:
            axes = graph.value(node.input[1])
        if axes is None:
            return None
        rank = len(shape)
        if sorted(int(a) % rank for a in np.ravel(axes)) != list(range(2, rank)):
            return None
    out = graph.shape(tensor)
    if out is None or int(np.prod(out[1:])) != channels:
        return None
    return node_id


def pooled_correlation(ctx, tensor: str, channels: int) -> np.ndarray | None:
    """``[C, C]``: the correlation between the channels of ``tensor``, a global spatial mean
    of a tensor carrying a cross-channel field (module docstring); None otherwise."""
    known = ctx.known
    source = _pool_input(ctx, tensor, channels)
    x = known.get(source) if source is not None and known is not None else None
    sp = x.spatial if x is not None else None
    corr = sp.corr if sp is not None else None
    if corr is None or corr.cross is None or corr.cross.corr.shape[0] != channels:
        return None
    sizes = ctx.graph.shape(source)[2:]
    field = corr.cross.corr
    counts = np.ones(())
    for r, s in zip(corr.cross.radius, sizes):
        d = np.arange(-r, r + 1)
        counts = np.multiply.outer(counts, np.maximum(s - np.abs(d), 0).astype(np.float64))
    total = np.tensordot(field, counts, axes=len(sizes))  # sum_d n(d) R[c, c', d]
    k = int(np.prod(sizes))
    own = correlation.mean_variance_factor(corr, sizes) * k  # the pool rule's diagonal
    own = np.broadcast_to(own, (channels,))
    if np.any(own <= 0):
        return None
    out = total / np.sqrt(np.outer(own, own))
    np.fill_diagonal(out, 1.0)
    return np.clip(out, -1.0, 1.0)


def cross_terms(corr: np.ndarray, var: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``sum_{c != c'} W_cj W_c'j Cov(g_c, g_c')`` per output j, ``w`` ``[C, N]``."""
    sd = np.sqrt(np.broadcast_to(np.asarray(var, np.float64).reshape(-1), (corr.shape[0],)))
    cov = corr * np.outer(sd, sd)
    np.fill_diagonal(cov, 0.0)
    w = np.asarray(w, np.float64)
    return np.einsum("cj,cd,dj->j", w, cov, w)


__all__ = ["cross_terms", "pool_node", "pooled_correlation"]
