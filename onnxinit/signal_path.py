"""The main signal path of a network, and the side paths ``check`` judges differently.

A network's trainability at initialization is decided on the path the signal travels from the
input to the output. Many tensors lie beside it, and their scale says nothing about the signal:

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

A tensor whose every consumer is a **normalization** (BatchNormalization, LayerNormalization,
GroupNormalization, InstanceNormalization, RMSNormalization; or the centring ``Sub`` and the
scaling ``Div``/``Mul`` of a decomposed one) has no scale of its own: the normalization divides it
out (a depthwise convolution initialised with ``fan_out`` over all channels, 1e-4 of its input,
before its BatchNormalization). Such tensors are *normalized*; their scale is not judged.

The **main path** is every signal tensor that reaches a graph output and lies on no side path:
the stem, the skip chain of the residual blocks and the tensors between them, plain layers, the
head. Signal tensors that reach no output are *unused*. The **head** is the main path from the
*head layers* (parametric nodes on the main path with no parametric node anywhere below them,
and at least one above, a recurrent LSTM/GRU/RNN counting as one) to the outputs: a deliberately
small classifier init scales the logits, not the signal.

**Pooling**: onnxinit predicts moments for inputs whose elements are independent (white noise).
An average over K positions of such a signal has 1/K of its variance, an average of perfectly
correlated positions (a real image's neighbouring pixels come close) all of it. Global pooling
over 7x7 positions or over 64 tokens therefore shrinks the predicted signal 49 or 64 times
although no layer lost it. :attr:`SignalPaths.pooling` gives, per main-path tensor, the product
of the K of the averaging ops (``AVERAGING_OPS``, output smaller than input) above it on the main
path; the vanishing check divides this artefact out (judges the correlated-input bound).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .analysis import NORMALIZATION_OPS
from .graph import ModelGraph
from .moments import Moments
from .residual import ResidualBlock, residual_blocks
from .signal_graph import SignalGraph
from .written_functions import function_interior

BRANCH, GATE, ATTENTION, STATISTIC = "residual-branch", "gate", "attention", "statistic"
FUNCTION = "function"  # inside an element-wise function written out as ops (written_functions)
GATE_OPS = {"Sigmoid", "HardSigmoid", "Softmax"}
ATTENTION_JOINS = {"MatMul", "Einsum"}
BROADCAST_JOINS = {"Add", "Sub", "Mul", "Div"}
# ops that only move or copy values: a gate stays a gate through them
# layers with weights that are not Conv/Gemm/MatMul: above a classifier, they make it a head
RECURRENT_OPS = {"LSTM", "GRU", "RNN"}
AVERAGING_OPS = {"GlobalAveragePool", "AveragePool", "ReduceMean", "ReduceSum", "GlobalLpPool",
                 "LpPool"}
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


@dataclass
class SignalPaths:
    graph: ModelGraph
    side: dict[str, SidePath]  # tensor -> the innermost side path holding it
    main: list[str]  # main-path tensors, topological order
    unused: set[str]
    blocks: list[ResidualBlock]
    head_layers: list[str]  # node ids
    head: set[str] = field(default_factory=set)  # main tensors at or below a head layer
    normalized: set[str] = field(default_factory=set)  # consumed only by normalizations
    pooling: dict[str, float] = field(default_factory=dict)  # main tensor -> product of pool K

    def is_main(self, tensor: str) -> bool:
        return tensor in self._main

    def __post_init__(self):
        self._main = set(self.main)
        self._block_before = self._blocks_before()

    @property
    def inputs(self) -> list[str]:
        return [n for n in self.graph.input_names if n in self._main]

    @property
    def outputs(self) -> list[str]:
        return [n for n in self.graph.output_names if n in self._main]

    def _blocks_before(self) -> dict[str, int]:
        """Main tensor -> number of residual Adds at or before it on the main path."""
        adds = {b.output for b in self.blocks}
        count, out = 0, {}
        for t in self.main:
            count += t in adds
            out[t] = count
        return out

    def describe(self, tensor: str) -> str:
        """Where ``tensor`` lies, in words, for a finding's message."""
        if tensor in self.side:
            return describe_side(self.side[tensor], self.graph)
        if tensor not in self._main:
            return "off every path to an output"
        ends = (f"from {_names(self.inputs) or 'the input'} to {_names(self.outputs)}")
        where = f"on the main path {ends}"
        if tensor in self.head:
            return f"{where}, in the output head ({_names(self.head_layers, 'node')})"
        done = self._block_before.get(tensor, 0)
        if self.blocks and done:
            return f"{where}, after residual block {done} of {len(self.blocks)}"
        if self.blocks:
            return f"{where}, before the first of {len(self.blocks)} residual blocks"
        index = self.main.index(tensor) + 1
        return f"{where} (tensor {index} of {len(self.main)} on it)"


def _names(items, what: str = "") -> str:
    quoted = [repr(x) for x in items[:2]]
    more = f" and {len(items) - 2} more" if len(items) > 2 else ""
    prefix = f"{what} " if what and len(items) == 1 else (f"{what}s " if what else "")
    return prefix + ", ".join(quoted) + more if items else ""


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


def signal_variance(m: Moments) -> float:
    """The input-dependent part of a tensor's variance: the mean over its tracked indices
    (channels, features, positions) of the per-index variance, ``E_i[Var[x_i]]``. The total
    variance adds ``Var_i[E[x_i]]``, the spread of the per-index means, which biases alone can
    keep up while the signal dies (a deep tanh MLP with PyTorch's default init: total variance
    0.0018x the input's, signal variance 1e-24x)."""
    return float(np.mean(np.broadcast_to(m.var, np.broadcast_shapes(m.mean.shape, m.var.shape))))


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


def _numel(graph: ModelGraph, tensor: str) -> int | None:
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
    out = _numel(graph, node.output[0])
    sizes = {ia: _numel(graph, a), ib: _numel(graph, b)}
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


def _side_paths(graph: ModelGraph, signal: SignalGraph,
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


def _reaching_outputs(graph: ModelGraph) -> set[str]:
    """Signal tensors from which some graph output can be reached (outputs included)."""
    reach = {t for t in graph.output_names if graph.is_signal(t)}
    for node_id in reversed(graph.order):
        node = graph.node(node_id)
        if any(o in reach for o in node.output):
            reach.update(t for t in node.input if graph.is_signal(t))
    return reach


def _head(graph: ModelGraph, main: list[str]) -> tuple[list[str], set[str]]:
    """(head layers, head tensors): see the module docstring."""
    parametric = set(graph.parametric_nodes) | {
        n for n in graph.order if graph.node(n).op_type in RECURRENT_OPS}
    main_set = set(main)
    below: dict[str, bool] = {}  # tensor -> a parametric node consumes it, directly or further down
    for node_id in reversed(graph.order):
        node = graph.node(node_id)
        here = node_id in parametric or any(below.get(o, False) for o in node.output)
        for t in node.input:
            if t:
                below[t] = below.get(t, False) or here
    above: set[str] = set()  # tensors with a parametric node somewhere above them
    for node_id in graph.order:
        node = graph.node(node_id)
        if node_id in parametric or any(t in above for t in node.input):
            above.update(o for o in node.output if o)
    layers = [n for n in graph.parametric_nodes
              if graph.node(n).output[0] in main_set
              and not any(below.get(o, False) for o in graph.node(n).output)
              and any(t in above for t in graph.node(n).input)]
    head: set[str] = set()
    starts = {graph.node(n).output[0] for n in layers}
    for t in main:
        producer = graph.producer.get(t)
        if t in starts or (producer is not None and any(
                i in head for i in graph.node(producer).input)):
            head.add(t)
    return layers, head


def _normalized(graph: ModelGraph, side: dict[str, SidePath]) -> set[str]:
    """Tensors every consumer of which normalizes them (see the module docstring)."""
    statistic_joins = {(p.join, p.carrier) for p in side.values() if p.kind == STATISTIC}
    out: set[str] = set()
    for node_id in reversed(graph.order):
        for t in graph.node(node_id).output:
            users = graph.consumers.get(t, [])
            if graph.is_signal(t) and users and all(
                    _normalizes(graph, side, statistic_joins, user, t, out) for user, _ in users):
                out.add(t)
    return out


def _normalizes(graph: ModelGraph, side: dict[str, SidePath], statistic_joins: set,
                user: str, tensor: str, normalized: set[str]) -> bool:
    node = graph.node(user)
    if node.op_type in NORMALIZATION_OPS:
        return True
    outputs = [o for o in node.output if graph.is_signal(o)]
    if outputs and all(side.get(o) is not None and side[o].kind == STATISTIC
                       and side[o].join != user for o in outputs):
        return True  # computes the statistics (ReduceMean, Pow...)
    if (user, tensor) not in statistic_joins:
        return False
    if node.op_type in ("Div", "Mul"):
        return True  # x / std, x * rsqrt(var)
    return node.op_type == "Sub" and all(o in normalized for o in outputs)  # x - mean, then /


def main_path_products(graph: ModelGraph, main, step) -> dict[str, float]:
    """Main tensor -> the product of ``step(node, main inputs, main outputs)`` over the nodes
    above it on the main path (the largest product over its main-path inputs)."""
    main_set = set(main)
    factor: dict[str, float] = {}
    for node_id in graph.order:
        node = graph.node(node_id)
        outputs = [o for o in node.output if o in main_set]
        if not outputs:
            continue
        inputs = [t for t in node.input if t in main_set]
        here = max((factor.get(t, 1.0) for t in inputs), default=1.0)
        factor.update((o, here * step(node, inputs, outputs)) for o in outputs)
    return factor


def _pooling(graph: ModelGraph, main: list[str]) -> dict[str, float]:
    """Main tensor -> product of K = (input elements / output elements) over the averaging ops
    above it on the main path (the largest product over its main-path inputs)."""

    def reduction(node, inputs, outputs) -> float:
        if node.op_type in AVERAGING_OPS and inputs:
            before, after = _numel(graph, inputs[0]), _numel(graph, outputs[0])
            if before and after and after < before:
                return before / after
        return 1.0

    return main_path_products(graph, main, reduction)


def signal_paths(graph: ModelGraph, blocks: list[ResidualBlock] | None = None) -> SignalPaths:
    """Classify every signal tensor of ``graph`` (``blocks``: its residual blocks, when
    already computed)."""
    signal = SignalGraph(graph)
    blocks = blocks if blocks is not None else residual_blocks(graph, signal)
    side: dict[str, SidePath] = {}
    # outermost first, so that the innermost side path of a tensor is the one kept
    for path in sorted(_side_paths(graph, signal, blocks), key=lambda p: -len(p.nodes)):
        for node_id in path.nodes:
            for out in graph.node(node_id).output:
                if graph.is_signal(out):
                    side[out] = path
    reaching = _reaching_outputs(graph)
    activations = graph.float_activations()
    main = [t for t in activations if t in reaching and t not in side]
    unused = {t for t in activations if t not in reaching}
    layers, head = _head(graph, main)
    return SignalPaths(graph, side, main, unused, blocks, layers, head,
                       _normalized(graph, side), _pooling(graph, main))
