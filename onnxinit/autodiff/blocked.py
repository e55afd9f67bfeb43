"""Convolutions whose weight is computed in the graph, on onnxruntime's blocked (NCHWc) kernels.

onnxruntime's CPU provider runs a Conv whose weight is a constant initializer on its NCHWc
kernels: at load time its graph transformer reorders the weight into blocks of channels and
wraps the convolution in ``ReorderInput`` / ``ReorderOutput``. A weight that is a graph input
or computed in the graph (the stepped weights of GradInit's objective step, the directions of
a second-order program) gets the plain im2col kernel instead, at 1.3-1.9x the time of the
blocked one on the ResNet twin's sizes (``benchmarks/conv_kernels.py``).

:func:`rewrite` gives such a convolution the blocked kernel anyway: it asks onnxruntime how it
lays out a constant weight of the same shape (a one-node model whose weight holds ``1 + k`` at
flat position ``k``, optimised and read back: every reordered entry names the source element it
came from, 0 marks padding), and writes the same transformed nodes with the weight reordered
in the graph by one ``Gather`` of those indices. A stride-1 ConvTranspose (the input gradient
of a stride-1 Conv) is first written as a Conv with the kernel flipped and its channel axes
swapped (:func:`onnxinit.autodiff.scaled._as_convolution`), folded into the same indices.

Values equal the plain kernel's to float rounding (the same products, summed in another
order). The layout is onnxruntime's own, read from the running onnxruntime, never assumed: a
shape it does not block (channel counts that are not multiples of its block, groups, 1-D or
3-D kernels, a build without NCHWc kernels) is left as it is.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..passes import types_and_shapes
from ..passes.emitter import GraphEmitter
from ..runtime import onnxruntime
from .scaled import _as_convolution, _attributes

DOMAIN = "com.microsoft.nchwc"


def _frozen(attrs: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in attrs.items()))


@lru_cache(maxsize=None)
def _template(attrs: tuple, weight_shape: tuple[int, ...], transposed: bool, bias: bool):
    """(onnxruntime's transformed nodes for a Conv with ``attrs``, a constant weight of
    ``weight_shape`` (ConvTranspose layout when ``transposed``) and a constant bias if ``bias``;
    for each of their initializers, its name and the indices into the source it is gathered
    from: the flat weight, then the bias, then a zero at index ``n``) or None where onnxruntime
    leaves the convolution unblocked."""
    ort = onnxruntime()
    source = np.arange(int(np.prod(weight_shape)), dtype=np.int64).reshape(weight_shape)
    index = np.swapaxes(source, 0, 1)[:, :, ::-1, ::-1] if transposed else source
    c_out, c_in = index.shape[0], index.shape[1] * dict(attrs).get("group", 1)
    n = source.size + (c_out if bias else 0)
    side = 2 * max(index.shape[2:]) + 2
    initializers = [numpy_helper.from_array((index + 1).astype(np.float32), "w")]
    if bias:
        initializers.append(numpy_helper.from_array(
            np.arange(source.size + 1, n + 1, dtype=np.float32), "b"))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"] if bias else ["x", "w"], ["y"],
                          **dict(attrs))], "layout",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, side, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory(prefix="onnxinit-nchwc-") as folder:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        options.optimized_model_filepath = str(Path(folder) / "layout.onnx")
        try:
            ort.InferenceSession(model.SerializeToString(), options,
                                 providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - an onnxruntime that cannot: leave the node
            return None
        optimised = onnx.load(options.optimized_model_filepath)
    nodes = list(optimised.graph.node)
    if not any(node.domain == DOMAIN and node.op_type == "Conv" for node in nodes) \
            or any(node.domain != DOMAIN for node in nodes):
        return None
    gathers, seen = [], []
    for tensor in optimised.graph.initializer:
        flat = numpy_helper.to_array(tensor).reshape(-1)
        if not np.all((flat == np.round(flat)) & (flat >= 0) & (flat <= n)):
            return None
        seen.append(flat[flat > 0])
        # entry v > 0 holds source element v - 1 (the weight was written as index + 1)
        picked = np.where(flat > 0, flat.astype(np.int64) - 1, n)
        gathers.append((tensor.name, picked.reshape(numpy_helper.to_array(tensor).shape)))
    taken = np.sort(np.concatenate(seen)).astype(np.int64) if seen else np.zeros(0)
    if not np.array_equal(taken, np.arange(1, n + 1)):
        return None  # a transformed weight that is not a reordering of the source
    return tuple(nodes), tuple(gathers)


def _plan(node: onnx.NodeProto, types: dict, shapes: dict):
    """The template (:func:`_template`) for a node that qualifies, else None."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("Conv", "ConvTranspose") \
            or len(node.input) < 2:
        return None
    weight = node.input[1]
    shape = shapes.get(weight)
    bias = len(node.input) > 2 and bool(node.input[2])
    if any(types.get(name) != TensorProto.FLOAT for name in node.input if name) \
            or shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape):
        return None
    attrs = _attributes(node)
    transposed = node.op_type == "ConvTranspose"
    if transposed:
        if bias:
            return None
        attrs = _as_convolution(attrs, tuple(shape[2:]))
        if attrs is None:
            return None
    return _template(_frozen(attrs), tuple(shape), transposed, bias)


def _index_type(indices: np.ndarray) -> type:
    """int32 where the indices fit: each layout is as large as its weight."""
    return np.int32 if indices.size == 0 or indices.max() < np.iinfo(np.int32).max \
        else np.int64


def rewrite(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every float 2-D Conv, and stride-1 ConvTranspose, whose weight is not an
    initializer and has a static shape, run as onnxruntime's blocked convolution with the
    weight reordered in the graph (module docstring). A copy; unchanged where none
    qualifies. Convolutions of one weight shape and attributes share one layout initializer
    (a second-order program has a dozen uses of each weight: ResNet-50's MetaInit program held
    10,553 layouts, 1.9 GB, of which 321 were distinct)."""
    graph = model.graph
    # an initializer that is also a graph input can be overridden: onnxruntime leaves it
    constants = {t.name for t in graph.initializer} - {v.name for v in graph.input}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    types, shapes = types_and_shapes(model)
    taken = {n for node in graph.node for n in [*node.input, *node.output]}
    taken |= {v.name for v in graph.input} | constants
    emitter = GraphEmitter(taken, "blocked/")
    layouts: dict[int, str] = {}  # id of a cached template's indices -> its initializer
    nodes, changed = [], False
    for node in graph.node:
        plan = None if len(node.input) < 2 or node.input[1] in constants else \
            _plan(node, types, shapes)
        if plan is None:
            nodes.append(node)
            continue
        template, gathers = plan
        emitter.nodes.clear()
        parts = [emitter.node("Reshape", [node.input[1], emitter.int64s([-1])])]
        if len(node.input) > 2 and node.input[2]:
            parts.append(node.input[2])
        source = emitter.node("Concat", [*parts, emitter.constant(np.zeros(1), np.float32,
                                                                  "zero")], axis=0)
        names = {"x": node.input[0], "y": node.output[0]}
        for name, indices in gathers:
            if id(indices) not in layouts:
                layouts[id(indices)] = emitter.constant(indices, _index_type(indices), "layout")
            names[name] = emitter.node("Gather", [source, layouts[id(indices)]], axis=0)
        for step in template:
            for name in step.output:
                if name not in names:
                    names[name] = emitter.fresh(step.op_type)
            copy = onnx.NodeProto()
            copy.CopyFrom(step)
            copy.ClearField("name")
            copy.input[:] = [names[n] if n else n for n in step.input]
            copy.output[:] = [names[n] for n in step.output]
            emitter.nodes.append(copy)
        nodes.extend(emitter.nodes)
        changed = True
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not changed:
        return out
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(emitter.initializers)
    if not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return out
