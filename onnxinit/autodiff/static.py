"""What is known about a (constant-folded) graph before it runs: static shapes and element
types from shape inference with concrete input shapes, and the values of the tensors that do
not depend on any runtime input (folded into initializers by
:func:`onnxinit.passes.fold_constants`)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..dtypes import FLOAT_TYPES
from ..errors import UnsupportedModelError
from ..passes import types_and_shapes


class StaticInfo:
    """Shapes, element types and constant values of the tensors of one (constant-folded)
    graph."""

    def __init__(self, model: onnx.ModelProto, variable: set[str]):
        """``variable``: initializers fed at run time (parameters); never constants."""
        self.types, self.shapes = types_and_shapes(model)
        self.values: dict[str, np.ndarray] = {
            init.name: numpy_helper.to_array(init)
            for init in model.graph.initializer if init.name not in variable
        }

    def shape(self, name: str) -> tuple[int, ...]:
        """The static shape of ``name``; raises when inference could not determine it."""
        shape = self.shapes.get(name)
        if shape is None or None in shape:
            raise UnsupportedModelError(
                f"tensor {name!r}: shape unknown after shape inference with the given input "
                f"shapes ({shape}); autodiff needs static shapes here"
            )
        return shape

    def known_shape(self, name: str) -> tuple[int, ...] | None:
        shape = self.shapes.get(name)
        return None if shape is None or None in shape else shape

    def elem_type(self, name: str) -> int:
        if name not in self.types:
            raise UnsupportedModelError(f"tensor {name!r}: element type unknown after inference")
        return self.types[name]

    def is_float(self, name: str) -> bool:
        return self.types.get(name) in FLOAT_TYPES
