"""Token-field carriers of the layout ops (:mod:`.tokens` has the field and the other ops):
they follow the token axes. Reshape, Flatten, Squeeze and Unsqueeze keep the token digit of the
flat index in its place; Transpose keeps or permutes the token index (a window partition and
its reverse); Slice, Gather and Split select rows and columns of the covariance (a pooled
variance takes the selected tokens' share); Pad without padding keeps it, a constant Pad of
the token axes puts it at the input's cells (the padding constants); Concat stacks
independent pieces along the token axis (or moves one tensor's tokens: ``torch.roll``), and
averages the pieces' covariances along another axis."""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from . import step_maps
from .masks import sequence_lengths
from .context import RuleError
from .shape import pad_params, slice_params
from .token_carriers import carrier, first_with_field
from .token_field import (
    MAX_EXPANDED,
    attach,
    expanded,
    grid,
    inner_blocks,
    profile,
    reshaped_token_axes,
    same_field,
    sigma,
    token_axes,
    without,
)


@carrier("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(ctx, inputs, outputs):
    """The token digit of the flat index keeps its place: with ``S`` elements between
    consecutive tokens (the axes after the token axes times the stride), the output axes
    covering that digit are the token axes, merged with outer axes such as the batch (index %
    n) and with ``S / (elements after them)`` inner ones (the new stride)."""
    x = inputs[0]
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape(0)
    axes = token_axes(x.tokens, len(in_shape))
    placed = reshaped_token_axes(axes[-1], x.tokens.n, x.tokens.stride, in_shape, out_shape)
    if placed is None:
        raise RuleError("the token digit is split between axes")
    out_axes, stride = placed
    sig = float(np.mean(x.var)) * x.tokens.cov
    if _pooled_over(x, len(in_shape), axes):
        sig = _profiled(outputs[0], out_shape, out_axes, sig, stride)
    return [attach(outputs[0], out_shape, out_axes, sig, stride)]


def _profiled(out: Moments, shape, axes: list[int], sig: np.ndarray, stride: int) -> np.ndarray:
    """``sig`` with ``out``'s variance profile along the token ``axes`` moved into it, where
    the input's variance was one value along its own token axes: the profile is then along axes
    that a layout op made token axes (Swin's windows, masked differently, put back on the map:
    each window's variance). The field is spelled out over every index of the axes when longer
    (:func:`.token_field.expanded`, at most ``MAX_EXPANDED``), then ``Sigma[s, t] sqrt(p_s
    p_t)``, p the profile (mean 1). A profile that repeats every ``n`` indices (the batch
    merged into the axes, ``[N*T, F]`` from ``[N, T, F]``: every sample's tokens alike) is
    put on the ``n`` tokens as they are (token = index % n), without spelling the groups out.
    Unchanged where the profile cannot be placed."""
    rank = len(shape)
    mean, var = grid(out, rank)
    if stride != 1 or np.isneginf(mean).any() or all(var.shape[a] == 1 for a in axes):
        return sig
    total = int(np.prod([shape[a] for a in axes], dtype=np.int64))
    n = sig.shape[0]
    if total % n:
        return sig
    p = profile(out, shape, axes, total)
    if total != n:
        groups = p.reshape(-1, n)
        if np.ptp(groups, axis=0).max() <= 1e-9 * np.abs(groups).max():
            p = groups[0]
        elif total > MAX_EXPANDED:
            return sig
        else:
            sig = np.kron(np.eye(total // n), sig)
    level = float(np.mean(p))
    if not level > 0 or not np.all(np.isfinite(p)):
        return sig
    d = np.sqrt(p / level)
    return sig * np.outer(d, d)


@carrier("Transpose")
def _transpose(ctx, inputs, outputs):
    """Token axes kept in order: unchanged. Reordered among themselves (a window partition's
    ``[B, nH, ws, nW, ws, C] -> [B, nH, nW, ws, ws, C]``): the token index is permuted. Split
    by the permutation: the field moves to the smallest run of axes that stays together,
    outer axes added (their indices independent groups, :func:`.token_field.expanded`: the
    windows put back on the map) or outer token digits dropped (taken as independent samples,
    :func:`.token_field.inner_blocks`: the tokens of one window)."""
    x = inputs[0]
    shape = ctx.in_shape(0)
    rank = len(shape)
    perm = list(ctx.attr("perm", list(range(rank))[::-1]))
    axes = token_axes(x.tokens, rank)
    new = [perm.index(a) for a in axes]
    if new == list(range(new[0], new[0] + len(new))):
        return [attach(outputs[0], ctx.out_shape(0), new, float(np.mean(x.var)) * x.tokens.cov,
                       x.tokens.stride)]
    t = x.tokens
    first, last = axes[0], axes[-1]
    runs = [axes] + [list(range(r, last + 1)) for r in range(first - 1, -1, -1)]
    runs += [list(range(r, last + 1)) for r in range(first + 1, last + 1)]
    for run in runs:
        images = sorted(perm.index(a) for a in run)
        if images != list(range(images[0], images[0] + len(run))):
            continue
        sizes = [shape[a] for a in run]
        total = int(np.prod(sizes, dtype=np.int64))
        cov = expanded(t, sizes) if run[0] <= first else inner_blocks(t, total)
        if cov is None or total > max(MAX_EXPANDED, t.n):
            continue
        order = [run.index(perm[o]) for o in images]
        index = np.arange(total).reshape(sizes).transpose(order).ravel()
        sig = float(np.mean(x.var)) * cov[np.ix_(index, index)]
        if _pooled_over(x, rank, axes):
            sig = _profiled(outputs[0], ctx.out_shape(0), images, sig, 1)
        return [attach(outputs[0], ctx.out_shape(0), images, sig)]
    raise RuleError("the token axes are reordered")


def _pooled_over(x: Moments, rank: int, axes: list[int]) -> bool:
    """x's variance is one value along the token ``axes`` (its per-token profile is the
    field's diagonal), whatever its mean does (a zero-padded window's means are per token,
    and a Slice's rule takes the variance along with them)."""
    var = np.asarray(x.var)
    var = var.reshape((1,) * (rank - var.ndim) + var.shape) if var.ndim < rank else var
    return var.ndim == rank and all(var.shape[a] == 1 for a in axes)


def _pick(x: Moments, out: Moments, in_shape, out_shape, picks: dict) -> Moments:
    """Indices ``picks[axis]`` (1-d) along token axes spanning several axes or with a batch
    merged into them: the field spelled out over every index of the token axes, rows and
    columns selected; a variance pooled over the tokens takes the selected tokens' share."""
    rank = len(in_shape)
    axes = token_axes(x.tokens, rank)
    sizes = [in_shape[a] for a in axes]
    cov = expanded(x.tokens, sizes)
    if cov is None or any(np.ndim(i) != 1 for i in picks.values()) or len(out_shape) != rank:
        return without(out)
    cells = np.arange(int(np.prod(sizes, dtype=np.int64))).reshape(sizes)
    for axis, index in picks.items():
        if axis in axes:
            cells = np.take(cells, index, axis=axes.index(axis))
    index = cells.ravel()
    if _pooled_over(x, rank, axes) and index.size < cov.shape[0]:
        share = float(np.mean(np.diag(cov)[index]) / np.mean(np.diag(cov)))
        if np.isfinite(share) and share > 0:
            out = Moments(out.mean, out.var * share, None, None, out.tokens, out.rows)
    return attach(out, out_shape, axes, float(np.mean(x.var)) * cov[np.ix_(index, index)])


def _select(ctx, x: Moments, out: Moments, axis: int, index: np.ndarray, out_shape) -> Moments:
    """Tokens ``index`` along the (single, unmerged) token axis ``axis``; one token (a scalar
    index: the axis removed, a classification token ``h[:, 0]``) leaves no field."""
    rank = len(ctx.in_shape(0))
    axes = token_axes(x.tokens, rank)
    if axis not in axes:
        return same_field(x, out, out_shape)
    if len(axes) != 1 or ctx.in_shape(0)[axis] != x.tokens.n or np.ndim(index) > 1:
        return without(out)
    cov = x.tokens.cov
    picked = np.atleast_1d(index)
    if _pooled_over(x, rank, [axis]) and len(picked) < cov.shape[0]:
        out = _token_share(out, cov, picked)
    if np.ndim(index) == 0:
        return without(out)
    sig = float(np.mean(x.var)) * cov[np.ix_(index, index)]
    return attach(out, out_shape, [axis + len(out_shape) - rank], sig)


def _token_share(out: Moments, cov: np.ndarray, index: np.ndarray) -> Moments:
    """``out`` (a variance pooled over every token, whose per-token profile is the field's
    diagonal) with the selected tokens' own share of it, ``Var_sel = Var mean_{t in index}
    cov[t, t] / mean_t cov[t, t]`` (an RNN's last step after a zero initial state: more than
    the average; a classification token whose embedding is a constant: less)."""
    share = float(np.mean(np.diag(cov)[index]) / np.mean(np.diag(cov)))
    if not (np.isfinite(share) and share > 0):
        return out
    return Moments(out.mean, out.var * share, None, None, out.tokens, out.rows)


@carrier("Slice")
def _slice(ctx, inputs, outputs):
    x, out = inputs[0], outputs[0]
    in_shape = ctx.in_shape(0)
    axes = token_axes(x.tokens, len(in_shape))
    if len(axes) > 1 or in_shape[axes[0]] != x.tokens.n:
        picks = {axis: np.arange(in_shape[axis])[slice(start, end, step)]
                 for axis, start, end, step in slice_params(ctx, len(in_shape))}
        if not set(picks) & set(axes):
            return [same_field(x, out, ctx.out_shape(0))]
        return [_pick(x, out, in_shape, ctx.out_shape(0), picks)]
    for axis, start, end, step in slice_params(ctx, len(in_shape)):
        index = np.arange(in_shape[axis])[slice(start, end, step)]
        out = _select(ctx, x, out, axis, index, ctx.out_shape(0))
        if out.tokens is None:
            break
    return [out]


@carrier("Pad")
def _pad(ctx, inputs, outputs):
    """No padding (Swin's pad to a multiple of the window, when there is none): unchanged. A
    constant Pad of the token axes alone (Swin's map smaller than its window): the padded tokens
    are constants, so the field over the output's tokens is the input's at the cells the input
    lands on and 0 elsewhere, ``Sigma_y[o(s), o(t)] = Sigma_x[s, t]`` (the real tokens keep the
    component they share: a window's attention output, which the next block's P V averages),
    carried as the correlation beside the per-cell variances."""
    x, in_shape, out_shape = inputs[0], ctx.in_shape(0), ctx.out_shape(0)
    rank = len(in_shape)
    try:
        mode, _, pads = pad_params(ctx, rank)
    except RuleError:
        return [without(m) for m in outputs]
    padded = {a: p for a, p in pads.items() if p != (0, 0)}
    if not padded:
        return [same_field(x, outputs[0], out_shape)]
    axes = token_axes(x.tokens, rank)
    if (mode != "constant" or axes is None or not set(padded) <= set(axes)
            or any(b < 0 or e < 0 for b, e in padded.values())):
        return [without(m) for m in outputs]
    sizes = [in_shape[a] for a in axes]
    cov = expanded(x.tokens, sizes)
    total = int(np.prod([out_shape[a] for a in axes], dtype=np.int64))
    if cov is None or total > max(MAX_EXPANDED, x.tokens.n):
        return [without(m) for m in outputs]
    cells = np.arange(total).reshape([out_shape[a] for a in axes])
    cells = cells[tuple(slice(padded.get(a, (0, 0))[0], padded.get(a, (0, 0))[0] + in_shape[a])
                        for a in axes)].ravel()
    # as a correlation (each padded cell its own, 1): the output keeps its per-cell variances,
    # the padding's 0 among them, which the rules after it read (unit_rows: a row of zeros)
    d = np.sqrt(np.maximum(np.diag(cov), 1e-300))
    corr = np.eye(total)
    corr[np.ix_(cells, cells)] = cov / np.outer(d, d)
    return [attach(outputs[0], out_shape, axes, corr)] + [without(m) for m in outputs[1:]]


@carrier("ReverseSequence")
def _reverse_sequence(ctx, inputs, outputs):
    """The first ``len`` tokens of each sequence reversed (the time axis the token axis): the
    token index so permuted, the permuted fields mixed over the batch by their share of
    sequences, ``Sigma = sum_L w_L cov[idx_L, idx_L]``."""
    x = inputs[0]
    shape = ctx.in_shape(0)
    rank = len(shape)
    time = ctx.attr("time_axis", 0) % rank
    axes = token_axes(x.tokens, rank)
    if time not in axes:
        return [same_field(x, outputs[0], ctx.out_shape(0))]
    lengths = sequence_lengths(ctx, 1)
    steps = shape[time]
    if axes != [time] or x.tokens.n != steps or lengths is None:
        return [without(outputs[0])]
    found, counts = np.unique(np.clip(lengths, 0, steps), return_counts=True)
    cov = x.tokens.cov
    sig = np.zeros_like(cov)
    for length, count in zip(found, counts):
        index = np.concatenate([np.arange(length)[::-1], np.arange(length, steps)]).astype(int)
        sig += count / counts.sum() * cov[np.ix_(index, index)]
    return [attach(outputs[0], ctx.out_shape(0), axes, float(np.mean(x.var)) * sig)]


@carrier("Gather")
def _gather(ctx, inputs, outputs):
    x = inputs[0]
    index = ctx.const(1)
    if x is None or index is None:
        return [without(m) for m in outputs]
    rank = len(ctx.in_shape(0))
    axis = ctx.attr("axis", 0) % rank
    index = np.asarray(index, dtype=np.int64) % ctx.in_shape(0)[axis]
    return [_select(ctx, x, outputs[0], axis, index, ctx.out_shape(0))]


@carrier("Split")
def _split(ctx, inputs, outputs):
    x = inputs[0]
    rank = len(ctx.in_shape(0))
    axis = ctx.attr("axis", 0) % rank
    out, start = [], 0
    for i, m in enumerate(outputs):
        size = ctx.out_shape(i)[axis]
        index = np.arange(start, start + size)
        start += size
        out.append(_select(ctx, x, m, axis, index, ctx.out_shape(i)) if m is not None else m)
    return out


@carrier("Concat")
def _concat(ctx, inputs, outputs):
    """Along the token axis: independent pieces, block-diagonal covariance; along another
    axis: the pieces' covariances averaged by their sizes."""
    out_shape = ctx.out_shape(0)
    rank = len(out_shape)
    axis = ctx.attr("axis") % rank
    x = first_with_field(inputs)
    axes = token_axes(x.tokens, rank)
    pieces = [m if m is not None else Moments.scalar(0.0, 0.0) for m in inputs]
    shapes = [ctx.in_shape(i) for i in range(len(inputs))]
    if axis in axes:
        rolled = _pieces_of_one(ctx, axis)
        if rolled is not None:
            return [rolled(outputs[0], out_shape)]
        stepped = step_maps.field(ctx)  # one map of each step of one sequence
        if stepped is not None:
            return [attach(without(outputs[0]), out_shape, [stepped[0]], stepped[1])]
        if len(axes) != 1 or shapes[inputs.index(x)][axis] != x.tokens.n or x.tokens.stride > 1:
            raise RuleError("concatenation of merged token axes")
        blocks = [sigma(m, s, axes, s[axis]) for m, s in zip(pieces, shapes)]
        sizes = [b.shape[0] for b in blocks]
        sig = np.zeros((sum(sizes), sum(sizes)))
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        for b, o in zip(blocks, offsets):
            sig[o:o + b.shape[0], o:o + b.shape[0]] = b
        return [attach(outputs[0], out_shape, axes, sig)]
    n, stride = x.tokens.n, x.tokens.stride
    weights = np.array([s[axis] for s in shapes], dtype=np.float64)
    sig = sum(w * sigma(m, s, axes, n, stride) for w, m, s in zip(weights, pieces, shapes))
    return [attach(outputs[0], out_shape, axes, sig / weights.sum(), stride)]


def _pieces_of_one(ctx, axis: int):
    """A Concat along ``axis`` of step-1 Slices of one tensor X along that axis alone
    (``torch.roll``: ``Concat(X[-s:], X[:-s])``): X's tokens in a new order, not independent
    pieces. Returns a function of (output, shape) giving the output with X's field so moved,
    or None."""
    known = ctx.known
    source, index = None, []
    for name in ctx.node.input:
        node_id = ctx.graph.producer.get(name)
        node = ctx.graph.node(node_id) if node_id is not None else None
        if node is None or node.op_type != "Slice" or known is None:
            return None
        sub = ctx.for_node(node_id)
        if source not in (None, node.input[0]):
            return None
        source = node.input[0]
        shape = sub.in_shape(0)
        params = slice_params(sub, len(shape))
        if len(params) != 1 or params[0][0] != axis or params[0][3] != 1:
            return None
        _, start, end, _ = params[0]
        index.append(np.arange(shape[axis])[slice(start, end)])
    x = known.get(source)
    if x is None or x.tokens is None:
        return None
    shape = ctx.graph.shape(source)
    index = np.concatenate(index)
    if token_axes(x.tokens, len(shape)) is None:
        return None
    return lambda out, out_shape: _pick(x, out, shape, out_shape, {axis: index})
