"""The Q K^T product that a softmax's logits come from (through scalings, additive biases and
masks): what the rules that look past the logits read (value selection, the spread of a
row's logit variance across queries)."""

from __future__ import annotations

_LOGIT_PATH = ("Cast", "Identity", "Mul", "Div", "Add", "Sub", "Where")
WINDOWED = _LOGIT_PATH + ("Reshape",)
_REGROUPING = ("Reshape", "Squeeze", "Unsqueeze")
# between a Softmax and the probabilities a MatMul reads (attention dropout, head layouts)
_TO_PROBABILITIES = ("Identity", "Dropout", "Cast", "Reshape", "Transpose", "Squeeze",
                     "Unsqueeze")


def softmax_behind(graph, name: str):
    """The Softmax node whose output ``name`` is, through layout ops and Dropout; else None."""
    for _ in range(8):
        node_id = graph.producer.get(name)
        if node_id is None:
            return None
        node = graph.node(node_id)
        if node.op_type == "Softmax":
            return node
        if node.op_type not in _TO_PROBABILITIES:
            return None
        name = node.input[0]
    return None


def keeps_token_axes(graph, node) -> bool:
    """``node`` is a Reshape, Squeeze or Unsqueeze that keeps the last two axes of its input
    (the queries and the keys of attention logits or probabilities), axes of size 1 aside: it
    only merges, splits or adds leading axes (tf2onnx writes Keras' einsum attention so: ``[B
    H, T, T] -> [B, H, T, T, 1]``, Squeeze; ``[B, H, T, T] -> [B, H, T, 1, T] -> [B H, T,
    T]``). In row-major order each (query, key) element stays in place."""
    if node.op_type not in _REGROUPING:
        return False
    shapes = [graph.shape(node.input[0]), graph.shape(node.output[0])]
    if any(not s or None in s for s in shapes):
        return False
    a, b = (tuple(d for d in s if d != 1) for s in shapes)
    return len(a) >= 2 and len(b) >= 2 and a[-2:] == b[-2:]


def qk_matmul(graph, name: str, depth: int = 0, passing=_LOGIT_PATH, regroup: bool = True):
    """The MatMul of two activations (Q K^T) that logits ``name`` come from through scalings,
    additive biases and masks (``passing`` ops; ``WINDOWED``: also the Reshapes that split the
    windows from the batch around a shifted-window mask; ``regroup``: and the reshapes that
    keep the query and key axes, :func:`keeps_token_axes`), else None."""
    nid = graph.producer.get(name)
    if nid is None or depth > 8:
        return None
    node = graph.node(nid)
    if node.op_type == "MatMul":
        return node if all(graph.is_signal(t) for t in node.input) else None
    if node.op_type not in passing and not (regroup and keeps_token_axes(graph, node)):
        return None
    for t in (node.input[1:] if node.op_type == "Where" else node.input):
        if t and graph.is_signal(t) and (
                found := qk_matmul(graph, t, depth + 1, passing, regroup)) is not None:
            return found
    return None


__all__ = ["WINDOWED", "keeps_token_axes", "qk_matmul", "softmax_behind"]
