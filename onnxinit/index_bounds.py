"""Constant indices outside the tensor they index: a model that cannot run at its input shapes.

A Gather whose indices are constants (position ids computed from the input's length with
Shape, Range and Slice, as every text model's exporter writes them) and whose data has a static
shape reads, at these input shapes, a row that does not exist: onnxruntime stops on the node
("indices element out of data bounds"). Before this check the analysis went on, each rule that
runs a subgraph in onnxruntime failed on that Gather and sent its node to the fallback (75 s
for a 4-layer sample transformer given 1000 tokens against a 16-row position table), and the
predictions were of tensors that cannot exist. :func:`gather_out_of_range` finds the node
before any rule runs.
"""

from __future__ import annotations

import numpy as np

from .passes import MAX_FOLDED_ELEMENTS, is_static


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def gather_out_of_range(graph) -> str | None:
    """The first Gather of ``graph`` (a ModelGraph) whose constant indices fall outside
    ``[-n, n)`` on its data's static axis of size ``n``, said in words; else None."""
    for node in graph.model.graph.node:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        data, indices = node.input[:2]
        shape, index_shape = graph.shapes.get(data), graph.shapes.get(indices)
        if not (is_static(shape) and graph.is_constant(indices)):
            continue
        # (a Range's length computed from Shape may be left symbolic by inference)
        if is_static(index_shape) and int(np.prod(index_shape)) > MAX_FOLDED_ELEMENTS:
            continue
        axis = _axis(node)
        if not -len(shape) <= axis < len(shape):
            continue
        try:
            value = graph.value(indices)
        except Exception:  # noqa: BLE001 - an index that cannot be folded is not checked
            continue
        if value is None or value.size == 0 or value.dtype.kind not in "iu":
            continue
        size = int(shape[axis])
        low, high = int(value.min()), int(value.max())
        if low >= -size and high < size:
            continue
        bad = high if high >= size else low
        return (f"node {node.name or node.output[0]!r} (Gather) reads index {bad} of axis "
                f"{axis % len(shape)} of {data!r}, which has {size} entries")
    return None


__all__ = ["gather_out_of_range"]
