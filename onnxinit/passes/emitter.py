"""Appending nodes and constants to a graph under fresh, readable names."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper


class GraphEmitter:
    """Collects new nodes and initializers; every name it makes is unused in the graph."""

    def __init__(self, taken: set[str], prefix: str):
        self._taken = set(taken)
        self._prefix = prefix
        self._counter = 0
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def fresh(self, hint: str) -> str:
        while True:
            self._counter += 1
            name = f"{self._prefix}{hint}_{self._counter}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def reserve(self, name: str) -> str:
        """``name`` itself when still free, else a fresh variant of it."""
        if name not in self._taken:
            self._taken.add(name)
            return name
        return self.fresh(name)

    def node(
        self, op_type: str, inputs: Sequence[str], n_outputs: int = 1, **attrs
    ) -> str | list[str]:
        """Emit one node; returns its output name (or names when ``n_outputs`` > 1)."""
        outputs = [self.fresh(op_type) for _ in range(n_outputs)]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), outputs, name=self.fresh(op_type + "_node"),
                             **attrs)
        )
        return outputs[0] if n_outputs == 1 else outputs

    def constant(self, value, dtype: np.dtype | int, hint: str = "const") -> str:
        """An initializer holding ``value`` with numpy dtype or ONNX element type ``dtype``."""
        if isinstance(dtype, int):
            dtype = helper.tensor_dtype_to_np_dtype(dtype)
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def int64s(self, values: Sequence[int]) -> str:
        return self.constant(np.asarray(list(values), dtype=np.int64), np.int64, "ints")
