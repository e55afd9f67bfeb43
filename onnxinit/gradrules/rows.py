"""Statistics of softmax rows that the backward rules of attention need, by Monte Carlo over
the forward moments of the logits (seeded; Gaussian logits with each row's per-key means and
variances, less the variance a row's logits share, which the softmax does not see).

For probabilities P (a row of K) and ``s_n = sum_k P_k^n``:

- ``mean[k] = E[P_k]`` and ``second[k, l] = E[P_k P_l]`` (what dV = P^T dY and the
  cross-query terms need);
- ``M = diag(mean) - second = E[diag(P) (I - 1 P^T)]``: dS = M dP on average over P;
- ``W[k, l] = E[P_k P_l (delta_kl - P_k - P_l + s_2)]``, the second moments of dS for dP
  independent across the row with unit variance; pooled over keys, diagonal
  ``E[s_2 - 2 s_3 + s_2^2] / K`` and off-diagonal ``E[-s_2 - s_2^2 + 2 s_3] / (K (K - 1))``
  (a row of W sums to zero: dS sums to zero over the row). For dP independent across the row
  with variances ``d_j`` (:meth:`RowStats.within`), ``dS = A dP`` with ``A_kj = P_k (delta_kj -
  P_j)`` gives ``E[A diag(d) A^T]_kl = E[P_k P_l (delta_kl d_k - P_l d_l - P_k d_k + sum_j P_j^2
  d_j)]``, per key: keys that differ (padding whose keys and values are zero, masks) are not
  pooled.

The logits' statistics are read where the graph keeps them finest (:func:`logits_of`): a
Reshape that merges windows into the batch (Swin's ``[B, nW, heads, N, N] -> [B nW, heads, N,
N]`` after its shifted-window mask) pools them over the windows, and a pooled -100 mask is a
logit variance near 2000 (every row one-hot, ``sum_q E[P_qk^2]`` 0.95 for 0.036).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..moments import Moments

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

    @property
    def keys(self) -> int:
        return self.mean.size

    def within(self, d: np.ndarray | None = None) -> np.ndarray:
        """``E[A diag(d) A^T]`` (module docstring) from the drawn rows; W (``d = 1``) pooled
        over keys without them."""
        if self.samples is None:
            k = self.keys
            w = np.full((k, k), self.w_off) * (1.0 if d is None else float(np.mean(d)))
            w[np.diag_indices(k)] = self.w_diag * (1.0 if d is None else float(np.mean(d)))
            return w
        p = self.samples
        w = np.ones(p.shape[0]) if self.weights is None else self.weights
        d = np.ones(self.keys) if d is None else np.broadcast_to(d, (self.keys,))
        n = p.shape[0]
        pd = p * p * d * w[:, None]
        cross = p.T @ pd / n  # E[P_k P_l^2 d_l]
        out = (p * pd.sum(axis=1, keepdims=True)).T @ p / n - cross - cross.T
        out[np.diag_indices(self.keys)] += pd.mean(axis=0)
        return out

    def projection(self) -> np.ndarray:
        """M (module docstring)."""
        return np.diag(self.mean) - self.second


def _rows(x: Moments, shape, query_weights=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[R, K] means and variances of the distinct rows of logits ``x`` and [R] their weights:
    ``query_weights[q]`` of the row's query (axis -2) when the statistics vary along it (rows
    of weight 0 left out), else 1."""
    rank, k = len(shape), shape[-1]
    mean = np.asarray(x.mean, dtype=np.float64)
    var = np.asarray(x.var, dtype=np.float64)
    mean = mean.reshape((1,) * (rank - mean.ndim) + mean.shape)
    var = var.reshape((1,) * (rank - var.ndim) + var.shape)
    both = np.broadcast_shapes(mean.shape, var.shape, (1,) * (rank - 1) + (k,))
    mean = np.broadcast_to(mean, both).reshape(-1, k)
    var = np.broadcast_to(var, both).reshape(-1, k)
    weight = np.ones(len(mean))
    if query_weights is not None and rank >= 2 and both[-2] == len(query_weights) > 1:
        weight = np.asarray(query_weights, np.float64)[np.arange(len(mean)) % both[-2]]
        keep = weight > 0
        if keep.any():
            mean, var, weight = mean[keep], var[keep], weight[keep]
        else:
            weight = np.ones(len(mean))
    if len(mean) > MAX_ROWS:
        pick = np.linspace(0, len(mean) - 1, MAX_ROWS).astype(np.int64)
        mean, var, weight = mean[pick], var[pick], weight[pick]
    t = x.tokens
    if t is not None and t.axis == -1 and t.span == 1 and t.n == k and k > 1:
        off = (t.cov.sum() - np.trace(t.cov)) / (k * (k - 1))
        var = var * np.maximum(np.diag(t.cov) - off, 0.0)  # less what the row shares
    return mean, var, weight / weight.mean()


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
    """The logits' variance within a row (less what the row shares), over unmasked keys."""
    mean, var, _ = _rows(logits, shape)
    finite = np.isfinite(mean)
    return float(var[finite].mean()) if finite.any() else 0.0


def row_stats(logits: Moments, shape, seed: int = 0, query_weights=None) -> RowStats:
    """The row statistics of ``softmax(logits)`` over the last axis (module docstring), the
    rows weighted by ``query_weights`` (per query: the second moment of the gradient that
    multiplies them, ``dV = P^T dY``; a zero-padded query's rows count for nothing)."""
    mean, var, weight = _rows(logits, shape, query_weights)
    rows, k = mean.shape
    draws = max(16, DRAWS // (rows * k))
    rng = np.random.default_rng([seed, k, rows])
    finite = np.isfinite(mean)
    z = np.where(finite, mean, -np.inf)[:, None, :] + np.where(finite, np.sqrt(var), 0.0)[
        :, None, :] * rng.standard_normal((rows, draws, k))
    top = z.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        p = np.exp(z - np.where(np.isfinite(top), top, 0.0))
        p = p / p.sum(axis=-1, keepdims=True)
    p = np.nan_to_num(p).reshape(-1, k)
    w = np.repeat(weight, draws)
    n = p.shape[0]
    s2, s3 = (p * p).sum(axis=1), (p**3).sum(axis=1)
    w_diag = float(np.mean(w * (s2 - 2 * s3 + s2 * s2))) / k
    w_off = float(np.mean(w * (-s2 - s2 * s2 + 2 * s3))) / max(k * (k - 1), 1)
    return RowStats((p * w[:, None]).mean(axis=0), (p * w[:, None]).T @ p / n, w_diag, w_off,
                    p, w)
