"""Tokens that draw a zero row of an embedding table (``padding_idx``): a point mass carried
from the Gather to the first mean of squares that reads it.

The feeds draw token ids uniformly over the table's V rows (:mod:`onnxinit.feeds`), so a token
draws one of the table's n0 all-zero rows with probability ``p = n0 / V``. Its row stays
exactly zero through what maps zero to zero token by token: a normalisation (``x * r`` with
r finite: ``1/sqrt(eps)`` at x = 0), a scale, a dense layer without bias, the split into heads
and its transposes, rotary (``x cos + rotate_half(x) sin``: Slice, Neg, Concat, Mul and the Add
of two terms of the same token's zero row). Where the row meets another non-zero term (a
residual Add of an attention output, a non-zero bias, Q K^T's mixing over tokens) it stops
being a point mass: the component ends there. A gated block keeps it (``gelu(x W_y + b_y) *
(...)``, the biases zero at init: RecurrentGemma's recurrent block), and so does a residual Add
of two such terms.

A mean of squares over the features of such a tensor (a per-head q/k norm after q_proj of the
normalised embeddings; a norm of a stream that is still zero) is 0 for those tokens, and the
element-wise chain after it (``+ eps``, Sqrt, the reciprocal) takes ``f(0)`` there:
``1/sqrt(eps)``, far from the others' values (1000 against about 1 at eps 1e-6). Its law is
the mixture ``(1 - p) law_regular + p delta_{f(0)}``:

    E[y]   = (1 - p) E_r[y] + p f(0)
    Var[y] = (1 - p) (Var_r[y] + E_r[y]^2) + p f(0)^2 - E[y]^2

with ``p f(0)^2 = p / eps`` dominating the variance (Gemma 3's q/k norms' reciprocals read
0.002x of it as the regular law alone). The rules before the mean square describe the rows
that are not zero (a normalised row's unit mean square: the share p of zero rows, of order
1/V, is left out of their moments); the mean square's rule gives the regular component, and
:func:`mixed` adds the point mass; the element-wise rules after it integrate the regular law
(:func:`regular` undoes the mixing for :mod:`.chi_square`'s law) and mix ``f(0)`` back in.

A mean square that :mod:`.table_rows` reads (the table's own law, whose zero rows are in it)
is left to that rule.

Not modelled: ids that are not the feeds' uniform ids (computed ids, positions), a zero row
carried through an attention (a token at the first position of a causal attention sees only
itself, so its stream stays zero through the layers), and the point mass after the residual
Add (the token's stream is then the other branch alone).
"""

from __future__ import annotations

import weakref

import numpy as np

from ..feeds import vocab_size
from ..moments import Moments
from .table_rows import gathered_rows, squared_input

# element-wise ops with f(0) = 0
_ZERO_FIXED = frozenset({"Cast", "Identity", "Dropout", "Neg", "Relu", "Abs", "Tanh", "Erf",
                         "Sin", "Atan", "Sinh", "Asin", "Gelu", "LeakyRelu", "Softsign"})
# index ops between a graph input and the table's Gather (the ids stay uniform)
_ID_PATH = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"})
_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ANY = object()  # a memo's generation where the values cannot change the answer


class ZeroRows(tuple):
    """``(p, origin, features)``: the tokens of ``origin`` (the ids tensor) that drew a zero row,
    with probability p, are exactly 0 on every element of theirs; ``features[a]`` is True for an
    axis along which one token's elements lie (False: an axis of tokens)."""

    @property
    def p(self) -> float:
        return self[0]

    @property
    def origin(self) -> str:
        return self[1]

    @property
    def features(self) -> tuple[bool, ...]:
        return self[2]


def _ids_input(graph, ids: str) -> str | None:
    """The graph input that ``ids`` is, through index ops that keep its uniform law."""
    for _ in range(8):
        if ids in graph.input_names:
            return ids
        node_id = graph.producer.get(ids)
        if not node_id or graph.node(node_id).op_type not in _ID_PATH:
            return None
        ids = graph.node(node_id).input[0]
    return None


def _gathered(graph, node) -> ZeroRows | None:
    """A Gather of rows of a constant 2-D table with zero rows by the feeds' uniform ids."""
    if len(node.input) < 2 or graph.is_constant(node.input[1]) or not graph.is_constant(
            node.input[0]):
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    source = _ids_input(graph, node.input[1])
    shape = graph.shape(node.input[0])
    if axis != 0 or source is None or shape is None or len(shape) != 2 or vocab_size(
            graph, source) != shape[0]:
        return None
    table = graph.value(node.input[0])
    if table is None or np.shape(table) != tuple(shape):
        return None
    zero = int(shape[0] - np.count_nonzero(np.any(np.asarray(table) != 0, axis=1)))
    ids_shape = graph.shape(node.input[1])
    if zero in (0, table.shape[0]) or ids_shape is None:  # an all-zero table is a constant
        return None
    return ZeroRows((zero / table.shape[0], node.input[1], (False,) * len(ids_shape) + (True,)))


def _reshaped(features, shape_in, shape_out):
    """Roles of a reshape's output axes: the axes of size > 1 grouped with the input's by equal
    products, each group all tokens or all features (else None); an axis of size 1 is a
    feature axis."""
    if any(s <= 0 for s in (*shape_in, *shape_out)):
        return None
    ins = [(s, f) for s, f in zip(shape_in, features) if s != 1]
    outs = [j for j, s in enumerate(shape_out) if s != 1]
    roles_out = [True] * len(shape_out)
    i = j = 0
    while i < len(ins) or j < len(outs):
        pi, pj, roles, group = 1, 1, set(), []
        while i < len(ins) or j < len(outs):
            if pi <= pj and i < len(ins) and (pi < pj or not group or j == len(outs)):
                pi *= ins[i][0]
                roles.add(ins[i][1])
                i += 1
            elif j < len(outs):
                pj *= shape_out[outs[j]]
                group.append(outs[j])
                j += 1
            else:
                return None
            if pi == pj:
                break
        if pi != pj or len(roles) != 1:
            return None
        role = roles.pop()
        for g in group:
            roles_out[g] = role
    return tuple(roles_out)


def _state(graph, node, known: dict) -> ZeroRows | None:
    """The output's zero rows given the inputs' in ``known`` (module docstring's ops)."""
    op = node.op_type
    if op == "Gather":
        return _gathered(graph, node)
    ins = [known.get(name) for name in node.input]
    first = ins[0] if ins else None
    out_shape = graph.shape(node.output[0])
    shapes = [graph.shape(name) for name in node.input]

    def full(k):  # input k has the output's shape (not broadcast)
        return ins[k] is not None and shapes[k] is not None and shapes[k] == out_shape

    if op in _ZERO_FIXED:
        return first
    if op == "Pow" and first is not None and graph.is_constant(node.input[1]):
        e = graph.value(node.input[1])
        return first if e is not None and np.size(e) == 1 and float(np.ravel(e)[0]) > 0 else None
    if op == "Mul":
        k = 0 if full(0) else 1 if full(1) else None
        return ins[k] if k is not None else None
    if op == "Div":
        return first if full(0) else None
    if op in ("Add", "Sub") and len(ins) == 2:  # a zero constant (a bias at init) keeps it
        k = 0 if ins[1] is None else 1
        other = node.input[1 - k]
        if ins[k] is not None and full(k) and graph.is_constant(other):
            value = graph.value(other)
            return ins[k] if value is not None and not np.any(value) else None
    if op in ("Add", "Sub", "Concat"):
        if all(s is not None and s == first for s in ins) and (op == "Concat" or full(0)):
            return first
        return None
    if first is None or out_shape is None:
        return None
    if op == "MatMul":
        w = graph.value(node.input[1]) if graph.is_constant(node.input[1]) else None
        return first if w is not None and np.ndim(w) == 2 and first.features[-1] else None
    if op in ("Slice", "Split"):
        return first
    if op == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        perm = perm if perm is not None else list(range(len(first.features)))[::-1]
        return ZeroRows((first.p, first.origin, tuple(first.features[a] for a in perm)))
    if op in ("Reshape", "Unsqueeze", "Squeeze", "Flatten") and shapes[0] is not None:
        roles = _reshaped(first.features, shapes[0], out_shape)
        return ZeroRows((first.p, first.origin, roles)) if roles is not None else None
    if op in ("ReduceMean", "ReduceSum") and _features_only(graph, node, first):
        features = first.features if len(out_shape) == len(first.features) else None
        return ZeroRows((first.p, first.origin, features)) if features is not None else None
    return None


def _features_only(graph, node, first: ZeroRows) -> bool:
    """The reduce node's axes are feature axes only (one token's elements)."""
    rank = len(first.features)
    if len(node.input) > 1 and node.input[1]:
        axes = graph.value(node.input[1]) if graph.is_constant(node.input[1]) else None
    else:
        axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None or np.size(axes) == 0:
        return False
    return all(first.features[int(a) % rank] for a in np.ravel(axes))


def _label(graph) -> dict:
    """Every tensor with zero rows: forward from each Gather that starts some, through the
    ops that keep them (a node is looked at again when another of its inputs is labelled)."""
    known: dict = {}
    frontier = []
    for node_id in graph.producer.values():
        node = graph.node(node_id)
        if node.op_type == "Gather" and (state := _gathered(graph, node)) is not None:
            known[node.output[0]] = state
            frontier.append(node.output[0])
    while frontier:
        tensor = frontier.pop()
        for node_id, _ in graph.consumers.get(tensor, []):
            node = graph.node(node_id)
            state = _state(graph, node, known)
            if state is None:
                continue
            for out in node.output[:len(node.output) if node.op_type == "Split" else 1]:
                if out and known.get(out) != state:
                    known[out] = state
                    frontier.append(out)
    return known


def _labels(graph) -> dict:
    """:func:`_label`'s answer, kept while the graph's values are unchanged (``generation``:
    a rewritten table may lose its zero rows); for good on a graph without a Gather, where it
    is empty whatever the values (a rescale changes them weight by weight: ResNet-164's
    autoinit pass labelled its 390 nodes at each of its 163 ReLUs)."""
    hit = _MEMO.get(graph)
    if hit is None or hit[0] not in (graph.generation, _ANY):
        known = _label(graph)
        gathers = any(graph.node(n).op_type == "Gather" for n in graph.producer.values())
        hit = _MEMO[graph] = (graph.generation if gathers else _ANY, known, {})
    return hit


def zero_rows(graph, name: str) -> ZeroRows | None:
    """The zero rows ``name`` carries (module docstring), else None."""
    return _labels(graph)[1].get(name)


def zero_mean_square(graph, name: str) -> float | None:
    """p when ``name`` is a ReduceMean/ReduceSum of ``x^2`` over features of a tensor with zero
    rows (share p), which :mod:`.table_rows` does not read, else None."""
    node_id = graph.producer.get(name)
    node = graph.node(node_id) if node_id else None
    if node is None or node.op_type not in ("ReduceMean", "ReduceSum"):
        return None
    x = squared_input(graph, node.input[0])
    state = zero_rows(graph, name) if x is not None else None
    if state is None or gathered_rows(graph, x):
        return None
    return state.p


def has_zero_rows(graph) -> bool:
    """Some tensor of ``graph`` carries zero rows."""
    return bool(_labels(graph)[1])


def zero_mean_squares(graph) -> frozenset:
    """Every tensor of ``graph`` that :func:`zero_mean_square` holds for."""
    _, known, memo = _labels(graph)
    if "squares" not in memo:
        memo["squares"] = frozenset(
            name for name in known if zero_mean_square(graph, name) is not None)
    return memo["squares"]


def mixed(m: Moments, p: float, value) -> Moments:
    """``m`` (the regular component) mixed with a point mass at ``value`` of weight ``p``; its
    source (the regular law) kept for the element-wise rules after it."""
    mean = (1.0 - p) * m.mean + p * value
    second = (1.0 - p) * (m.var + m.mean * m.mean) + p * value * value
    return Moments(mean, np.maximum(second - mean * mean, 0.0), m.source, None, m.tokens,
                   m.rows)


def regular(m: Moments, p: float, value) -> Moments:
    """The regular component of ``m``, a mixture with a point mass at ``value`` of weight p."""
    mean = (m.mean - p * value) / (1.0 - p)
    second = (m.var + m.mean * m.mean - p * value * value) / (1.0 - p)
    return Moments(mean, np.maximum(second - mean * mean, 0.0), m.source, m.mixture, m.tokens,
                   m.rows)


__all__ = ["ZeroRows", "has_zero_rows", "mixed", "regular", "zero_mean_square", "zero_mean_squares",
           "zero_rows"]
