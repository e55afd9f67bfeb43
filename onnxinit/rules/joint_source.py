"""The one tensor that a node's dependent signal inputs are all computed from, for the fallback
(:mod:`.empirical`) to run them from its samples instead of drawing each from its moments.

NLLB-MoE's router normalises its top-1 gate by the sum of its capacity-limited gates,
``g1 / max(g1 + g2, eps)``: both operands are computed from the router's logits (a softmax,
two argmaxes, one-hot masks, cumulative counts against the capacity). Drawn independently from
Gaussians of their moments, the denominator reaches ``eps`` while the numerator does not, and
the ratio read 1e12x its measured variance. Every path into both operands passes through the
logits, so running the nodes between from samples of the logits gives the ratio's law.

:func:`joint_source` walks up from the operands, always expanding the latest-computed tensor
of the frontier (a cut of the graph between the operands and their ancestors) into its
producer's inputs, until the cut is one signal tensor (constants and integer graph inputs,
which the fallback feeds as the analysis does, aside): the nearest tensor that every path into
the operands passes through. Not modelled: a source further than ``_MAX_JOINT`` nodes up, a
path through a random op or a subgraph (None: the operands are drawn as before).
"""

from __future__ import annotations

from ..passes import RANDOM_OPS

_MAX_JOINT = 64  # nodes between the source and the operands, at most


def joint_source(graph, names: list[str]) -> tuple[str, list[str]] | None:
    """(the source tensor, the node ids between it and ``names``) for tensors ``names``
    (signals, and integer tensors computed from signals) that are all computed from one signal
    tensor within ``_MAX_JOINT`` nodes; None otherwise."""
    if not names:
        return None
    order = graph.position
    frontier = set(names)
    between: list[str] = []
    while True:
        rest = [n for n in frontier if graph.is_float(n) or n not in graph.input_names]
        if len(rest) == 1 and graph.is_signal(rest[0]):
            return rest[0], between
        produced = [n for n in rest if graph.producer.get(n) is not None]
        if len(between) >= _MAX_JOINT or not produced:
            return None
        src = graph.producer[max(produced, key=lambda n: order[graph.producer[n]])]
        node = graph.node(src)
        if node.op_type in RANDOM_OPS or graph.implicit_inputs_of(src):
            return None
        between.append(src)
        frontier -= set(node.output)
        frontier |= {n for n in node.input if n and not graph.is_constant(n)}


_SHAPES = ("Shape", "Size")
_LAYOUT = ("Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Identity")


def through_mask(graph, names) -> bool:
    """Whether one of the signal tensors ``names`` is a mask (a float Cast of a non-float
    tensor, through layout ops) and all are computed from one signal through a mask of its
    values (:func:`masked_source`), so that taking them as independent misses how the mask
    selects the values (a router's top-1 gate times its top-1 mask: 0.52x as independent
    factors)."""
    names = [n for n in names if n]
    return any(_indicator(graph, n) for n in names) and masked_source(graph, names) is not None


def masked_source(graph, names: list[str]) -> tuple[str, list[str]] | None:
    """:func:`joint_source` where a node between maps a signal to a non-float tensor (an
    argmax, a one-hot of it, a comparison: a mask of the values; not a Shape), else None. Only
    such paths are run from the source: a dependence through float nodes alone (``h / rms(h)``)
    is left to the rules and to the fallback's draws as before (the fields they carry across
    features would be lost to element-wise draws of the source)."""
    found = joint_source(graph, names)
    if found is None or not any(
            graph.node(n).op_type not in _SHAPES
            and any(o and not graph.is_float(o) for o in graph.node(n).output)
            and any(graph.is_signal(i) for i in graph.node(n).input) for n in found[1]):
        return None
    return found


def _indicator(graph, name: str) -> bool:
    """``name`` is a float Cast of a non-float tensor, through at most 4 layout ops."""
    for _ in range(5):
        src = graph.producer.get(name)
        if src is None:
            return False
        node = graph.node(src)
        if node.op_type == "Cast" and not graph.is_float(node.input[0]):
            return True
        if node.op_type not in _LAYOUT + ("Cast",):
            return False
        name = node.input[0]
    return False
