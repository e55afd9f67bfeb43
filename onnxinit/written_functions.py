"""Element-wise functions written out as ops, for ``check``'s signal paths.

Exporters spell some activations as several nodes: the tanh GELU of ``tf.nn.gelu(approximate=
True)`` or of a decomposed ``nn.GELU(approximate="tanh")`` is
``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``. The analysis integrates such a node over
``x`` (:mod:`onnxinit.rules.fusion`: a binary node whose two operands are both element-wise
functions of one tensor T). The tensors between T and that node (``x^3``: 15 Var(x)^3 for a
Gaussian ``x``, 405 at Var(x) = 3) are intermediates of one function of T, not a signal: the
function's output carries it, and is judged where it stands."""

from __future__ import annotations

from .graph import ModelGraph
from .rules.context import RuleContext
from .rules.fusion import common_ancestor
from .signal_graph import SignalGraph


def function_interior(graph: ModelGraph, signal: SignalGraph,
                      node_id: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """For a node whose two signal operands are element-wise functions of one tensor T:
    [(operand, T, the nodes between T and the operand)] for each operand computed by nodes
    (``x`` itself has none); [] for any other node."""
    found = common_ancestor(RuleContext(graph.node(node_id), node_id, graph))
    if found is None:
        return []
    ancestor = found[0]
    out = []
    for operand in dict.fromkeys(graph.node(node_id).input):
        if operand and operand != ancestor and graph.is_signal(operand):
            nodes = signal.exclusive_ancestors(operand, ancestor)
            if nodes:
                out.append((operand, ancestor, tuple(nodes)))
    return out
