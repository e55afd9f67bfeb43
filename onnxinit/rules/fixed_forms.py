"""Softmax logits that hold a random linear form of fixed vectors: relative-position attention.

Transformer-XL, XLNet, Funnel and DeBERTa add to each query's content logits a position term
``b_ij = (q_i + u) . r_d(i,j)``: ``r_d`` fixed vectors (a constant table of sinusoids or
position embeddings projected by a weight, a constant), ``d(i, j)`` the relative position that
layout ops (a relative shift: Reshape, Slice) put at key j of query i. Within one row (a sample,
head and query) every key's term reads the same random query features ``q_ik`` (variances
``nu_k``, taken as independent), so the row's terms are jointly Gaussian with::

    Cov(b_ij, b_il) = sum_k nu_k r_d(i,j),k r_d(i,l),k

near their variances for neighbouring keys of a smooth table: the row moves together, which a
softmax ignores, where the softmax rule's keys are independent past a component common to the
whole row. Each row is then sampled jointly (:func:`joint_rows`)::

    a_j = m_j + sum_k L_jk xi_k + sqrt(u_j) eps_j,    xi, eps ~ N(0, I)

with ``L_jk = c_j r_d(j),k sqrt(nu_k)`` (``c_j`` the constant factors met on the way: a cls
mask, a scale; ``L = c R S^(1/2)`` where the query's features carry a covariance S,
``row_covariance``), ``u_j`` the rest of the logit's variance (content logits, independent
across the keys: ``Var a_j`` less each term's own ``sum_k L_jk^2``, as the rules summed them)
and ``m_j`` its mean. Terms of one query (Funnel's position and token-type terms) are summed
in L, their covariance included, which the Add rule's independent sum leaves out.

The form is found by walking back from the Softmax's input through Add and Sub (each signal
operand a term), Mul and Div by constants, Where of a constant condition (a fixed selection),
Cast, Identity, Dropout (the identity) and layout ops (:mod:`.index_layout`) to an Einsum or MatMul of one signal S by one constant C whose
summed labels index S's features (the latent variables: elements of S; C's other labels the
fixed vectors). Terms whose S reads one random tensor (S itself, or past Add/Sub of constants:
the query plus each term's own bias) share their latent variables; others are independent.
Used where in every row each term's keys read one set of latent variables and the form
correlates the keys (:func:`row_form`: a mean squared off-diagonal correlation of the form part
of at least ``CORRELATION_MIN``, where a random projection's is 1 / features, and a share of
the logits' variance of at least ``SHARE_MIN``); elsewhere the softmax rule is unchanged.

Not modelled: a correlation of the query's features with each other or with the content logits
(their keys are taken as independent of the query), a spread of the row's variance from query
to query.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..moments import Moments
from .context import RuleContext
from .fixed_vectors import equation, feature_field
from .index_layout import move, static

CORRELATION_MIN = 0.25  # mean squared off-diagonal correlation of a row's form part
SHARE_MIN = 0.1  # the form's share of the rows' logit variance
CORRELATION_ROWS = 64  # rows that the correlation test reads at most
ELEMENT_CAP = 1 << 20  # elements of the Softmax's input up to which a form is looked for
LOADING_CAP = 1 << 23  # projection elements x latent variables
MAX_DEPTH = 24  # nodes walked back on one path
MAX_TERMS = 4
_PASS = frozenset({"Cast", "Identity"})
_LAYOUT = frozenset({"Transpose", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Split",
                     "Slice", "Gather", "Expand"})
# groups of distinct rows with draws of their own (rows of a group share theirs): each row's
# estimate is that of its own draws, the errors of a group's rows correlated (key_groups.py)
DRAW_GROUPS = 16


@dataclass(frozen=True)
class Form:
    """Per row of the Softmax's input ([R, n] rows of its last axis): ``loading`` [R, n, K],
    the rest ``residual`` [R, n] of each logit's variance, its ``mean`` [R, n]."""

    mean: np.ndarray
    residual: np.ndarray
    loading: np.ndarray


def _walk(ctx: RuleContext, name: str, steps: tuple, depth: int, found: list) -> None:
    """Append to ``found`` (projection node id, steps) for each path from ``name`` back to a
    projection of a signal by a constant; steps in the graph's order (the projection's consumer
    first), as (node id, traced input, output)."""
    graph = ctx.graph
    node_id = graph.producer.get(name)
    if not node_id or depth > MAX_DEPTH or len(found) > MAX_TERMS:
        return
    node = graph.node(node_id)
    op = node.op_type
    inputs = [i for i in node.input if i]
    signals = [i for i in inputs if not graph.is_constant(i)]
    if op in ("Einsum", "MatMul") and len(inputs) == 2 and len(signals) == 1:
        found.append((node_id, steps))
        return
    if op in ("Add", "Sub") and len(inputs) == 2:
        traced = signals
    elif op in ("Mul", "Div") and len(inputs) == 2 and len(signals) == 1 and (
            op == "Mul" or signals[0] == node.input[0]):
        traced = signals
    elif op == "Where" and len(inputs) == 3 and graph.is_constant(node.input[0]):
        traced = [i for i in node.input[1:] if i in signals]  # a fixed selection
    elif op in _PASS or op in _LAYOUT or (op == "Dropout" and not ctx.settings.dropout):
        traced = [node.input[0]] if node.input[0] in signals else []
    else:
        return
    for t in dict.fromkeys(traced):
        _walk(ctx, t, ((node_id, t, name),) + steps, depth + 1, found)


def _forward(ctx: RuleContext, start: str, steps: tuple, end: str):
    """(flat index into ``start``, constant factor) of each element of ``end``, through the
    steps (in the graph's order); None where an op cannot be followed."""
    graph = ctx.graph
    shape = graph.shape(start)
    if not static(shape):
        return None
    index = np.arange(int(np.prod(shape))).reshape(shape)
    factor = np.ones(shape)
    for node_id, traced, out in steps:
        node = graph.node(node_id)
        op = node.op_type
        oshape = graph.shape(out)
        if not static(oshape):
            return None
        try:
            if op == "Where":  # the elements the constant condition takes from this input
                keep = np.asarray(graph.value(node.input[0]), dtype=bool)
                factor = factor * (keep if node.input[1] == traced else ~keep)
                index = np.broadcast_to(index, oshape)
                factor = np.broadcast_to(factor, oshape)
            elif op in ("Add", "Sub", "Mul", "Div"):
                other = node.input[1] if node.input[0] == traced else node.input[0]
                if op == "Sub" and node.input[1] == traced:
                    factor = -factor
                elif op in ("Mul", "Div"):
                    c = np.asarray(graph.value(other), dtype=np.float64)
                    factor = factor * c if op == "Mul" else factor / c
                index = np.broadcast_to(index, oshape)
                factor = np.broadcast_to(factor, oshape)
            elif op in _PASS or op == "Dropout":
                pass
            else:
                moved = move(ctx.for_node(node_id), out, [index, factor])
                if moved is None:
                    return None
                index, factor = moved
        except (ValueError, TypeError):
            return None
        if index.shape != tuple(oshape):
            return None
    return index, factor


def _latent_root(ctx: RuleContext, name: str) -> str:
    """The random tensor that ``name`` is, past Add/Sub of constants, Cast and Identity."""
    graph = ctx.graph
    while True:
        node_id = graph.producer.get(name)
        if not node_id:
            return name
        node = graph.node(node_id)
        signals = [i for i in node.input if i and not graph.is_constant(i)]
        if node.op_type in _PASS or (node.op_type in ("Add", "Sub") and len(signals) == 1
                                     and graph.shape(signals[0]) == graph.shape(name)):
            name = signals[0]
        else:
            return name


def _projection(ctx: RuleContext, node_id: str):
    """(latent root, S, latent row [P], loading [P, K]) of each element of the projection's
    output (P elements): the flat index into S of its row's first feature (the row of latent
    variables it reads) and ``C sqrt(nu)`` (``C S^(1/2)`` with a feature covariance)."""
    graph = ctx.graph
    node = graph.node(node_id)
    parsed = equation(ctx, node_id)
    if parsed is None:
        return None
    terms, rhs = parsed
    s = 0 if not graph.is_constant(node.input[0]) else 1
    ts, tc = terms[s], terms[1 - s]
    summed = sorted((set(ts) | set(tc)) - set(rhs))
    sname = node.input[s]
    sshape, oshape = graph.shape(sname), graph.shape(node.output[0])
    moments = (ctx.known or {}).get(sname)
    c = graph.value(node.input[1 - s])
    if (not summed or not set(summed) <= set(ts) or not set(summed) <= set(tc) or moments is None
            or c is None or any(len(set(t)) != len(t) for t in terms) or not static(sshape)
            or not static(oshape) or len(sshape) != len(ts) or np.ndim(c) != len(tc)
            or not set(rhs) <= set(ts) | set(tc)):
        return None
    sizes = dict(zip(ts, sshape))
    k = int(np.prod([sizes[x] for x in summed]))
    if int(np.prod(oshape)) * k > LOADING_CAP:
        return None
    order = list(rhs) + summed

    def lay(arr, term):  # laid out along rhs + summed, size 1 where term lacks a label
        present = [x for x in order if x in term]
        arr = np.transpose(arr, [term.index(x) for x in present])
        return arr.reshape([arr.shape[present.index(x)] if x in term else 1 for x in order])

    target = tuple(oshape) + tuple(sizes[x] for x in summed)
    p = int(np.prod(oshape))
    # the latent row: S's flat index of each element's first feature (the row names the rest)
    first = lay(np.arange(int(np.prod(sshape))).reshape(sshape), ts)[(...,) + (0,) * len(summed)]
    index = np.broadcast_to(first, oshape).reshape(p)
    field = feature_field(ctx, sname, ts, summed)
    if field is None:  # independent features: L = C sqrt(nu)
        sd = np.sqrt(np.broadcast_to(moments.var, sshape))
        loading = np.broadcast_to(lay(np.asarray(c, np.float64), tc) * lay(sd, ts), target)
        return _latent_root(ctx, sname), sname, index, loading.reshape(p, k)
    cov, head = field  # L = C S^(1/2), S^(1/2) the head's symmetric root
    w, v = np.linalg.eigh(cov)
    root = np.einsum("hij,hj,hkj->hik", v, np.sqrt(np.maximum(w, 0.0)), v)
    fixed = np.broadcast_to(lay(np.asarray(c, np.float64), tc), target).reshape(p, k)
    heads = np.zeros(p, dtype=np.int64)
    if head is not None:
        along = np.arange(sizes[head]).reshape([sizes[head] if x == head else 1 for x in ts])
        heads = np.broadcast_to(lay(along, ts), target)[..., 0].reshape(p) if summed else heads
    loading = np.empty((p, k))
    for h in range(root.shape[0]):
        sel = heads == h
        loading[sel] = fixed[sel] @ root[h]
    return _latent_root(ctx, sname), sname, index, loading


def _term(ctx: RuleContext, x_name: str, node_id: str, steps: tuple):
    """(group key, latent row [X], loading [X, K]) of a term over the Softmax's input."""
    graph = ctx.graph
    proj = _projection(ctx, node_id)
    if proj is None:
        return None
    root, sname, index, loading = proj
    moved = _forward(ctx, graph.node(node_id).output[0], steps, x_name)
    if moved is None:
        return None
    where, factor = (a.ravel() for a in moved)
    key = root if graph.shape(root) == graph.shape(sname) else sname
    return key, index[where], loading[where] * factor[:, None]


def row_form(ctx: RuleContext, x: Moments, shape: tuple) -> Form | None:
    """The Softmax input's rows (its last axis) as jointly Gaussian keys of a linear form of
    fixed vectors (module docstring), or None."""
    size = int(np.prod(shape))
    if not shape or size > ELEMENT_CAP or x.rows is not None or shape[-1] < 2:
        return None
    x_name = ctx.node.input[0]
    found: list = []
    _walk(ctx, x_name, (), 0, found)
    if not found or len(found) > MAX_TERMS:
        return None
    n = shape[-1]
    rows = size // n
    groups: dict = {}
    own = np.zeros((rows, n))  # each term's own variance (the Add rule's independent sum)
    for node_id, steps in found:
        term = _term(ctx, x_name, node_id, steps)
        if term is None:
            continue
        key, index, loading = term
        index = index.reshape(rows, n)
        loading = loading.reshape(rows, n, -1)
        live = np.any(loading != 0, axis=2)
        if not live.any():
            continue  # a branch the selection never takes
        lead = np.argmax(live, axis=1)  # each row's first key with a loading
        first = index[np.arange(rows), lead]
        if not np.all((index == first[:, None]) | ~live):
            continue  # the keys of a row read different latent rows: independent keys
        own += np.einsum("rnk,rnk->rn", loading, loading)
        if key in groups and np.array_equal(groups[key][0], first):
            groups[key] = (first, groups[key][1] + loading)  # one latent: summed
        else:
            groups[key if key not in groups else (key, len(groups))] = (first, loading)
    if not groups:
        return None
    loading = np.concatenate([g[1] for g in groups.values()], axis=2)
    mean = np.broadcast_to(x.mean, shape).reshape(rows, n)
    var = np.broadcast_to(x.var, shape).reshape(rows, n)
    form_var = np.einsum("rnk,rnk->rn", loading, loading)
    finite = np.isfinite(mean)
    if form_var[finite].sum() < SHARE_MIN * var[finite].sum() or not _correlated(loading, form_var):
        return None
    residual = np.maximum(var - own, 0.0)
    return Form(mean, np.where(finite, residual, 0.0), np.where(finite[..., None], loading, 0.0))


def _correlated(loading: np.ndarray, form_var: np.ndarray) -> bool:
    """Whether the form part's keys correlate (mean squared off-diagonal correlation over the
    rows' keys of nonzero form variance at least ``CORRELATION_MIN``; over
    ``CORRELATION_ROWS`` evenly spaced rows where there are more)."""
    if loading.shape[0] > CORRELATION_ROWS:  # evenly spaced rows (heads, queries in order)
        picked = np.linspace(0, loading.shape[0] - 1, CORRELATION_ROWS).round().astype(np.int64)
        loading, form_var = loading[picked], form_var[picked]
    sd = np.sqrt(form_var)
    live = sd > 0
    unit = loading / np.where(live, sd, 1.0)[..., None]
    corr = np.square(np.matmul(unit, unit.transpose(0, 2, 1)))
    pairs = live[:, :, None] & live[:, None, :]
    pairs &= ~np.eye(loading.shape[1], dtype=bool)
    return pairs.any() and float(corr[pairs].mean()) >= CORRELATION_MIN


def joint_rows(form: Form, rng: np.random.Generator, draws: int, minimum: int,
               gap: float) -> tuple[np.ndarray, np.ndarray]:
    """(E, Var) [R, n] of the softmax of each row of ``form`` (module docstring), sampled:
    ``max(minimum, draws // (R' n))`` draws per distinct row (R' of them); an element whose mean
    is -inf or more than ``gap`` below its row's largest is masked (probability 0)."""
    mean, residual, loading = form.mean, form.residual, form.loading
    rows, n, k = loading.shape
    packed = np.ascontiguousarray(np.concatenate(
        [np.nan_to_num(mean, neginf=-1e300)[..., None], residual[..., None], loading],
        axis=2).reshape(rows, -1))
    first: dict[bytes, int] = {}
    inverse = np.array([first.setdefault(row.tobytes(), len(first)) for row in packed])
    keep = np.unique(inverse, return_index=True)[1]
    m, u, load = mean[keep], residual[keep], loading[keep]
    count = max(minimum, draws // max(1, keep.size * n))
    with np.errstate(invalid="ignore"):
        top = np.max(np.where(np.isfinite(m), m, -np.inf), axis=1, keepdims=True)
        masked = ~np.isfinite(m) | (m < top - gap)
    base = np.where(masked, 0.0, m - np.where(np.isfinite(top), top, 0.0))
    sd = np.sqrt(u)
    ex = np.empty(m.shape)
    ex2 = np.empty(m.shape)
    group = max(1, -(-keep.size // DRAW_GROUPS))
    for r in range(0, keep.size, group):  # a group of rows shares its draws
        rows_ = slice(r, min(r + group, keep.size))
        z = np.matmul(rng.standard_normal((count, k)), load[rows_].transpose(0, 2, 1))
        z += rng.standard_normal((count, n)) * sd[rows_, None, :]
        z += base[rows_, None, :]
        if masked[rows_].any():
            z[np.broadcast_to(masked[rows_, None, :], z.shape)] = -np.inf
        z -= z.max(axis=2, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=2, keepdims=True)
        ex[rows_] = z.mean(axis=1)
        z *= z
        ex2[rows_] = z.mean(axis=1)
    var = np.maximum(ex2 - ex**2, 0.0)
    return ex[inverse], var[inverse]


__all__ = ["CORRELATION_MIN", "Form", "joint_rows", "row_form"]
