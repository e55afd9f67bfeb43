"""The tensor a shift stands for: ``root(t)`` follows ``t`` back through value-preserving ops
(Identity, Reshape, Squeeze, Unsqueeze, Flatten) and TensorFlow's finite guard ``where(
is_finite(m), m, 0)`` (tf2onnx writes it as ``Cast(finite) * m + c * Cast(not finite)``, or a
``Where``), which is ``m`` on finite inputs. Read by :mod:`.shifted_logsumexp` and
:mod:`.max_shifted`, which recognise a row shifted by its maximum behind such a guard."""

from __future__ import annotations

_PASS = frozenset({"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten"})
_BOOLEAN = frozenset({"IsNaN", "IsInf", "Or", "And", "Not", "Xor", "Equal", "Less", "Greater"})


def producer(graph, tensor: str):
    node_id = graph.producer.get(tensor)
    return (None, None) if node_id is None else (node_id, graph.node(node_id))


def _guard_of(graph, cast: str) -> bool:
    """``cast`` is a Cast of a boolean computed by IsNaN/IsInf/Not/Or ... ops."""
    _, node = producer(graph, cast)
    if node is None or node.op_type != "Cast":
        return False
    _, inner = producer(graph, node.input[0])
    return inner is not None and inner.op_type in _BOOLEAN


def _guarded(graph, node) -> str | None:
    """The ``m`` of ``Cast(b1) * m + c * Cast(b2)`` (a finite guard), else None."""
    if node.op_type != "Add" or len(node.input) != 2:
        return None
    found = None
    for name in node.input:
        _, mul = producer(graph, name)
        if mul is None or mul.op_type != "Mul" or len(mul.input) != 2:
            return None
        a, b = mul.input
        if _guard_of(graph, a) or _guard_of(graph, b):
            other = b if _guard_of(graph, a) else a
            if graph.is_constant(other):
                continue  # c * Cast(not finite): the fallback value
            if found is not None:
                return None
            found = other
        else:
            return None
    return found


def root(graph, tensor: str) -> str:
    """``tensor`` followed back through value-preserving ops and finite guards."""
    for _ in range(16):
        _, node = producer(graph, tensor)
        if node is None:
            return tensor
        if node.op_type in _PASS:
            tensor = node.input[0]
        elif node.op_type == "Where" and len(node.input) == 3 and (
                graph.is_constant(node.input[2]) and not graph.is_constant(node.input[1])):
            tensor = node.input[1]
        elif (m := _guarded(graph, node)) is not None:
            tensor = m
        else:
            return tensor
    return tensor


__all__ = ["producer", "root"]
