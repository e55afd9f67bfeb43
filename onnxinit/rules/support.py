"""Tensors that are non-negative by construction, read from the graph alone.

A ReLU output summed with non-negative weights (IDInit's identity patterns, an average pool, a
residual sum of ReLU outputs) is non-negative in every sample, yet its moments describe it as a
Gaussian, whose lower tail a following ReLU would clip. A function that is the identity on
[0, inf) (ReLU, LeakyReLU, PRelu, Abs, Elu, Celu) of such a tensor is that tensor exactly:
:func:`identity_on_input` says when, and the element-wise rules then pass the input through.

``nonnegative(graph, t)``: t is a constant with no negative entry; or the output of a function
with a non-negative range (Relu, Abs, Sigmoid, HardSigmoid, Softplus, Exp, Softmax, Sqrt, the
norms ReduceL1/ReduceL2/ReduceSumSquare, a square ``Pow(x, even)`` or ``Mul(x, x)``, a Clip
with a lower bound >= 0); or of an op that keeps non-negative inputs non-negative (sums and
products with non-negative constants: Conv, ConvTranspose, Gemm with alpha, beta >= 0, MatMul,
Add, Sum, Mean, Mul, Max; pools and reductions; layout ops, which only move values), every
value operand non-negative. A statistic of a decomposed norm (a mean of squares plus an
epsilon, its square root) is one: its Gaussian moments put mass below 0 where it has none. Anything else (a graph input, Sub, a
function of unknown sign, a constant of more than ``MAX_CHECKED`` entries, which is not read)
is not known to be, within ``MAX_DEPTH`` producers.
"""

from __future__ import annotations

import weakref

import numpy as np

IDENTITY_ON_NONNEGATIVE = frozenset({"Relu", "LeakyRelu", "PRelu", "Abs", "Elu", "Celu"})
MAX_DEPTH = 24  # producers followed back from a tensor
_BLOCK = 1 << 16  # entries of a constant checked at once
MAX_CHECKED = 1 << 22  # entries of a constant above which its sign is not read (unknown)

_NONNEGATIVE_RANGE = frozenset({"Relu", "Abs", "Sigmoid", "HardSigmoid", "Softplus", "Exp",
                                "Softmax", "Sqrt", "ReduceL1", "ReduceL2", "ReduceSumSquare"})
_ALL_OPERANDS = frozenset({"Conv", "ConvTranspose", "MatMul", "Add", "Sum", "Mean", "Mul",
                           "Max"})
_FIRST_OPERAND = frozenset({
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Identity", "Reshape",
    "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Split", "Pad", "Dropout",
    "Resize", "Upsample", "DepthToSpace", "SpaceToDepth", "Tile", "Expand", "Cast", "Gather",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
})


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return a.f if a.type == a.FLOAT else a.i
    return default


def _operands(node) -> list[str] | None:
    """The inputs whose sign decides the output's, or None for an op not listed."""
    op = node.op_type
    if op in _ALL_OPERANDS or op == "Concat":
        return [name for name in node.input if name]
    if op == "Gemm":
        if _attr(node, "alpha", 1.0) < 0 or _attr(node, "beta", 1.0) < 0:
            return None
        return [name for name in node.input if name]
    if op == "Pad" and _attr(node, "mode", b"constant") not in (b"constant", "constant"):
        return [node.input[0]]
    if op == "Pad" and len(node.input) > 2 and node.input[2]:
        return [node.input[0], node.input[2]]  # the pad value
    if op in _FIRST_OPERAND:
        return [node.input[0]]
    return None


# graph -> {tensor: (graph.generation, answer)}: the answers of whole walks (MAX_DEPTH)
_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def nonnegative(graph, tensor: str, depth: int = MAX_DEPTH, seen: dict | None = None) -> bool:
    """Whether every element of ``tensor`` is >= 0 in every sample (see the module). A whole
    walk reads the graph alone (its structure and constants), so its answer is memoised per
    graph object and tensor while the graph's values are unchanged (``generation``): the
    element-wise rule and the channel covariance of each ReLU ask the same, and each walks
    back through the residual sums before it."""
    if seen is None and depth == MAX_DEPTH:
        generation = getattr(graph, "generation", None)
        try:
            memo = _MEMO.setdefault(graph, {}) if generation is not None else None
        except TypeError:  # not weakly referable: no memo
            memo = None
        if memo is not None:
            hit = memo.get(tensor)
            if hit is not None and hit[0] == generation:
                return hit[1]
            found = _walk(graph, tensor, depth, {})
            memo[tensor] = (generation, found)
            return found
    return _walk(graph, tensor, depth, {} if seen is None else seen)


def _walk(graph, tensor: str, depth: int, seen: dict) -> bool:
    if tensor not in seen:
        seen[tensor] = _nonnegative(graph, tensor, depth, seen)
    return seen[tensor]


def _no_negative(value: np.ndarray) -> bool:
    """No entry < 0 (nor NaN), read a block at a time and stopping at the first: a random
    weight (a memory map of external data) is not paged in whole."""
    flat = np.asarray(value).reshape(-1)
    for start in range(0, flat.size, _BLOCK):
        if not np.all(flat[start:start + _BLOCK] >= 0):
            return False
    return True


def _nonnegative(graph, tensor: str, depth: int, seen: dict) -> bool:
    if graph.is_constant(tensor):
        shape = graph.shape(tensor)
        if shape is None or np.prod(shape, dtype=np.int64) > MAX_CHECKED:
            return False  # not read: a large weight is not made (scaled, converted) for this
        value = graph.value(tensor)
        return value is not None and _no_negative(value)
    node_id = graph.producer.get(tensor)
    if node_id is None or depth <= 0:
        return False
    node = graph.node(node_id)
    if node.op_type in _NONNEGATIVE_RANGE or _squares(graph, node) or _clipped_at_0(graph, node):
        return True
    operands = _operands(node)
    if operands is None:
        return False
    return all(_walk(graph, name, depth - 1, seen) for name in operands)


def _squares(graph, node) -> bool:
    """``Pow(x, p)`` with every p even, or ``Mul(x, x)``."""
    inputs = [name for name in node.input if name]
    if node.op_type == "Mul":
        return len(inputs) == 2 and inputs[0] == inputs[1]
    if node.op_type != "Pow" or len(inputs) != 2 or not graph.is_constant(inputs[1]):
        return False
    power = graph.value(inputs[1])
    return power is not None and bool(np.all(np.mod(np.asarray(power, np.float64), 2) == 0))


def _clipped_at_0(graph, node) -> bool:
    """A Clip whose lower bound is a constant >= 0."""
    if node.op_type != "Clip":
        return False
    if len(node.input) > 1 and node.input[1]:
        low = graph.value(node.input[1]) if graph.is_constant(node.input[1]) else None
        return low is not None and bool(np.all(np.asarray(low) >= 0))
    return _attr(node, "min", -np.inf) >= 0  # opset < 11: an attribute


def identity_on_input(node, graph) -> bool:
    """``node`` computes a function that is the identity on [0, inf) of a non-negative
    tensor: its output equals its input."""
    return node.op_type in IDENTITY_ON_NONNEGATIVE and nonnegative(graph, node.input[0])


__all__ = ["IDENTITY_ON_NONNEGATIVE", "identity_on_input", "nonnegative"]
