"""Masks computed from the token ids inside the graph: random, not constant.

A padding mask written from the ids (Keras' ``attention_mask = ids != 0``; HF Flaubert/XLM's
``lengths = (ids != pad).sum(1)``, ``mask = arange(S) < lengths``) changes with the ids drawn.
The analysis draws token ids as ``--measure`` and the benchmarks feed them
(``feeds.synthetic_feeds``: uniform over the rows of the embedding table they index), so such a
mask is a random tensor, independent of everything that is not computed from the ids.

Its law is sampled: the subgraph computing a tensor from the ids (comparisons, Not/And/Or, Cast,
ReduceSum, CumSum, Range, layout and integer arithmetic; no embedding lookup, no float signal)
is run on up to ``DRAWS`` seeded batches of synthetic ids (``_MAX_SAMPLED`` elements in all) (a generator of its own, not the measured
batches), and the batch axis is pooled with the draws: ``N = DRAWS x B`` samples of each
element. A float tensor computed from the ids alone gets (:func:`sampled_moments`)::

    E_e = mean_s m_se,   Var_e = mean_s (m_se - E_e)^2

(a 0/1 mask masked with probability q: ``E = 1 - q``, ``Var = q (1 - q)``).

A signal mixed with such a mask in element-wise arithmetic (``Where(mask, finfo.min, logits)``,
``logits * m + big * (1 - m)``, ``logits + (1 - m) finfo.min``) is, per element and sample s,
an affine function of one signal L (the logits) whose coefficients are random:
``X_se = a_se T(L)_e + b_se`` (T: the layout ops between L and X). :func:`affine` finds the
region and evaluates it on the sampled ids three times, with L = 0, L = its mean grid mu and
L = its standard deviation grid sigma (and checks affinity at L = mu + sigma)::

    b_s = X(0),   M_s = X(mu) = a_s T(mu) + b_s,   V_s = (X(sigma) - b_s)^2 = a_s^2 T(nu)

so the mixture's own moments are (id_mixtures.py, samples whose element is -inf left
out, as measured) ``E = mean_s M_s``, ``Var = mean_s V_s + mean_s (M_s - E)^2``, and a Softmax
of X reads each sample's rows ``N(M_s, V_s)`` (a key masked in that sample: ``finfo.min``) and
averages its probabilities over the samples (:mod:`.softmax`)::

    E[p_k] = mean_s E[p_k | s],   E[p_k^2] = mean_s (Var[p_k | s] + E[p_k | s]^2)

the expectation over the mask. Taken as independent of L: the ids that are padding also pick
the embedding rows of the logits, which is ignored.
"""

from __future__ import annotations

import weakref

import numpy as np
import onnx

from ..feeds import synthetic_feeds, vocab_size
from ..moments import Moments, compressed
from ..strict import fall_back
from .upstream_nodes import subgraph_session

DRAWS = 256  # batches of synthetic ids drawn at most (a [B, S] mask: 2048 sequences)
_SALT = 0x1D3A5C  # the draws' generator: (seed, salt), not a measured batch's seed
_MAX_NODES = 64  # nodes of a mask's subgraph
_MAX_SAMPLED = 1 << 20  # elements of one region's output drawn in all (fewer draws if larger)
_MIN_DRAWS = 4
_CHECKED = 2  # draws on which the region's affinity in the leaf is checked
_ID_OPS = frozenset({
    "Equal", "Not", "And", "Or", "Xor", "Greater", "Less", "GreaterOrEqual", "LessOrEqual",
    "Cast", "CastLike", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceMean", "ReduceProd",
    "CumSum", "Range", "Shape", "Size", "ConstantOfShape", "Unsqueeze", "Squeeze", "Reshape",
    "Expand", "Tile", "Slice", "Gather", "Concat", "Transpose", "Add", "Sub", "Mul", "Div",
    "Neg", "Where", "Identity", "Flatten", "Min", "Max", "Abs", "Sign", "ArgMax", "ArgMin",
    "Mod", "Clip", "Trilu"})
# element-wise and layout ops between the logits and the mask they are mixed with
_AFFINE = frozenset({"Add", "Sub", "Mul", "Div", "Where", "Neg", "Cast", "Identity", "Reshape",
                     "Transpose", "Unsqueeze", "Squeeze", "Expand"})
_DEPTH = 8
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> {key: value}


def _cache(graph) -> dict:
    return _CACHE.setdefault(graph, {})


def id_region(graph, tensor: str) -> tuple[tuple[str, ...], frozenset[str]] | None:
    """(nodes in topological order, graph inputs) computing ``tensor`` from constants and
    integer/boolean graph inputs, at least one of them token ids (an embedding's index), through
    ``_ID_OPS`` and no embedding lookup; None otherwise."""
    cache = _cache(graph)
    key = ("region", tensor)
    if key not in cache:
        cache[key] = _id_region(graph, tensor)
    return cache[key]


def _has_ids(graph) -> bool:
    cache = _cache(graph)
    if "ids" not in cache:
        cache["ids"] = any(not graph.is_float(n) and vocab_size(graph, n) is not None
                           for n in graph.input_names)
    return cache["ids"]


def _id_region(graph, tensor: str):
    if not tensor or graph.is_constant(tensor) or tensor in graph.input_names \
            or not _has_ids(graph):
        return None
    nodes, inputs, stack, seen = set(), set(), [tensor], set()
    while stack:
        name = stack.pop()
        if not name or name in seen or graph.is_constant(name):
            continue
        seen.add(name)
        if name in graph.input_names:
            if graph.is_float(name):
                return None
            inputs.add(name)
            continue
        producer = graph.producer.get(name)
        if producer is None:
            return None
        node = graph.node(producer)
        if node.op_type not in _ID_OPS or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Gather" and graph.is_float(node.input[0]) \
                and graph.is_constant(node.input[0]):
            return None  # an embedding lookup: a signal, not a mask
        if producer not in nodes:
            nodes.add(producer)
            if len(nodes) > _MAX_NODES:
                return None
            stack.extend(node.input)
    if not any(vocab_size(graph, name) is not None for name in inputs):
        return None
    return tuple(n for n in graph.order if n in nodes), frozenset(inputs)


def _session(graph, order, inputs, outputs, leaf: str | None = None):
    feeds = [(n, graph.input_shapes[n]) for n in sorted(inputs)]
    if leaf is not None:
        feeds.append((leaf, graph.shape(leaf)))
    return subgraph_session(graph, order, feeds, outputs)


def _session_or_none(graph, order, inputs, outputs, leaf: str | None = None):
    """:func:`_session`, or None when onnxruntime refuses the subgraph alone (an expected
    limit: the mask is then unknown and the rules before this module's apply)."""
    try:
        return _session(graph, order, inputs, outputs, leaf)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
        fall_back(exc, expected=(Exception,))
        return None


def _runs(session, feeds_list) -> list | None:
    """The session's outputs on each feed, or None when onnxruntime fails on one."""
    try:
        return [session.run(None, feeds) for feeds in feeds_list]
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
        fall_back(exc, expected=(Exception,))
        return None


def _draws(graph, tensor: str) -> int:
    shape = graph.shape(tensor)
    if shape is None:
        return 0
    size = max(1, int(np.prod(shape, dtype=np.int64)))
    return int(min(DRAWS, max(_MIN_DRAWS, _MAX_SAMPLED // size)))


def _id_feeds(graph, inputs, seed: int, draws: int):
    rng = np.random.default_rng([seed, _SALT])
    for _ in range(draws):
        feeds = synthetic_feeds(graph, rng=rng)
        yield {n: feeds[n] for n in inputs}


def samples(graph, tensor: str, seed: int) -> np.ndarray | None:
    """``[N, *shape[1:]]`` samples (the batch axis pooled with the draws) of a tensor computed
    from the token ids (:func:`id_region`), or None."""
    cache = _cache(graph)
    key = ("samples", tensor, seed)
    if key in cache:
        return cache[key]
    found = id_region(graph, tensor)
    draws = _draws(graph, tensor)
    value = None
    session = None if found is None or not draws else _session_or_none(
        graph, found[0], found[1], [tensor])
    if session is not None:
        runs = _runs(session, list(_id_feeds(graph, found[1], seed, draws)))
        value = None if runs is None else _pooled([r[0] for r in runs])
    cache[key] = cache[("samples", tensor)] = value
    return value


def latest_samples(graph, tensor: str) -> np.ndarray | None:
    """The samples :func:`samples` drew last for ``tensor`` (any seed), or None."""
    return _cache(graph).get(("samples", tensor))


def _pooled(runs) -> np.ndarray | None:
    arrays = [np.asarray(r) for r in runs]
    if not arrays or arrays[0].ndim == 0:
        return None
    return np.concatenate(arrays, axis=0)


def sampled_moments(ctx) -> list[Moments | None] | None:
    """Moments of each float output of a node computed from the token ids alone (module
    docstring: ``E = mean_s m``, ``Var = mean_s (m - E)^2`` per element, the batch axis pooled);
    None unless every signal output is."""
    outs = []
    for name in ctx.node.output:
        if not name or not ctx.graph.is_signal(name):
            outs.append(None)
            continue
        value = samples(ctx.graph, name, ctx.settings.seed)
        if value is None:
            return None
        value = np.asarray(value, dtype=np.float64)
        mean = value.mean(axis=0, keepdims=True)
        outs.append(compressed(mean, ((value - mean) ** 2).mean(axis=0, keepdims=True)))
    return outs


def _mixes(graph, tensor: str, depth: int) -> bool:
    """True when ``tensor`` is computed through ``_AFFINE`` ops from a mask of the token ids."""
    if depth < 0 or not graph.is_signal(tensor) or id_region(graph, tensor) is not None:
        return False
    producer = graph.producer.get(tensor)
    if producer is None or graph.node(producer).op_type not in _AFFINE:
        return False
    return any(id_region(graph, n) is not None or _mixes(graph, n, depth - 1)
               for n in graph.node(producer).input if n)


def mixes_ids(ctx) -> bool:
    """True when the node's output mixes a signal with masks of the token ids
    (:func:`mixed_region`)."""
    return len(ctx.node.output) == 1 and mixed_region(ctx.graph, ctx.node.output[0]) is not None


def mixed_region(graph, tensor: str):
    """(nodes, id inputs, leaf) of a tensor that is an affine function of one signal ``leaf``
    and masks of the token ids (module docstring), or None."""
    cache = _cache(graph)
    key = ("mixed", tensor)
    if key not in cache:
        cache[key] = _mixed_region(graph, tensor) if _has_ids(graph) and _mixes(
            graph, tensor, _DEPTH) else None
    return cache[key]


def _mixed_region(graph, tensor: str):
    nodes, inputs, leaves, stack, seen = set(), set(), set(), [(tensor, _DEPTH)], set()
    while stack:
        name, depth = stack.pop()
        if not name or name in seen or graph.is_constant(name):
            continue
        seen.add(name)
        found = id_region(graph, name)
        if found is not None:
            nodes.update(found[0])
            inputs.update(found[1])
        elif name == tensor or _mixes(graph, name, depth):
            producer = graph.producer[name]
            nodes.add(producer)
            stack.extend((n, depth - 1) for n in graph.node(producer).input)
        elif graph.is_signal(name) and graph.shape(name) is not None:
            leaves.add(name)
        else:
            return None
    if len(leaves) != 1 or len(nodes) > 4 * _MAX_NODES:
        return None
    return tuple(n for n in graph.order if n in nodes), frozenset(inputs), next(iter(leaves))


def _through_casts(graph, tensor: str) -> str:
    """The tensor a chain of float-to-float Cast/Identity nodes copies (same values, same
    shape, for a float32 graph: ``scores.float()`` before a softmax)."""
    while (producer := graph.producer.get(tensor)) is not None:
        node = graph.node(producer)
        source = node.input[0] if node.input else ""
        if node.op_type not in ("Cast", "Identity") or not graph.is_signal(source) \
                or graph.dtypes.get(source) != graph.dtypes.get(tensor) \
                or graph.shape(source) != graph.shape(tensor):
            return tensor
        tensor = source
    return tensor


def affine(ctx, tensor: str):
    """(leaf, M [N, ...], V [N, ...]) of a tensor mixing one signal with masks of the token
    ids: per sample the mean ``a T(mu) + b`` and variance ``a^2 T(nu)`` (module docstring), from
    the leaf's predicted moments in ``ctx.known``; None when it is not such a tensor, the leaf
    is not predicted, or the region is not affine in the leaf."""
    graph = ctx.graph
    tensor = _through_casts(graph, tensor)
    found = mixed_region(graph, tensor)
    known = ctx.known or {}
    if found is None or found[2] not in known:
        return None
    order, inputs, leaf = found
    lm = known[leaf]
    cache = _cache(graph)
    key = ("affine", tensor, ctx.settings.seed)
    hit = cache.get(key)
    if hit is not None and hit[0] is lm:
        return hit[1]
    value = _affine(graph, found, lm, ctx.settings.seed, _draws(graph, tensor), tensor)
    cache[key] = cache[("affine", tensor)] = (lm, value)
    return value


def sampled_rows(graph, known, tensor: str) -> tuple[Moments, tuple] | None:
    """(Moments [N, ...] of each sample's logits, their shape) of a tensor mixing logits with a
    mask of the token ids, as the forward analysis sampled them (:func:`affine`, its latest
    seed) for the backward rules, which draw softmax rows from them; None otherwise."""
    tensor = _through_casts(graph, tensor)
    found = mixed_region(graph, tensor)
    hit = _cache(graph).get(("affine", tensor))
    if found is None or hit is None or hit[1] is None or hit[0] is not known.get(found[2]):
        return None
    _, mean_s, var_s = hit[1]
    return Moments(mean_s, var_s), mean_s.shape


def _affine(graph, found, lm: Moments, seed: int, draws: int, tensor: str):
    order, inputs, leaf = found
    shape = graph.shape(leaf)
    if not draws or shape is None:
        return None
    dtype = onnx.helper.tensor_dtype_to_np_dtype(graph.dtypes.get(leaf, 1))
    m = lm.expand_rank(len(shape))
    try:
        mu = np.broadcast_to(m.mean, shape).astype(dtype)
        sigma = np.broadcast_to(np.sqrt(m.var), shape).astype(dtype)
    except ValueError:
        return None
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        return None
    session = _session_or_none(graph, order, inputs, [tensor], leaf)
    if session is None:
        return None
    means, variances = [], []
    for k, feeds in enumerate(_id_feeds(graph, inputs, seed, draws)):
        values = (np.zeros_like(mu), mu, sigma) + ((mu + sigma,) if k < _CHECKED else ())
        runs = _runs(session, [{**feeds, leaf: value} for value in values])
        if runs is None:
            return None
        x0, xm, xs, *xms = (np.asarray(r[0], dtype=np.float64) for r in runs)
        with np.errstate(invalid="ignore", over="ignore"):
            spread = xs - x0
        finite = np.isfinite(x0)
        if xms and not _affine_at(xms[0], xm, x0, spread, finite):
            return None  # not affine in the leaf (a product of it with itself)
        means.append(xm)
        variances.append(np.where(finite, spread, 0.0) ** 2)
    return leaf, np.concatenate(means), np.concatenate(variances)


def _affine_at(xms, xm, x0, spread, finite) -> bool:
    """X(mu + sigma) = X(mu) + X(sigma) - X(0) where X(0) is finite (to float32 rounding)."""
    with np.errstate(invalid="ignore", over="ignore"):
        check = np.abs(np.where(finite, xms - xm - spread, 0.0))
        scale = np.where(finite, np.abs(xm) + np.abs(spread) + np.abs(x0), 0.0)
    return not np.any(check > 1e-4 * scale + 1e-30)


__all__ = ["DRAWS", "affine", "id_region", "latest_samples", "mixed_region", "mixes_ids",
           "sampled_moments", "sampled_rows", "samples"]
