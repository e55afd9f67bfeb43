"""Element-wise sub-graphs over several correlated operands, sampled jointly.

A *region* is a connected set of element-wise nodes (Add, Sub, Mul, Div, Pow, Max, Min of
signals and constants; Neg, Exp, Log, Abs, Relu, Sigmoid, Tanh, Sqrt, Reciprocal, Softplus,
Identity, float Cast). Its *leaves* are the signals it reads from outside (a Gather, a MatMul,
a graph input). Every tensor of a region is a function of its leaves, ``y = h(l_1, ..., l_k)``,
so where two operands of a node share part of their region ancestry (``a - Max(a, b)``, a
ratio of two sums that share their weights, ``Max(m + w, k)`` of a running maximum m) their
joint law, not their marginals, sets the node's moments. The rules elsewhere take two signals
as independent, or as element-wise functions of one common tensor (:mod:`.fusion`); here:

    E[y] = E[h(l)],   Var[y] = E[h(l)^2] - E[y]^2,   l_i independent, each from its own law

estimated on ``SAMPLES`` seeded draws of the leaves per cell of their statistics (a leaf's
source, a Gaussian and its element-wise chain, when it has one; else a Gaussian), the region
evaluated in the tensor's floating type (float32 exports keep float32's absorption: ``-1e38 -
x`` is ``-1e38``, as in onnxruntime). Leaves are independent, as every binary rule takes its
operands; only the correlation the region itself builds is added.

A node is taken here when (a) two of its signal operands share a region ancestor within
``WALK`` nodes (through selections of positions too: two tokens of one sequence) and
:mod:`.fusion` found no single common ancestor, (b) one of its signal operands was itself
computed here (so that the whole recurrence downstream of an entangled node shares one set of
draws), or (c) it adds a float32 constant that absorbs its signal
(:func:`.float_absorption.absorbed`). A Div of two signals computed here also records its
operands' ratio moments for its backward rule (:mod:`.ratio_moments`).
Samples are cached per graph (least recently used first out, ``CACHE_BYTES`` in all), each
entry valid while the propagated Moments of its tensor is the object it was computed for (a
node computed here: while its Moments hold the values computed); an evicted tensor is
recomputed from its region inputs, and a node's inputs are held while it is computed. Nodes
of more than ``REGION_CELLS`` elements per sample are left to the other rules, and so is every
node once ``TOTAL_WORK`` elements have been computed for the graph (a bound on the time).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

import numpy as np

from ..dtypes import FLOAT_TYPES
from ..moments import Moments
from .context import RuleContext
from .draw_ops import NARY, UNARY
from .float_absorption import absorbed, dtype_of
from .joint_linear import apply_linear, linear_node, selects_positions, shifts_positions
from .ratio_moments import ratio_moments, record
from .token_draws import leaf_draws
from .unrolled_draws import unrolled_moments

SAMPLES = 4096  # draws per cell
CELLS = 4096  # cells of one draw of a tensor the linear nodes move, at most
REGION_CELLS = 512  # elements of one sample of a node computed here, at most
CACHE_BYTES = 256 << 20  # cached samples per graph
WORK = 1 << 27  # elements computed for one node, at most
TOTAL_WORK = 1 << 32  # elements computed for one graph (RWKV's 2 layers: 6e8), at most
WALK = 64  # region nodes visited per operand when looking for a shared ancestor
EVALUATIONS = 2048  # region nodes (re)computed for one node, at most
LOOK_THROUGH = 8  # unary region nodes walked back to find an operand computed here


class _Refused(Exception):
    pass


class _Entry:
    __slots__ = ("moments", "samples", "joint")

    def __init__(self, moments, samples, joint):
        self.moments, self.samples, self.joint = moments, samples, joint


class _Cache:
    def __init__(self):
        self.entries: OrderedDict[str, _Entry] = OrderedDict()
        self.bytes = 0
        self.spent = 0  # elements computed: past TOTAL_WORK the other rules take every node

    def get(self, name: str, known) -> _Entry | None:
        entry = self.entries.get(name)
        if entry is None:
            return None
        m = known.get(name)
        if m is not entry.moments:  # the propagator stores a copy of a rule's answer
            if not (entry.joint and m is not None and np.array_equal(m.mean, entry.moments.mean)
                    and np.array_equal(m.var, entry.moments.var)):
                return None
            entry.moments = m
        self.entries.move_to_end(name)
        return entry

    def put(self, name: str, entry: _Entry) -> None:
        old = self.entries.pop(name, None)
        if old is not None:
            self.bytes -= old.samples.nbytes
        self.entries[name] = entry
        self.bytes += entry.samples.nbytes
        while self.bytes > CACHE_BYTES and len(self.entries) > 1:
            _, dropped = self.entries.popitem(last=False)
            self.bytes -= dropped.samples.nbytes


_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _region_node(graph, tensor: str):
    """The producer of ``tensor`` when it is a region node (default domain, an op above, every
    operand a signal or a constant, a Cast to a float type), else None."""
    node_id = graph.producer.get(tensor)
    if node_id is None:
        return None
    node = graph.node(node_id)
    if node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    op = node.op_type
    if op not in UNARY and op not in NARY:
        return None
    if op == "Cast":
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if to not in FLOAT_TYPES:
            return None
    if op in UNARY and len([n for n in node.input if n]) != 1:
        return None
    if not all(graph.is_signal(n) or graph.is_constant(n) for n in node.input if n):
        return None
    if not any(graph.is_signal(n) for n in node.input if n):
        return None
    return node


def _ancestry(graph, tensor: str, budget: int) -> set[str]:
    """``tensor`` and the tensors it is computed from through region nodes and selections of
    positions (:func:`.joint_linear.selects_positions`; ``budget`` nodes visited at most)."""
    seen, stack = {tensor}, [tensor]
    while stack and budget > 0:
        name = stack.pop()
        node = _region_node(graph, name)
        if node is None:
            node = linear_node(graph, name)
            if node is None or not selects_positions(graph, node) or not _shifted(
                    graph, node.input[0]):
                continue
        budget -= 1
        for n in node.input:
            if n and graph.is_signal(n) and n not in seen:
                seen.add(n)
                stack.append(n)
    return seen


def _shifted(graph, tensor: str, budget: int = 2 * WALK) -> bool:
    """``tensor`` is computed, through region and linear nodes the draws follow, from a shifted
    copy of a sequence (:func:`.joint_linear.shifts_positions`): its positions are correlated in
    a way the draws reproduce. Without one, the draws of two selected positions would be
    independent, as the other rules take them."""
    seen, stack = {tensor}, [tensor]
    while stack and budget > 0:
        name = stack.pop()
        node = _region_node(graph, name) or linear_node(graph, name)
        if node is None:
            continue
        budget -= 1
        if shifts_positions(graph, node):
            return True
        for n in node.input:
            if n and graph.is_signal(n) and n not in seen:
                seen.add(n)
                stack.append(n)
    return False


def _entangled(ctx: RuleContext) -> bool:
    graph = ctx.graph
    names = list(dict.fromkeys(n for n in ctx.node.input if n and graph.is_signal(n)))
    if len(names) < 2 or ctx.fusion is not None:
        return False
    seen: set[str] = set()
    for name in names:
        found = _ancestry(graph, name, WALK)
        if found & seen:
            return True
        seen |= found
    return False


def _follows_joint(ctx: RuleContext, cache: _Cache) -> bool:
    graph = ctx.graph
    for name in ctx.node.input:
        for _ in range(LOOK_THROUGH):
            if not name or not graph.is_signal(name):
                break
            entry = cache.get(name, ctx.known)
            if entry is not None:
                if entry.joint:
                    return True
                break
            node = _region_node(graph, name)
            if node is None or node.op_type not in UNARY:
                break
            name = next(n for n in node.input if n)
    return False


def _rank(graph, tensor: str, moments: Moments | None) -> int:
    shape = graph.shape(tensor)
    if shape is not None:
        return len(shape)
    return 0 if moments is None else moments.rank


def _lift(a: np.ndarray, rank: int) -> np.ndarray:
    """``[n, *grid]`` samples with the grid padded on the left to ``rank`` axes."""
    missing = rank - (a.ndim - 1)
    if missing <= 0:
        return a
    return a.reshape((a.shape[0],) + (1,) * missing + a.shape[1:])


def _draw(ctx: RuleContext, name: str, m: Moments) -> np.ndarray:
    """SAMPLES draws of a leaf per cell of its statistics, ``[n, *grid]`` at its rank."""
    rank = _rank(ctx.graph, name, m)
    src = m.source
    if src is not None and max(np.ndim(src.mean), np.ndim(src.var)) > rank:
        src = None
    mean, var = (m.mean, m.var) if src is None else (src.mean, src.var)
    mean = np.asarray(mean, np.float64)
    mean = mean.reshape((1,) * (rank - mean.ndim) + mean.shape) if mean.ndim < rank else mean
    var = np.asarray(var, np.float64)
    var = var.reshape((1,) * (rank - var.ndim) + var.shape) if var.ndim < rank else var
    grid = np.broadcast_shapes(np.shape(mean), np.shape(var))
    shape = ctx.graph.shape(name)
    if shape is not None and len(shape) == len(grid) and int(np.prod(shape[1:])) <= CELLS:
        grid = (1, *shape[1:])  # every element of a sample drawn (a node may move them)
    if int(np.prod(grid)) > CELLS:
        raise _Refused
    z = leaf_draws(ctx.settings.seed, name, m, grid, mean, var, src, SAMPLES)
    return np.asarray(z, dtype=dtype_of(ctx.graph, name))


def _evaluate(ctx: RuleContext, node, operands: list[np.ndarray]) -> np.ndarray:
    op = node.op_type
    rank = _rank(ctx.graph, node.output[0], None)
    dtype = dtype_of(ctx.graph, node.output[0])
    arrays = [_lift(np.asarray(a, dtype=dtype), rank) for a in operands]
    with np.errstate(all="ignore"):
        if op in UNARY:
            out = UNARY[op](arrays[0])
        else:
            fn = NARY[op]
            out = arrays[0]
            for a in arrays[1:]:
                out = fn(out, a)
    out = np.asarray(out, dtype=dtype)
    if out.size > SAMPLES * CELLS:
        raise _Refused
    return out


def _constant(ctx: RuleContext, name: str) -> np.ndarray:
    """The constant with a leading sample axis, each axis it does not vary along cut to 1
    (a ConstantOfShape fill broadcasts as one value, not as a grid of cells)."""
    value = ctx.graph.value(name)
    if value is None:
        raise _Refused
    value = np.asarray(value, dtype=np.float64)
    for axis in range(value.ndim):
        if value.shape[axis] > 1 and np.all(value == value.take([0], axis=axis)):
            value = value.take([0], axis=axis)
    if value.size > CELLS:
        raise _Refused
    return value.reshape((1, *value.shape))


def _samples(ctx: RuleContext, cache: _Cache, tensor: str, budget: list[int],
             local: dict) -> np.ndarray:
    """Draws of ``tensor``: computed for this node already (``local``, which holds them while
    the node is computed, whatever the cache evicts), cached, else computed from its region
    inputs (iteratively), else drawn from its own law (a leaf)."""
    known, graph = ctx.known, ctx.graph

    def found(name):
        if name not in local:
            entry = cache.get(name, known)
            if entry is None:
                return None
            local[name] = entry.samples
        return local[name]

    stack = [tensor]
    while stack:
        name = stack[-1]
        if found(name) is not None:
            stack.pop()
            continue
        m = known.get(name)
        if m is None:
            raise _Refused
        node = _region_node(graph, name)
        linear = linear_node(graph, name) if node is None else None
        if node is None and linear is None:
            out = _draw(ctx, name, m)
        else:
            inputs = [n for n in (node or linear).input if n and graph.is_signal(n)]
            missing = [n for n in inputs if found(n) is None]
            if missing:
                stack.extend(missing)
                continue
            budget[0] -= 1
            if budget[0] < 0:
                raise _Refused
            if linear is not None:
                out = apply_linear(ctx, linear, local[inputs[0]])
                out = _draw(ctx, name, m) if out is None else out
            else:
                operands = [local[n] if graph.is_signal(n) else _constant(ctx, n)
                            for n in node.input if n]
                out = _evaluate(ctx, node, operands)
        budget[1] -= out.size
        if budget[1] < 0:
            raise _Refused
        local[name] = out
        cache.put(name, _Entry(m, out, False))
        stack.pop()
    return local[tensor]


def joint_draws(graph, tensor: str, known) -> np.ndarray | None:
    """The cached draws ``[n, *grid]`` of a tensor computed here (valid for its moments in
    ``known``), else None: :mod:`.token_scatter` reads a scan's steps from them."""
    cache = _CACHES.get(graph)
    entry = None if cache is None else cache.get(tensor, known)
    return None if entry is None or not entry.joint else entry.samples


def joint_moments(inputs, ctx: RuleContext) -> Moments | None:
    """Moments of a region node whose operands are correlated through the region (see the
    module docstring), from joint draws of its leaves; None when the node is not one (the
    other rules take it) or the draws are refused (too many cells, an operand not folded)."""
    known, graph, node = ctx.known, ctx.graph, ctx.node
    if known is None or len(node.output) != 1 or not node.output[0]:
        return None
    if (unrolled := unrolled_moments(ctx)) is not None:  # a step of an unrolled recurrence
        return unrolled
    if node.op_type not in UNARY and node.op_type not in NARY:
        return None
    if _region_node(graph, node.output[0]) is None:
        return None
    shape = graph.shape(node.output[0])
    if shape is None or int(np.prod(shape[1:])) > REGION_CELLS:
        return None
    cache = _CACHES.get(graph)
    if cache is None:
        cache = _CACHES.setdefault(graph, _Cache())
    if cache.spent > TOTAL_WORK or not (
            _follows_joint(ctx, cache) or _entangled(ctx) or absorbed(inputs, ctx)):
        return None
    budget, local = [EVALUATIONS, WORK], {}
    try:
        operands = []
        for name in node.input:
            if not name:
                continue
            if graph.is_signal(name):
                operands.append(_samples(ctx, cache, name, budget, local))
            else:
                operands.append(_constant(ctx, name))
        out = _evaluate(ctx, node, operands)
    except _Refused:
        return None
    finally:
        cache.spent += WORK - budget[1]
    if not np.all(np.isfinite(out)):
        return None
    wide = out.astype(np.float64)
    moments = Moments(wide.mean(axis=0), np.maximum(wide.var(axis=0), 0.0))
    cache.put(node.output[0], _Entry(moments, out, True))
    if node.op_type == "Div" and all(graph.is_signal(n) for n in node.input):  # its backward
        record(graph, node.output[0], moments, ratio_moments(*operands, out.ndim - 1))
    return moments
