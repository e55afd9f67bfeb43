"""Attention-style ops: MatMul of two activations (Q @ K^T, P @ V) and Einsum (Softmax: softmax.py).

MatMul of independent activations A[..., M, K] and B[..., K, N], per-index statistics along any
axis included (in particular per feature along the contracted axis)::

    E[y_mn]   = sum_k mu_a[m,k] mu_b[k,n]
    Var[y_mn] = sum_k (nu_a + mu_a^2)(nu_b + mu_b^2) - mu_a^2 mu_b^2

A and B are taken as independent, and the entries of A along k as uncorrelated. B's entries
along k may be correlated through the token covariance (``Moments.tokens``, tokens.py):

* P V (B's tokens on the contracted axis, or A a probability matrix whose rows sum to 1):
  ``O_q = sum_k p_qk v_k``; with ``Cov(v_k, v_l) = nu_d cov[k, l]`` and ``P = E[p]``::

      Var[O_qd] = nu_d [(P cov P^T)_qq + sum_k Var(p_qk) cov[k, k]]
                  + sum_k Var(p_qk) (mu_kd - mean_l P_ql mu_ld)^2

  (a shared component, ``cov = c`` everywhere, passes whole: ``c (sum_k p_qk)^2 = c``; the
  token-specific part shrinks by ``sum_k p_qk^2``; the last term, the spread of the values'
  means, uses that a softmax row sums to 1: B carrying the field means A is attention; a
  softmax whose keys are sampled jointly gives the covariance ``C`` of its probabilities, and
  the two ``Var(p)`` terms become ``tr(C cov)`` and ``mu_d^T C mu_d``: ``_joint``), and O carries the token covariance
  ``nu [P cov P^T + diag(sum_k Var(p_qk) cov[k, k])]`` along the query axis (a causal mask
  gives each query its own row of P).
* Q K^T (B's tokens on the last axis, or the output reaching a Softmax over its last axis):
  the logits of one query share the query, so along the keys ``Cov(a_k, a_l) = (sum_d E[q_d^2] nu_d) cov[k, l] + sum_d Var(q_d) mu_kd mu_ld``, the
  field Softmax reads (a component common to a row's logits does not change the softmax).

P and V are not independent when the keys and the values are projections of the same tokens:
given the query, a key's logit and its value are correlated, and P V's variance gains
``Var_sel = G R`` (value_selection.py: exact for Gaussian tokens; T5's unscaled logits 16%).
P may also be a softmax over axis -2 whose last two axes a Transpose swaps (tf2onnx writes
Keras' attention with dropout as ``K Q^T`` with ``Softmax(axis=2)``): read the same way, the
keys taken from axis -2 (before, P and V independent there: 0.6x on Keras' ``vit_cls``);
the logits ``K Q^T`` then carry their field along axis -2, the keys' (on the last axis, the
queries', the Softmax read none: 1.38x on ``vit_cls``'s second block).

Not modelled: that dependence when the keys are rotated per position or the projections fused,
the correlation of a query with its own key (the diagonal of Q K^T), and Q's token covariance
(it does not change a Softmax over the keys).
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments, compressed
from .covariance_readers import contraction_factor
from .einsum_labels import explicit
from .gram import gram, is_gram
from .fixed_vectors import projection_cross_terms
from .context import RuleContext, RuleError, signal
from .registry import rule
from .logit_path import keeps_token_axes
from .head_projections import keys_first
from .masks import feeds_softmax, softmax_reached
from . import position_share
from .token_field import attach, sigma, token_axes
from .softmax import probability_covariance
from .value_selection import selection_variance

def _full(x: Moments, rank: int) -> tuple[np.ndarray, np.ndarray]:
    x = x.expand_rank(rank)
    mean, var = np.broadcast_arrays(x.mean, x.var)
    if mean.ndim not in (0, rank):
        raise RuleError("statistics of a higher rank than the tensor")
    if mean.ndim == 0:
        mean, var = mean.reshape((1,) * rank), var.reshape((1,) * rank)
    return np.array(mean, dtype=np.float64), np.array(var, dtype=np.float64)


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
    if sb[-2] != k:
        raise RuleError(f"MatMul of [..., {k}] by [..., {sb[-2]}, N]: the inner dimensions differ")
    try:
        np.broadcast_shapes(tuple(sa[:-2]), tuple(sb[:-2]))
    except ValueError:
        raise RuleError(f"MatMul's batch dimensions {sa[:-2]} and {sb[:-2]} do not broadcast") from None
    ma, va = _full(a, len(sa))
    mb, vb = _full(b, len(sb))
    ma, va = (np.broadcast_to(t, t.shape[:-1] + (k,)) for t in (ma, va))
    mb, vb = (np.broadcast_to(t, t.shape[:-2] + (k, t.shape[-1])) for t in (mb, vb))
    rank = len(ctx.out_shape(0))
    if is_gram(ctx) and (scores := gram(ma, va, rank, sa[-2], contraction_factor(ctx, a, b))):
        # (features correlated without a field: feature_pairs, gram.correlated_gram)
        return [scores]  # A @ A^T: the diagonal is each row's squared norm
    mean = np.matmul(ma, mb)
    shaped = (lambda t: t.reshape((1,) * (rank - t.ndim) + t.shape))
    softmax = last_axis_softmax(ctx.graph, ctx.node.input[0], ctx.opset, regroup=True,
                                swapped=True)
    contracted = _contracted_tokens(b, sb, softmax is not None)
    if contracted is not None:
        selected = selection_variance(ctx, softmax) if softmax is not None else 0.0
        p_cov = None if softmax is None else probability_covariance(
            ctx, ctx.graph.producer[softmax.output[0]])
        return [_weighted_average(ma, va, mb, vb, contracted, ctx.out_shape(0), selected,
                                  p_cov)]
    var = np.matmul(va + ma**2, vb + mb**2) - np.matmul(ma**2, mb**2)
    factor = contraction_factor(ctx, a, b, dense=not is_gram(ctx))  # (a Gram: feature_pairs)
    if factor is not None:  # correlated features (a patch embedding's) on the contracted axis
        var = var * factor
    out = compressed(shaped(mean), np.maximum(shaped(var), 0.0))
    if sa[-2] > 1 and _keys_first_logits(ctx):  # K Q^T over the keys: the field on axis -2
        sig_a = sigma(a, sa, [len(sa) - 2], sa[-2])
        swap = (lambda t: np.swapaxes(t, -1, -2))  # noqa: E731
        return [_logit_field(out, swap(mb), swap(vb), swap(ma), sig_a, ctx.out_shape(0),
                             rank - 2)]
    t = b.tokens
    keys = len(sb) - 1
    if (t is not None and token_axes(t, len(sb)) == [keys] and sb[-1] == t.n) or (
            sb[-1] > 1 and feeds_softmax(ctx)):
        out = _logit_field(out, ma, va, mb, sigma(b, sb, [keys], sb[-1]), ctx.out_shape(0))
    return [out]


_PASSING = ("Dropout", "Cast", "Identity", "Where")  # Where(IsNaN(p), 0, p) after a softmax


def last_axis_softmax(graph, name: str, opset: int, passing=_PASSING, regroup: bool = False,
                      swapped: bool = False):
    """The Softmax node over its last axis that tensor ``name`` comes from through ``passing``
    ops (a Where through its value branch: the IsNaN guard), and with ``regroup`` through
    reshapes of the leading axes (:func:`.logit_path.keeps_token_axes`), else None;
    ``swapped``: also a Softmax over axis -2 whose last two axes a Transpose then swaps
    (tf2onnx's ``K Q^T`` with ``axis = 2``: Keras' attention with dropout)."""
    turned = False
    for _ in range(4):
        node_id = graph.producer.get(name)
        if node_id is None:
            return None
        node = graph.node(node_id)
        if node.op_type == "Softmax":
            rank = len(graph.shape(name) or ())
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
            last = rank - 2 if turned else rank - 1
            return node if rank > 1 and axis % rank == last and opset >= 13 else None
        if swapped and not turned and node.op_type == "Transpose":
            rank = len(graph.shape(name) or ())
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if rank < 2 or perm != list(range(rank - 2)) + [rank - 1, rank - 2]:
                return None
            turned, name = True, node.input[0]
            continue
        if node.op_type not in passing and not (regroup and keeps_token_axes(graph, node)):
            return None
        name = node.input[-1] if node.op_type == "Where" else node.input[0]
    return None


def _contracted_tokens(b: Moments, sb, probabilities: bool) -> np.ndarray | None:
    """B's token covariance [k, k] along the contracted axis when this is a weighted average
    over tokens: B carries the field there, or A is a softmax over the contracted axis
    (attention probabilities; B's tokens then independent: diag of its per-token variance)."""
    t = b.tokens
    axis = len(sb) - 2
    if t is not None and token_axes(t, len(sb)) == [axis] and sb[axis] == t.n:
        return sigma(b, sb, [axis], t.n)  # a correlation beside B's per-token variances too
    if probabilities and sb[axis] > 1:
        return sigma(b, sb, [axis], sb[axis])
    return None


def _joint(fluctuation, means_term, cov, mb, p_cov):
    """The value and means terms of P V for probabilities with the covariance ``C = p_cov``
    across the keys (averaged over the rows; the real keys of a padded window move together):
    ``Var_P[sum_k p_k x_k] = x^T C x`` for any fixed x, so the value term is ``tr(C cov)`` and
    the means term ``mu_d^T C mu_d`` per feature, in place of ``sum_k Var(p_k) specific_k`` and
    ``sum_k Var(p_k) (mu_kd - E[O_d])^2`` (keys independent but for their sum). Each row keeps
    its independent-keys profile, scaled so that the mean over the rows is the joint term."""
    joint_f = float(np.sum(p_cov * cov.T))
    old_f = float(np.mean(fluctuation))
    fluctuation = (fluctuation * (joint_f / old_f) if old_f > 0
                   else np.full(np.shape(fluctuation), max(joint_f, 0.0)))
    joint_m = np.maximum(np.einsum("...kd,kl,...ld->...d", mb, p_cov, mb), 0.0)[..., None, :]
    old_m = means_term.mean(axis=-2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        means_term = np.where(old_m > 0, means_term * (joint_m / np.where(old_m > 0, old_m, 1.0)),
                              joint_m)
    return np.maximum(fluctuation, 0.0), means_term


def _weighted_average(ma, va, mb, vb, sig, out_shape, selected=0.0, p_cov=None):
    """O = P V with V's token covariance ``sig`` (absolute, feature-averaged): see the module
    docstring. A fluctuation of a softmax row sums to 0, so it sees only the token-specific part
    of the covariance (the diagonal less the mean off-diagonal). Axes along which only P varies
    (windows masked differently, merged with the batch) keep their statistics: an edge window's
    masked regions average fewer values (the window reverse moves them into the field,
    token_layout._profiled); the query axis pooled: the per-query profile goes to the field."""
    rank = len(out_shape)
    nu_bar = max(float(np.mean(vb)), 1e-300)
    cov = sig / nu_bar  # per unit of V's variance
    n = cov.shape[0]
    shared = max((cov.sum() - np.trace(cov)) / max(n * (n - 1), 1), 0.0)
    specific = np.diag(cov) - shared
    queries = out_shape[-2]
    # P's statistics the same for every query (one row broadcast): the products for one row,
    # then broadcast (a zero-stride P made matmul walk it element by element)
    rows = 1 if np.shape(ma)[-2] == 1 and np.shape(va)[-2] == 1 else queries
    p_mean = np.broadcast_to(ma, ma.shape[:-2] + (rows, n))
    p_var = np.broadcast_to(va, p_mean.shape)
    spread = np.matmul(p_mean @ cov, np.swapaxes(p_mean, -1, -2))  # P cov P^T [.., q, q]
    fluctuation = p_var @ specific  # [.., q]
    centre = np.matmul(p_mean, mb)  # E[O]
    means_term = np.maximum(np.matmul(p_var, mb**2) - 2 * centre * np.matmul(p_var, mb)
                            + centre**2 * p_var.sum(axis=-1, keepdims=True), 0.0)
    if p_cov is not None and p_cov.shape == (n, n):
        fluctuation, means_term = _joint(fluctuation, means_term, cov, mb, p_cov)
    if rows != queries:
        spread = np.broadcast_to(spread, spread.shape[:-2] + (queries, queries))
        fluctuation = np.array(np.broadcast_to(fluctuation, fluctuation.shape[:-1] + (queries,)))
        centre = np.array(np.broadcast_to(centre, centre.shape[:-2] + (queries,) + centre.shape[-1:]))
        means_term = np.array(np.broadcast_to(means_term, centre.shape))
    gain = np.diagonal(spread, axis1=-2, axis2=-1) + fluctuation
    var = vb.mean(axis=-2, keepdims=True) * gain[..., None] + means_term + selected
    shaped = (lambda t: t.reshape((1,) * (rank - t.ndim) + t.shape))
    mean, var = shaped(centre), shaped(var)
    # the field: nu_bar (P cov P^T + diag(sum_k Var(p) specific_k)) + diag(means term),
    # averaged over heads and windows
    lead = tuple(range(spread.ndim - 2))
    lead_q = np.broadcast_shapes(gain.shape, means_term.shape[:-1])
    rows = (lambda t: np.broadcast_to(t, lead_q).reshape(-1, lead_q[-1]).mean(axis=0))
    field = (spread.mean(axis=lead) if lead else spread) + np.diag(rows(fluctuation))
    field = nu_bar * field + np.diag(rows(means_term.mean(axis=-1)) + selected)
    return attach(compressed(mean, np.maximum(var, 0.0)), out_shape, [rank - 2], field)


def _keys_first_logits(ctx: RuleContext) -> bool:
    """The MatMul's output reaches a Softmax over its axis -2 (tf2onnx's ``K Q^T`` of Keras'
    attention with dropout, ``Softmax(axis=2)``): its rows are along A's tokens."""
    softmax = softmax_reached(ctx)
    if softmax is None:
        return False
    return bool(keys_first(softmax, ctx.graph.shape(softmax.input[0])))


def _logit_field(out: Moments, ma, va, mb, sig_b: np.ndarray, out_shape,
                 axis: int | None = None) -> Moments:
    """Q K^T along the keys: (sum_d E[q_d^2] nu_d) cov + sum_d Var(q_d) mu_kd mu_ld, with
    ``sig_b = nu cov`` the keys' token covariance (diag of their variance when independent);
    the keys on the output's last axis, or on ``axis`` (``K Q^T``: the operands passed
    swapped, ``Q [.., q, d]`` from ``Q^T`` and ``K^T [.., d, k]`` from ``K``)."""
    rank = len(out_shape)
    n = sig_b.shape[0]
    q2 = float(np.mean((va + ma**2).sum(axis=-1)))  # sum_d E[q_d^2], averaged over queries
    lead = np.broadcast_shapes(ma.shape[:-2], mb.shape[:-2])
    d = ma.shape[-1]
    mu = np.broadcast_to(mb, lead + (d, n)).reshape(-1, d, n)  # [heads.., d, k]
    qv = np.broadcast_to(va.mean(axis=-2), lead + (d,)).reshape(-1, d, 1)  # averaged over queries
    shared = np.matmul(np.swapaxes(mu * qv, -1, -2), mu).mean(axis=0)  # sum_d Var(q_d) mu_kd mu_ld
    return attach(out, out_shape, [rank - 1 if axis is None else axis], q2 * sig_b + shared)


# ---------------------------------------------------------------------------------------------
# Einsum


@rule("Einsum")
def einsum(inputs, ctx: RuleContext):
    """Einsum of two operands (signals or constants, independent) without repeated labels in a
    term, where each summed label appears in every signal's term (so the summed products are
    independent): E = einsum(mu_a, mu_b), Var = einsum(nu_a + mu_a^2, nu_b + mu_b^2)
    - einsum(mu_a^2, mu_b^2); with a constant W (variance 0) this is E = einsum(mu, W),
    Var = einsum(nu, W^2). An ellipsis is read as letters (einsum_labels.explicit)."""
    eq = explicit(ctx.attr("equation"), [len(ctx.in_shape(i)) for i in range(len(inputs))])
    if eq is None:
        raise RuleError("an implicit output, or an ellipsis that does not fit the ranks")
    lhs, rhs = eq.split("->")
    terms = lhs.split(",")
    if len(terms) != 2 or len(inputs) != 2:
        raise RuleError("Einsum of other than two operands")
    if any(len(set(t)) != len(t) for t in terms):
        raise RuleError("a repeated label (a diagonal)")
    summed = set(lhs) - set(rhs) - {","}
    if _batched_matmul(terms, rhs) and inputs[0] is not None and inputs[1] is not None:
        b, sb = inputs[1], ctx.in_shape(1)
        if _contracted_tokens(b, sb, False) is not None and b.tokens is not None:
            # P V over tokens that carry a field: the MatMul it writes (its token average)
            return matmul_activations(inputs, ctx)
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
    var = var + _shared_values(ctx, eq, terms, summed, sizes, ops)
    var = var + projection_cross_terms(ctx, inputs)  # fixed vectors of correlated features
    return [compressed(mean, np.maximum(var, 0.0))]


def _batched_matmul(terms, rhs: str) -> bool:
    """Whether ``X ik, X kj -> X ij`` (X the same leading labels): a MatMul written as Einsum."""
    a, b = terms
    if len(a) < 2 or len(a) != len(b) or len(rhs) != len(a):
        return False
    lead = a[:-2]
    i, k = a[-2:]
    return (b[:-2] == lead and b[-2] == k and rhs == lead + i + b[-1]
            and len({i, k, b[-1]} | set(lead)) == len(lead) + 3)


def _shared_values(ctx: RuleContext, eq: str, terms, summed, sizes, ops):
    """P V written as an Einsum, P a Softmax output over the summed label, V's positions along
    it sharing a component (``position_share``: the part of V's variance that a sample's mean
    over all its positions keeps, r the correlation of two distinct positions): a row of P sums
    to 1, so ``Var O = nu [(1 - r) sum_j E p_j^2 + r]``, ``nu r (1 - sum_j E p_j^2)`` more than
    for independent values. 0 otherwise."""
    if len(summed) != 1:
        return 0.0
    soft = [last_axis_softmax(ctx.graph, ctx.node.input[i], ctx.opset) is not None
            for i in range(2)]
    if sum(soft) != 1:
        return 0.0
    p, v = (0, 1) if soft[0] else (1, 0)
    label = next(iter(summed))
    if terms[p][-1] != label:
        return 0.0
    r = position_share.correlation(ctx, ctx.node.input[v], terms[v].index(label))
    if r <= 0:
        return 0.0
    (mp, vp), (_, vv) = ops[p], ops[v]
    uniform = np.full_like(np.asarray(mp), 1.0 / sizes[label])
    pair = (uniform, vv) if p == 0 else (vv, uniform)
    squares = (vp + mp**2, vv) if p == 0 else (vv, vp + mp**2)
    return r * np.maximum(np.einsum(eq, *pair) - np.einsum(eq, *squares), 0.0)


__all__ = ["einsum", "matmul_activations"]
