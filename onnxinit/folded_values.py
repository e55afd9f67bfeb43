"""The values of a graph's constant tensors, folded on first use (the constants half of
:class:`~onnxinit.graph.ModelGraph`).

A folded value is kept for the next use, unless it is large and far larger than the stored data
it is computed from: an index grid expanded from a few numbers (a ScatterND's indices, written
out as Range, Expand and Concat by the exporter: MViT-V2-S holds about 1 GB of them) is computed
again when asked, which costs about what keeping it saved, while a weight transposed for a
MatMul is kept. Within one request every value is computed once (a value that several of its
inputs read is not computed again)."""

from __future__ import annotations

import logging

import numpy as np
from onnx import TensorProto, helper

from .dtypes import INT_TYPES
from .initializers import is_external, tensor_array
from .passes import evaluate_node, is_static, shape_op_value
from .plan import changed_values

log = logging.getLogger("onnxinit")

# values computed for a view's changes are kept up to this size (larger ones: recomputed)
CACHED_CHANGE_ELEMENTS = 1 << 20
# folded values above this size are kept only if at most EXPANSION times the bytes of the
# stored data (initializers) they are computed from
KEPT_ELEMENTS = 1 << 16
EXPANSION = 8

_GATHERS = frozenset({"Gather", "GatherElements", "GatherND"})


class FoldedValues:
    """:meth:`value` and its folding (a mixin: it reads the graph's ``constants``,
    ``initializers``, ``producer``, ``node_by_id``, ``shapes``, ``dtypes``, ``model`` and the
    view state ``_root``, ``_values``, ``_stale``, ``_changes``; it keeps ``_sources``, the
    stored bytes a large value is computed from, ``_folded``, while loading, every value it
    folded (its shape when not kept) in the order folded, and ``_request``, the values of the request in
    progress not kept)."""

    _request: dict | None = None

    def value(self, tensor: str) -> np.ndarray | None:
        """The value of a constant tensor (folded on first use), or None for a signal."""
        if tensor not in self.constants:
            return None
        cached = self._values.get(tensor)
        if cached is not None:
            return cached
        change = self._changes.get(tensor)
        if change is not None:  # computed from the root's value on use (see with_changes)
            value = changed_values(tensor, self._root.value(tensor), change)
            if value.size <= CACHED_CHANGE_ELEMENTS:
                self._values[tensor] = value
            return value
        if self._root is not None and tensor not in self._stale:
            return self._root.value(tensor)
        if tensor in self.initializers:
            init = self.initializers[tensor]
            value = tensor_array(init)
            if not is_external(init):  # a memory map is not cached: its pages go when dropped
                self._values[tensor] = value
            return value
        outer = self._request is None
        if outer:
            self._request = {}
        try:
            value = self._request.get(tensor)
            if value is None:
                value = self._fold(self.producer[tensor], tensor)
        finally:
            if outer:
                self._request = None
        return value

    def _source(self, tensor: str) -> int:
        """The bytes of stored data (initializers, values given) ``tensor``'s value is
        computed from, found by walking back through its producers (memoised)."""
        found = self._sources.get(tensor)
        if found is not None:
            return found
        if tensor not in self.constants:  # (a uniform gather's indices)
            found = 0
        elif tensor in self.initializers:
            found = int(tensor_array(self.initializers[tensor]).nbytes)
        elif tensor not in self.producer:
            value = self._values.get(tensor)
            found = 0 if value is None else int(np.asarray(value).nbytes)
        else:
            node = self.node_by_id[self.producer[tensor]]
            found = 0 if node.op_type in ("Shape", "Size") else sum(
                self._source(n) for n in node.input if n)
        self._sources[tensor] = found
        return found

    def _keep(self, name: str, value: np.ndarray) -> None:
        """Record a folded value: kept, or held for this request only (module docstring)."""
        if value is None:  # a Shape of a tensor whose shape is not static: not kept
            return
        value = np.asarray(value)
        if value.size <= KEPT_ELEMENTS or value.nbytes <= EXPANSION * self._source(name):
            self._values[name] = value
        else:
            self._request[name] = value
        if self._folded is not None:  # while loading
            self._folded[name] = value if name in self._values else value.shape

    def _uniform_gather(self, node) -> np.ndarray | None:
        """A Gather/GatherElements/GatherND from a constant integer tensor whose entries are
        all equal, with a static output shape, outputs that value everywhere whatever its
        indices: RoBERTa-style token types, a zero buffer gathered by position ids computed from
        the tokens, are one row of the embedding for every token, not a row drawn per token.
        Integer data only: a float table may be a parameter that a method changes."""
        if (node.op_type not in _GATHERS or node.domain not in ("", "ai.onnx")
                or len(node.input) < 2 or node.input[0] not in self.constants
                or self.dtypes.get(node.input[0]) not in INT_TYPES
                or not is_static(self.shapes.get(node.output[0]))):
            return None
        try:
            data = self.value(node.input[0])
        except Exception as exc:  # noqa: BLE001 - a constant that cannot be folded stays unknown
            log.debug("could not fold %s: %s", node.input[0], exc)
            return None
        if data is None or data.size == 0 or data.flat[0] != data.flat[-1] or not np.all(
                data == data.flat[0]):
            return None
        return data.flat[0]

    def _fold(self, node_id: str, tensor: str) -> np.ndarray:
        node = self.node_by_id[node_id]
        if node.op_type == "Dropout":  # of a constant: the identity (structure._classify_tensors)
            value = self.value(node.input[0])
            self._keep(tensor, value)
            return value
        if node.op_type in ("Shape", "Size"):
            value = shape_op_value(node, self.shapes[node.input[0]])
            self._keep(tensor, value)
            return value
        if node.op_type == "CastLike" and not self.is_constant(node.input[1]):
            value = np.asarray(self.value(node.input[0])).astype(
                helper.tensor_dtype_to_np_dtype(self.dtypes.get(node.input[1], TensorProto.FLOAT)))
            self._keep(tensor, value)
            return value
        if node.input[1:] and not self.is_constant(node.input[1]):
            fill = self._uniform_gather(node)
            if fill is not None:  # constant although its indices are not
                value = np.full(self.shapes[tensor], fill, dtype=np.asarray(fill).dtype)
                self._keep(tensor, value)
                return value
        outs = evaluate_node(
            node, {n: self.value(n) for n in node.input if n},
            opset_import=self.model.opset_import, ir_version=self.model.ir_version,
            functions=self.model.functions, types=self.dtypes,
        )
        found = None
        for name, out in zip([o for o in node.output if o], outs):
            self._keep(name, out)
            if name == tensor:
                found = out
        return found


__all__ = ["CACHED_CHANGE_ELEMENTS", "EXPANSION", "FoldedValues", "KEPT_ELEMENTS"]
