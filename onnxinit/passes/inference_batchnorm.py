"""BatchNormalization that an inference export wrote as arithmetic, given back its node.

An exporter that writes an inference graph replaces each BatchNormalization by the per-channel
affine map it computes with its running statistics,

    y = x k + s,   k = gamma / sqrt(var + eps),   s = beta - mean k,

and how much of that survives depends on the exporter:

- folded into the layer before it (a Conv, Gemm or MatMul: tf2onnx, PyTorch's eval export):
  the layer computes ``W k``; tf2onnx leaves the name of TensorFlow's batch-norm op on the
  Conv's output (``.../FusedBatchNormV3:0`` from Keras 2, ``.../batchnorm/mul_1:0`` or
  ``.../batchnorm/add_1:0`` from Keras 3), PyTorch leaves nothing;
- a ``BatchNormalization`` node where nothing precedes it to fold into (tf2onnx for a fused
  batch norm, PyTorch's eval export): the analysis already runs it with batch statistics;
- the arithmetic itself as ops (jax2onnx: Keras 3's JAX export, Flax): ``k`` is computed in the
  graph from the four vectors, ``Sqrt(var + eps)`` included;
- a ``Mul`` by a folded per-channel constant ``k`` and an ``Add`` of ``s`` (dropped when zero)
  under TensorFlow's ``tf.nn.batch_normalization`` op names, ``.../batchnorm/mul_1`` and
  ``.../batchnorm/add_1`` (Keras 3's TensorFlow export; Keras 2's for rank-2 inputs).

:func:`inference_batchnorms` brings the first (where tf2onnx named it), the third and the
fourth to the second: each becomes a ``BatchNormalization`` node, so that the analysis gives it
training semantics, as it does the nodes other exporters keep: the network is analysed as it
trains, and the same way whichever exporter wrote it. A Conv that tf2onnx folded gets the node
after it (scale 1, shift its bias). Only PyTorch's eval export leaves no trace; the analysis
warns about it (an eval export). Channels on an axis other than 1 (channels-last) get a
Transpose on each side of the node.

Evidence, never a model's own layer names: the ``Sqrt`` of a per-channel tensor plus a scalar
in the constant subgraph that computes ``k``, or TensorFlow's fixed op names
(``FusedBatchNormV3``, ``batchnorm/mul_1``). A per-channel affine written otherwise (a layer
scale, input standardisation) is left alone.

Limits: the node's scale is ``gamma = k sqrt(var + eps)`` where the formula shows ``var`` and
``eps``, else ``k`` itself: ``gamma`` within ``sqrt(1 + eps)`` for the moving variance of a
fresh network (1), with ``eps`` unknown (ONNX's 1e-5 is used). The shift is ``s``, which is
``beta`` for a fresh moving mean (0). The moving statistics play no other part under batch
statistics. A folded Conv's scale is 1: ``gamma / sqrt(var + eps)`` is in its kernel, which
for a fresh network is ``1 / sqrt(1 + eps)``. Only ModelGraph's analysis view is rewritten,
never the model written back.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..initializers import tensor_array
from .base import model_pass
from .emitter import GraphEmitter
from .folding import RANDOM_OPS, evaluate_node
from .shapes import shape_of

log = logging.getLogger("onnxinit.passes")

LINEAR_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_LAYOUT_OPS = frozenset({"Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                         "Cast"})
_TF_MUL = re.compile(r"(?:^|/)batchnorm/mul_1$")
_TF_ADD = re.compile(r"(?:^|/)batchnorm/add_1$")
# the output of a Conv into which tf2onnx folded a Keras BatchNormalization keeps the name of
# TensorFlow's op: the fused batch norm (Keras 2), or the last of tf.nn.batch_normalization's
# Mul and Add (Keras 3, whose Add is dropped when the shift is zero)
# (``batchnorm/mul``, not ``mul_1``, for a BatchNormalization without scale, Keras'
# ``scale=False`` of InceptionV3: TensorFlow's first Mul is then ``x * rsqrt(var + eps)``; with a
# scale it is ``gamma * rsqrt(...)``, two constants, never a Conv's output)
_TF_FOLDED = re.compile(
    r"(?:^|/)(?:FusedBatchNorm(?:V[23])?|batchnorm/mul(?:_1)?|batchnorm/add_1)(?::\d+)?$")
_DEFAULT_EPS = 1e-5  # ONNX's; only the TensorFlow form hides eps


class ConstantGraph:
    """Producers, consumers and constant values (computed on demand) of a model's tensors."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.outputs = {o.name for o in model.graph.output}
        self.initializers = {i.name: i for i in model.graph.initializer}
        self.constants = set(self.initializers)  # computed from initializers only
        producer, consumers, constants = self.producer, self.consumers, self.constants
        for node in model.graph.node:  # ONNX nodes are in topological order; each read once
            inputs, outputs = list(node.input), [o for o in node.output if o]
            for o in outputs:
                producer[o] = node
            for name in inputs:
                if name in consumers:
                    consumers[name].append(node)
                else:
                    consumers[name] = [node]
            if node.op_type not in RANDOM_OPS and constants.issuperset(i for i in inputs if i):
                constants.update(outputs)
        self.values: dict[str, np.ndarray | None] = {}

    def value(self, name: str) -> np.ndarray | None:
        """The value of a tensor computed from initializers and Constant nodes only, else None."""
        if name not in self.constants:
            return None
        if name not in self.values:
            if name in self.initializers:
                self.values[name] = tensor_array(self.initializers[name])
            else:
                node = self.producer[name]
                feeds = {i: self.value(i) for i in node.input if i}
                try:
                    outs = evaluate_node(node, feeds, opset_import=self.model.opset_import,
                                         ir_version=self.model.ir_version)
                    self.values.update(zip([o for o in node.output if o], outs))
                except Exception:  # noqa: BLE001 - an op neither evaluator can run
                    self.values[name] = None
            self.values.setdefault(name, None)
        return self.values[name]

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def constant_ancestors(self, name: str) -> list[onnx.NodeProto]:
        """The nodes of the constant subgraph computing ``name``."""
        seen, stack, nodes = set(), [name], []
        while stack:
            tensor = stack.pop()
            node = self.producer.get(tensor)
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            nodes.append(node)
            stack.extend(i for i in node.input if i)
        return nodes


def declared(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, tuple]]:
    """Element types and shapes the (inferred) model declares for its tensors."""
    types, shapes = {}, {}
    graph = model.graph
    for entry in [*graph.input, *graph.value_info, *graph.output]:
        if entry.type.HasField("tensor_type"):
            types[entry.name] = entry.type.tensor_type.elem_type
            shape = shape_of(entry.type)
            if shape is not None:
                shapes[entry.name] = shape
    return types, shapes


class ModelReading:
    """What the passes that run on a model in turn read of it: its :class:`ConstantGraph` and
    :func:`declared` types and shapes. A pass given one reads it only when it was read from the
    very model it is given (a pass that changed nothing hands its input on)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = ConstantGraph(model)
        self.types, self.shapes = declared(model)


def model_reading(model: onnx.ModelProto, reading: ModelReading | None) -> ModelReading:
    """``reading`` when it was read from ``model`` itself, else ``model`` read now."""
    return reading if reading is not None and reading.model is model else ModelReading(model)


def channel_axis(shape: tuple[int, ...], rank: int) -> int | None:
    """The one axis (counted in a rank-``rank`` tensor, right-aligned broadcasting) along which
    a constant of ``shape`` varies in size, if it is not the batch axis 0; None otherwise."""
    if len(shape) > rank:
        return None
    padded = (1,) * (rank - len(shape)) + tuple(shape)
    axes = [a for a, d in enumerate(padded) if d != 1]
    return axes[0] if len(axes) == 1 and axes[0] != 0 else None


def sqrt_var_eps(graph: ConstantGraph, k: str) -> tuple[np.ndarray, float] | None:
    """``(v, eps)`` when the constant subgraph computing ``k`` takes ``Sqrt(v + eps)`` of a
    tensor ``v`` with more than one element and a scalar ``eps >= 0`` (BatchNormalization's
    ``sqrt(var + eps)``), else None."""
    for node in graph.constant_ancestors(k):
        if node.op_type != "Sqrt":
            continue
        add = graph.producer.get(node.input[0])
        if add is None or add.op_type != "Add":
            continue
        values = [graph.value(i) for i in add.input]
        if any(v is None for v in values):
            continue
        var, eps = sorted(values, key=np.size, reverse=True)
        if eps.size == 1 and var.size > 1 and float(eps.reshape(())) >= 0:
            return var, float(eps.reshape(()))
    return None


def _match(graph: ConstantGraph, mul: onnx.NodeProto, ranks: dict[str, int]):
    """(x, k, gamma or None, shift or None, final node, eps, axis) when ``mul`` starts an inference
    BatchNormalization written as arithmetic (see the module docstring), else None."""
    if mul.op_type != "Mul" or len(mul.input) != 2:
        return None
    constant = [i for i in mul.input if i in graph.constants]
    if len(constant) != 1 or graph.value(constant[0]) is None:
        return None
    k = constant[0]
    x = mul.input[1] if mul.input[0] == k else mul.input[0]
    rank = ranks.get(x)
    axis = channel_axis(np.shape(graph.value(k)), rank) if rank and rank >= 2 else None
    if axis is None:
        return None
    add = graph.only_consumer(mul.output[0])
    shift = None
    if add is not None and add.op_type == "Add":
        other = add.input[1] if add.input[0] == mul.output[0] else add.input[0]
        value = graph.value(other)
        if value is not None and (value.size == 1 or channel_axis(value.shape, rank) == axis):
            shift = other
    formula = sqrt_var_eps(graph, k)
    if formula is not None:  # gamma = k sqrt(var + eps), exactly
        var, eps = formula
        gamma = np.asarray(graph.value(k), np.float64) * np.sqrt(var.astype(np.float64) + eps)
        if gamma.size != np.size(graph.value(k)):
            return None
    elif _TF_MUL.search(mul.name):
        gamma, eps = None, _DEFAULT_EPS
        if shift is not None and not _TF_ADD.search(add.name):
            shift = None
    else:
        return None
    return x, k, gamma, shift, (add if shift is not None else mul), eps, axis


def _rewrite(emitter: GraphEmitter, match, shape: tuple, elem_type: int) -> list:
    """Nodes computing ``BatchNormalization(x)`` along ``axis`` into the final node's output:
    Transposes around it when the channel axis is not 1; ``k`` and the shift as 1-D, moving
    statistics 0 and 1 (unused with batch statistics); the scale is ``gamma`` where the
    formula gave it, else ``k``."""
    x, k, gamma, shift, final, eps, axis = match
    channels = shape[axis]
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    nodes_before = len(emitter.nodes)

    def constant(value) -> str:  # a Constant node: the model's initializers stay its own
        return emitter.node("Constant", [], value=numpy_helper.from_array(np.asarray(value)))

    flat = constant(np.asarray([channels], np.int64))
    if gamma is None:
        scale = emitter.node("Reshape", [k, flat])
    else:
        scale = constant(gamma.reshape(-1).astype(dtype))
    if shift is None:
        bias = constant(np.zeros(channels, dtype))
    else:
        bias = emitter.node("Expand", [
            emitter.node("Reshape", [shift, constant(np.asarray([-1], np.int64))]), flat])
    mean, var = constant(np.zeros(channels, dtype)), constant(np.ones(channels, dtype))
    rank = len(shape)
    perm = [0, axis] + [a for a in range(1, rank) if a != axis]
    inner = x if axis == 1 else emitter.node("Transpose", [x], perm=perm)
    out = final.output[0]
    bn_out = out if axis == 1 else emitter.fresh("batchnorm")
    emitter.nodes.append(helper.make_node(
        "BatchNormalization", [inner, scale, bias, mean, var], [bn_out], epsilon=eps,
        name=emitter.fresh(f"{final.name or 'inference'}/BatchNormalization")))
    infos = []
    if axis != 1:
        emitter.nodes.append(helper.make_node(
            "Transpose", [bn_out], [out], perm=list(np.argsort(perm)),
            name=emitter.fresh("batchnorm_back")))
        permuted = [shape[a] for a in perm]
        infos = [helper.make_tensor_value_info(n, elem_type, permuted) for n in (inner, bn_out)]
    return emitter.nodes[nodes_before:], infos


def _folded_convs(model: onnx.ModelProto, graph: ConstantGraph) -> list[onnx.NodeProto]:
    """Convs whose output is named after TensorFlow's batch-norm op (tf2onnx folded it into
    them), with a constant weight."""
    return [node for node in model.graph.node
            if node.op_type == "Conv" and _TF_FOLDED.search(node.output[0])
            and graph.value(node.input[1]) is not None]


def _unfold(emitter: GraphEmitter, conv: onnx.NodeProto, graph: ConstantGraph) -> list:
    """``conv`` writing a fresh tensor, and a BatchNormalization of it into ``conv``'s output:
    scale 1 (gamma / sqrt(var + eps) folded into the kernel is 1 / sqrt(1 + eps) for a fresh
    network), shift the folded bias (beta for a fresh moving mean), moving statistics 0 and 1."""
    kernel = graph.value(conv.input[1])
    channels, dtype = int(np.shape(kernel)[0]), np.asarray(kernel).dtype  # the Conv's own type
    bias = graph.value(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
    shift = np.zeros(channels, dtype) if bias is None else np.asarray(bias, dtype).reshape(-1)

    def constant(value) -> str:
        return emitter.node("Constant", [], value=numpy_helper.from_array(np.asarray(value)))

    nodes_before = len(emitter.nodes)
    inner = emitter.fresh("folded")
    unfolded = onnx.NodeProto()
    unfolded.CopyFrom(conv)
    unfolded.output[0] = inner
    params = [constant(np.ones(channels, dtype)), constant(shift),
              constant(np.zeros(channels, dtype)), constant(np.ones(channels, dtype))]
    emitter.nodes.append(unfolded)
    emitter.nodes.append(helper.make_node(
        "BatchNormalization", [inner, *params], [conv.output[0]], epsilon=_DEFAULT_EPS,
        name=emitter.fresh(f"{conv.name or 'conv'}/BatchNormalization")))
    return emitter.nodes[nodes_before:]


@model_pass(in_place=False)
def inference_batchnorms(model: onnx.ModelProto, reading: ModelReading | None = None
                         ) -> onnx.ModelProto:
    """The model with every inference BatchNormalization written as arithmetic (and not after a
    foldable layer) as a ``BatchNormalization`` node; ``model`` itself when there is none.
    ``model`` has its shapes inferred (the channel axis is read from them); ``reading``: what
    was read of it already (:func:`model_reading`)."""
    reading = model_reading(model, reading)
    graph, types, shapes = reading.graph, reading.types, reading.shapes
    ranks = {name: len(s) for name, s in shapes.items() if s is not None}
    matches, replaced = [], set()
    for node in model.graph.node:
        if node.op_type != "Mul" or id(node) in replaced:
            continue
        match = _match(graph, node, ranks)
        shape = shapes.get(match[0]) if match else None
        if match is None or shape is None or not all(isinstance(d, int) for d in shape):
            continue
        matches.append((node, match, tuple(shape)))
        replaced.update({id(node), id(match[4])})
    folded = _folded_convs(model, graph)
    if not matches and not folded:
        return model
    names = {n for node in model.graph.node for n in [*node.input, *node.output, node.name]}
    emitter = GraphEmitter(names | set(graph.initializers), "prepared/")
    rewritten, infos = {}, []
    for mul, match, shape in matches:
        nodes, new_infos = _rewrite(emitter, match, shape, types.get(match[0], 1))
        rewritten[id(match[4])] = nodes
        infos.extend(new_infos)
    for conv in folded:
        rewritten[id(conv)] = _unfold(emitter, conv, graph)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.ClearField("node")
    for node in model.graph.node:
        if id(node) in rewritten:
            out.graph.node.extend(rewritten[id(node)])
        elif id(node) not in replaced:
            out.graph.node.append(node)
    out.graph.value_info.extend(infos)
    log.info("%d inference BatchNormalization(s) written as arithmetic and %d folded into a "
             "Conv analysed as BatchNormalization nodes (training semantics)", len(matches),
             len(folded))
    return out


__all__ = ["ConstantGraph", "ModelReading", "declared", "inference_batchnorms", "model_reading"]
