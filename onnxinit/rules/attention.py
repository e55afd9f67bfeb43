"""Attention-style ops: MatMul of two activations (Q @ K^T, P @ V), Softmax, LogSoftmax, Einsum.

MatMul of independent activations A[..., M, K] and B[..., K, N], per-index statistics along any
axis included (in particular per feature along the contracted axis)::

    E[y_mn]   = sum_k mu_a[m,k] mu_b[k,n]
    Var[y_mn] = sum_k (nu_a + mu_a^2)(nu_b + mu_b^2) - mu_a^2 mu_b^2

This assumes the entries of A (and of B) along k are uncorrelated and A independent of B; for
Q K^T with Q, K projections of the same tokens the diagonal (a token with itself) is correlated.

Softmax over n entries: Monte Carlo over n logits drawn from the input's statistics (its source
when it carries one: a Gaussian and element-wise functions), cached by (n, statistics); with
identically distributed logits the mean is exactly 1/n and only the variance is estimated.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..moments import Moments
from .context import RuleContext, RuleError, signal
from .registry import rule

_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
_CACHE_SIZE = 1024
_SAMPLES = 4_000_000  # logits drawn per softmax distribution (in chunks)
_CHUNK = 1 << 20
_MAX_GROUPS = 256


def _full(x: Moments, rank: int) -> tuple[np.ndarray, np.ndarray]:
    x = x.expand_rank(rank)
    mean, var = np.broadcast_arrays(x.mean, x.var)
    if mean.ndim not in (0, rank):
        raise RuleError("statistics of a higher rank than the tensor")
    if mean.ndim == 0:
        mean, var = mean.reshape((1,) * rank), var.reshape((1,) * rank)
    return np.array(mean, dtype=np.float64), np.array(var, dtype=np.float64)


def _compress(mean: np.ndarray, var: np.ndarray) -> Moments:
    for axis in range(mean.ndim):
        if mean.shape[axis] > 1:
            m0, v0 = np.take(mean, [0], axis=axis), np.take(var, [0], axis=axis)
            if np.allclose(mean, m0, rtol=1e-12, atol=0) and np.allclose(
                var, v0, rtol=1e-12, atol=0
            ):
                mean, var = m0, v0
    if mean.size == 1:
        return Moments(mean.reshape(()), var.reshape(()))
    return Moments(mean, var)


# ---------------------------------------------------------------------------------------------
# MatMul of two activations


def matmul_activations(inputs, ctx: RuleContext):
    """Y = A @ B, A and B independent activations of rank >= 2 (numpy batch broadcasting):
    E = sum_k mu_a mu_b, Var = sum_k [(nu_a+mu_a^2)(nu_b+mu_b^2) - mu_a^2 mu_b^2], per index of
    the tracked axes of A (batch, m) and B (batch, n), with per-k statistics when tracked."""
    a, b = signal(inputs, 0), signal(inputs, 1)
    sa, sb = ctx.in_shape(0), ctx.in_shape(1)
    if len(sa) < 2 or len(sb) < 2:
        raise RuleError("MatMul of a 1-D activation")
    k = sa[-1]
    ma, va = _full(a, len(sa))
    mb, vb = _full(b, len(sb))
    ma, va = (np.broadcast_to(t, t.shape[:-1] + (k,)) for t in (ma, va))
    mb, vb = (np.broadcast_to(t, t.shape[:-2] + (k, t.shape[-1])) for t in (mb, vb))
    mean = np.matmul(ma, mb)
    var = np.matmul(va + ma**2, vb + mb**2) - np.matmul(ma**2, mb**2)
    rank = len(ctx.out_shape(0))
    mean = mean.reshape((1,) * (rank - mean.ndim) + mean.shape)
    var = var.reshape((1,) * (rank - var.ndim) + var.shape)
    return [_compress(mean, np.maximum(var, 0.0))]


# ---------------------------------------------------------------------------------------------
# Softmax, LogSoftmax


def _key_of(*arrays) -> tuple:
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a, dtype=np.float64)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return (h.hexdigest(),)


def _draw(rng, count: int, mean: np.ndarray, var: np.ndarray, chain) -> np.ndarray:
    z = rng.standard_normal((count, mean.shape[-1])) * np.sqrt(var) + mean
    for f in chain:
        z = f.fn(z)
    return z


def _softmax_stats(mean, var, chain, log: bool, rng, share: int = 1):
    """Per-index (E, Var) of softmax (log-softmax) of n independent logits with per-index
    ``mean``/``var`` (length n; or length 1 for identically distributed ones), then ``chain``;
    ``share``: how many distributions one node draws for (they split the sample budget)."""
    n = mean.shape[-1]
    iid = np.all(mean == mean[0]) and np.all(var == var[0])
    # one distribution: 4x the budget when its logits differ; several (per query position,
    # head...): the node's budget is shared, their average (what the tensor's total sees) is
    # still estimated from every sample
    total = (_SAMPLES if iid or share > 1 else 4 * _SAMPLES) // share
    count = max(2000, min(200_000, total // n))
    step = max(1, _CHUNK // n)
    s1 = np.zeros(n)
    s2 = np.zeros(n)
    done = 0
    with np.errstate(all="ignore"):
        while done < count:
            c = min(step, count - done)
            z = _draw(rng, c, mean, var, chain)
            z = z - z.max(axis=1, keepdims=True)
            lse = np.log(np.exp(z).sum(axis=1, keepdims=True))
            y = z - lse if log else np.exp(z - lse)
            s1 += y.sum(axis=0)
            s2 += (y * y).sum(axis=0)
            done += c
    if not (np.all(np.isfinite(s1)) and np.all(np.isfinite(s2))):
        raise RuleError("softmax of non-finite logits")
    if iid:
        e = s1.sum() / (count * n)
        v = s2.sum() / (count * n) - e**2
        if not log:
            e = 1.0 / n  # exact by symmetry; every sample sums to 1
        return np.full(1, e), np.full(1, max(v, 0.0))
    e = s1 / count
    v = s2 / count - e**2
    if not log:
        e = e / e.sum()  # sums to 1 exactly
    return e, np.maximum(v, 0.0)


def _cached_stats(mean, var, src_key, chain, log, ctx, share):
    key = ("log" if log else "soft", mean.shape[-1], *_key_of(mean, var), src_key, share)
    hit = _CACHE.get(key)
    if hit is None:
        hit = _softmax_stats(mean, var, chain, log, ctx.rng(), share)
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = hit
    return hit


@rule("Softmax", "LogSoftmax")
def softmax(inputs, ctx: RuleContext):
    """y = softmax(x) over ``axis`` (opset >= 13; before 13 over the flattened axes
    [axis:], default axis 1), n entries: Monte Carlo over n independent logits drawn from the
    input's per-index statistics (its source distribution when scalar), per index along the
    other tracked axes; E = 1/n exactly for identically distributed logits. LogSoftmax:
    y = x - logsumexp(x), same sampling."""
    x = signal(inputs, 0)
    shape = ctx.in_shape(0)
    rank = len(shape)
    log = ctx.node.op_type == "LogSoftmax"
    if ctx.opset >= 13:
        axis = ctx.attr("axis", -1) % rank
        inner = [axis]
    else:
        axis = ctx.attr("axis", 1) % rank
        inner = list(range(axis, rank))
    n = int(np.prod([shape[a] for a in inner]))
    # axes along which the statistics repeat (a causal mask expanded over the batch) are
    # dropped first: they add no distinct distribution
    mean, var = _full(_compress(*_full(x, rank)), rank)
    outer = [a for a in range(rank) if a not in inner]
    perm = outer + inner
    mean, var = mean.transpose(perm), var.transpose(perm)
    inner_tracked = any(mean.shape[len(outer) + i] > 1 for i in range(len(inner)))
    inner_shape = tuple(shape[a] for a in inner)
    outer_shape = mean.shape[: len(outer)]
    groups = int(np.prod(outer_shape)) if outer_shape else 1
    if groups > _MAX_GROUPS or groups * n * 2000 > 1 << 28:
        raise RuleError("too many distinct logit distributions to sample")
    if inner_tracked:
        mean = np.broadcast_to(mean, outer_shape + inner_shape).reshape(groups, n)
        var = np.broadcast_to(var, outer_shape + inner_shape).reshape(groups, n)
    else:
        mean, var = mean.reshape(groups, 1), var.reshape(groups, 1)
    chain, src_key = (), None
    src = x.source
    scalar_src = src is not None and np.size(src.mean) == 1 and np.size(src.var) == 1
    if scalar_src and src.chain and x.is_scalar:
        chain = src.chain
        src_key = (float(np.ravel(src.mean)[0]), float(np.ravel(src.var)[0]),
                   tuple(f.key for f in chain))  # fmt: skip
        mean = np.full((1, 1), float(np.ravel(src.mean)[0]))
        var = np.full((1, 1), float(np.ravel(src.var)[0]))
    out_m, out_v = [], []
    for g in range(groups):
        m = np.broadcast_to(mean[g], (n,)) if mean.shape[1] == 1 else mean[g]
        v = np.broadcast_to(var[g], (n,)) if var.shape[1] == 1 else var[g]
        e, s = _cached_stats(np.ascontiguousarray(m), np.ascontiguousarray(v), src_key, chain,
                             log, ctx, groups)  # fmt: skip
        out_m.append(e)
        out_v.append(s)
    width = out_m[0].shape[0]
    inner_out = inner_shape if width > 1 else (1,) * len(inner)
    out_mean = np.stack(out_m).reshape(outer_shape + inner_out)
    out_var = np.stack(out_v).reshape(outer_shape + inner_out)
    inv = np.argsort(perm)
    return [_compress(out_mean.transpose(inv), out_var.transpose(inv))]


# ---------------------------------------------------------------------------------------------
# Einsum


@rule("Einsum")
def einsum(inputs, ctx: RuleContext):
    """Einsum of two operands (signals or constants, independent) without repeated labels in a
    term, where each summed label appears in every signal's term (so the summed products are
    independent): E = einsum(mu_a, mu_b), Var = einsum(nu_a + mu_a^2, nu_b + mu_b^2)
    - einsum(mu_a^2, mu_b^2); with a constant W (variance 0) this is E = einsum(mu, W),
    Var = einsum(nu, W^2)."""
    eq = ctx.attr("equation").replace(" ", "")
    if "..." in eq or "->" not in eq:
        raise RuleError("implicit output or ellipsis")
    lhs, rhs = eq.split("->")
    terms = lhs.split(",")
    if len(terms) != 2 or len(inputs) != 2:
        raise RuleError("Einsum of other than two operands")
    if any(len(set(t)) != len(t) for t in terms):
        raise RuleError("a repeated label (a diagonal)")
    summed = set(lhs) - set(rhs) - {","}
    sizes = {}
    ops = []
    for i, term in enumerate(terms):
        shape = ctx.in_shape(i)
        if len(shape) != len(term):
            raise RuleError("equation and shape disagree")
        sizes.update(zip(term, shape))
        m = inputs[i]
        if m is not None:
            if not summed <= set(term):
                raise RuleError("a summed label missing from a signal's term")
            mean, var = _full(m, len(shape))
        else:
            c = ctx.const(i)
            if c is None:
                raise RuleError(f"input {i} is neither a signal nor constant")
            mean = np.asarray(c, dtype=np.float64).reshape(shape)
            var = np.zeros_like(mean)
        target = tuple(sizes[t] if t in summed else mean.shape[j] for j, t in enumerate(term))
        ops.append((np.broadcast_to(mean, target), np.broadcast_to(var, target)))
    (ma, va), (mb, vb) = ops
    mean = np.einsum(eq, ma, mb)
    var = np.einsum(eq, va + ma**2, vb + mb**2) - np.einsum(eq, ma**2, mb**2)
    return [_compress(mean, np.maximum(var, 0.0))]


__all__ = ["einsum", "matmul_activations", "softmax"]
