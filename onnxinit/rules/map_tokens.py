"""A feature map's spatial correlation as the token covariance of the sequence that a stretch of
layout ops unfolds it into (the entry of ``Moments.tokens`` from a convolution's map).

Vision networks that put attention after convolutions turn an ``[N, C, *S]`` map into
sequences ``[X, T, C]`` by Reshape and Transpose alone: a flatten of the positions (``[N, H*W,
C]``: LeViT, SwiftFormer, PVT, SegFormer's overlapping patch embedding), or MobileViT's unfold,
``[N*pA, nP, C]``, whose sequence ``a`` holds the pixels at offset ``a`` inside each ``p x p``
patch, so that its tokens are pixels ``p`` apart on the map. The map's neighbouring positions
are correlated (:mod:`onnxinit.correlation`: a 3x3 convolution's outputs share inputs), and
attention passes what its tokens share through its average whole (:mod:`.tokens`); without an
entry the tokens were taken as independent (MobileViT: ``P V`` measured 0.70 of ``V``'s
variance with 4 tokens, 2.6x the prediction for independent ones).

The stretch (Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Identity, Dropout, Cast, each a
permutation of the elements) is composed on the map's flat index: the source map's index array
goes through each op's reshape or transpose, so each element of the output knows its sample n,
channel c and position q. The output is a sequence when along its last axis every row is one
sample at one position with the channels in one order for every row (the features are the
channels), and it has rank 3, ``[X, T, F]`` (a channels-last map ``[N, H, W, C]``, ConvNeXt's
layout for its pointwise layers, is no sequence: its positions span two axes). Then, for tokens s, t of a row block x (the leading axes),

    Cov(y[x, s, c], y[x, t, c]) = nu_c rho_c(q_xs - q_xt)   (0 for two samples)

and the field's one matrix for all features is the variance-weighted mean over the channels
and the mean over the row blocks (``moments.Tokens``):

    cov[s, t] = mean_x sum_c nu_c rho_c(q_xs - q_xt) / sum_c nu_c.

``rho`` is the correlation of the values (not of their source Gaussian), ``floor`` beyond the
stored offsets. Modelled: the stationary correlation at each pair's offset, with different
offsets for different row blocks averaged. Not modelled: the change of correlation near the
border, the per-position variance profile (the Moments keep the variance the layout rules
give), correlation between channels (the field has one matrix for all features), and
correlation across row blocks (MobileViT's sequences of neighbouring pixels are correlated
with each other, but the field describes tokens of one row block only). A map whose positions
are independent (a patch embedding of white noise) gets no field: the identity is what its
absence says.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .context import RuleContext
from .token_field import attach, without

LAYOUT_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity",
                        "Dropout", "Cast"})
MAX_CHAIN = 8  # layout ops followed back from the sequence to the map
MAX_ELEMENTS = 1 << 21  # index arrays composed at most this long
MAX_TOKENS = 1024  # a longer sequence's field (T x T) is not built
_INDEPENDENT = 1e-9  # largest off-diagonal correlation of a field that says "independent"


def _source(ctx: RuleContext):
    """(map name, its Moments, the layout nodes from it to ctx.node in order), or None."""
    graph, known = ctx.graph, ctx.known or {}
    chain = [ctx.node]
    tensor = ctx.node.input[0] if ctx.node.input else ""
    for _ in range(MAX_CHAIN):
        m = known.get(tensor)
        if m is None:
            return None
        sp = m.spatial
        shape = graph.shape(tensor)
        if sp is not None and sp.corr is not None and shape is not None and len(shape) >= 3 \
                and sp.corr.rho.ndim == len(shape) - 1:
            return tensor, m, chain[::-1]
        node_id = graph.producer.get(tensor)
        if node_id is None:
            return None
        node = graph.node(node_id)
        if node.domain not in ("", "ai.onnx") or node.op_type not in LAYOUT_OPS \
                or not node.input:
            return None
        chain.append(node)
        tensor = node.input[0]
    return None


def composed_index(ctx: RuleContext, src_shape, chain) -> np.ndarray | None:
    """The source's flat index at each element of the chain's last output."""
    if int(np.prod(src_shape, dtype=np.int64)) > MAX_ELEMENTS:
        return None
    idx = np.arange(int(np.prod(src_shape)), dtype=np.int64).reshape(src_shape)
    for node in chain:
        shape = ctx.graph.shape(node.output[0])
        if shape is None:
            return None
        if node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            idx = np.transpose(idx, perm if perm else None)
            if tuple(idx.shape) != tuple(shape):
                return None
        else:
            if int(np.prod(shape, dtype=np.int64)) != idx.size:
                return None
            idx = idx.reshape(shape)
    return idx


def token_correlation(m: Moments, src_shape, idx: np.ndarray) -> np.ndarray | None:
    """``cov[s, t]`` (module docstring) for the sequence ``idx`` (``[..., T, C]`` of flat
    indices into the map ``src_shape``), or None where the output is not a sequence of the
    map's positions with its channels as features."""
    if idx.ndim < 2 or idx.shape[-2] > MAX_TOKENS or idx.shape[-2] < 2:
        return None
    coords = np.unravel_index(idx.reshape(-1, *idx.shape[-2:]), src_shape)
    n, c, pos = coords[0], coords[1], coords[2:]
    # every row: one sample, one position; the channels in the same order in every row
    if not all(np.all(a == a[..., :1]) for a in (n, *pos)):
        return None
    if not np.all(c == c[:1, :1, :]):
        return None
    channels = c[0, 0]
    corr = m.spatial.corr
    cn = src_shape[1]
    nu = np.broadcast_to(m.values_along(1, cn)[1], (cn,))[channels]
    total = float(nu.sum())
    if not np.isfinite(total) or total <= 0:
        return None
    radius = corr.rho.shape[1:]
    rho = np.broadcast_to(corr.rho, (cn,) + radius)[channels]
    floor = np.broadcast_to(corr.floor, (cn,))[channels]
    weights = nu / total
    # the channel-weighted correlation by offset, the floor's weighted mean beyond it
    rho_w = np.tensordot(weights, rho, axes=1)
    floor_w = float(weights @ floor)
    half = [(r - 1) // 2 for r in radius]
    q = [p[..., 0] for p in pos]  # [X, T] each
    same = n[..., 0][:, :, None] == n[..., 0][:, None, :]
    inside = np.ones(same.shape, dtype=bool)
    index = []
    for qa, h in zip(q, half):
        d = qa[:, None, :] - qa[:, :, None]  # [X, T, T]: q_t - q_s
        inside &= np.abs(d) <= h
        index.append(np.clip(d, -h, h) + h)
    cov = np.where(inside, rho_w[tuple(index)], floor_w)
    shift = batch_shift(corr, src_shape, channels, weights)
    cov = np.where(same, (cov - shift) / (1.0 - shift), 0.0).mean(axis=0)
    return 0.5 * (cov + cov.T)


def batch_shift(corr, src_shape, channels: np.ndarray, weights: np.ndarray) -> float:
    """The correlation every pair of one sample's positions loses to a training-mode
    BatchNormalization (``Correlation.batch_centred``, the share ``b_c`` of each channel's
    spatial-mean variance centred over the batch): it subtracts the mean of ``N K`` values
    (``N`` samples of ``K`` positions), so ``Cov(y_p, y_q) = nu_c (rho_c(p - q) - b_c F_c / (N K))``
    with ``F_c = sum_q rho_c(p - q)`` (stationary: ``sum_d n(d) rho_c(d) / K``, the floor beyond
    the stored offsets), and a sample's mean keeps ``1 - b_c / N`` of its variance. The
    variance-weighted mean over the channels; 0 where nothing is centred."""
    cn = src_shape[1]
    centred = np.broadcast_to(corr.batch_centred(cn), (cn,))[channels]
    if not np.any(centred > 0):
        return 0.0
    sizes = [int(v) for v in src_shape[2:]]
    k = float(np.prod(sizes))
    rho = np.broadcast_to(corr.rho, (cn,) + corr.rho.shape[1:])[channels]
    floor = np.broadcast_to(corr.floor, (cn,))[channels]
    counts = np.ones(())
    for size, m in zip(sizes, rho.shape[1:]):
        h = (m - 1) // 2
        counts = counts[..., None] * np.maximum(size - np.abs(np.arange(-h, h + 1)), 0)
    stored = float(counts.sum())
    f = (np.tensordot(rho, counts, axes=counts.ndim) + floor * (k * k - stored)) / k
    shift = float(weights @ (np.clip(centred, 0.0, 1.0) * np.maximum(f, 0.0))) / (
        max(1, int(src_shape[0])) * k)
    return min(shift, 0.5)


def entry(ctx: RuleContext, outputs: list) -> list:
    """``outputs`` with the token field of the map the layout stretch ending at ``ctx.node``
    unfolds (module docstring); unchanged where it is not such a stretch."""
    if not outputs or outputs[0] is None or outputs[0].tokens is not None:
        return outputs
    found = _source(ctx)
    if found is None:
        return outputs
    name, m, chain = found
    src_shape = ctx.graph.shape(name)
    out_shape = ctx.graph.shape(ctx.node.output[0])
    if out_shape is None or len(out_shape) != 3:
        return outputs  # sequences [X, T, F]; a channels-last map [N, H, W, C] is no sequence
    idx = composed_index(ctx, src_shape, chain)
    if idx is None:
        return outputs
    cov = token_correlation(m, src_shape, idx)
    if cov is None:
        return outputs
    off = cov - np.diag(np.diag(cov))
    if not np.all(np.isfinite(cov)) or float(np.abs(off).max()) <= _INDEPENDENT:
        return outputs
    rank = len(out_shape)
    return [attach(outputs[0], out_shape, [rank - 2], cov)] + [without(o) for o in outputs[1:]]


__all__ = ["batch_shift", "composed_index", "entry", "token_correlation"]
