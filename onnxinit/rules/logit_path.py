"""The Q K^T product that a softmax's logits come from (through scalings, additive biases and
masks): what the rules that look past the logits read (value selection, the spread of a
row's logit variance across queries)."""

from __future__ import annotations

_LOGIT_PATH = ("Cast", "Identity", "Mul", "Div", "Add", "Sub", "Where")
WINDOWED = _LOGIT_PATH + ("Reshape",)


def qk_matmul(graph, name: str, depth: int = 0, passing=_LOGIT_PATH):
    """The MatMul of two activations (Q K^T) that logits ``name`` come from through scalings,
    additive biases and masks (``passing`` ops; ``WINDOWED``: also the Reshapes that split the
    windows from the batch around a shifted-window mask), else None."""
    nid = graph.producer.get(name)
    if nid is None or depth > 8:
        return None
    node = graph.node(nid)
    if node.op_type == "MatMul":
        return node if all(graph.is_signal(t) for t in node.input) else None
    if node.op_type not in passing:
        return None
    for t in (node.input[1:] if node.op_type == "Where" else node.input):
        if t and graph.is_signal(t) and (found := qk_matmul(graph, t, depth + 1, passing)) is not None:
            return found
    return None


__all__ = ["WINDOWED", "qk_matmul"]
