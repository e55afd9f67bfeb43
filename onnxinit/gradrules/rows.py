"""Statistics of softmax rows that the backward rules of attention need, by Monte Carlo over
the forward moments of the logits (seeded; Gaussian logits with each row's per-key means and
variances, drawn jointly across the keys with the correlation of the logits' token field: a
shift common to the whole row the softmax does not see, one that only the real keys of a
zero-padded window share it does). The queries of one window and head draw with a common part
(``query_corr``, :mod:`.logit_queries`), and pairs of their rows at the same draw give the
statistics between queries (:meth:`RowStats.cross`, :meth:`RowStats.cross_within`).

For probabilities P (a row of K) and ``s_n = sum_k P_k^n``:

- ``mean[k] = E[P_k]`` and ``second[k, l] = E[P_k P_l]`` (what dV = P^T dY and the
  cross-query terms need);
- ``M = diag(mean) - second = E[diag(P) (I - 1 P^T)]``: dS = M dP on average over P;
- ``W[k, l] = E[P_k P_l (delta_kl - P_k - P_l + s_2)]``, the second moments of dS for dP
  independent across the row with unit variance; pooled over keys, diagonal
  ``E[s_2 - 2 s_3 + s_2^2] / K`` and off-diagonal ``E[-s_2 - s_2^2 + 2 s_3] / (K (K - 1))``
  (a row of W sums to zero: dS sums to zero over the row). For dP independent across the row
  with covariance C (:meth:`RowStats.within`), ``dS = A dP`` with ``A_kj = P_k (delta_kj -
  P_j)`` gives ``E[A C A^T]_kl = E[P_k P_l (C_kl - (C P)_k - (C P)_l + P^T C P)]``, per key:
  keys that differ (padding whose keys and values are zero, masks) are not pooled.

The logits' statistics are read where the graph keeps them finest (:func:`logits_of`): a
Reshape that merges windows into the batch (Swin's ``[B, nW, heads, N, N] -> [B nW, heads, N,
N]`` after its shifted-window mask) pools them over the windows, and a pooled -100 mask is a
logit variance near 2000 (every row one-hot, ``sum_q E[P_qk^2]`` 0.95 for 0.036).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..moments import Moments
from ..rules.id_masks import sampled_rows

DRAWS = 1 << 17  # logits drawn in all
MAX_ROWS = 256  # distinct rows of logit statistics sampled (evenly spaced beyond)
RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


@dataclass(frozen=True)
class RowStats:
    mean: np.ndarray  # [K]
    second: np.ndarray  # [K, K]
    w_diag: float
    w_off: float
    samples: np.ndarray | None = None  # [n, K] drawn rows of P
    weights: np.ndarray | None = None  # [n] their weights (mean 1), None: equal
    # draws of two rows of one window and head at the same draw (their queries' logits share
    # a component): [m, K] each and [m] weights; None: rows independent
    paired: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def keys(self) -> int:
        return self.mean.size

    def within(self, c: np.ndarray | None = None) -> np.ndarray:
        """``E[A C A^T]`` (module docstring) from the drawn rows, for dP's covariance C within a
        row (``[K, K]``; a vector: its diagonal); W (``C = I``) pooled over keys without them."""
        if self.samples is None:
            k = self.keys
            scale = 1.0 if c is None else float(np.mean(np.diag(c) if np.ndim(c) == 2 else c))
            w = np.full((k, k), self.w_off) * scale
            w[np.diag_indices(k)] = self.w_diag * scale
            return w
        p = self.samples
        w = np.ones(p.shape[0]) if self.weights is None else self.weights
        c = np.eye(self.keys) if c is None else np.asarray(c, dtype=np.float64)
        c = np.diag(np.broadcast_to(c, (self.keys,))) if c.ndim < 2 else c
        n = p.shape[0]
        pw = p * w[:, None]
        cp = p @ c  # (C P)_k per draw
        cross = (pw * cp).T @ p / n  # E[P_k (C P)_k P_l]
        quad = (cp * p).sum(axis=1)  # P^T C P
        return c * (pw.T @ p / n) - cross - cross.T + (pw * quad[:, None]).T @ p / n

    def projection(self) -> np.ndarray:
        """M (module docstring)."""
        return np.diag(self.mean) - self.second

    def cross(self) -> np.ndarray:
        """``E[P_q P_q'^T]`` for two queries q != q' of one window and head (``p p^T`` for
        independent rows)."""
        if self.paired is None:
            return np.outer(self.mean, self.mean)
        a, b, w = self.paired
        out = (a * w[:, None]).T @ b / len(w)
        return (out + out.T) / 2

    def cross_within(self, c: np.ndarray) -> np.ndarray:
        """``E[A_q C A_q'^T]`` for two queries q != q' of one window and head, ``A = diag(P) -
        P P^T`` (``M C M^T`` for independent rows): with a, b the two rows, ``C o E[a b^T] -
        E[(a o C b) b^T] - E[a (b o C a)^T] + E[(a^T C b) a b^T]``."""
        m = self.projection()
        if self.paired is None:
            return m @ c @ m.T
        a, b, w = self.paired
        n = len(w)
        cb, ca = b @ c.T, a @ c
        out = (c * ((a * w[:, None]).T @ b / n) - (a * cb * w[:, None]).T @ b / n
               - (a * w[:, None]).T @ (b * ca) / n
               + (a * ((a * cb).sum(axis=1) * w)[:, None]).T @ b / n)
        return (out + out.T) / 2


def _rows(x: Moments, shape, query_weights=None):
    """[R, K] means and variances of the distinct rows of logits ``x``, [R] their weights
    (``query_weights[q]`` of the row's query, axis -2, when the statistics vary along it; rows
    of weight 0 left out; else 1) and [R] their group (the leading index: one window and
    head)."""
    rank, k = len(shape), shape[-1]
    mean = np.asarray(x.mean, dtype=np.float64)
    var = np.asarray(x.var, dtype=np.float64)
    mean = mean.reshape((1,) * (rank - mean.ndim) + mean.shape)
    var = var.reshape((1,) * (rank - var.ndim) + var.shape)
    both = np.broadcast_shapes(mean.shape, var.shape, (1,) * (rank - 1) + (k,))
    mean = np.broadcast_to(mean, both).reshape(-1, k)
    var = np.broadcast_to(var, both).reshape(-1, k)
    weight = np.ones(len(mean))
    queries = both[-2] if rank >= 2 else 1
    group = np.arange(len(mean)) // queries
    if query_weights is not None and rank >= 2 and both[-2] == len(query_weights) > 1:
        weight = np.asarray(query_weights, np.float64)[np.arange(len(mean)) % both[-2]]
        keep = weight > 0
        if keep.any():
            mean, var, weight, group = mean[keep], var[keep], weight[keep], group[keep]
        else:
            weight = np.ones(len(mean))
    if len(mean) > MAX_ROWS:
        pick = np.linspace(0, len(mean) - 1, MAX_ROWS).astype(np.int64)
        mean, var, weight, group = mean[pick], var[pick], weight[pick], group[pick]
    return mean, var, weight / weight.mean(), group


def key_correlation(x: Moments, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(per-key variance factor ``diag(cov)`` [K], correlation [K, K]) of the logits' field
    along their last axis, None without one. Both forms of ``moments.Tokens`` read alike:
    ``Cov(x_s, x_t) = sqrt(var_s var_t) cov[s, t]`` with ``var`` the Moments' own (constant
    along the keys beside a variance profile in ``diag(cov)``, per key beside a correlation),
    so a key's variance is ``var_s cov[s, s]`` and its correlation ``cov[s, t] / sqrt(cov[s, s]
    cov[t, t])``."""
    t = x.tokens
    if t is None or t.axis != -1 or t.span != 1 or t.n != k or k < 2:
        return None
    d = np.maximum(np.diag(t.cov), 0.0)
    root = np.sqrt(np.where(d > 0, d, 1.0))
    corr = np.where(np.outer(d > 0, d > 0), t.cov / np.outer(root, root), 0.0)
    corr[np.diag_indices(k)] = 1.0
    return d, corr


def _correlated(mean: np.ndarray, var: np.ndarray, x: Moments) -> tuple[np.ndarray, np.ndarray]:
    """Per-key variances (the field's profile applied, :func:`key_correlation`) and a factor
    L of the keys' correlation (``L L^T``, clipped to positive semi-definite; identity without
    a field)."""
    k = mean.shape[-1]
    found = key_correlation(x, k)
    if found is None:
        return var, np.eye(k)
    d, corr = found
    values, vectors = np.linalg.eigh(corr)
    return var * d, vectors * np.sqrt(np.maximum(values, 0.0))


def _distinct_rows(x: Moments, shape) -> int:
    rank = len(shape)
    both = np.broadcast_shapes(*((1,) * (rank - np.ndim(a)) + np.shape(a)
                                 for a in (x.mean, x.var)))
    return int(np.prod(both[:-1]))


def logits_of(graph, forward, name: str, shape) -> tuple[Moments, tuple]:
    """(moments, shape) of the logits ``name`` (of static ``shape``), from the tensor of the
    Reshapes before it
    (same last axis) whose statistics tell the most rows apart (module docstring); a row's
    law does not depend on where the reshape puts it, and the rows are pooled alike."""
    sampled = sampled_rows(graph, forward, name)
    if sampled is not None and sampled[1][1:] == tuple(shape)[1:]:
        return sampled  # masked by the token ids: each sampled mask's rows (id_masks.py)
    best = (forward[name], tuple(shape))
    count = _distinct_rows(*best)
    for _ in range(4):
        node_id = graph.producer.get(name)
        node = graph.node(node_id) if node_id is not None else None
        if node is None or node.op_type not in RESHAPES or node.input[0] not in forward:
            break
        name = node.input[0]
        shape = graph.shape(name)
        if shape is None or len(shape) < 2 or shape[-1] != best[1][-1]:
            break
        rows = _distinct_rows(forward[name], shape)
        if rows > count:
            best, count = (forward[name], tuple(shape)), rows
    return best


def row_variance(logits: Moments, shape) -> float:
    """The logits' variance within a row over unmasked keys, less the covariance the keys share
    on average (a shift common to the row, which the softmax does not see)."""
    mean, var, _, _ = _rows(logits, shape)
    finite = np.isfinite(mean)
    if not finite.any():
        return 0.0
    k = mean.shape[-1]
    found = key_correlation(logits, k)
    if found is None:
        return float(var[finite].mean())
    d, corr = found
    total, count = 0.0, 0
    for m, v in zip(mean, var):  # per row: mean of diag(Sigma) less its mean off-diagonal
        keep = np.isfinite(m)
        n = int(keep.sum())
        if n == 0:
            continue
        s = np.sqrt(v[keep] * d[keep])
        sig = corr[np.ix_(keep, keep)] * np.outer(s, s)
        off = (sig.sum() - np.trace(sig)) / max(n * (n - 1), 1)
        total += float(np.maximum(np.diag(sig) - off, 0.0).mean())
        count += 1
    return total / max(count, 1)


def row_stats(logits: Moments, shape, seed: int = 0, query_weights=None,
              query_corr: float = 0.0) -> RowStats:
    """The row statistics of ``softmax(logits)`` over the last axis (module docstring), the
    rows weighted by ``query_weights`` (per query: the second moment of the gradient that
    multiplies them, ``dV = P^T dY``; a zero-padded query's rows count for nothing). The
    queries of one window and head draw their logits with correlation ``query_corr`` (a
    common standard normal per draw, ``sqrt(rho) eta + sqrt(1 - rho) xi``), and pairs of their
    rows at the same draw give :meth:`RowStats.cross`."""
    mean, var, weight, group = _rows(logits, shape, query_weights)
    var, factor = _correlated(mean, var, logits)
    rho = min(max(float(query_corr), 0.0), 1.0)
    if rho > 0 and len(np.unique(group)) == len(group):  # one row per window: two queries
        mean, var = np.concatenate([mean, mean]), np.concatenate([var, var])
        weight, group = np.concatenate([weight, weight]), np.concatenate([group, group])
        order = np.argsort(group, kind="stable")
        mean, var, weight, group = mean[order], var[order], weight[order], group[order]
    rows, k = mean.shape
    draws = max(16, DRAWS // (rows * k))
    rng = np.random.default_rng([seed, k, rows])
    eps = rng.standard_normal((rows, draws, k))
    if rho > 0:
        _, index = np.unique(group, return_inverse=True)  # a common part per group
        common = rng.standard_normal((int(index.max()) + 1, draws, k))
        eps = np.sqrt(1 - rho) * eps + np.sqrt(rho) * common[index]
    finite = np.isfinite(mean)
    z = np.where(finite, mean, -np.inf)[:, None, :] + np.where(finite, np.sqrt(var), 0.0)[
        :, None, :] * (eps @ factor.T)
    top = z.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        p = np.exp(z - np.where(np.isfinite(top), top, 0.0))
        p = p / p.sum(axis=-1, keepdims=True)
    p = np.nan_to_num(p)
    paired = _paired(p, weight, group) if rho > 0 else None
    p = p.reshape(-1, k)
    w = np.repeat(weight, draws)
    n = p.shape[0]
    s2, s3 = (p * p).sum(axis=1), (p**3).sum(axis=1)
    w_diag = float(np.mean(w * (s2 - 2 * s3 + s2 * s2))) / k
    w_off = float(np.mean(w * (-s2 - s2 * s2 + 2 * s3))) / max(k * (k - 1), 1)
    return RowStats((p * w[:, None]).mean(axis=0), (p * w[:, None]).T @ p / n, w_diag, w_off,
                    p, w, paired)


def _paired(p: np.ndarray, weight: np.ndarray, group: np.ndarray):
    """Consecutive rows of one group ([R, draws, K] drawn), as ``(a, b, w)``: their draws side
    by side and the product of their weights (mean 1); None when no group has two rows."""
    same = np.flatnonzero(group[1:] == group[:-1])
    if same.size == 0:
        return None
    draws, k = p.shape[1], p.shape[2]
    w = np.repeat(weight[same] * weight[same + 1], draws)
    return p[same].reshape(-1, k), p[same + 1].reshape(-1, k), w / w.mean()
