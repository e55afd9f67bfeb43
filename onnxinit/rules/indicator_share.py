"""Indicators divided by their count: ``y = a / (sum_t a + c)`` over one axis, a in {0, 1}.

A hard assignment (GroupViT's grouping block: each token assigned to one group by
``one_hot(argmax(soft))``, then normalised over the tokens, ``attn / (attn.sum(-1) + eps)``)
divides a 0/1 tensor by its own count. Taken as a quotient of independent factors, the count
n of T tokens near 0 makes ``E[1/(n + c)^2]`` and the variance (33.7x measured); the count is
not independent of the numerator, and ``a^2 = a``.

a is recognised as an indicator when it is (Cast, Identity allowed)

- ``ScatterElements(data, idx, updates)`` with constant data and updates in {0, 1}, scattered
  along an axis other than the summed one, or ``OneHot(.., values)`` with values in {0, 1}, its
  new axis other than the summed one;
- the straight-through estimator of one: ``(h - s) + s`` (or ``s + (h - s)``), whose value is
  h (in float arithmetic up to a rounding of the ones), h an indicator.

Along the summed axis (length T) its entries are taken independent Bernoulli(p), p a row's mean
of a (the one-hot's other axis is where they are dependent: one 1 per column). Then
``n = sum_t a_t ~ Binomial(T, p)`` and, the entries exchangeable and ``a_t^2 = a_t``::

    E[y]   = E[n / (n + c)] / T
    E[y^2] = E[n / (n + c)^2] / T,      Var y = E[y^2] - E[y]^2

(exact for i.i.d. rows; T = 16 tokens, 4 groups, c = 1: Var y = 0.00801, onnxruntime 0.00800).
c must be a positive constant (c = 0 leaves ``0 / 0`` on an empty group). Not modelled: groups
of different p within one row of the moments (a pooled p), which widens n's law (GroupViT's
counts: variance 3.47 against the binomial's 3.00) and moves Var y by about 3%.
"""

from __future__ import annotations

import numpy as np

from .context import RuleContext, RuleError
from .mixture import lift
from .reduce_axes import reduced_axes
from .row_norm import skip_casts, without_casts

_PASSING = ("Expand", "Cast", "Identity", "CastLike")
MAX_STEPS = 4


def _binary_values(value) -> bool:
    return value is not None and np.size(value) > 0 and bool(
        np.all((np.asarray(value) == 0) | (np.asarray(value) == 1)))


def _straight_through(graph, name: str) -> str:
    """h when ``name`` is ``(h - s) + s`` or ``s + (h - s)``, else ``name``."""
    node_id = graph.producer.get(name)
    if not node_id or graph.node(node_id).op_type != "Add" or len(graph.node(node_id).input) != 2:
        return name
    add = graph.node(node_id)
    for i in (0, 1):
        sub_id = graph.producer.get(add.input[i])
        if not sub_id:
            continue
        sub = graph.node(sub_id)
        if sub.op_type == "Sub" and len(sub.input) == 2 and sub.input[1] == add.input[1 - i]:
            return sub.input[0]
    return name


def indicator_axis(graph, name: str, rank: int) -> int | None:
    """The axis along which ``name`` is a one-hot of 0/1 values (module docstring), else None."""
    name = skip_casts(graph, _straight_through(graph, skip_casts(graph, name)))
    node_id = graph.producer.get(name)
    if not node_id:
        return None
    node = graph.node(node_id)
    if node.op_type in ("ScatterElements", "Scatter") and len(node.input) == 3:
        if not (_binary_values(graph.value(node.input[0]))
                and _binary_values(graph.value(node.input[2]))):
            return None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        return int(axis) % rank
    if node.op_type == "OneHot" and len(node.input) == 3:
        if not _binary_values(graph.value(node.input[2])):
            return None
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        return int(axis) % rank
    return None


def _count_of(ctx: RuleContext, name: str, x: str, rank: int) -> tuple[int, float] | None:
    """(axis, c) when ``name`` is ``ReduceSum(x, [axis], keepdims=1) + c`` (Expand, Cast,
    Identity allowed), c a positive scalar constant; else None."""
    graph, c = ctx.graph, 0.0
    for _ in range(MAX_STEPS + 2):
        node_id = graph.producer.get(name)
        if not node_id:
            return None
        node = graph.node(node_id)
        if node.op_type in _PASSING:
            name = node.input[0]
            continue
        if node.op_type == "Add" and len(node.input) == 2:
            consts = [graph.value(i) for i in node.input]
            k = [i for i in (0, 1) if consts[i] is not None]
            if len(k) != 1 or np.size(consts[k[0]]) != 1:
                return None
            c += float(np.ravel(consts[k[0]])[0])
            name = node.input[1 - k[0]]
            continue
        if node.op_type != "ReduceSum" or without_casts(ctx, node.input[0]) != x:
            return None
        nctx = ctx.for_node(node_id)
        if not nctx.attr("keepdims", 1):
            return None
        try:
            axes = reduced_axes(nctx, rank)
        except RuleError:
            return None
        if axes is None or len(axes) != 1 or c <= 0:
            return None
        return axes[0], c
    return None


def binomial_pmf(trials: int, p: np.ndarray) -> np.ndarray:
    """P(n = k) for k = 0..trials of Binomial(trials, p), on a last axis added to p."""
    k = np.arange(trials + 1, dtype=np.float64)
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, trials + 1)))])
    p = np.clip(np.asarray(p, dtype=np.float64)[..., None], 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pk = np.where(k == 0, 0.0, k * np.log(p))
        log_qk = np.where(k == trials, 0.0, (trials - k) * np.log1p(-p))
    return np.exp(log_fact[trials] - log_fact[k.astype(int)] - log_fact[trials - k.astype(int)]
                  + log_pk + log_qk)


def counted_share(inputs, ctx: RuleContext, rank: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``y = a / (sum_t a + c)`` for an indicator a (module docstring): (mean, var) at
    ``rank``, or None when the node is not such a quotient."""
    node = ctx.node
    if node.op_type != "Div" or len(inputs) != 2 or inputs[0] is None or inputs[1] is None:
        return None
    x_name = without_casts(ctx, node.input[0])
    count = _count_of(ctx, node.input[1], x_name, rank)
    if count is None:
        return None
    axis, c = count
    one_hot = indicator_axis(ctx.graph, x_name, rank)
    if one_hot is None or one_hot == axis:
        return None
    trials = int(ctx.in_shape(0)[axis])
    mean = np.asarray(lift(inputs[0].mean, rank), dtype=np.float64)
    mean = mean.reshape((1,) * (rank - mean.ndim) + mean.shape)
    p = np.mean(mean, axis=axis, keepdims=True) if mean.shape[axis] > 1 else mean
    if not np.all((p >= -1e-9) & (p <= 1 + 1e-9)):
        return None
    pmf = binomial_pmf(trials, p)
    n = np.arange(trials + 1, dtype=np.float64)
    out_mean = (pmf * n / (n + c)).sum(axis=-1) / trials
    second = (pmf * n / (n + c) ** 2).sum(axis=-1) / trials
    return out_mean, np.maximum(second - out_mean**2, 0.0)


__all__ = ["binomial_pmf", "counted_share", "indicator_axis"]
