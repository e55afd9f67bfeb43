"""The side paths of a network: the tensors beside the main signal path whose scale says nothing
about the signal (:mod:`onnxinit.signal_path` classifies every tensor with them).

- **residual branches** (:mod:`onnxinit.residual`): the nodes between a block's input and its Add
  on a branch. A branch small next to its skip is a design (LayerScale with gamma = 1e-6,
  zero-initialised last layers, Fixup, SkipInit): the skip carries the signal;
- **gates**: the operand of an element-wise ``Mul`` that comes (through layout ops) from a
  Sigmoid, HardSigmoid or Softmax while the other operand does not: squeeze-excite scales, GLU
  and SiLU gates. Their values are bounded; a small spread is a gate that starts half open;
- **attention weights**: an operand of a ``MatMul``/``Einsum`` that comes from a Softmax: the
  attention probabilities (about 1/tokens each, tiny variance by construction), and with them the
  query/key projections, logits, scaling, relative-position biases and masks (-inf, finfo.min,
  -100 constants) that feed only them;
- **function intermediates**: the tensors between ``x`` and an element-wise function of ``x``
  written out as ops (a tanh GELU's ``x^3``; :mod:`onnxinit.written_functions`). Not judged:
  the function's output is;
- **statistics**: a signal operand of an element-wise op (``Add``, ``Sub``, ``Mul``, ``Div``) that
  has fewer elements than the op's output and is broadcast over it: the mean and standard
  deviation of a decomposed LayerNorm, a squeeze-excite pooled vector, a per-sample embedding
  added to feature maps.

The side path of a join (the Mul, MatMul or element-wise op) is every node that feeds the side
operand and not the other one (:meth:`SignalGraph.exclusive_ancestors`), so mask computations from
another graph input belong to it. Side paths nest (attention inside a residual branch, the
softmax's max-subtraction inside attention); a tensor belongs to the innermost one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import ModelGraph
from .residual import ResidualBlock
from .signal_graph import SignalGraph
from .written_functions import function_interior

BRANCH, GATE, ATTENTION, STATISTIC = "residual-branch", "gate", "attention", "statistic"
FUNCTION = "function"  # inside an element-wise function written out as ops (written_functions)
GATE_OPS = {"Sigmoid", "HardSigmoid", "Softmax"}
ATTENTION_JOINS = {"MatMul", "Einsum"}
BROADCAST_JOINS = {"Add", "Sub", "Mul", "Div"}
# ops that only move or copy values: a gate stays a gate through them
LAYOUT_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Dropout", "Identity",
              "Cast", "Expand", "Tile"}


@dataclass(frozen=True)
class SidePath:
    """A side path: the nodes feeding input ``tensor`` of ``join`` and not its ``carrier``."""

    kind: str  # BRANCH, GATE, ATTENTION, STATISTIC or FUNCTION
    join: str  # node id where the side path meets the main signal again
    tensor: str  # the join's side input
    carrier: str  # the join's other input: the skip, the gated signal, the values
    nodes: tuple[str, ...]


def describe_side(side: SidePath, graph: ModelGraph) -> str:
    join = f"{graph.node(side.join).op_type} node {side.join!r}"
    if side.kind == BRANCH:
        return f"in a residual branch (block {join}, skip {side.carrier!r})"
    if side.kind == GATE:
        return f"on a gating side path ({join} gates {side.carrier!r})"
    if side.kind == ATTENTION:
        return f"on the attention-weight side path ({join} weighs values {side.carrier!r})"
    if side.kind == FUNCTION:
        return f"inside an element-wise function of {side.carrier!r} written out as ops ({join})"
    return f"on a statistics side path ({join} broadcasts it over {side.carrier!r})"


def _origin(graph: ModelGraph, tensor: str) -> str | None:
    """The op type of the node ``tensor`` comes from, looking through layout ops."""
    while True:
        producer = graph.producer.get(tensor)
        if producer is None:
            return None
        node = graph.node(producer)
        if node.op_type not in LAYOUT_OPS or not node.input or not graph.is_signal(node.input[0]):
            return node.op_type
        tensor = node.input[0]


def numel(graph: ModelGraph, tensor: str) -> int | None:
    shape = graph.shape(tensor)
    return None if shape is None else int(np.prod(shape, dtype=np.int64))


def _side_operand(graph: ModelGraph, node_id: str) -> tuple[str, int, int] | None:
    """(kind, side input index, carrier input index) when ``node_id`` joins a side path into the
    signal, else None."""
    node = graph.node(node_id)
    if node.domain not in ("", "ai.onnx"):
        return None
    signals = [(i, t) for i, t in enumerate(node.input) if graph.is_signal(t)]
    if len(signals) != 2 or signals[0][1] == signals[1][1]:
        return None
    (ia, a), (ib, b) = signals
    origins = {ia: _origin(graph, a), ib: _origin(graph, b)}
    if node.op_type in ATTENTION_JOINS:
        softmax = [i for i in (ia, ib) if origins[i] == "Softmax"]
        if len(softmax) == 1:
            side = softmax[0]
            return ATTENTION, side, ib if side == ia else ia
        return None
    if node.op_type not in BROADCAST_JOINS:
        return None
    out = numel(graph, node.output[0])
    sizes = {ia: numel(graph, a), ib: numel(graph, b)}
    if out is not None and None not in sizes.values() and sizes[ia] != sizes[ib]:
        side = ia if sizes[ia] < sizes[ib] else ib
        if sizes[side] < out:
            kind = GATE if node.op_type == "Mul" and origins[side] in GATE_OPS else STATISTIC
            return kind, side, ib if side == ia else ia
    if node.op_type == "Mul":
        gates = [i for i in (ia, ib) if origins[i] in GATE_OPS]
        if len(gates) == 1:
            side = gates[0]
            return GATE, side, ib if side == ia else ia
    return None


def _layer_scaled(graph: ModelGraph, tensor: str) -> bool:
    """Whether ``tensor`` is a ``Mul`` by a constant of more than one element (LayerScale's
    per-channel gamma; a scalar is a constant of a formula, GELU's 0.044715)."""
    producer = graph.producer.get(tensor)
    node = graph.node(producer) if producer is not None else None
    if node is None or node.op_type != "Mul":
        return False
    constants = [graph.value(i) for i in node.input if i and not graph.is_signal(i)]
    return any(c is not None and np.size(c) > 1 for c in constants)


def _scaled_branches(graph: ModelGraph, signal: SignalGraph,
                     blocks: list[ResidualBlock]) -> list[SidePath]:
    """``x + gamma * f(x)`` where ``f`` holds no parametric layer (PoolFormer's token mixer,
    ``pool(n(x)) - n(x)``): no residual block (:mod:`onnxinit.residual` wants a parametric
    branch), but ``gamma * f(x)`` is a LayerScaled branch beside an identity skip."""
    adds = {b.add for b in blocks}
    paths = []
    for node_id in graph.order:
        node = graph.node(node_id)
        if node.op_type not in ("Add", "Sum") or node_id in adds:
            continue
        inputs = [(i, t) for i, t in enumerate(node.input) if graph.is_signal(t)]
        if len(inputs) != 2 or inputs[0][1] == inputs[1][1]:
            continue
        shape = graph.shape(node.output[0])
        if shape is None or any(graph.shape(t) != shape for _, t in inputs):
            continue
        fork = signal.fork([signal.start(t) for _, t in inputs])
        if fork is None:
            continue
        found = [signal.path(i, t, fork) for i, t in inputs]
        skips = [p for p in found if not p.nodes]
        branches = [p for p in found if p.nodes and _layer_scaled(graph, p.tensor)]
        if len(skips) == 1 and len(branches) == 1:
            paths.append(SidePath(BRANCH, node_id, branches[0].tensor, skips[0].tensor,
                                  branches[0].nodes))
    return paths


def side_paths(graph: ModelGraph, signal: SignalGraph,
                blocks: list[ResidualBlock]) -> list[SidePath]:
    paths = []
    for block in blocks:
        for branch in block.branches:
            paths.append(SidePath(BRANCH, block.add, branch.tensor, block.skip.tensor,
                                  branch.nodes))
    paths.extend(_scaled_branches(graph, signal, blocks))
    for node_id in graph.order:
        node = graph.node(node_id)
        if node.op_type == "Clip" and node.input and graph.is_signal(node.input[0]):
            # bounds computed from the signal (T5 in float16 clamps to finfo.max, or 1000 below
            # it where an inf appeared): statistics of the signal, not the signal
            for bound in node.input[1:3]:
                if bound and graph.is_signal(bound):
                    nodes = signal.exclusive_ancestors(bound, node.input[0])
                    if nodes:
                        paths.append(SidePath(STATISTIC, node_id, bound, node.input[0],
                                              tuple(nodes)))
            continue
        found = _side_operand(graph, node_id)
        if found is None:
            paths.extend(SidePath(FUNCTION, node_id, operand, ancestor, nodes) for
                         operand, ancestor, nodes in function_interior(graph, signal, node_id))
            continue
        kind, side, carrier = found
        node = graph.node(node_id)
        nodes = signal.exclusive_ancestors(node.input[side], node.input[carrier])
        if nodes:
            paths.append(SidePath(kind, node_id, node.input[side], node.input[carrier],
                                  tuple(nodes)))
    return paths
