"""The main signal path of a network, and the side paths ``check`` judges differently.

A network's trainability at initialization is decided on the path the signal travels from the
input to the output. Many tensors lie beside it, and their scale says nothing about the signal:

residual branches, gates, attention weights, function intermediates and statistics: their
kinds and how they are found are in :mod:`onnxinit.side_paths`.

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
from .side_paths import STATISTIC, SidePath, describe_side, numel, side_paths
from .signal_graph import SignalGraph

# layers with weights that are not Conv/Gemm/MatMul: above a classifier, they make it a head
RECURRENT_OPS = {"LSTM", "GRU", "RNN"}
AVERAGING_OPS = {"GlobalAveragePool", "AveragePool", "ReduceMean", "ReduceSum", "GlobalLpPool",
                 "LpPool"}



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


def signal_variance(m: Moments) -> float:
    """The input-dependent part of a tensor's variance: the mean over its tracked indices
    (channels, features, positions) of the per-index variance, ``E_i[Var[x_i]]``. The total
    variance adds ``Var_i[E[x_i]]``, the spread of the per-index means, which biases alone can
    keep up while the signal dies (a deep tanh MLP with PyTorch's default init: total variance
    0.0018x the input's, signal variance 1e-24x)."""
    return float(np.mean(np.broadcast_to(m.var, np.broadcast_shapes(m.mean.shape, m.var.shape))))


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
            before, after = numel(graph, inputs[0]), numel(graph, outputs[0])
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
    for path in sorted(side_paths(graph, signal, blocks), key=lambda p: -len(p.nodes)):
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
