"""Convolutions of parameters that are known multiples of constants: weight ``W = s W0``.

The scale-optimising methods (GradInit, MetaInit) run their programs at ``theta_i = alpha_i
p0_i``: every parameter is a scalar multiple of its initial value. A gradient program feeds
theta as graph inputs, and onnxruntime's Conv with a weight that is a graph input runs without
prepacking or its NCHWc kernels, at about 1.8x the time of a Conv with a constant weight on the
ResNet twin's sizes (``benchmarks/conv_kernels.py``). Convolution is linear in its weight, so

    Conv(x, s W0, B)          = s Conv(x, W0) + B                                      (1)
    ConvTranspose(x, s W0)    = s ConvTranspose(x, W0)
                              = s Conv(x, flip(W0)^T, pads K - 1 - p)   (stride, dilation 1;
                                                                         group 1)     (2)

with W0 an initializer (prepacked) and ``s`` a new scalar graph input. (2) is the adjoint of a
stride-1 convolution written as a convolution with the kernel flipped in space and its two
channel axes swapped: y[o] = sum_k x[o - k + p] W[k] = sum_k' x[o + k' - (K - 1 - p)]
W[K - 1 - k'].

:func:`rewrite` applies (1) and (2) to every Conv / ConvTranspose whose weight is one of the
given graph inputs, after all differentiation: the rewritten graph computes the same values as
the original one *only when each such input is fed exactly ``s W0``*; derivatives are never
taken of it. Other uses of the input (weight-gradient products, element-wise terms) keep
reading it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..passes import types_and_shapes
from ..passes.emitter import GraphEmitter
from .inner import inner_product, needed


def scale_input(name: str) -> str:
    """The scalar graph input carrying the scale of parameter ``name``."""
    return f"{name}::scale"


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _as_convolution(attrs: dict, kernel: tuple[int, ...]) -> dict | None:
    """The Conv attributes of equation (2) for a ConvTranspose, or None where (2) does not
    hold (strides or dilations above 1, groups, output padding or shape, auto_pad, or pads
    beyond the kernel)."""
    rank = len(kernel)
    if attrs.get("group", 1) != 1 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET",
                                                                             "NOTSET"):
        return None
    if "output_shape" in attrs or any(attrs.get("output_padding", [0] * rank)):
        return None
    if any(v != 1 for key in ("strides", "dilations") for v in attrs.get(key, [1] * rank)):
        return None
    pads = list(attrs.get("pads", [0] * 2 * rank))
    flipped = [k - 1 - p for p, k in zip(pads, kernel + kernel)]
    if any(p < 0 for p in flipped):
        return None
    return {"kernel_shape": list(kernel), "pads": flipped}


def _window(attrs: dict, kernel: tuple[int, ...]) -> tuple | None:
    """A Conv's window with the defaults filled in (None with auto_pad)."""
    rank = len(kernel)
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    return (tuple(attrs.get("kernel_shape", kernel)), tuple(attrs.get("strides", [1] * rank)),
            tuple(attrs.get("dilations", [1] * rank)), tuple(attrs.get("pads", [0] * 2 * rank)),
            attrs.get("group", 1))


def _content(array: np.ndarray) -> tuple:
    return array.dtype.str, array.shape, hashlib.sha1(np.ascontiguousarray(array)).hexdigest()


def _constant_convolutions(graph: onnx.GraphProto) -> dict[tuple, int]:
    """(input, kernel values, window) -> the position of a bias-free Conv of the graph whose
    kernel is an initializer (such as :mod:`.inner`'s ``Conv(x, p0)``)."""
    # an initializer that is also a graph input can be overridden: not a constant
    weights = {node.input[1] for node in graph.node
               if node.op_type == "Conv" and len(node.input) == 2} - {v.name for v in graph.input}
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name in weights}
    found = {}
    for i, node in enumerate(graph.node):
        if node.op_type == "Conv" and len(node.input) == 2 and node.input[1] in values:
            kernel = values[node.input[1]]
            window = _window(_attributes(node), kernel.shape[2:])
            if window is not None:
                found.setdefault((node.input[0], _content(kernel), window), i)
    return found


def rewrite(model: onnx.ModelProto, bases: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """``model`` with equations (1) and (2) applied to every Conv / ConvTranspose whose weight
    is a graph input named in ``bases`` (name -> W0); the scales are new scalar inputs
    :func:`scale_input` of the model's element type. Unchanged (a copy) where no node
    qualifies."""
    graph = model.graph
    inputs = {v.name: v for v in graph.input}
    elem = next((v.type.tensor_type.elem_type for n, v in inputs.items() if n in bases),
                onnx.TensorProto.FLOAT)
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    taken = {n for node in graph.node for n in [*node.input, *node.output]}
    taken |= set(inputs) | {t.name for t in graph.initializer}
    emitter = GraphEmitter(taken, "scaled/")
    constants: dict[tuple[str, bool], str] = {}
    used: list[str] = []
    nodes = []
    existing = _constant_convolutions(graph)
    moved: set[int] = set()  # positions of nodes emitted earlier than where they stood

    def constant(name: str, flip: bool) -> str:
        if (name, flip) not in constants:
            base = np.asarray(bases[name], dtype=dtype)
            if flip:
                base = np.swapaxes(base, 0, 1)[(slice(None), slice(None))
                                               + (slice(None, None, -1),) * (base.ndim - 2)]
            tensor = emitter.reserve(f"{name}/{'flipped' if flip else 'base'}")
            emitter.initializers.append(numpy_helper.from_array(np.ascontiguousarray(base),
                                                                tensor))
            constants[name, flip] = tensor
        return constants[name, flip]

    for i, node in enumerate(graph.node):
        if i in moved:
            continue
        weight = node.input[1] if len(node.input) > 1 else ""
        if node.op_type not in ("Conv", "ConvTranspose") or weight not in bases \
                or weight not in inputs:
            nodes.append(node)
            continue
        attrs = _attributes(node)
        kernel = tuple(np.shape(bases[weight])[2:])
        emitter.nodes.clear()
        same = None
        window = _window(attrs, kernel)
        if node.op_type == "Conv" and window is not None:  # x convolved with W0 already
            same = existing.get((node.input[0], _content(np.asarray(bases[weight], dtype)),
                                 window))
        if same is not None:
            if same > i and same not in moved:  # computed here, not later
                moved.add(same)
                emitter.nodes.append(graph.node[same])
            unscaled = graph.node[same].output[0]
        else:
            if node.op_type == "ConvTranspose":
                flipped = _as_convolution(attrs, kernel)
                op, w = ("Conv", constant(weight, True)) if flipped else \
                    ("ConvTranspose", constant(weight, False))
                attrs = flipped or attrs
            else:
                op, w = "Conv", constant(weight, False)
            unscaled = emitter.node(op, [node.input[0], w], **attrs)
        if weight not in used:
            used.append(weight)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is None:
            nodes.extend(emitter.nodes)
            nodes.append(helper.make_node("Mul", [unscaled, scale_input(weight)],
                                          [node.output[0]]))
            continue
        scaled = emitter.node("Mul", [unscaled, scale_input(weight)])
        shaped = emitter.node("Reshape", [bias, emitter.int64s([-1] + [1] * len(kernel))])
        nodes.extend(emitter.nodes)
        nodes.append(helper.make_node("Add", [scaled, shaped], [node.output[0]]))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(emitter.initializers)
    out.graph.input.extend(helper.make_tensor_value_info(scale_input(n), elem, [])
                           for n in used)
    return out


def directional(model: onnx.ModelProto, wrt: list[str] | tuple[str, ...],
                directions: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A gradient model (output 0 the loss, output ``i + 1`` the gradient of ``wrt[i]``) turned
    into one whose output ``i + 1`` is the scalar ``<dL/dp_i, d_i>`` with ``d_i`` the constant
    ``directions[wrt[i]]``.

    Where the gradient of a convolution weight is (a sum of) recorded weight-gradient products
    (:class:`~onnxinit.autodiff.backward.windows.WeightGradientGeometry`: ``dW[m, c, k] =
    sum_{n, p} g[n, m, p] x[n, c, p s + k d - pad]``), the product is never formed:

        <dW, D> = sum_{n, m, p} g[n, m, p] Conv(x, D)[n, m, p]                        (3)

    with ``D`` an initializer (a prepacked convolution, against an im2col Gemm per kernel tap)
    and the product's window (:func:`onnxinit.autodiff.inner.inner_product`). Every other
    gradient is reduced as ``sum(dL/dp_i * d_i)``. Nodes no output needs any more are dropped.
    Holds at any parameter values (unlike :func:`rewrite`, which needs ``p = s W0``)."""
    graph = model.graph
    outputs = [o.name for o in graph.output]
    producer = {name: node for node in graph.node for name in node.output}
    _, shapes = types_and_shapes(model)
    taken = {n for node in graph.node for n in [*node.input, *node.output]}
    taken |= {v.name for v in graph.input} | {t.name for t in graph.initializer}
    emitter = GraphEmitter(taken, "directional/")
    elem = graph.output[0].type.tensor_type.elem_type
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    scalars = []
    for k, name in enumerate(wrt):
        direction = emitter.constant(np.asarray(directions[name], dtype=dtype), dtype,
                                     "direction")
        scalars.append(inner_product(emitter, outputs[k + 1], direction, producer, shapes))
    new_outputs = [outputs[0], *scalars]
    nodes = needed([*graph.node, *emitter.nodes], new_outputs)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(emitter.initializers)
    del out.graph.output[1:]
    out.graph.output.extend(helper.make_tensor_value_info(s, elem, []) for s in scalars)
    return out  # inputs kept, read or not: callers feed the gradient model's inputs
