"""Whether a graph reads the correlation of a row's features (:mod:`.feature_pairs`): the
pairs are followed only where some node reads them."""

from __future__ import annotations

from weakref import WeakKeyDictionary

from .gram import gram_node
from .reduce_axes import node_axes

MEANS = frozenset(("ReduceMean", "ReduceSum", "GlobalAveragePool"))
ENERGIES = frozenset(("ReduceL2", "ReduceSumSquare"))  # over the last axis: read the pairs
_READERS: WeakKeyDictionary = WeakKeyDictionary()


def pairs_read(graph) -> bool:
    """Whether some node of ``graph`` takes a mean or sum of squares (``Pow``, ``x * x``), a
    mean or sum over the last axis alone (a row mean: ``Var = 1^T C 1 / D^2`` reads the pairs'
    ``signed``, exact for a dense layer's rows, ``u^T C_x u`` with ``u = W 1``), or a Gram
    matrix ``A A^T`` (:mod:`.gram`): the readers of the pairs; without one they are not
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
            if node.op_type in MEANS and _row_reduction(graph, node):
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


def _row_reduction(graph, node) -> bool:
    """A ReduceMean/ReduceSum over its input's last axis (size > 1) alone."""
    if node.op_type == "GlobalAveragePool" or not node.input:
        return False
    shape = graph.shape(node.input[0])
    if not shape or len(shape) < 2 or not isinstance(shape[-1], int) or shape[-1] <= 1:
        return False
    return node_axes(node, graph, len(shape)) == (len(shape) - 1,)


__all__ = ["ENERGIES", "MEANS", "pairs_read"]
