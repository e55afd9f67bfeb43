"""A mean of squares over the rows of an embedding table: ``mean_d T[v, d]^2`` at uniform token
ids v, the first RMSNorm of a decoder on its token embeddings.

Each token's row is one row of a constant table, so the mean square ``s`` takes the value
``r_v = mean_d T[v, d]^2`` of the row it draws, each with probability 1/V: its law is the
table's, known exactly (``E[s] = mean_v r_v``, ``Var[s] = var_v r_v``), not a Gaussian around
its mean. It matters where a row is far from the others: a padding row (``padding_idx``) is
zero, and the ``1/sqrt(s + eps)`` after it is ``1/sqrt(eps)`` (Phi-3: 316 against 50 for the
other rows) on 1/V of the tokens, 0.24x of the measured variance as a Gaussian, and outside the
2x bound.

The law is carried as the source of the output: ``s = Q(Phi(z))``, ``z ~ N(0, 1)``, Q the
table's quantile function (the sorted ``r_v`` as steps of probability 1/V: a zero row keeps
its mass), so the element-wise chain after it (``+ eps``, Sqrt, the reciprocal) is
integrated over the rows (rules/gaussian.py's composite rule).

The rows may go through a dense layer of constant weights and a constant bias before the
square (a decoder without a norm before its first projection: OLMo-2's q_norm and k_norm of
the embeddings' projections): ``Gather(T, ids) W + b = Gather(T W + b, ids)``, the mapped
table's law, whose features' correlations are in it (feature_pairs leaves it uncorrected).

Not modelled: ids that are not uniform over the table (the synthetic feeds draw them so), and
rows whose ids do not reach the mean one by one (a mean over other axes than the features).
"""

from __future__ import annotations

import numpy as np

from .. import special
from ..moments import Elementwise, Moments, Source
from .context import RuleContext
from .elementwise import digest

_THROUGH = ("Cast", "Identity", "Dropout")
MAX_MAPPED = 1 << 26  # multiply-adds of a table's rows through a dense layer


def _producer(graph, name: str):
    node_id = graph.producer.get(name)
    return graph.node(node_id) if node_id else None


def _scalar(graph, name: str) -> float | None:
    value = graph.value(name) if graph.is_constant(name) else None
    return float(np.ravel(value)[0]) if value is not None and np.size(value) == 1 else None


def _table(graph, name: str) -> np.ndarray | None:
    """T [V, D] when ``name`` is a Gather of rows of a constant 2-D table by non-constant ids
    (through Cast, Identity, Dropout, a Mul or Div by a scalar constant: Gemma's ``embedding *
    sqrt(D)``, then the rows scaled; a dense layer of a constant 2-D weight and a constant bias
    added, then the rows mapped, ``T W + b``, while ``V K N <= MAX_MAPPED``: a decoder without
    a norm before its first projection, OLMo-2's q_proj of the embeddings), else None."""
    steps = []
    for _ in range(8):
        node = _producer(graph, name)
        if node is None:
            return None
        if node.op_type in _THROUGH:
            name = node.input[0]
            continue
        if node.op_type in ("Mul", "Div") and len(node.input) == 2:
            which = 1 if _scalar(graph, node.input[1]) is not None else 0
            if which == 0 and node.op_type == "Div":
                return None
            c, name = _scalar(graph, node.input[which]), node.input[1 - which]
            if c is None or c == 0:
                return None
            steps.append(("scale", c if node.op_type == "Mul" else 1.0 / c))
            continue
        if node.op_type in ("MatMul", "Add") and len(node.input) == 2:
            w = graph.value(node.input[1]) if graph.is_constant(node.input[1]) else None
            if w is None or np.ndim(w) != (2 if node.op_type == "MatMul" else 1):
                return None
            steps.append((node.op_type, np.asarray(w, dtype=np.float64)))
            name = node.input[0]
            continue
        if node.op_type != "Gather" or graph.is_constant(node.input[1]):
            return None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        table = graph.value(node.input[0]) if graph.is_constant(node.input[0]) else None
        if table is None or table.ndim != 2 or axis % 2 != 0:
            return None
        return _mapped(np.asarray(table, dtype=np.float64), steps[::-1])
    return None


def _mapped(table: np.ndarray, steps) -> np.ndarray | None:
    """``table``'s rows through ``steps`` (scale, MatMul, Add), in order; None when a shape
    does not fit or a product is over ``MAX_MAPPED``."""
    for kind, value in steps:
        if kind == "scale":
            table = table * value
        elif kind == "Add":
            if value.shape[0] not in (1, table.shape[1]):
                return None
            table = table + value
        else:
            if value.shape[0] != table.shape[1] or table.size * value.shape[1] > MAX_MAPPED:
                return None
            table = table @ value
    return table


def gathered_rows(graph, name: str) -> bool:
    """``name`` is gathered rows of a constant table whose law this module reads."""
    return _table(graph, name) is not None


def squared_input(graph, name: str) -> str | None:
    """x when ``name`` is ``x^2`` (Pow by the constant 2, or ``x * x``), else None."""
    node = _producer(graph, name)
    if node is None:
        return None
    if node.op_type == "Mul" and node.input[0] == node.input[1]:
        return node.input[0]
    if node.op_type == "Pow" and graph.is_constant(node.input[1]):
        e = graph.value(node.input[1])
        if e is not None and np.size(e) == 1 and float(np.ravel(e)[0]) == 2.0:
            return node.input[0]
    return None


def _quantile(values: np.ndarray) -> Elementwise:
    """z -> Q(Phi(z)) for the empirical law of ``values``: the sorted values as steps, each of
    probability 1/V (a zero row keeps its whole mass at 0)."""
    r = np.sort(np.asarray(values, dtype=np.float64))

    def fn(z):
        u = special.ndtr(np.asarray(z, dtype=np.float64)) * r.size
        return r[np.clip(u.astype(np.int64), 0, r.size - 1)]

    return Elementwise(("TableRows", *digest(r)), fn, support=np.unique(r))


def table_mean_square(ctx: RuleContext, axes: tuple[int, ...], rank: int) -> Moments | None:
    """ReduceMean (ReduceSum) over the last axis of the square of gathered table rows: the
    table's law of ``r_v = mean_d T[v, d]^2`` (times D for a sum), else None."""
    if axes != (rank - 1,) or ctx.node.op_type not in ("ReduceMean", "ReduceSum"):
        return None
    graph = ctx.graph
    x = squared_input(graph, ctx.node.input[0])
    table = _table(graph, x) if x is not None else None
    if table is None or table.shape[1] < 2 or table.shape[0] < 2:
        return None
    rows = np.square(table).mean(axis=1)
    if ctx.node.op_type == "ReduceSum":
        rows = rows * table.shape[1]
    return Moments(np.float64(rows.mean()), np.float64(rows.var()),
                   Source(np.float64(0.0), np.float64(1.0), (_quantile(rows),)))


__all__ = ["gathered_rows", "squared_input", "table_mean_square"]
