"""The view a backward rule has of its forward node: attributes, static shapes and constant
values of its tensors, and an emitter for the gradient nodes it writes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from ..errors import UnsupportedModelError
from ..passes import GraphEmitter
from .static import StaticInfo


def node_label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node {node.name!r}" if node.name else f"{node.op_type} node " \
        f"producing {node.output[0]!r}"


class BackwardContext:
    def __init__(
        self,
        node: onnx.NodeProto,
        emitter: GraphEmitter,
        static: StaticInfo,
        requires: Sequence[bool],
    ):
        self.node = node
        self.static = static
        self._emitter = emitter
        self._requires = list(requires)
        self._attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    # --- the forward node -------------------------------------------------------------------
    def requires(self, index: int) -> bool:
        """Whether input ``index`` needs a gradient (it is a float tensor fed by a parameter)."""
        return index < len(self._requires) and self._requires[index]

    def attr(self, name: str, default=None):
        value = self._attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def input(self, index: int) -> str:
        """Name of input ``index``, or '' when the optional input is absent."""
        return self.node.input[index] if index < len(self.node.input) else ""

    def shape(self, name: str) -> tuple[int, ...]:
        return self.static.shape(name)

    def rank(self, name: str) -> int:
        shape = self.static.shapes.get(name)
        if shape is None:
            raise UnsupportedModelError(f"{self.describe()}: rank of {name!r} unknown")
        return len(shape)

    def value(self, name: str) -> np.ndarray | None:
        """The constant value of ``name`` if it does not depend on runtime inputs."""
        return self.static.values.get(name) if name else None

    def required_value(self, name: str, what: str) -> np.ndarray:
        value = self.value(name)
        if value is None:
            raise UnsupportedModelError(
                f"{self.describe()}: {what} ({name!r}) must be a constant for autodiff"
            )
        return value

    def elem_type(self, name: str) -> int:
        return self.static.elem_type(name)

    def describe(self) -> str:
        return node_label(self.node)

    # --- emitting gradient nodes -------------------------------------------------------------
    def emit(self, op_type: str, inputs: Sequence[str], n_outputs: int = 1, **attrs):
        return self._emitter.node(op_type, inputs, n_outputs, **attrs)

    def annotate(self, doc: str) -> None:
        """Set the ``doc_string`` of the node emitted last (a record a later derivation reads)."""
        self._emitter.nodes[-1].doc_string = doc

    def const(self, value, like: str) -> str:
        """A constant with the element type of tensor ``like``."""
        return self._emitter.constant(value, self.elem_type(like))

    def ints(self, values) -> str:
        """An int64 constant: a sequence of ints, or an integer array of any shape."""
        if isinstance(values, np.ndarray):
            return self._emitter.constant(values, np.int64, "ints")
        return self._emitter.int64s(values)

    def zeros(self, shape: Sequence[int], like: str) -> str:
        """A zero tensor of static ``shape`` with ``like``'s element type, made at run time."""
        value = helper.make_tensor("zero", self.elem_type(like), [1], [0])
        return self.emit("ConstantOfShape", [self.ints(shape)], value=value)

    def shape_tensor(self, name: str) -> str:
        """The shape of ``name`` as an int64 tensor: a constant when static, else a Shape node."""
        shape = self.static.known_shape(name)
        if shape is not None:
            return self.ints(shape)
        return self.emit("Shape", [name])

    def reshape_like(self, grad: str, like: str) -> str:
        return self.emit("Reshape", [grad, self.shape_tensor(like)])

    def unbroadcast(self, grad: str, grad_shape: Sequence[int], target: str) -> str:
        """Sum ``grad`` (of shape ``grad_shape``) over the axes on which tensor ``target`` was
        broadcast, giving a tensor of ``target``'s shape."""
        return self.sum_to(grad, grad_shape, self.shape(target))

    def sum_to(self, grad: str, grad_shape: Sequence[int], target_shape: Sequence[int]) -> str:
        """Sum ``grad`` over the axes along which ``target_shape`` broadcasts to ``grad_shape``."""
        grad_shape, target_shape = tuple(grad_shape), tuple(target_shape)
        if grad_shape == target_shape:
            return grad
        lead = len(grad_shape) - len(target_shape)
        axes = list(range(lead)) + [
            lead + i for i, d in enumerate(target_shape) if d == 1 and grad_shape[lead + i] != 1
        ]
        summed = self.emit("ReduceSum", [grad, self.ints(axes)], keepdims=1) if axes else grad
        return self.emit("Reshape", [summed, self.ints(target_shape)])

    def sum(self, names: Sequence[str]) -> str:
        return names[0] if len(names) == 1 else self.emit("Sum", list(names))
