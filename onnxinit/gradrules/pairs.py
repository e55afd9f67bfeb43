"""Second moments over the last two axes of a matrix operand of attention, as a short sum of
Kronecker products: ``E[x_mn x_m'n'] = sum_i R_i[m, m'] C_i[n, n']`` (``Pair``: a tuple of
``(R_i, C_i)``), averaged over the leading (batch, head) axes.

It is what the backward rules of ``Y = A B`` with two activations need: both operands and the
output gradient are correlated along their token axis (a gradient shared by the tokens, values
and keys sharing a component), and the products sum over tokens coherently. With A, B and dY
independent::

    dA = dY B^T:  E[dA_mk dA_m'k'] = sum_{i,j} Y_i.R[m, m'] B_j.R[k, k'] <Y_i.C, B_j.C>
    dB = A^T dY:  E[dB_kn dB_k'n'] = sum_{i,j} A_i.C[k, k'] Y_j.C[n, n'] <A_i.R, Y_j.R>

(``<X, Z> = sum X * Z``). A softmax over the last axis, ``dS = A dP`` per row with ``A =
diag(P) - P P^T`` and P independent of dP (:mod:`.rows`): a term ``(R, C)`` of dP gives ``(R,
X_C) + (diag R, W_C - X_C)`` with ``W_C = E[A C A^T]`` within a query and ``X_C = E[A_q C
A_q'^T]`` between two queries of one window and head (``M C M^T``, ``M = E[A]``, for
independent rows; queries that share their keys move together). C is dP's whole covariance
within the row: a component every key's dP shares cancels by itself (``A 1 = 0``), one that
only some keys share (a zero-padded window's real keys: the padded keys' values are
constants, their dP does not vary) does not, since the row's other keys hold weight. The
structure of C within a query is kept (values with per-token means give dP a low-rank C that
``dQ = dS K`` contracts with the keys' means). A forward operand's token field reads as a
covariance in both of its forms (``moments.Tokens``: a profile beside a variance constant
along the tokens, or a correlation beside per-token variances).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..moments import Moments, Tokens
from .rows import RowStats
from .tokens import axes_of

MAX_SIDE = 1024
MAX_TERMS = 32
Pair = tuple  # tuple[tuple[np.ndarray, np.ndarray], ...]


def fits(shape) -> bool:
    return shape is not None and len(shape) >= 2 and max(shape[-2:]) <= MAX_SIDE


def _compact(terms) -> Pair:
    """Terms sharing their R (or C) merged; the largest MAX_TERMS kept."""
    out: list[list[np.ndarray]] = []
    for r, c in terms:
        for item in out:
            if item[0].shape == r.shape and np.array_equal(item[0], r):
                item[1] = item[1] + c
                break
        else:
            out.append([r, c])
    out.sort(key=lambda rc: -abs(float(np.trace(rc[0]) * np.trace(rc[1]))))
    return tuple((r, c) for r, c in out[:MAX_TERMS])


def second(p: Pair) -> float:
    """The mean second moment of one element."""
    return float(sum(np.mean(np.diag(r)) * np.mean(np.diag(c)) for r, c in p))


def along(p: Pair, axis: int) -> np.ndarray:
    """The covariance along axis -2 or -1, averaged over the other."""
    if axis == -2:
        return sum(r * np.mean(np.diag(c)) for r, c in p)
    return sum(c * np.mean(np.diag(r)) for r, c in p)


def scaled(p: Pair | None, factor: float) -> Pair | None:
    return None if p is None else tuple((r * factor, c) for r, c in p)


def swapped(p: Pair | None) -> Pair | None:
    """The pair of the transposed matrix."""
    return None if p is None else tuple((c, r) for r, c in p)


@dataclass(frozen=True, eq=False)
class Operand:
    """A forward operand's second moments: its covariance ``terms`` (a Pair) plus its means,
    ``E[x_mn x_m'n'] = ... + mean_l mu_l[m, n] mu_l[m', n']`` over the leading indices l
    (``means``, each ``[M, N]``)."""

    terms: Pair
    means: tuple = ()


def contract_left(y: Pair, b: Operand) -> Pair:
    """dA = dY B^T (module docstring); a mean of B gives ``(Y.R, mu Y.C mu^T)``."""
    terms = [(yr * float(np.sum(yc * bc)), br) for yr, yc in y for br, bc in b.terms]
    weight = 1.0 / max(len(b.means), 1)
    terms += [(yr * weight, mu @ yc @ mu.T) for yr, yc in y for mu in b.means]
    return _compact(terms)


def contract_right(a: Operand, y: Pair) -> Pair:
    """dB = A^T dY (module docstring); a mean of A gives ``(mu^T Y.R mu, Y.C)``."""
    terms = [(ac * float(np.sum(ar * yr)), yc) for ar, ac in a.terms for yr, yc in y]
    weight = 1.0 / max(len(a.means), 1)
    terms += [(mu.T @ yr @ mu * weight, yc) for yr, yc in y for mu in a.means]
    return _compact(terms)


def softmax_backward(p: Pair, rows: RowStats) -> Pair:
    """The pair of dS = P * (dP - sum_j P_.j dP_.j) from that of dP (module docstring)."""
    terms = []
    for r, c in p:
        between = rows.cross_within(c)
        terms.append((r, between))
        terms.append((np.diag(np.diag(r)), rows.within(c) - between))
    return _compact(terms)


def probabilities(rows: RowStats, count: int) -> Operand:
    """``count`` softmax rows as an operand: ``E[P_qk P_q'k'] = J (x) X + I (x) (E[P P^T] -
    X)``, ``X = E[P_q P_q'^T]`` for q != q' (``p p^T`` for independent rows)."""
    outer = rows.cross()
    return Operand(((np.ones((count, count)), outer), (np.eye(count), rows.second - outer)))


def _pooled_last_two(a: np.ndarray, rank: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    a = a.reshape((1,) * (rank - a.ndim) + a.shape) if a.ndim < rank else a
    lead = tuple(range(rank - 2))
    return a.mean(axis=lead) if lead else a


def of_moments(x: Moments, shape) -> Operand:
    """A forward tensor as an operand: its covariance (token field along one of the last two
    axes, else independent elements) and its means per leading index."""
    rank = len(shape)
    m_size, n_size = shape[-2], shape[-1]
    var = np.broadcast_to(_pooled_last_two(x.var, rank), (m_size, n_size))
    axes = axes_of(x.tokens, rank)
    t: Tokens | None = x.tokens
    row, col = var.mean(axis=1), var.mean(axis=0)
    total = float(var.mean())
    if axes == [rank - 2] and t.n == m_size and t.stride == 1:
        terms = [(_token_covariance(t.cov, row, total), np.diag(col))]
    elif axes == [rank - 1] and t.n == n_size and t.stride == 1:
        terms = [(np.diag(row), _token_covariance(t.cov, col, total))]
    else:
        terms = [(np.diag(row), np.diag(col / total if total > 0 else col))]
    mean = np.asarray(x.mean, dtype=np.float64)
    mean = mean.reshape((1,) * (rank - mean.ndim) + mean.shape) if mean.ndim < rank else mean
    mean = np.where(np.isfinite(mean), mean, 0.0)
    lead = mean.reshape(-1, *mean.shape[-2:])
    if len(lead) > MAX_TERMS:  # pooled: the leading indices' second moments in one average
        lead = lead[np.linspace(0, len(lead) - 1, MAX_TERMS).astype(np.int64)]
    means = tuple(np.broadcast_to(mu, (m_size, n_size)) for mu in lead) if lead.any() else ()
    return Operand(tuple(terms), means)


def _token_covariance(cov: np.ndarray, per_token: np.ndarray, total: float) -> np.ndarray:
    """The token factor of a forward operand, ``sqrt(v_s v_t) cov[s, t] / mean(v)`` with ``v``
    the per-token variance (averaged over the other axis): both forms of ``moments.Tokens``
    read alike (a profile in ``diag(cov)`` beside a variance constant along the tokens gives
    ``cov``; a correlation beside a per-token variance, a zero-padded window's, gives that
    variance on its diagonal)."""
    if total <= 0:
        return cov
    root = np.sqrt(np.maximum(per_token, 0.0))
    return cov * np.outer(root, root) / total


def of_gradient(var: float, mean: float, tokens: Tokens | None, shape) -> Pair:
    """The pair of an output gradient: its pooled variance with its token field along one of
    the last two axes (independent elements otherwise), plus its mean."""
    rank = len(shape)
    m_size, n_size = shape[-2], shape[-1]
    axes = axes_of(tokens, rank)
    if axes == [rank - 2] and tokens.n == m_size and tokens.stride == 1:
        terms = [(var * tokens.cov, np.eye(n_size))]
    elif axes == [rank - 1] and tokens.n == n_size and tokens.stride == 1:
        terms = [(var * np.eye(m_size), tokens.cov)]
    else:
        terms = [(var * np.eye(m_size), np.eye(n_size))]
    if mean:
        terms.append((np.full((m_size, m_size), mean * mean), np.ones((n_size, n_size))))
    return tuple(terms)


def token_field(p: Pair, axis: int, rank: int) -> Tokens | None:
    """The gradient's token field along axis -2 or -1 of a rank-``rank`` tensor."""
    sig = along(p, axis)
    scale = float(np.mean(np.diag(sig)))
    if not np.isfinite(scale) or scale <= 0:
        return None
    return Tokens(axis, 1, sig / scale, 1)
