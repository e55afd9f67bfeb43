"""Repeats spelled ``Unsqueeze -> Tile -> [Transpose] -> Reshape`` read as nearest Resizes.

TensorFlow's ``repeat`` (Keras' ``UpSampling1D/2D/3D``) inserts an axis after the repeated one,
tiles it ``k`` times and merges the two: every element copied ``k`` times in a row, which is a
nearest Resize of that axis by ``k`` (``asymmetric`` coordinates, ``floor``: input index
``floor(o / k)``, exact for any integer k). tf2onnx writes it on whatever layout its transpose
optimiser left: Keras' ``UpSampling2D`` after a Conv reads the Conv's NCHW output, tiles
``[N, C, H, 1, W]``, transposes to ``[N, H, k, W, C]`` and merges to the NHWC ``[N, kH, W, C]``,
repeats W there, crops it (``Cropping2D``: a Slice) and transposes back to NCHW for the next
Conv. The position classes of a zero-padded conv (``onnxinit.spatial``) and the spatial
correlation pass Resize and Slice on NCHW maps but not Tile, Reshape or Transpose: the crop of
the interior read the whole map's average (0.93x, the Conv after it 0.88x).

:func:`nearest_repeats` rewrites, in the analysis view only:

* each such Reshape ``O`` of a tensor ``X`` (the Unsqueeze's input; its intermediate tensors
  read only along the chain) into ``R = Resize(X)`` and ``O = Transpose(R, q)``, ``q`` the
  transpose's permutation without the inserted axis (an Identity when it is none);
* then sinks the transposes it made: with ``O = Transpose(Y, q)`` known, a repeat of ``O`` is a
  Resize of ``Y`` along axis ``q[a]`` (``Resize_a(T_q(Y)) = T_q(Resize_{q[a]}(Y))``), a Slice of
  ``O`` with constant starts, ends, axes (and steps) is the Slice of ``Y`` along ``q[axes]``,
  and ``Transpose(O, p)`` is ``Transpose(Y, q[p])``, an Identity when that is no permutation.

Every tensor keeps its name and values (the rewritten ones are Transposes of the new
channels-first ones), and the original Unsqueeze and Tile stay as dead branches. A Resize is
only made where it resizes an axis past the first two of a tensor of rank 3 or more (a map's
spatial axis, as the Resize rule reads it); anything else is left alone.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .base import model_pass
from .emitter import GraphEmitter
from .inference_batchnorm import ModelReading, model_reading

log = logging.getLogger("onnxinit.passes")


def _attr(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


class _Reader:
    def __init__(self, reading: ModelReading, opset: int):
        self.graph, self.shapes, self.opset = reading.graph, reading.shapes, opset

    def only_reader(self, name: str, node: onnx.NodeProto) -> bool:
        users = self.graph.consumers.get(name, [])
        return name not in self.graph.outputs and len(users) == 1 and users[0] is node

    def ints(self, node: onnx.NodeProto, index: int, attr: str) -> list[int] | None:
        value = _attr(node, attr, None)
        if value is None and len(node.input) > index and node.input[index]:
            value = self.graph.value(node.input[index])
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]

    def repeat(self, reshape: onnx.NodeProto):
        """``(X, axis, k, q)`` when ``reshape`` merges a tiled inserted axis into the one
        before it (module docstring), else None."""
        graph = self.graph
        perm, node = None, graph.producer.get(reshape.input[0])
        if node is not None and node.op_type == "Transpose":
            perm = _attr(node, "perm", None)
            if perm is None or not self.only_reader(node.output[0], reshape):
                return None
            reader, node = node, graph.producer.get(node.input[0])
        else:
            reader = reshape
        if node is None or node.op_type != "Tile" or not self.only_reader(node.output[0], reader):
            return None
        tile, unsq = node, graph.producer.get(node.input[0])
        if unsq is None or unsq.op_type != "Unsqueeze" or not self.only_reader(unsq.output[0], tile):
            return None
        x = unsq.input[0]
        x_shape, o_shape = self.shapes.get(x), self.shapes.get(reshape.output[0])
        axes = self.ints(unsq, 1, "axes")
        repeats = self.ints(tile, 1, "repeats")
        if x_shape is None or o_shape is None or axes is None or len(axes) != 1 or repeats is None:
            return None
        rank = len(x_shape)
        u = axes[0] % (rank + 1)
        if u == 0 or len(repeats) != rank + 1 or any(r != 1 for i, r in enumerate(repeats)
                                                      if i != u) or repeats[u] < 2:
            return None
        k = repeats[u]
        perm = list(range(rank + 1)) if perm is None else [int(p) for p in perm]
        j = perm.index(u - 1)
        if j + 1 > rank or perm[j + 1] != u:
            return None
        tiled = [*x_shape[:u], k, *x_shape[u:]]
        merged = [tiled[p] for p in perm]
        merged[j:j + 2] = [merged[j] * k]
        if list(o_shape) != merged:
            return None
        q = [p - (p > u) for p in perm if p != u]
        return x, u - 1, k, q


def _compose(q: list[int], p: list[int]) -> list[int]:
    """The permutation of ``Transpose(Transpose(Y, q), p)``: ``q[p]``."""
    return [q[a] for a in p]


@model_pass(in_place=False)
def nearest_repeats(model: onnx.ModelProto, reading: ModelReading | None = None
                    ) -> onnx.ModelProto:
    """The model with TensorFlow's repeats (``Unsqueeze -> Tile -> Reshape``) read as nearest
    Resizes and the transposes between them, a crop and the next channels-first op sunk
    (module docstring); ``model`` itself when there is none."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13 or not any(n.op_type == "Tile" for n in model.graph.node):
        return model
    reading = model_reading(model, reading)
    reader = _Reader(reading, opset)
    names = {n for node in model.graph.node for n in [*node.input, *node.output, node.name]}
    emitter = GraphEmitter(names | set(reading.graph.initializers), "prepared/")
    transposed: dict[str, tuple[str, list[int]]] = {}  # O -> (Y, q): O = Transpose(Y, q)
    shapes = dict(reading.shapes)
    infos: list[onnx.ValueInfoProto] = []
    nodes: list[onnx.NodeProto] = []
    changed = False

    def emit(op: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        out = output or emitter.fresh(op)
        nodes.append(helper.make_node(op, inputs, [out], name=emitter.fresh(op + "_node"),
                                      **attrs))
        return out

    def const(values) -> str:
        name = emitter.fresh("repeat_const")
        nodes.append(helper.make_node("Constant", [], [name], name=emitter.fresh("Constant"),
                                      value=numpy_helper.from_array(np.asarray(values))))
        return name

    def finish(node: onnx.NodeProto, base: str, q: list[int], base_shape: list[int]) -> None:
        out = node.output[0]
        infos.append(helper.make_tensor_value_info(
            base, reading.types.get(node.input[0], onnx.TensorProto.FLOAT), base_shape))
        shapes[base] = tuple(base_shape)
        if q == list(range(len(q))):
            emit("Identity", [base], out)
        else:
            emit("Transpose", [base], out, perm=q)
            transposed[out] = (base, q)

    for node in model.graph.node:
        if node.op_type == "Reshape" and (found := reader.repeat(node)) is not None:
            x, axis, k, q = found
            base, q0 = transposed.get(x, (x, list(range(len(q)))))
            base_shape = list(shapes[base])
            target = q0[axis]
            if len(base_shape) >= 3 and target >= 2:
                scales = np.ones(len(base_shape), np.float32)
                scales[target] = k
                base_shape[target] *= k
                resized = emit("Resize", [base, "", const(scales)], mode="nearest",
                               coordinate_transformation_mode="asymmetric",
                               nearest_mode="floor")
                finish(node, resized, _compose(q0, q), base_shape)
                changed = True
                continue
        if node.op_type == "Slice" and node.input[0] in transposed:
            base, q = transposed[node.input[0]]
            starts, ends = reader.ints(node, 1, "starts"), reader.ints(node, 2, "ends")
            axes, steps = reader.ints(node, 3, "axes"), reader.ints(node, 4, "steps")
            rank = len(q)
            if starts is not None and ends is not None and (
                    len(node.input) < 4 or not node.input[3] or axes is not None) and (
                    len(node.input) < 5 or not node.input[4] or steps is not None):
                axes = list(range(len(starts))) if axes is None else [a % rank for a in axes]
                inputs = [base, const(np.asarray(starts, np.int64)),
                          const(np.asarray(ends, np.int64)),
                          const(np.asarray([q[a] for a in axes], np.int64))]
                if steps is not None:
                    inputs.append(const(np.asarray(steps, np.int64)))
                out_shape = shapes.get(node.output[0])
                if out_shape is not None:
                    back = np.argsort(q)
                    sliced = emit("Slice", inputs)
                    finish(node, sliced, q, [int(out_shape[b]) for b in back])
                    changed = True
                    continue
        if node.op_type == "Transpose" and node.input[0] in transposed:
            base, q = transposed[node.input[0]]
            perm = _attr(node, "perm", None)
            if perm is not None:
                composed = _compose(q, [int(p) for p in perm])
                out = node.output[0]
                if composed == list(range(len(composed))):
                    emit("Identity", [base], out)
                else:
                    emit("Transpose", [base], out, perm=composed)
                    transposed[out] = (base, composed)
                changed = True
                continue
        nodes.append(node)
    if not changed:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.ClearField("node")
    out.graph.node.extend(nodes)
    out.graph.value_info.extend(infos)
    log.info("repeats read as nearest Resizes")
    return out


__all__ = ["nearest_repeats"]
