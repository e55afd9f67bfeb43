"""Channels-last stretches of an export read channels-first.

Keras 3's JAX export (jax2onnx) keeps a convolutional network channels-last between its convs:
each Conv (NCHW, as ONNX defines it) is followed by a ``Transpose`` to NHWC (perm
``[0, 2, 3, 1]``), the bias, BatchNorm arithmetic, activations and residual sums run on NHWC
tensors, and a ``Transpose`` back (perm ``[0, 3, 1, 2]``) feeds the next Conv. The values are
the same as a channels-first export's, but the rules read channels on axis 1 and carry a
feature map's position classes and spatial correlation (``onnxinit.spatial``) along NCHW axes
only: a Transpose keeps the per-channel moments and drops the rest, so the next conv was
predicted without them (the residual CNN's layers 0.85-1.02x, up to 1.63x before the mixture
moved through Transposes, the pre-act ResNet-20's 0.88-1.09x, the tf2onnx export's).

:func:`channels_first` rewrites every such stretch in the analysis view. A stretch is a set of
tensors closed under its consumers: it starts at *entries*, Transposes by
``P = [0, 2, ..., r-1, 1]`` (axis 1 to the end) of the output of a channels-first op (Conv,
ConvTranspose, a pool, BatchNormalization, InstanceNormalization), or of element-wise ops and
``keepdims`` reductions of such outputs and constants (tf2onnx's RMS-normed Conv output
``c * 1/sqrt(mean_c(c^2))`` before a tanh GELU's NHWC ``x^3``), goes through element-wise
ops whose other operands are constants, reductions over constant axes and Pads by constant pads
(tf2onnx writes Keras' ZeroPadding2D before a strided depthwise conv inside the stretch; its
pads are permuted like the axes), and ends at *exits*,
Transposes by ``P``'s inverse, or at a reduction without ``keepdims`` whose kept axes keep their
order (a global average pool, ``[N, H, W, C] -> [N, C]``). Entries and exits become
``Identity``, the element-wise ops run on the NCHW tensors (a constant operand ``c``,
right-aligned to rank r, transposed by ``P``'s inverse, ``c_nchw = c_nhwc.transpose(argsort(P))``,
by a Reshape and a Transpose in the graph, so that a view changing the initializer behind it
still reaches the op; a scalar stays), a reduction's NHWC axis a becomes NCHW axis ``P[a]``,
and the stretch's tensors keep their names with their shapes permuted. Exact: element-wise ops
commute with a transpose of all their operands. A stretch any of whose tensors is read by
another op (a Reshape, a MatMul) or is a graph output is left alone, so an attention's
``Transpose(K, [0, 2, 3, 1])`` before its MatMul, or a sequence model's ``[0, 2, 1]`` pair, is
never touched; entries must also read a channels-first op's output, which sequence models do
not have (GPT-2, BERT, Llama, ViT and Swin exports are analysed byte-identically with and
without the pass).

Only ModelGraph's analysis view is rewritten (measurement runs the same view), never the model
written back.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .base import model_pass
from .emitter import GraphEmitter
from .inference_batchnorm import ConstantGraph, ModelReading, model_reading

log = logging.getLogger("onnxinit.passes")

CHANNELS_FIRST_OPS = frozenset({
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "BatchNormalization",
    "InstanceNormalization",
})  # fmt: skip
REDUCE_OPS = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"})
ELEMENTWISE_OPS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid",
    "HardSwish", "Tanh", "Softplus", "Softsign", "Mish", "Erf", "Exp", "Log", "Abs", "Neg",
    "Sqrt", "Reciprocal", "Sin", "Cos", "Identity", "Cast", "Clip", "Dropout", "Add", "Sub",
    "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where",
})  # fmt: skip


def _perm(node: onnx.NodeProto) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return None


def _attr(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def reduce_axes(node: onnx.NodeProto, graph: ConstantGraph, rank: int) -> list[int] | None:
    """The axes (non-negative) a reduction reduces: its ``axes`` attribute or constant input,
    every axis when none is given; None when they are not constant (or reducing none)."""
    axes = _attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = graph.value(node.input[1])
        if value is None:
            return None
        axes = [int(a) for a in np.asarray(value).reshape(-1)]
    if not axes:
        if _attr(node, "noop_with_empty_axes", 0):
            return None
        axes = range(rank)
    return sorted({int(a) % rank for a in axes})


def to_last(rank: int) -> list[int]:
    """``P``: the permutation that moves axis 1 to the end (NCHW -> NHWC)."""
    return [0, *range(2, rank), 1]


class _Stretches:
    """Entries, element-wise nodes and exits of the candidate stretches, grouped into connected
    components (union-find over the nodes)."""

    def __init__(self, model: onnx.ModelProto, graph: ConstantGraph, ranks: dict[str, int]):
        self.graph = graph
        self.rank: dict[str, int] = {}  # channels-last tensor -> its rank
        self.kind: dict[int, str] = {}  # id(node) -> "entry", "inside", "exit"
        self.channels_first: set[str] = set()  # NCHW tensors an entry may read
        self.parent: dict[int, int] = {}
        for node in model.graph.node:  # topological order
            self._classify(node, ranks)

    def find(self, key: int) -> int:
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def _join(self, node: onnx.NodeProto, tensor: str) -> None:
        a, b = self.find(id(node)), self.find(id(self.graph.producer[tensor]))
        self.parent[a] = b

    def _track_channels_first(self, node: onnx.NodeProto) -> None:
        """Record the tensors laid out channels-first: a channels-first op's outputs, and what
        element-wise ops and ``keepdims`` reductions compute from such tensors and constants
        (a Conv output times its own RMS over the channels)."""
        if node.domain not in ("", "ai.onnx"):
            return
        if node.op_type in CHANNELS_FIRST_OPS:
            self.channels_first.update(o for o in node.output if o)
            return
        if node.op_type in REDUCE_OPS:
            if not _attr(node, "keepdims", 1) or not node.input:
                return
            signals = node.input[:1]
        elif node.op_type in ELEMENTWISE_OPS:
            signals = [i for i in node.input if i and self.graph.value(i) is None]
        else:
            return
        if signals and all(i in self.channels_first for i in signals):
            self.channels_first.update(o for o in node.output if o)

    def _classify(self, node: onnx.NodeProto, ranks: dict[str, int]) -> None:
        graph = self.graph
        self._track_channels_first(node)
        if node.op_type == "Transpose" and node.input and node.input[0]:
            perm, x = _perm(node), node.input[0]
            rank = self.rank.get(x)
            if rank is not None and perm == list(np.argsort(to_last(rank))):
                self.kind[id(node)] = "exit"
                self.parent[id(node)] = id(node)
                self._join(node, x)
                return
            producer = graph.producer.get(x)
            if (perm is not None and len(perm) >= 3 and perm == to_last(len(perm))
                    and producer is not None and x in self.channels_first):
                self.kind[id(node)] = "entry"
                self.parent[id(node)] = id(node)
                self.rank[node.output[0]] = len(perm)
                return
        if node.domain not in ("", "ai.onnx"):
            return
        if node.op_type in REDUCE_OPS and node.input and node.input[0] in self.rank:
            self._reduction(node)
            return
        if node.op_type == "Pad" and node.input and node.input[0] in self.rank:
            self._pad(node)
            return
        if node.op_type not in ELEMENTWISE_OPS:
            return
        inside = [i for i in node.input if i in self.rank]
        if not inside:
            return
        rank = self.rank[inside[0]]
        for name in node.input:
            if not name or name in self.rank:
                continue
            value = graph.value(name)
            if value is None or np.ndim(value) > rank:
                return
        self.kind[id(node)] = "inside"
        self.parent[id(node)] = id(node)
        for name in inside:
            self._join(node, name)
        for name in node.output:
            if name:
                self.rank[name] = rank

    def _pad(self, node: onnx.NodeProto) -> None:
        """A Pad of a stretch's tensor by constant pads over every axis (no ``axes`` input;
        Keras' ZeroPadding2D before a strided depthwise conv): inside, its pads permuted."""
        x = node.input[0]
        rank = self.rank[x]
        if len(node.input) < 2 or not node.input[1] or (len(node.input) > 3 and node.input[3]):
            return
        pads = self.graph.value(node.input[1])
        if pads is None or np.size(pads) != 2 * rank:
            return
        if len(node.input) > 2 and node.input[2] and self.graph.value(node.input[2]) is None:
            return
        self.kind[id(node)] = "inside"
        self.parent[id(node)] = id(node)
        self._join(node, x)
        self.rank[node.output[0]] = rank

    def _reduction(self, node: onnx.NodeProto) -> None:
        """A reduction of a stretch's tensor over constant axes: inside (its output in the
        stretch) with ``keepdims``, else an end of the stretch when the kept axes keep their
        order channels-first (a global average pool: ``[N, H, W, C] -> [N, C]``)."""
        x = node.input[0]
        rank = self.rank[x]
        axes = reduce_axes(node, self.graph, rank)
        if axes is None:
            return
        kind = "inside"
        if not _attr(node, "keepdims", 1):
            kept = [to_last(rank)[a] for a in range(rank) if a not in axes]
            if kept != sorted(kept):
                return
            kind = "end"
        self.kind[id(node)] = kind
        self.parent[id(node)] = id(node)
        self._join(node, x)
        if kind == "inside":
            self.rank[node.output[0]] = rank

    def valid_components(self, model: onnx.ModelProto) -> set[int]:
        """Roots of the components every tensor of which is read only by the component's own
        element-wise nodes and exits, and is no graph output."""
        bad = set()
        for node in model.graph.node:
            if self.kind.get(id(node)) in ("entry", "inside"):
                root = self.find(id(node))
                for name in node.output:
                    if not name:
                        continue
                    users = self.graph.consumers.get(name, [])
                    if name in self.graph.outputs or any(
                            self.kind.get(id(u)) not in ("inside", "exit", "end") for u in users):
                        bad.add(root)
        roots = {self.find(k) for k in self.kind}
        return roots - bad


def _reduction_channels_first(node, graph: ConstantGraph, rank: int, emitter: GraphEmitter):
    """The reduction over the same axes of the channels-first tensor: NHWC axis a is NCHW axis
    ``P[a]``."""
    axes = sorted(to_last(rank)[a] for a in reduce_axes(node, graph, rank))
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    if any(attr.name == "axes" for attr in node.attribute):
        kept = [a for a in node.attribute if a.name != "axes"]
        copy.ClearField("attribute")
        copy.attribute.extend([*kept, helper.make_attribute("axes", axes)])
        return [copy]
    if len(node.input) < 2 or not node.input[1]:  # every axis: the same channels-first
        return [copy]
    const = emitter.fresh("channels_first_axes")
    made = helper.make_node("Constant", [], [const], name=emitter.fresh("Constant"),
                            value=numpy_helper.from_array(np.asarray(axes, np.int64)))
    copy.input[1] = const
    return [made, copy]


def _pad_channels_first(node, graph: ConstantGraph, rank: int, emitter: GraphEmitter):
    """The Pad of the channels-first tensor: NCHW axis i is NHWC axis ``argsort(P)[i]``, so
    its begin and end pads are the NHWC ones at that axis (a constant: the pads of an export
    are)."""
    pads = np.asarray(graph.value(node.input[1]), np.int64).reshape(2, rank)
    back = np.argsort(to_last(rank))
    const = emitter.fresh("channels_first_pads")
    made = helper.make_node("Constant", [], [const], name=emitter.fresh("Constant"),
                            value=numpy_helper.from_array(pads[:, back].reshape(-1)))
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.input[1] = const
    emitter.nodes.append(made)
    out = list(emitter.nodes)
    emitter.nodes.clear()
    return out + [copy]


def _permuted_constant(name: str, value: np.ndarray, rank: int, emitter: GraphEmitter) -> str:
    """``name`` (a constant laid out channels-last) right-aligned to ``rank`` and transposed by
    ``P``'s inverse, in the graph: a view that changes the initializer behind it (a rescaled
    bias or BatchNorm scale) still reaches the op."""
    ndim = np.ndim(value)
    if ndim < rank:
        shape = emitter.node("Constant", [], value=numpy_helper.from_array(
            np.asarray((1,) * (rank - ndim) + np.shape(value), np.int64)))
        name = emitter.node("Reshape", [name, shape])
    return emitter.node("Transpose", [name], perm=[int(a) for a in np.argsort(to_last(rank))])


@model_pass(in_place=False)
def channels_first(model: onnx.ModelProto, reading: ModelReading | None = None
                   ) -> onnx.ModelProto:
    """The model with every channels-last stretch between Transposes (Keras 3's JAX export)
    computed channels-first; ``model`` itself when there is none. ``model`` has its shapes
    inferred (the stretch's tensors get their value_info permuted); ``reading``: what was read
    of it already (:func:`~onnxinit.passes.inference_batchnorm.model_reading`)."""
    reading = model_reading(model, reading)
    graph, types, shapes = reading.graph, reading.types, reading.shapes
    ranks = {name: len(s) for name, s in shapes.items() if s is not None}
    found = _Stretches(model, graph, ranks)
    roots = found.valid_components(model)
    chosen = {k for k in found.kind if found.find(k) in roots}
    if not chosen:
        return model
    names = {n for node in model.graph.node for n in [*node.input, *node.output, node.name]}
    emitter = GraphEmitter(names | set(graph.initializers), "prepared/")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.ClearField("node")
    moved: set[str] = set()  # tensors now channels-first
    for node in model.graph.node:
        kind = found.kind.get(id(node)) if id(node) in chosen else None
        if kind is None:
            out.graph.node.append(node)
            continue
        if kind in ("entry", "exit"):
            out.graph.node.append(helper.make_node("Identity", [node.input[0]], [node.output[0]],
                                                   name=node.name or emitter.fresh("layout")))
            if kind == "entry":
                moved.add(node.output[0])
            continue
        rank = found.rank[node.input[0] if kind == "end" else node.output[0]]
        if node.op_type in REDUCE_OPS:
            out.graph.node.extend(_reduction_channels_first(node, graph, rank, emitter))
            if kind == "inside":
                moved.add(node.output[0])
            continue
        if node.op_type == "Pad":
            out.graph.node.extend(_pad_channels_first(node, graph, rank, emitter))
            moved.add(node.output[0])
            continue
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for i, name in enumerate(node.input):
            if not name or name in found.rank:
                continue
            value = graph.value(name)
            if np.size(value) > 1:
                copy.input[i] = _permuted_constant(name, value, rank, emitter)
        out.graph.node.extend(emitter.nodes)
        emitter.nodes.clear()
        out.graph.node.append(copy)
        moved.update(o for o in node.output if o)
    infos = []
    for vi in model.graph.value_info:
        if vi.name not in moved:
            infos.append(vi)
            continue
        shape = shapes.get(vi.name)
        if shape is None:
            continue
        back = np.argsort(to_last(len(shape)))
        infos.append(helper.make_tensor_value_info(vi.name, types.get(vi.name, 1),
                                                   [shape[a] for a in back]))
    out.graph.ClearField("value_info")
    out.graph.value_info.extend(infos)
    log.info("%d channels-last stretch(es) between Transposes read channels-first",
             len(roots))
    return out


__all__ = ["channels_first"]
