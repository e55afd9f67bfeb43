"""Inner products ``<dF/dp_i, D_i>`` of gradient tensors with constant directions, computed
without forming the convolution weight gradients they contain.

A gradient tensor is a sum of terms (``Sum`` / ``Add`` nodes, through ``Identity``); a term that
is the recorded weight-gradient product of a convolution
(:class:`~onnxinit.autodiff.backward.windows.WeightGradientGeometry`:
``dW[m, c, k] = sum_{n, p} g[n, m, p] x[n, group(m) c, p s + k d - pad]``) has

    <dW, D> = sum_{n, m, p} g[n, m, p] Conv(x, D)[n, m, p]                           (1)

with the Conv taking the product's window (strides, dilations, begin pads; end pads to the
last row a window reaches; cropped to g's positions): one convolution whose kernel ``D`` is an
initializer (onnxruntime prepacks it) against an im2col Gemm per kernel tap. Every other term
reduces as ``sum(term * D)``. Exact: the same sums in another order (float rounding).

GradInit needs only ``<dphi/dtheta_i, p0_i>`` of its constraint program (the scales' gradient),
and a second-order program's parameter gradient holds two weight-gradient products per
convolution (the forward Conv's and its input gradient's): :func:`with_inner_products` gives
such a program that asks for (1) instead.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper

from ..passes import types_and_shapes
from ..passes.emitter import GraphEmitter
from .backward.linear import _end_pads, _window_count
from .backward.windows import WeightGradientGeometry
from .higher_order import DerivedGraph


def along(emitter: GraphEmitter, geometry: WeightGradientGeometry, x_shape, g_shape,
          direction: str) -> str:
    """``Conv(x, direction)`` over the window of ``geometry``, at g's positions: the factor of
    g in equation (1)."""
    in_sizes, out_sizes = list(x_shape[2:]), list(g_shape[2:])
    window = list(geometry.kernel), list(geometry.strides), list(geometry.dilations)
    pad_begin = list(geometry.pad_begin)
    pad_end = _end_pads(in_sizes, out_sizes, *window, pad_begin)
    y = emitter.node("Conv", [geometry.x, direction], kernel_shape=window[0], strides=window[1],
                     dilations=window[2], pads=pad_begin + pad_end, group=geometry.group)
    if _window_count(in_sizes, pad_begin, pad_end, *window) == out_sizes:
        return y
    axes = list(range(2, 2 + len(out_sizes)))
    return emitter.node("Slice", [y, emitter.int64s([0] * len(axes)), emitter.int64s(out_sizes),
                                  emitter.int64s(axes)])


def _terms(tensor: str, producer: Mapping[str, onnx.NodeProto], shapes: Mapping) -> list[str]:
    """The summands of ``tensor``: through Identity, Sum and Add whose operands all have its
    (static) shape; else ``tensor`` itself."""
    node = producer.get(tensor)
    if node is None:
        return [tensor]
    if node.op_type == "Identity":
        return _terms(node.input[0], producer, shapes)
    shape = shapes.get(tensor)
    if node.op_type in ("Sum", "Add") and _static(shape) \
            and all(shapes.get(name) == shape for name in node.input):
        return [t for name in node.input for t in _terms(name, producer, shapes)]
    return [tensor]


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def inner_product(emitter: GraphEmitter, tensor: str, direction: str,
                  producer: Mapping[str, onnx.NodeProto], shapes: Mapping) -> str:
    """The scalar ``<tensor, direction>`` (``direction`` a constant of tensor's shape), with
    equation (1) for every weight-gradient term of ``tensor``."""
    scalars = []
    for term in _terms(tensor, producer, shapes):
        geometry = WeightGradientGeometry.of(producer[term]) if term in producer else None
        if geometry is not None and _static(shapes.get(geometry.x)) \
                and _static(shapes.get(geometry.g)):
            factor = along(emitter, geometry, shapes[geometry.x], shapes[geometry.g], direction)
            product = emitter.node("Mul", [geometry.g, factor])
        else:
            product = emitter.node("Mul", [term, direction])
        scalars.append(emitter.node("ReduceSum", [product], keepdims=0))
    return scalars[0] if len(scalars) == 1 else emitter.node("Sum", scalars)


def needed(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    """The nodes that ``outputs`` depend on, in their order."""
    wanted, kept = set(outputs), []
    for node in reversed(nodes):
        if any(name in wanted for name in node.output):
            kept.append(node)
            wanted.update(name for name in node.input if name)
    return kept[::-1]


def with_inner_products(graph: DerivedGraph, role: str, directions: Mapping[str, np.ndarray],
                        keep: tuple[str, ...] = ("loss",)) -> DerivedGraph:
    """``graph`` computing, under the new roles ``<role>.dir:<param>``, the scalars
    ``<tensors[role:param], directions[param]>`` for every parameter (module docstring), and of
    its other outputs only the first-order ones (``keep`` and ``grad:*``): the nodes nothing
    of that needs are dropped."""
    model = graph.model
    types, shapes = types_and_shapes(model)
    producer = {name: node for node in model.graph.node for name in node.output}
    taken = {n for node in model.graph.node for n in [*node.input, *node.output]}
    taken |= {v.name for v in model.graph.input} | {t.name for t in model.graph.initializer}
    emitter = GraphEmitter(taken, "inner/")
    dtype = helper.tensor_dtype_to_np_dtype(graph.elem_type)
    roles = dict(graph.tensors)
    for name in graph.wrt:
        direction = emitter.constant(np.asarray(directions[name], dtype=dtype), dtype,
                                     "direction")
        roles[f"{role}.dir:{name}"] = inner_product(emitter, graph.tensors[f"{role}:{name}"],
                                                    direction, producer, shapes)
    first = [graph.tensors[r] for r in graph.tensors if r in keep or r.startswith("grad:")]
    scalars = [roles[f"{role}.dir:{name}"] for name in graph.wrt]
    nodes = needed([*model.graph.node, *emitter.nodes], first + scalars)
    used = {name for node in nodes for name in node.input}
    out = helper.make_model(
        helper.make_graph(
            nodes, model.graph.name, list(model.graph.input),
            [helper.make_tensor_value_info(name, types.get(name, graph.elem_type),
                                           shapes.get(name)) for name in first]
            + [helper.make_tensor_value_info(name, graph.elem_type, []) for name in scalars],
            [t for t in [*model.graph.initializer, *emitter.initializers] if t.name in used]),
        opset_imports=model.opset_import, ir_version=model.ir_version)
    # the roles whose tensors are gone (the full derived gradients) are not offered
    made = {n for node in nodes for n in node.output} | {v.name for v in model.graph.input}
    kept = {r: t for r, t in roles.items() if t in made}
    return DerivedGraph(out, graph.wrt, kept, graph.inputs, graph.elem_type)
