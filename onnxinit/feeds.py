"""Seeded synthetic inputs for runs of a model, from the shapes and types the graph resolved.

Float inputs are drawn N(mean, var) (default N(0, 1)); integer inputs that index an embedding
table (``Gather`` data) are drawn uniformly in [0, vocab); masks (boolean, or an integer input
named like ``*mask*``) are all ones; other integer inputs are zeros.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from .structure import GraphStructure


# integer ops an index passes through on its way to a table: layout (XLNet transposes its ids
# to time-first), and the arithmetic of Keras 3's Embedding, which maps a negative index i to
# i + rows (Less, Where, Add, Mul)
_INDEX_PATH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Transpose",
               "Slice", "Expand", "Tile", "Concat", "Split", "Add", "Sub", "Mul", "Where", "Max",
               "Min", "Mod", "Clip", "Abs", "Neg"}


def vocab_size(graph: GraphStructure, input_name: str) -> int | None:
    """Rows of the embedding table an integer input indexes (through Cast/Reshape and integer
    arithmetic), if any."""
    frontier, seen = [input_name], set()
    while frontier:
        tensor = frontier.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        for node_id, index in graph.consumers.get(tensor, []):
            node = graph.node(node_id)
            if node.op_type == "Gather" and index == 1 and graph.is_constant(node.input[0]):
                shape = graph.shape(node.input[0])
                if shape:
                    return shape[0]
            if node.op_type in _INDEX_PATH:
                frontier.extend(o for o in node.output if o and not graph.is_float(o))
    return None


def synthetic_feeds(
    graph: GraphStructure,
    seed: int = 0,
    stats: Mapping[str, tuple[float, float]] | None = None,
    *,
    rng: np.random.Generator | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, np.ndarray]:
    """One seeded batch for every graph input, shaped as the graph resolved them (or as
    ``shapes`` says); ``rng`` replaces the generator seeded with ``seed``."""
    rng = rng if rng is not None else np.random.default_rng(seed)
    stats = stats or {}
    feeds = {}
    for name in graph.input_names:
        shape = (shapes or graph.input_shapes)[name]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(graph.dtypes.get(name, 1))
        if np.issubdtype(dtype, np.floating):
            mean, var = stats.get(name, (0.0, 1.0))
            feeds[name] = np.asarray(rng.standard_normal(shape) * np.sqrt(var) + mean, dtype)
        elif (vocab := vocab_size(graph, name)) is not None:
            feeds[name] = np.asarray(rng.integers(0, vocab, size=shape), dtype)
        elif dtype == np.bool_ or "mask" in name.lower():
            feeds[name] = np.ones(shape, dtype=dtype)
        else:
            feeds[name] = np.zeros(shape, dtype=dtype)
    return feeds
