"""Joint draws of unrolled recurrences (:mod:`.unrolled_region`).

The step nodes of an unrolled recurrence take their moments from one joint evaluation of the
sub-graph they are computed from: every node upstream of a step node through the ops below,
back to *leaves* (a graph input, or a tensor another op computes), each leaf drawn once,
element by element from its propagated law (its token field's correlation across tokens and
its element-wise source kept, as in :mod:`.joint_samples`), ``SAMPLES`` draws of one batch
element:

    y_k = h_k(l_1, ..., l_m)   (the recurrence as the graph writes it, in float32 or float64)
    E[y] = mean over draws,   Var[y] = mean of squares - E[y]^2   per element

so ``Var(c_t) = Var(f_t c_{t-1}) + Var(i_t g_t) + 2 Cov(f_t c_{t-1}, i_t g_t)`` with the
covariance the steps build (a stacked layer reads the previous layer's states, drawn from the
same draws, correlated across steps as they are). Ops evaluated: the element-wise ops of
:mod:`.joint_samples`, MatMul and Gemm by a constant, Split, Squeeze, Unsqueeze, Concat,
Transpose, Identity, and Slice/Gather with constant indices, none along the batch axis (each
tensor's draws are ``[SAMPLES, *shape]`` with its batch axis of size 1, tracked through the
layout ops). The evaluation runs in topological order as the propagation reaches the steps,
each tensor's draws freed once its last reader is evaluated; it is refused (the other rules
take every step, as before) when a tensor of one sample holds more than ``CELLS`` elements,
the sub-graph has more than ``NODES`` nodes, or an op is not one of these.
"""

from __future__ import annotations

import weakref

import numpy as np

from ..dtypes import FLOAT_TYPES
from ..moments import Moments
from .context import RuleContext
from .float_absorption import dtype_of
from .draw_ops import NARY, UNARY
from .token_draws import leaf_draws
from .unrolled_region import LAYOUT, elementwise_op, product_weight, unrolled_steps

SAMPLES = 1024  # draws of one batch element
CELLS = 16384  # elements of one sample of a tensor, at most
NODES = 20000  # nodes evaluated for one graph, at most

_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _Refused(Exception):
    pass


class _State:
    def __init__(self, graph, known, steps):
        self.known_id = id(known)
        self.leaves: dict[str, Moments] = {}
        self.draws: dict[str, tuple[np.ndarray, int]] = {}
        self.moments: dict[str, Moments] = {}
        self.failed = False
        self.order = _plan(graph, steps)
        self.cursor = 0
        self.uses: dict[str, int] = {}
        planned = set(self.order)
        for node_id in self.order:
            for name in graph.node(node_id).input:
                if name and graph.is_signal(name):
                    self.uses[name] = self.uses.get(name, 0) + 1
        if len(planned) > NODES:
            self.failed = True

    def valid(self, known) -> bool:
        return self.known_id == id(known) and all(
            known.get(name) is m for name, m in self.leaves.items())


def _evaluable(graph, node) -> bool:
    if node.domain not in ("", "ai.onnx") or not any(graph.is_signal(o) for o in node.output):
        return False
    return (elementwise_op(node) or node.op_type in LAYOUT or node.op_type == "Transpose"
            or product_weight(graph, node) is not None)


def _plan(graph, steps) -> list[str]:
    """The step nodes and every node they are computed from through evaluable ops, in
    topological order."""
    nodes, stack = set(), list(steps)
    while stack and len(nodes) <= NODES:
        node_id = stack.pop()
        if node_id in nodes:
            continue
        nodes.add(node_id)
        for name in graph.node(node_id).input:
            producer = graph.producer.get(name) if name and graph.is_signal(name) else None
            if producer is not None and producer not in nodes and _evaluable(
                    graph, graph.node(producer)):
                stack.append(producer)
    return [n for n in graph.order if n in nodes]


def _grid(graph, name: str, bax: int) -> tuple[int, ...]:
    shape = graph.shape(name)
    if shape is None or not 0 <= bax < len(shape):
        raise _Refused
    grid = tuple(1 if a == bax else s for a, s in enumerate(shape))
    if int(np.prod(grid)) > CELLS:
        raise _Refused
    return grid


def _leaf(ctx: RuleContext, name: str, m: Moments) -> tuple[np.ndarray, int]:
    """SAMPLES draws of a leaf (batch axis: the first of the analysed batch's size, else the
    first)."""
    graph = ctx.graph
    shape = graph.shape(name)
    if not shape:
        raise _Refused
    bax = shape.index(graph.batch_size) if graph.batch_size in shape else 0
    grid = _grid(graph, name, bax)
    rank = len(shape)
    src = m.source
    if src is not None and max(np.ndim(src.mean), np.ndim(src.var)) > rank:
        src = None
    mean, var = (m.mean, m.var) if src is None else (src.mean, src.var)
    parts = []
    for a in (mean, var):
        a = np.asarray(a, np.float64)
        a = a.reshape((1,) * (rank - a.ndim) + a.shape)
        a = np.broadcast_to(a, np.broadcast_shapes(a.shape, (1,) * rank))
        if a.shape[bax] > 1:
            a = a.mean(axis=bax, keepdims=True)
        parts.append(np.broadcast_to(a, grid))
    mean, var = parts
    z = leaf_draws(ctx.settings.seed, name, m, grid, mean, var, src, SAMPLES)
    return np.asarray(z, dtype=dtype_of(graph, name)), bax


def _constant(graph, name: str, rank: int, bax: int | None) -> np.ndarray:
    """The constant with a leading draw axis at ``rank`` axes, each axis it does not vary
    along cut to 1; refused when it varies along the batch axis."""
    value = graph.value(name)
    if value is None:
        raise _Refused
    value = np.asarray(value)
    for axis in range(value.ndim):
        if value.shape[axis] > 1 and np.all(value == value.take([0], axis=axis)):
            value = value.take([0], axis=axis)
    value = value.reshape((1,) * (rank - value.ndim) + value.shape)
    if bax is not None and value.ndim == rank and value.shape[bax] > 1:
        raise _Refused
    return value.reshape((1, *value.shape))


def _ints(ctx: RuleContext, index: int, attr: str):
    value = ctx.const(index) if ctx.has_input(index) else None
    if value is None and ctx.has_input(index):
        raise _Refused
    if value is None:
        value = ctx.attr(attr)
    return None if value is None else [int(v) for v in np.ravel(value)]


def _elementwise(ctx, node, operands, rank: int) -> tuple[np.ndarray, int]:
    graph = ctx.graph
    baxes = {rank - (a.ndim - 1) + b for a, b in operands.values()}
    if len(baxes) != 1:
        raise _Refused
    bax = baxes.pop()
    if node.op_type == "Cast" and ctx.attr("to") not in FLOAT_TYPES:
        raise _Refused
    arrays = []
    for name in node.input:
        if not name:
            continue
        if name in operands:
            a = operands[name][0]
            arrays.append(a.reshape((a.shape[0],) + (1,) * (rank - (a.ndim - 1)) + a.shape[1:]))
        else:
            arrays.append(_constant(graph, name, rank, bax))
    dtype = dtype_of(graph, node.output[0])
    arrays = [np.asarray(a, dtype=dtype) for a in arrays]
    with np.errstate(all="ignore"):
        if node.op_type in UNARY:
            out = UNARY[node.op_type](arrays[0])
        else:
            out = arrays[0]
            for a in arrays[1:]:
                out = NARY[node.op_type](out, a)
    return np.asarray(out, dtype=dtype), bax


def _matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w`` as one matrix product over every leading axis (a batched matmul of rows
    would not reach BLAS's matrix kernel)."""
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(x.shape[:-1] + (w.shape[-1],))


def _product(ctx, node, x: np.ndarray, bax: int) -> np.ndarray:
    graph = ctx.graph
    w = np.asarray(graph.value(node.input[1]), dtype=x.dtype)
    if bax == x.ndim - 2:
        raise _Refused
    if node.op_type == "MatMul":
        return _matmul(x, w)
    if x.ndim != 3:
        raise _Refused
    w = w.T if ctx.attr("transB", 0) else w
    out = ctx.attr("alpha", 1.0) * _matmul(x, w)
    if len(node.input) > 2 and node.input[2]:
        out = out + ctx.attr("beta", 1.0) * _constant(graph, node.input[2], 2, bax)
    return out.astype(x.dtype)


def _layout(ctx, node, operands: dict, names: list[str]) -> list[tuple[np.ndarray, int]]:
    op = node.op_type
    x, bax = operands[names[0]]
    rank = x.ndim - 1
    if op == "Identity":
        return [(x, bax)]
    if op == "Transpose":
        perm = ctx.attr("perm") or list(reversed(range(rank)))
        return [(x.transpose([0] + [p + 1 for p in perm]), perm.index(bax))]
    if op == "Concat":
        axis = ctx.attr("axis") % rank
        if axis == bax or any(operands[n][1] != bax for n in names) or len(names) != len(
                [n for n in node.input if n]):
            raise _Refused
        return [(np.concatenate([operands[n][0] for n in names], axis=axis + 1), bax)]
    if op == "Split":
        axis = ctx.attr("axis", 0) % rank
        if axis == bax:
            raise _Refused
        sizes = _ints(ctx, 1, "split")
        parts = len(node.output)
        if sizes is None:
            sizes = [x.shape[axis + 1] // parts] * parts
        return [(a, bax) for a in np.split(x, np.cumsum(sizes)[:-1], axis=axis + 1)]
    if op in ("Squeeze", "Unsqueeze"):
        axes = _ints(ctx, 1, "axes")
        if axes is None:
            raise _Refused
        if op == "Squeeze":
            axes = sorted(a % rank for a in axes)
            if bax in axes:
                raise _Refused
            return [(np.squeeze(x, tuple(a + 1 for a in axes)), bax - sum(a < bax for a in axes))]
        out_rank = rank + len(axes)
        axes = sorted(a % out_rank for a in axes)
        out = np.expand_dims(x, tuple(a + 1 for a in axes))
        kept = [a for a in range(out_rank) if a not in axes]
        return [(out, kept[bax])]
    if op == "Gather":
        axis = ctx.attr("axis", 0) % rank
        idx = ctx.const(1)
        if idx is None or axis == bax:
            raise _Refused
        idx = np.asarray(idx, np.int64)
        idx = np.where(idx < 0, idx + x.shape[axis + 1], idx)
        out_bax = bax if bax < axis else bax + idx.ndim - 1
        return [(np.take(x, idx, axis=axis + 1), out_bax)]
    # Slice
    starts, ends = ctx.const(1), ctx.const(2)
    axes = ctx.const(3) if ctx.has_input(3) else np.arange(np.size(starts))
    steps = ctx.const(4) if ctx.has_input(4) else np.ones(np.size(starts), np.int64)
    if starts is None or ends is None or axes is None or steps is None:
        raise _Refused
    index = [slice(None)] * (rank + 1)
    for a, s, e, t in zip(np.ravel(axes), np.ravel(starts), np.ravel(ends), np.ravel(steps)):
        a = int(a) % rank
        if a == bax:
            raise _Refused
        index[a + 1] = slice(*slice(int(s), int(e), int(t)).indices(x.shape[a + 1]))
    return [(x[tuple(index)], bax)]


def _moments(a: np.ndarray) -> Moments:
    """Per-element mean and variance over the draws (float64 sums)."""
    flat = a.reshape(a.shape[0], -1)
    mean = flat.mean(axis=0, dtype=np.float64)
    centred = flat - mean.astype(flat.dtype)
    var = np.einsum("ij,ij->j", centred, centred, dtype=np.float64) / flat.shape[0]
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
        raise _Refused
    return Moments(mean.reshape(a.shape[1:]), np.maximum(var, 0.0).reshape(a.shape[1:]))


def _evaluate(ctx: RuleContext, state: _State, node_id: str, steps) -> None:
    graph = ctx.graph
    node = graph.node(node_id)
    sub = ctx.for_node(node_id)
    names = [n for n in node.input if n and graph.is_signal(n)]
    operands = {}
    for name in names:
        if name not in state.draws:
            m = ctx.known.get(name)
            if m is None or graph.producer.get(name) in state.order_set:
                raise _Refused  # a planned tensor freed, or a leaf not propagated yet
            state.leaves[name] = m
            state.draws[name] = _leaf(ctx, name, m)
        operands[name] = state.draws[name]
    if elementwise_op(node):
        shape = graph.shape(node.output[0])
        if shape is None:
            raise _Refused
        outputs = [_elementwise(sub, node, operands, len(shape))]
    elif node.op_type in ("MatMul", "Gemm"):
        x, bax = operands[names[0]]
        outputs = [(_product(sub, node, x, bax), bax)]
    else:
        outputs = _layout(sub, node, operands, names)
    for name in names:
        state.uses[name] -= 1
        if state.uses[name] <= 0:
            state.draws.pop(name, None)
    for name, (a, bax) in zip(node.output, outputs):
        if not name or not graph.is_signal(name):
            continue
        if a.shape[1:] != _grid(graph, name, bax):
            raise _Refused
        if node_id in steps:
            state.moments[name] = _moments(a)
        if state.uses.get(name, 0) > 0:
            state.draws[name] = (a, bax)


def unrolled_moments(ctx: RuleContext) -> Moments | None:
    """Moments of a step node of an unrolled recurrence from the joint draws (module
    docstring); None for any other node, or when the draws are refused."""
    graph, known = ctx.graph, ctx.known
    if known is None or len(ctx.node.output) != 1:
        return None
    steps = unrolled_steps(graph)
    if ctx.node_id not in steps:
        return None
    state = _STATES.get(graph)
    if state is None or not state.valid(known):
        state = _STATES[graph] = _State(graph, known, steps)
        state.order_set = set(state.order)
    name = ctx.node.output[0]
    while not state.failed and name not in state.moments and state.cursor < len(state.order):
        node_id = state.order[state.cursor]
        state.cursor += 1
        try:
            _evaluate(ctx, state, node_id, steps)
        except _Refused:
            state.failed = True
            state.draws.clear()
    return None if state.failed else state.moments.get(name)
