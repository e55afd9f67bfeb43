"""The token field of a Concat of per-step pieces of one sequence, each put through the same map:
an exporter's per-step copy of a layer. tf2onnx writes Keras 3's ``TimeDistributed(Dense)``
after a recurrent layer as, for every step, Slice -> Squeeze -> MatMul -> (Add) -> Unsqueeze,
and a Concat of the T results; an unrolled loop writes its steps likewise.

Piece i is ``y_i = f(X[idx_i])``: one step ``idx_i`` of a sequence X selected along one axis
(Slice, Gather or Split), then one chain ``f`` for every piece (the same op types, the same
constant operands by name, i.e. the same weights, the same attributes). X's steps carry a token
field along that axis (``moments.Tokens``: a recurrent layer's output, correlated across
steps); the pieces lose it (a Squeeze drops the step axis), so without this rule the Concat's
steps counted as independent and a mean over time read none of X's correlation (Keras' LSTM,
TimeDistributed(Dense(128)), GlobalAveragePooling1D: the mean over time 0.20x).

``f`` acts on each step alone, so the output's correlation across steps is X's, carried
through ``f`` as the field carries it through the same ops on a whole sequence (:mod:`.tokens`):

* maps over the features (MatMul or Gemm with constant weights, Add, Sub, Mul, Div by
  constants, layout ops) leave the correlation unchanged: ``Cov(W x_s, W x_t)_j = sum_i
  W_ij^2 nu_i rho[s, t]`` (the field's one correlation shared by the features);
* an element-wise function of Gaussian steps of correlation ``rho``: Mehler, ``Corr(f(z_s),
  f(z_t)) = sum_n a_n rho^n / sum_n a_n`` (:func:`.token_field.transfer`, ``a_n`` the
  features' mean squared Hermite coefficients at the pieces' input moments pooled over the
  steps).

The output's field is ``rho[idx, idx]`` (idx the pieces' steps in Concat order) as a
correlation beside the pieces' own per-step variances (:func:`.token_field.attach`). Not
modelled: pieces of several steps each (their own fields are stacked as independent blocks,
:mod:`.token_layout`), maps that differ from step to step (other weights: no field), and
correlation between features.
"""

from __future__ import annotations

import numpy as np

from .context import RuleContext, RuleError
from .elementwise import elementwise
from .shape import slice_params
from .token_field import attach, grid, mehler_weights, token_axes, transfer

MAX_CHAIN = 8  # nodes followed back from a Concat input to its step's selection
_LAYOUT = frozenset({"Squeeze", "Unsqueeze", "Reshape", "Flatten", "Identity", "Cast",
                     "Dropout"})
_BY_CONSTANT = frozenset({"Add", "Sub", "Mul", "Div"})
_SELECT = frozenset({"Slice", "Gather", "Split"})
_LINEAR = _LAYOUT | _BY_CONSTANT | {"MatMul", "Gemm"}


def entry(ctx: RuleContext, outputs: list) -> list:
    """``outputs`` with the field of a Concat of one map of the steps of one sequence (module
    docstring); unchanged where the Concat is not one."""
    if not outputs or outputs[0] is None:
        return outputs
    found = field(ctx)
    if found is None:
        return outputs
    axis, corr = found
    return [attach(outputs[0], ctx.out_shape(0), [axis], corr)] + list(outputs[1:])


def field(ctx: RuleContext) -> tuple[int, np.ndarray] | None:
    """(the Concat's axis, the correlation across its steps) or None where the Concat is not
    one map of the steps of one sequence."""
    try:
        return _field(ctx)
    except RuleError:  # a shape or constant the walk needs is unknown
        return None


def _field(ctx: RuleContext) -> tuple[int, np.ndarray] | None:
    graph, known = ctx.graph, ctx.known
    out_shape = graph.shape(ctx.node.output[0])
    if known is None or out_shape is None or len(ctx.node.input) < 2:
        return None
    axis = ctx.attr("axis") % len(out_shape)
    source = steps = signature = None
    chains = []
    for name in ctx.node.input:
        walked = _walk(ctx, name)
        shape = graph.shape(name)
        if walked is None or shape is None or len(shape) != len(out_shape) or shape[axis] != 1:
            return None
        tensor, step, sig, chain = walked
        if source is None:
            source, signature, steps = tensor, sig, []
        elif tensor != source or sig != signature:
            return None
        steps.append(step)
        chains.append(chain)
    x, shape = known.get(source), graph.shape(source)
    if x is None or x.tokens is None or shape is None:
        return None
    t = x.tokens
    if token_axes(t, len(shape)) != [signature[0][1] % len(shape)] or t.stride != 1 \
            or t.n != shape[signature[0][1] % len(shape)]:
        return None
    d = np.sqrt(np.maximum(np.diag(t.cov), 1e-300))
    corr = (t.cov / np.outer(d, d))[np.ix_(steps, steps)]
    for position, node_id in enumerate(chains[0]):
        if graph.node(node_id).op_type in _LINEAR:
            continue
        f = elementwise(graph.node(node_id), ctx)
        if f is None:
            return None
        corr = _mehler(ctx, f.fn, [c[position] for c in chains], corr)
        if corr is None:
            return None
    return axis, corr


def _walk(ctx: RuleContext, name: str):
    """(the sequence, the step selected, the chain's signature, the chain's node ids from the
    selection on) of the Concat input ``name``, or None."""
    graph = ctx.graph
    chain, signature, tensor = [], [], name
    for _ in range(MAX_CHAIN):
        node_id = graph.producer.get(tensor)
        if node_id is None:
            return None
        node = graph.node(node_id)
        if node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type in _SELECT:
            picked = _selected(ctx.for_node(node_id), tensor)
            if picked is None:
                return None
            axis, step = picked
            head = (node.op_type, axis)
            return node.input[0], step, (head, *signature[::-1]), chain[::-1]
        signals = [i for i in node.input if i and graph.is_signal(i)]
        if len(signals) != 1 or not _per_step(ctx.for_node(node_id), signals[0]):
            return None
        chain.append(node_id)
        signature.append((node.op_type, tuple(i if i != signals[0] else "" for i in node.input),
                          tuple(a.SerializeToString() for a in node.attribute)))
        tensor = signals[0]
    return None


def _selected(sub: RuleContext, tensor: str) -> tuple[int, int] | None:
    """(axis, the one index) a Slice, Gather or Split output ``tensor`` takes of its input."""
    node = sub.node
    if not node.input or not sub.graph.is_signal(node.input[0]):
        return None
    shape = sub.in_shape(0)
    rank = len(shape)
    if node.op_type == "Slice":
        picks = [(a, np.arange(shape[a])[slice(s, e, k)]) for a, s, e, k in slice_params(sub, rank)]
        picks = [(a, i) for a, i in picks if len(i) != shape[a]]
        if len(picks) != 1 or len(picks[0][1]) != 1:
            return None
        return picks[0][0], int(picks[0][1][0])
    axis = sub.attr("axis", 0) % rank
    if node.op_type == "Gather":
        index = sub.const(1)
        if index is None or np.size(index) != 1:
            return None
        return axis, int(np.ravel(index)[0]) % shape[axis]
    which = list(node.output).index(tensor)
    sizes = [sub.out_shape(i)[axis] for i in range(len(node.output))]
    if sizes[which] != 1:
        return None
    return axis, int(np.sum(sizes[:which]))


def _per_step(sub: RuleContext, signal: str) -> bool:
    """``sub``'s node maps one step alone: a layout op, a constant map of the features, or an
    element-wise function, its other operands constant."""
    node = sub.node
    op = node.op_type
    others = [i for i in node.input if i and i != signal]
    if not all(sub.graph.is_constant(i) for i in others):
        return False
    if op in _LAYOUT:
        return True
    if op in ("MatMul", "Gemm"):
        return node.input[0] == signal and not (op == "Gemm" and sub.attr("transA", 0))
    if op in _BY_CONSTANT:
        return op != "Div" or node.input[0] == signal
    return elementwise(node, sub) is not None


def _mehler(ctx: RuleContext, fn, node_ids: list[str], corr: np.ndarray) -> np.ndarray | None:
    """``corr`` through the element-wise ``fn`` applied at every step (the nodes
    ``node_ids``), its Hermite coefficients at their inputs' moments pooled over the steps."""
    graph, known = ctx.graph, ctx.known
    grids = []
    for node_id in node_ids:
        name = next(i for i in graph.node(node_id).input if i and graph.is_signal(i))
        m, shape = known.get(name), graph.shape(name)
        if m is None or shape is None:
            return None
        grids.append(grid(m, len(shape)))
    common = np.broadcast_shapes(*(g[0].shape for g in grids))
    means = np.stack([np.broadcast_to(g[0], common) for g in grids])
    vars_ = np.stack([np.broadcast_to(g[1], common) for g in grids])
    mean = means.mean(axis=0)
    var = vars_.mean(axis=0) + ((means - mean) ** 2).mean(axis=0)
    out = transfer(corr, mehler_weights(fn, mean.reshape(-1), var.reshape(-1)))
    d = np.sqrt(np.diag(out))
    if not np.all(np.isfinite(out)) or not np.all(d > 0):
        return None
    return out / np.outer(d, d)

