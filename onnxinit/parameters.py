"""Which initializers are learnable parameters, and the layers that use them: one table per
model, built once (``ModelGraph.table``) and read by every method.

- :class:`Parameter`: a float initializer that reaches a node mixing it with signals (through
  layout ops such as Transpose or Cast), with every use (node, input index, role). A tensor
  used by several nodes (tied embeddings) lists each use.
- :class:`Layer`: a Conv, ConvTranspose, Gemm or MatMul with a constant weight: its weight
  initializer, its bias (its own bias input, or else the constant operand of an ``Add`` that
  alone consumes its output: how exporters write a Linear's bias after a MatMul, and some
  converters a Conv's), the tensor it outputs after that bias, and its fan-in/fan-out with
  groups.
- :func:`float_parameters`: the autodiff's view from a bare ModelProto: float initializers
  consumed as values (not only as shapes, axes, bounds or running statistics).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from .dtypes import FLOAT_TYPES
from .errors import InvalidOptionError
from .initializers import tensor_array
from .structure import GraphStructure

# Input positions that hold learnable parameters (not running statistics), by op.
PARAMETER_ROLES: dict[str, dict[int, str]] = {
    "Conv": {1: "weight", 2: "bias"},
    "ConvTranspose": {1: "weight", 2: "bias"},
    "Gemm": {0: "weight", 1: "weight", 2: "bias"},
    "MatMul": {0: "weight", 1: "weight"},
    "Gather": {0: "embedding"},
    "BatchNormalization": {1: "scale", 2: "shift"},
    "InstanceNormalization": {1: "scale", 2: "shift"},
    "LayerNormalization": {1: "scale", 2: "shift"},
    "GroupNormalization": {1: "scale", 2: "shift"},
    "RMSNormalization": {1: "scale"},
    "SkipLayerNormalization": {2: "scale", 3: "shift", 4: "bias"},
    "PRelu": {1: "slope"},
    "Add": {0: "bias", 1: "bias"},
    "Sub": {0: "bias", 1: "bias"},
    "Mul": {0: "scale", 1: "scale"},
    "Div": {1: "scale"},
}
WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
# a constant operand of Mul/Div alone (GELU's 0.5, attention's 1/sqrt(d)) is a fixed constant
CONSTANT_OPERAND_OPS = frozenset({"Mul", "Div"})
# Candidate weight inputs of a layer, in the order they are tried.
_WEIGHT_INPUTS = {"Conv": [1], "ConvTranspose": [1], "Gemm": [1, 0], "MatMul": [1, 0]}
_OWN_BIAS_OPS = ("Conv", "ConvTranspose", "Gemm")

# Ops that move a constant around without mixing values: a parameter seen through them is still
# the same parameter, scaled by the same factor.
LAYOUT_OPS = {"Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast",
              "CastLike", "Expand", "Tile"}
_MAX_LAYOUT_DEPTH = 8

# (op type) -> input positions that configure the op rather than carry a differentiable value
CONFIGURATION_INPUTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}), "Expand": frozenset({1}), "Tile": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}), "Pad": frozenset({1, 2, 3}), "Split": frozenset({1}),
    "Squeeze": frozenset({1}), "Unsqueeze": frozenset({1}), "CumSum": frozenset({1}),
    "ReduceMean": frozenset({1}), "ReduceSum": frozenset({1}), "ReduceMax": frozenset({1}),
    "ReduceMin": frozenset({1}), "ReduceProd": frozenset({1}), "ReduceL1": frozenset({1}),
    "ReduceL2": frozenset({1}), "ReduceSumSquare": frozenset({1}),
    "ReduceLogSum": frozenset({1}), "ReduceLogSumExp": frozenset({1}),
    "Resize": frozenset({1, 2, 3}), "Upsample": frozenset({1}), "ConstantOfShape": frozenset({0}),
    "Range": frozenset({0, 1, 2}), "OneHot": frozenset({1, 2}), "TopK": frozenset({1}),
    "Clip": frozenset({1, 2}), "Pow": frozenset({1}), "Dropout": frozenset({1, 2}),
    "BatchNormalization": frozenset({3, 4}), "Shape": frozenset({0}), "Size": frozenset({0}),
}


def float_parameters(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Float initializers consumed as values by at least one node (not only as a shape, axes,
    pads, scales, bounds, exponent or running statistic): name -> value, in initializer order.
    What the autodiff differentiates, read from a bare ModelProto."""
    value_uses: set[str] = set()
    for node in model.graph.node:
        configuration = CONFIGURATION_INPUTS.get(node.op_type, frozenset())
        for index, name in enumerate(node.input):
            if name and index not in configuration:
                value_uses.add(name)
    return {
        init.name: tensor_array(init)
        for init in model.graph.initializer
        if init.data_type in FLOAT_TYPES and init.name in value_uses
    }


@dataclass
class Parameter:
    """A float initializer that reaches a signal-consuming node (a learnable tensor)."""

    name: str
    shape: tuple[int, ...]
    dtype: int
    uses: list[tuple[str, int, str]] = field(default_factory=list)  # (node id, input index, role)

    @property
    def roles(self) -> set[str]:
        return {role for _, _, role in self.uses}


@dataclass(frozen=True)
class Layer:
    """A weighted node and what belongs to it."""

    node: str
    op: str
    weight_input: int | None  # the node input holding the weight
    weight: str | None  # the weight's initializer (through layout ops)
    bias: str | None  # the bias initializer: own input, or the Add(constant) after the node
    bias_node: str | None  # the Add node holding the bias, when it is not the node's own input
    output: str  # the layer's output after its bias
    groups: int = 1


class ParameterTable:
    """Parameters and layers of one model; ``weight_shape(tensor)`` gives a constant's shape.

    The table holds its graph by a weak reference: the graph keeps the table
    (``ModelGraph.table``), and a strong reference back would make every loaded model a
    reference cycle, freed (weights, folded constants and all) only by the cyclic collector."""

    def __init__(self, graph: GraphStructure, weight_shape: Callable[[str], tuple[int, ...]]):
        self._graph = weakref.ref(graph)
        self._weight_shape = weight_shape
        self.parameters = self._parameters()
        self.layers = self._layers()
        self._by_node = {layer.node: layer for layer in self.layers}

    @property
    def graph(self) -> GraphStructure:
        graph = self._graph()
        if graph is None:
            raise ReferenceError("the ParameterTable's graph was freed")
        return graph

    # parameters -------------------------------------------------------------------------------

    def _parameters(self) -> dict[str, Parameter]:
        graph = self.graph
        params: dict[str, Parameter] = {}
        for name, tensor in graph.initializers.items():
            if tensor.data_type not in FLOAT_TYPES:
                continue
            for node_id, index in self._signal_uses(name):
                node = graph.node(node_id)
                role = PARAMETER_ROLES.get(node.op_type, {}).get(index, "other")
                if node.op_type == "Gather" and index != 0:
                    continue
                param = params.setdefault(
                    name, Parameter(name, tuple(tensor.dims), tensor.data_type))
                param.uses.append((node_id, index, role))
        return params

    def _signal_uses(self, tensor: str, depth: int = 0) -> list[tuple[str, int]]:
        """(node, input index) where ``tensor`` (through layout ops) meets a signal."""
        graph = self.graph
        uses = []
        for node_id, index in graph.consumers.get(tensor, []):
            node = graph.node(node_id)
            if all(graph.is_constant(o) for o in node.output if o):
                if node.op_type in LAYOUT_OPS and index == 0 and depth < _MAX_LAYOUT_DEPTH:
                    uses.extend(self._signal_uses(node.output[0], depth + 1))
            else:
                uses.append((node_id, index))
        return uses

    def parameter_of(self, tensor: str) -> str | None:
        """The initializer a constant input comes from, through layout ops (Transpose, Cast...)."""
        graph = self.graph
        depth = 0
        while tensor not in graph.initializers and depth < _MAX_LAYOUT_DEPTH:
            node_id = graph.producer.get(tensor)
            if node_id is None or graph.node(node_id).op_type not in LAYOUT_OPS:
                return None
            tensor = graph.node(node_id).input[0]
            depth += 1
        return tensor if tensor in self.parameters else None

    def is_fixed_constant(self, name: str) -> bool:
        """A parameter used only as a constant operand of Mul/Div: a fixed constant of the
        function (GELU's 0.5, attention's 1/sqrt(d)), not a learnable tensor."""
        param = self.parameters[name]
        return all(self.graph.node(node_id).op_type in CONSTANT_OPERAND_OPS
                   for node_id, _, _ in param.uses)

    # layers -----------------------------------------------------------------------------------

    def weight_input(self, node_id: str) -> int | None:
        """Index of the constant float weight input of a Conv/Gemm/MatMul node, if it has one."""
        graph = self.graph
        node = graph.node(node_id)
        for index in _WEIGHT_INPUTS.get(node.op_type, []):
            if index < len(node.input) and graph.is_constant(node.input[index]) \
                    and graph.is_float(node.input[index]):
                return index
        return None

    def _layers(self) -> list[Layer]:
        graph = self.graph
        layers = []
        for node_id in graph.order:
            node = graph.node(node_id)
            if (node.op_type not in WEIGHT_OPS or graph.is_shape_node(node_id)
                    or not any(self.parameter_of(n) for n in node.input[:2] if n)):
                continue
            index = self.weight_input(node_id)
            weight = self.parameter_of(node.input[index]) if index is not None else None
            bias, bias_node = self._bias(node_id)
            output = graph.node(bias_node).output[0] if bias_node else node.output[0]
            groups = next((a.i for a in node.attribute if a.name == "group"), 1) \
                if node.op_type in ("Conv", "ConvTranspose") else 1
            layers.append(Layer(node_id, node.op_type, index, weight, bias, bias_node, output,
                                groups))
        return layers

    def _bias(self, node_id: str) -> tuple[str | None, str | None]:
        """(bias initializer, the Add node holding it or None when it is the node's own input)."""
        graph = self.graph
        node = graph.node(node_id)
        if node.op_type in _OWN_BIAS_OPS and len(node.input) > 2 and node.input[2]:
            return self.parameter_of(node.input[2]), None
        consumers = graph.consumers.get(node.output[0], [])
        if len(consumers) != 1 or graph.node(consumers[0][0]).op_type != "Add":
            return None, None
        add_id, index = consumers[0]
        other = graph.node(add_id).input[1 - index]
        bias = self.parameter_of(other) if graph.is_constant(other) else None
        return (bias, add_id) if bias is not None else (None, None)

    def layer(self, node_id: str) -> Layer:
        if node_id not in self._by_node:
            raise InvalidOptionError(f"node {node_id!r} is not a weighted layer")
        return self._by_node[node_id]

    def bias_of(self, node_id: str) -> str | None:
        """The bias initializer of a layer (see :class:`Layer`)."""
        return self.layer(node_id).bias

    def fan_in_out(self, node_id: str) -> tuple[int, int]:
        """(fan_in, fan_out) of a parametric node, grouped/depthwise convolutions included.

        Conv W[C_out, C_in/g, k...]: fan_in = C_in/g * prod(k), fan_out = C_out/g * prod(k).
        ConvTranspose W[C_in, C_out/g, k...]: fan_in = C_in/g * prod(k) / prod(strides)
        (each output sees that many taps), fan_out = C_out/g * prod(k).
        Gemm/MatMul: the contracted and the produced feature sizes.
        """
        node = self.graph.node(node_id)
        index = self.weight_input(node_id)
        if index is None:
            raise InvalidOptionError(f"node {node_id!r} ({node.op_type}) has no constant weight")
        w = self._weight_shape(node.input[index])
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            groups = attrs.get("group", 1)
            k = int(np.prod(w[2:]))
            return w[1] * k, w[0] // groups * k
        if node.op_type == "ConvTranspose":
            groups = attrs.get("group", 1)
            k = int(np.prod(w[2:]))
            strides = int(np.prod(attrs.get("strides", [1] * (len(w) - 2))))
            return max(1, w[0] // groups * k // strides), w[1] * k
        if node.op_type == "Gemm":
            trans = attrs.get("transB" if index == 1 else "transA", 0)
            rows, cols = w[-2], w[-1]
            k, n = (cols, rows) if trans else (rows, cols)
            return (k, n) if index == 1 else (n, k)
        # MatMul: B[..., K, N] or A[..., M, K]
        return (w[-2], w[-1]) if index == 1 else (w[-1], w[-2])
