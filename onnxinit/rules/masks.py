"""Attention masks: the conditions and additive offsets that exporters write before a Softmax.

Exporters write a mask in many ways: ``Add(logits, M)`` with M holding 0 and ``-inf``,
``finfo.min`` or -100 (shifted windows), ``Where(cond, logits, -inf)``, ``Where(cond, 0, -inf)``
then Add, ``(1 - mask) * finfo.min`` then Add, with ``cond`` computed by Range/Less/Trilu/Equal
subgraphs that constant folding resolves, or from an ``attention_mask`` input. The arithmetic
rules treat them exactly: an element whose additive offset is -inf is *masked* (mean -inf,
variance 0, see moments.py), finite offsets shift the element's mean, and the statistics of a
tensor that reaches a Softmax keep one value per element of the offset (never folded into a
variance: a -100 or ``finfo.min`` entry is a position the Softmax gives probability 0, not
noise). Softmax then handles each row (softmax.py).

A tensor computed only from constants and integer or boolean graph inputs that are not token
ids (an ``attention_mask``: all ones, no padding, as in the synthetic inputs ``--measure``
feeds) is known exactly: :func:`derived_moments` gives it variance 0 and its value per element,
so ``(1 - mask) * finfo.min`` or a Where condition built from the mask reaches the arithmetic
rules as the constant it is. One computed from the token ids (``ids != pad``) is random: its
law is sampled over draws of the ids (id_masks.py). ``IsNaN``/``IsInf`` of a signal is known from its predicted moments
(finite predictions: all False; masked elements: IsInf True) when the node also reads that
signal (``Where(IsNaN(p), 0, p)``, the guard exporters put after a softmax).
"""

from __future__ import annotations

import weakref

import numpy as np
from onnx import TensorProto

from ..feeds import synthetic_feeds
from ..moments import Moments, Rows, compressed
from .context import RuleContext, RuleError
from .exact_values import exact_tensor
from .upstream_nodes import subgraph_session, upstream
from .grids import fold, varies, varying_axes
from .id_masks import sampled_moments
from .layout import reshape_is_exact
from .mixture import lift

OFFSET_CAP = 1 << 21  # elements of a logit-offset grid kept per element (before folding)
TILED_CAP = 1 << 16  # elements of a reshape into a Softmax tiled over the batch (else Rows)
_THROUGH = {"Reshape", "Transpose", "Add", "Sub", "Where", "Cast", "Identity", "Dropout", "Mul",
            "Div", "Unsqueeze", "Squeeze", "Expand", "Slice", "Concat"}
_DEPTH = 6
_DERIVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> {tensor: value}


def feeds_softmax(ctx: RuleContext) -> bool:
    """True when the node's first output reaches a Softmax/LogSoftmax through layout ops and
    element-wise arithmetic (so its per-element offsets must not be folded)."""
    return softmax_reached(ctx) is not None


def softmax_reached(ctx: RuleContext):
    """The first Softmax/LogSoftmax node that the node's outputs reach as
    :func:`feeds_softmax` walks, else None."""
    graph = ctx.graph
    frontier = [(o, 0) for o in ctx.node.output if o]
    seen = set()
    while frontier:
        tensor, depth = frontier.pop()
        if tensor in seen or depth > _DEPTH:
            continue
        seen.add(tensor)
        for node_id, _ in graph.consumers.get(tensor, []):
            node = graph.node(node_id)
            if node.op_type in ("Softmax", "LogSoftmax"):
                return node
            if node.op_type in _THROUGH:
                frontier.extend((o, depth + 1) for o in node.output if o)
    return None


def keep_rows(x: Moments, in_shape, out_shape, out: Moments, ctx: RuleContext) -> Moments:
    """A reshape into a Softmax that cannot keep x's statistics grid (it would tile it over the
    batch, or pool it): tiled over the batch when the tensor has at most ``TILED_CAP``
    elements, else ``out`` pooled along the last axis, with x's rows as ``Moments.rows``
    (Swin: windows masked differently, merged with the batch before the softmax)."""
    rank = len(in_shape)
    if in_shape[-1] != out_shape[-1] or x.rank == 0:
        return out
    mean, var = (a.reshape((1,) * (rank - a.ndim) + a.shape)
                 for a in np.broadcast_arrays(x.mean, x.var))
    kept = np.broadcast_shapes(np.shape(out.mean), np.shape(out.var))
    if mean.shape[-1] == 1 or mean.size == 1 or int(np.prod(kept)) == mean.size \
            or reshape_is_exact(x, in_shape, out_shape):
        return out
    if not feeds_softmax(ctx):
        return out
    if 0 < int(np.prod(in_shape)) <= TILED_CAP and all(int(d) > 0 for d in in_shape):
        # small enough to tile over the batch: every row in its place (a window's P V keeps
        # its own variance, attention.py)
        tiled = (np.broadcast_to(a, tuple(in_shape)).reshape(tuple(out_shape)) for a in (mean, var))
        return compressed(*tiled)
    n = in_shape[-1]
    rows_m = np.broadcast_to(mean, mean.shape[:-1] + (n,)).reshape(-1, n)
    rows_v = np.broadcast_to(var, mean.shape[:-1] + (n,)).reshape(-1, n)
    weight = np.full(rows_m.shape[0], 1.0 / rows_m.shape[0])
    masked = np.isneginf(rows_m)
    count = np.maximum((~masked).sum(axis=0), 1)
    m = np.where(masked, 0.0, rows_m).sum(axis=0) / count
    v = np.where(masked, 0.0, rows_v + (rows_m - m) ** 2).sum(axis=0) / count
    m = np.where(masked.all(axis=0), -np.inf, m)
    v = np.where(masked.all(axis=0), 0.0, v)
    pooled = Moments.along(m, v, len(out_shape) - 1, len(out_shape))
    return Moments(pooled.mean, pooled.var, rows=Rows(rows_m, rows_v, weight))


def has_masked(value: np.ndarray | None) -> bool:
    """True for a constant holding -inf (a mask written with -inf)."""
    return value is not None and np.issubdtype(np.asarray(value).dtype, np.floating) and bool(
        np.isneginf(value).any())


def condition(ctx: RuleContext, index: int, inputs) -> np.ndarray | None:
    """The boolean value of input ``index`` (a Where condition): a constant; IsNaN/IsInf of a
    signal that is also an input of this node (``Where(IsNaN(p), 0, p)``: from its predicted
    moments in ``inputs``); or computed from integer or boolean graph inputs on the synthetic
    inputs, or from signals of variance 0 (exact_values.py). None when it depends on a
    signal otherwise."""
    value = ctx.const(index)
    if value is not None:
        return np.asarray(value, dtype=bool)
    name = ctx.node.input[index]
    graph = ctx.graph
    producer = graph.producer.get(name)
    if producer is not None and graph.node(producer).op_type in ("IsNaN", "IsInf"):
        node = graph.node(producer)
        operand = [i for i, n in enumerate(ctx.node.input) if n == node.input[0]]
        m = inputs[operand[0]] if operand else None
        if m is None:
            return None
        mean = np.broadcast_to(m.mean, np.broadcast_shapes(m.mean.shape, m.var.shape))
        if node.op_type == "IsNaN" or not ctx.for_node(producer).attr("detect_negative", 1):
            return np.zeros_like(mean, dtype=bool)  # predictions are never NaN or +inf
        return np.isneginf(mean)
    value = input_derived(ctx, name)
    return exact_tensor(ctx, name) if value is None else value


def input_derived(ctx: RuleContext, tensor: str) -> np.ndarray | None:
    """Value of a tensor computed from constants and non-id integer/boolean graph inputs,
    evaluated on the synthetic inputs; None otherwise. Every tensor of the evaluated subgraph
    is cached per graph."""
    graph = ctx.graph
    cache = _DERIVED.setdefault(graph, {})
    if tensor in cache:
        return cache[tensor]
    found = upstream(graph, tensor)
    if found is None or not found[1]:
        cache[tensor] = None
        return None
    runs = evaluated(graph, found, [ctx.settings.seed])
    if runs is None:
        cache[tensor] = None
        return None
    cache.update(runs[0])
    return cache.get(tensor)


def evaluated(graph, found, seeds) -> list[dict[str, np.ndarray]] | None:
    """Every tensor of the subgraph ``found`` (:func:`upstream`) on the synthetic inputs of each
    seed, or None when onnxruntime cannot run it alone."""
    order, inputs = found
    produced = [o for n in order for o in graph.node(n).output if o]
    try:
        session = subgraph_session(graph, order,
                                   [(n, graph.input_shapes[n]) for n in sorted(inputs)], produced)
        runs = []
        for seed in seeds:
            feeds = synthetic_feeds(graph, seed=seed)
            runs.append(dict(zip(produced, session.run(None, {n: feeds[n] for n in inputs}))))
    except Exception:  # noqa: BLE001 - a subgraph onnxruntime cannot run alone: unknown
        return None
    return runs


def sequence_lengths(ctx: RuleContext, index: int) -> np.ndarray | None:
    """The integer lengths of input ``index`` (an RNN's or ReverseSequence's
    ``sequence_lens``): a constant, or computed from shapes and integer graph inputs
    (:func:`input_derived`); None when not known."""
    value = ctx.const(index)
    if value is None:
        value = input_derived(ctx, ctx.node.input[index])
    return None if value is None else np.ravel(value).astype(np.int64)


def derived_moments(inputs, ctx: RuleContext) -> list[Moments | None] | None:
    """Exact moments (variance 0, one value per element) of a node's float outputs when no input
    is a signal with moments and each output is input-derived (see the module docstring)."""
    if any(m is not None for m in inputs) or not any(
            ctx.graph.is_signal(o) for o in ctx.node.output):
        return None
    outs = []
    for name in ctx.node.output:
        if not name or not ctx.graph.is_signal(name):
            outs.append(None)
            continue
        value = input_derived(ctx, name)
        if value is None:  # computed from the token ids: random (id_masks.py)
            return sampled_moments(ctx)
        value = np.asarray(value, dtype=np.float64)
        outs.append(compressed(value, np.zeros_like(value)))
    return outs


def exact_value(inputs, ctx: RuleContext, i: int) -> np.ndarray | None:
    """Input ``i``'s value when it is exactly known: a constant, or a signal of variance 0
    (computed from an attention_mask input, :func:`derived_moments`)."""
    m = inputs[i]
    if m is None:
        return ctx.const(i)
    if np.all(m.var == 0):
        return m.mean
    return None


def logit_offset(inputs, ctx: RuleContext, rank: int) -> Moments | None:
    """Add/Sub of a signal x and an exactly known c that is a mask (holds -inf) or a grid that
    reaches a Softmax: E = mu +/- c per element, Var = nu (0 where masked), the grid kept up to
    OFFSET_CAP cells (x's own variation folded first onto c's axes when larger). Mul by such
    a c that reaches a Softmax (Keras' ``logits * mask + big * (1 - mask)``): E = c mu,
    Var = c^2 nu per element. None when this is not such a node."""
    if ctx.node.op_type not in ("Add", "Sub", "Mul") or len(inputs) != 2:
        return None
    known = [exact_value(inputs, ctx, i) for i in range(2)]
    if (known[0] is None) == (known[1] is None):
        return None
    i = 0 if known[0] is None else 1
    raw = known[1 - i]
    if ctx.node.op_type == "Mul":
        return _logit_gate(inputs[i], raw, ctx, rank)
    # a constant without -inf has none once compressed (a slab of it) either: a bias that
    # reaches no Softmax is settled before the compression
    if not has_masked(raw) and not feeds_softmax(ctx):
        return None
    c = _offset_grid(raw, rank)
    if ctx.node.op_type == "Sub" and i == 0:
        c = -c
    if not (has_masked(c) or (varies(c) and feeds_softmax(ctx))):
        return None
    if np.isnan(c).any() or np.isposinf(c).any():
        raise RuleError("a constant offset holds NaN or +inf")
    x = inputs[i]
    mx, vx = lift(x.mean, rank), lift(x.var, rank)
    sign = -1.0 if ctx.node.op_type == "Sub" and i == 1 else 1.0
    size = int(np.prod(np.broadcast_shapes(np.shape(mx), np.shape(vx), np.shape(c))))
    if size > OFFSET_CAP:
        folded = fold(mx, vx, varying_axes(c))
        mx, vx = folded.mean, folded.var
        size = int(np.prod(np.broadcast_shapes(np.shape(mx), np.shape(vx), np.shape(c))))
        if size > OFFSET_CAP:
            raise RuleError("an attention mask too large to keep per element")
    with np.errstate(invalid="ignore"):
        mean = overflowed(sign * mx + c, ctx.graph.dtypes.get(ctx.node.output[0]))
    # x's variance may vary along an axis its mean does not (per sample: a causal mask's
    # product with the logits)
    mean = np.broadcast_to(mean, np.broadcast_shapes(mean.shape, np.shape(vx)))
    var = np.where(np.isneginf(mean), 0.0, np.broadcast_to(vx, mean.shape))
    return Moments(mean, var)


def _logit_gate(x: Moments, raw, ctx: RuleContext, rank: int) -> Moments | None:
    """``x * c`` for an exactly known c that varies and reaches a Softmax: per element
    (:func:`logit_offset`)."""
    if np.ndim(raw) == 0 or np.size(raw) > OFFSET_CAP * 64:
        return None
    c = _offset_grid(raw, rank)
    if not varies(c) or not np.all(np.isfinite(c)) or not feeds_softmax(ctx):
        return None
    mx, vx = lift(x.mean, rank), lift(x.var, rank)
    shape = np.broadcast_shapes(np.shape(mx), np.shape(vx), np.shape(c))
    if int(np.prod(shape)) > OFFSET_CAP:
        folded = fold(mx, vx, varying_axes(c))
        mx, vx = folded.mean, folded.var
        shape = np.broadcast_shapes(np.shape(mx), np.shape(vx), np.shape(c))
        if int(np.prod(shape)) > OFFSET_CAP:
            return None
    return Moments(np.broadcast_to(mx * c, shape), np.broadcast_to(vx * c * c, shape))


_OFFSETS: dict[int, tuple] = {}  # id(constant) -> (weakref, rank, its compressed grid)


def _offset_grid(raw: np.ndarray, rank: int) -> np.ndarray:
    """``raw`` in float64 at ``rank``, without the axes it does not vary along (a mask
    expanded over the batch: once). Kept per constant array (read-only): every attention layer
    adds the same folded mask, 4 MB at GPT-2's batch of 32."""
    hit = _OFFSETS.get(id(raw))
    if hit is not None and hit[0]() is raw and hit[1] == rank:
        return hit[2]
    c = lift(np.asarray(raw, dtype=np.float64), rank)
    c = lift(compressed(c, np.zeros_like(c)).mean, rank)
    if isinstance(raw, np.ndarray):
        for key in [k for k, kept in _OFFSETS.items() if kept[0]() is None]:
            del _OFFSETS[key]  # constants gone with their graph: their grids go too
        if len(_OFFSETS) >= 64:
            _OFFSETS.clear()
        c.flags.writeable = False
        _OFFSETS[id(raw)] = (weakref.ref(raw), rank, c)
    return c


_LARGEST = {TensorProto.FLOAT: float(np.finfo(np.float32).max),
            TensorProto.FLOAT16: float(np.finfo(np.float16).max),
            TensorProto.BFLOAT16: 3.3895313892515355e38}


def overflowed(mean: np.ndarray, elem_type: int | None) -> np.ndarray:
    """Offsets summed in the tensor's own precision: an element whose mean is below
    ``-finfo.max`` is -inf (masked), as the runtime computes it (``finfo.min + finfo.min``, a
    causal mask added to a padding mask, GPT-Neo)."""
    largest = _LARGEST.get(elem_type)
    if largest is None:
        return mean
    return np.where(mean < -largest, -np.inf, mean)


__all__ = ["OFFSET_CAP", "condition", "derived_moments", "evaluated", "exact_value",
           "feeds_softmax", "has_masked", "input_derived", "keep_rows", "logit_offset",
           "overflowed", "sequence_lengths"]
