"""Whether a graph reads the correlation of a row's features (:mod:`.feature_pairs`): the
pairs are followed only where some node reads them."""

from __future__ import annotations

from weakref import WeakKeyDictionary

from .gram import gram_node

MEANS = frozenset(("ReduceMean", "ReduceSum", "GlobalAveragePool"))
ENERGIES = frozenset(("ReduceL2", "ReduceSumSquare"))  # over the last axis: read the pairs
_READERS: WeakKeyDictionary = WeakKeyDictionary()


def pairs_read(graph) -> bool:
    """Whether some node of ``graph`` takes a mean or sum of squares (``Pow``, ``x * x``) or a
    Gram matrix ``A A^T`` (:mod:`.gram`): the readers of the pairs; without one they are not
    followed (no cost)."""
    graph = getattr(graph, "root", graph)  # views of one model (autoinit: one per layer) share it
    found = _READERS.get(graph)
    if found is None:
        found = False
        for node_id in graph.order:
            node = graph.node(node_id)
            if node.op_type in ENERGIES or (node.op_type == "MatMul" and gram_node(graph, node)):
                found = True
                break
            if node.op_type in MEANS and node.input and (
                    node.op_type != "GlobalAveragePool" or len(graph.shape(node.input[0]) or ()) == 3):
                sq = graph.producer.get(node.input[0])
                sq = graph.node(sq) if sq else None
                if sq is not None and (sq.op_type == "Pow" or (
                        sq.op_type == "Mul" and sq.input[0] == sq.input[1])):
                    found = True
                    break
        _READERS[graph] = found
    return found


__all__ = ["ENERGIES", "MEANS", "pairs_read"]
