"""A sum of a tensor B and a tensor A that still holds a copy of B: their covariance.

The binary rules add two signals as independent. That is right for a residual sum
``x + f(x)``, whose branch reaches x only through random weights (the covariance of a random
projection's output with its own input averages out over the features), but not where one
operand reaches the other through ops that keep B's values as they are: layout ops, pools,
normalisations, a scale by a constant, and the residual side of an Add. Funnel's decoder adds
the encoder's last block, upsampled by repeating each pooled token, to the first block's output
B; that last block is ``LN(pool(B) + attention)`` and so on, so each upsampled token keeps about
half of the mean of two of B's tokens, one of them its own: the two operands correlate 0.68
(measured), the sum was predicted 0.60x of its variance and the decoder's 40 tensors after it
0.2-0.65x.

Where operand A reaches operand B through such ops only (``IDENTITY_OPS``, at most ``WALK``
tensors back), the covariance is measured: the sub-graph of the nodes between B and A (every
node that depends on B and that A depends on) is run in onnxruntime on ``RUNS`` draws of B
from its moments (its described law where it has one, else a Gaussian), the other tensors it
reads drawn from theirs (independent of B), Dropout the identity as in the analysis, and

    Var(A + B) = Var A + Var B + 2 Cov(A, B)      (Sub: - 2 Cov)

per element, the covariance pooled over the batch and the last axis (the features: 64 draws
per element alone read it within 12%, pooled over 64 features within 2%) and kept along the
others (the tokens: a repeated token keeps its own source, its neighbour the other one). Not
modelled: the token covariance of the sum (its repeated tokens are near copies of each other),
and a covariance through random weights (the branch of a residual sum: no identity path, no
term).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..moments import Moments, compressed
from ..passes import RANDOM_OPS
from ..runtime import make_session
from ..strict import fall_back
from .context import RuleContext
from .token_field import grid

# ops through which an operand keeps the other's values (scaled, moved, averaged)
IDENTITY_OPS = {"Add", "Sub", "LayerNormalization", "Dropout", "Identity", "Cast", "Reshape",
                "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Split", "Concat",
                "Tile", "Expand", "Pad", "Gather", "AveragePool", "GlobalAveragePool",
                "ReduceMean", "Mul", "Div"}
WALK = 256  # tensors visited back from an operand, at most
REGION = 2000  # nodes of the sub-graph between the operands, at most
RUNS = 8  # runs of the sub-graph (each a batch of the graph's own size)
_MAX_ELEMENTS = 1 << 20  # elements of one operand per run, at most


def _keeps(graph, node, name: str) -> bool:
    """Whether ``node`` passes its input ``name`` on unweighted: an identity op, and for Mul and
    Div a constant other operand (a scale), for Gather and Pad a data input."""
    if node.op_type not in IDENTITY_OPS:
        return False
    if node.op_type in ("Mul", "Div"):
        return all(graph.is_constant(i) for i in node.input if i and i != name)
    if node.op_type in ("Gather", "Pad", "Slice", "Tile", "Expand", "Reshape"):
        return node.input[0] == name
    return True


def _reaches(graph, start: str, target: str) -> bool:
    """``start`` holds ``target``'s values through :func:`_keeps` ops alone."""
    pending, seen = [start], {start}
    while pending and len(seen) <= WALK:
        name = pending.pop()
        if name == target:
            return True
        node_id = graph.producer.get(name)
        if node_id is None:
            continue
        node = graph.node(node_id)
        for i in node.input:
            if i and i not in seen and graph.is_signal(i) and _keeps(graph, node, i):
                seen.add(i)
                pending.append(i)
    return False


def _region(graph, source: str, end: str) -> list[str] | None:
    """The node ids, in order, that depend on ``source`` and that ``end`` depends on."""
    position = {n: i for i, n in enumerate(graph.order)}
    start = position.get(graph.producer.get(source, ""), -1)
    needed, pending = set(), [end]
    while pending:
        node_id = graph.producer.get(pending.pop())
        if node_id is None or node_id in needed or position[node_id] <= start:
            continue
        needed.add(node_id)
        if len(needed) > REGION:
            return None
        pending.extend(i for i in graph.node(node_id).input if i and not graph.is_constant(i))
    depends, region = {source}, []
    for node_id in graph.order:
        if node_id in needed and any(i in depends for i in graph.node(node_id).input):
            region.append(node_id)
            depends.update(o for o in graph.node(node_id).output if o)
    return region if end in depends else None


def _draw(m: Moments, shape, rng) -> np.ndarray:
    m = m.expand_rank(len(shape))
    if m.source is not None:
        return m.source.sample(rng, shape)
    return rng.standard_normal(shape) * np.sqrt(m.var) + m.mean


def covariance(ctx: RuleContext, a: str, b: str) -> np.ndarray | None:
    """``Cov(A, B)`` per element of A (shape broadcastable to it: pooled over the batch and the
    last axis), measured on the sub-graph from B to A; None where it cannot be run."""
    graph, known = ctx.graph, ctx.known
    shape_a, shape_b = graph.shape(a), graph.shape(b)
    if known is None or b not in known or shape_a != shape_b or not shape_a or any(
            not isinstance(d, (int, np.integer)) or d <= 0 for d in shape_a):
        return None
    if int(np.prod(shape_a)) > _MAX_ELEMENTS or ctx.settings.dropout:
        return None
    region = _region(graph, b, a)
    if not region:
        return None
    nodes, produced, outside = [], {b}, []
    for node_id in region:
        node = graph.node(node_id)
        if node.op_type == "Dropout":  # the identity, as the analysis takes it
            node = helper.make_node("Identity", [node.input[0]], [node.output[0]])
        elif node.op_type in RANDOM_OPS or node.domain not in ("", "ai.onnx"):
            return None
        nodes.append(node)
        produced.update(o for o in node.output if o)
        outside.extend(i for i in node.input if i and i not in produced)
    rng = ctx.rng()
    signals, initializers = [(b, known[b])], []
    for name in dict.fromkeys(outside):
        if name in produced:
            continue
        if graph.is_constant(name):
            initializers.append(numpy_helper.from_array(np.asarray(graph.value(name)), name))
        elif name in known and graph.shape(name) is not None:
            signals.append((name, known[name]))
        else:
            return None
    inputs = [helper.make_tensor_value_info(n, graph.dtypes.get(n, 1), list(graph.shape(n)))
              for n, _ in signals]
    output = helper.make_tensor_value_info(a, graph.dtypes.get(a, 1), None)
    model = helper.make_model(helper.make_graph(nodes, "skip", inputs, [output], initializers),
                              opset_imports=list(graph.model.opset_import),
                              ir_version=min(graph.model.ir_version, 10))
    model.functions.extend(graph.model.functions)
    try:
        session = make_session(model, device="cpu")
        drawn_a, drawn_b = [], []
        for _ in range(RUNS):
            feeds = {n: np.asarray(_draw(m, graph.shape(n), rng), dtype=onnx.helper
                                   .tensor_dtype_to_np_dtype(graph.dtypes.get(n, 1)))
                     for n, m in signals}
            drawn_a.append(np.asarray(session.run(None, feeds)[0], np.float64))
            drawn_b.append(np.asarray(feeds[b], np.float64))
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own types: no term
        fall_back(exc)  # the sub-graph of a model that runs should run: strict mode raises
        return None
    xa, xb = np.concatenate(drawn_a), np.concatenate(drawn_b)
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(xb))):
        return None
    product = (xa - xa.mean(axis=0)) * (xb - xb.mean(axis=0))
    return product.mean(axis=(0, -1), keepdims=True) * xa.shape[0] / (xa.shape[0] - 1)


def skip_sum(inputs, ctx: RuleContext, rank: int) -> Moments | None:
    """Add or Sub of two signals of one shape, one holding the other's values (module
    docstring): their sum's moments with the measured covariance; None otherwise."""
    node, graph = ctx.node, ctx.graph
    if node.op_type not in ("Add", "Sub") or len(inputs) != 2 or any(m is None for m in inputs):
        return None
    names = list(node.input[:2])
    if names[0] == names[1]:
        return None
    for first, second in ((0, 1), (1, 0)):
        if not _reaches(graph, names[first], names[second]):
            continue
        cov = covariance(ctx, names[first], names[second])
        if cov is None:
            return None
        (ma, va), (mb, vb) = (grid(m, rank) for m in inputs)
        sign = 1.0 if node.op_type == "Add" else -1.0
        mean = ma + sign * mb
        var = np.maximum(va + vb + 2.0 * sign * cov, 0.0)
        mean, var = np.broadcast_arrays(mean, var)
        return compressed(np.array(mean), np.array(var))
    return None


__all__ = ["covariance", "skip_sum"]
