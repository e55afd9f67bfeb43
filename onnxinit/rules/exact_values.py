"""Integer and boolean tensors computed from signals that are known exactly.

A signal whose predicted variance is 0 at every element holds one value per element, the same
on every draw: ``exp(A * softplus(dt))`` with ``A = 0`` at initialization (Doge's dynamic mask:
1 at every key, ``finfo.min`` where the causal mask hides it), a mask computed from an
``attention_mask`` input. An index or condition computed from such signals and constants
(``TopK(s, k).indices``, ``Equal(ScatterElements(0, idx, 1), 0)``) is then known exactly too:
it is evaluated by onnxruntime on those values. TopK of equal values takes the lower index
first (the ONNX specification), so a row of ties keeps its first k keys: the mask that keeps
"the k keys of largest ``dt``" keeps, at initialization, the first k keys each query may see,
which is what onnxruntime runs and what the Softmax rule then reads per element (masks.py).

Returns None when the tensor depends on a signal of nonzero variance, on token ids, on a float
graph input, or on a subgraph onnxruntime cannot run alone; the caller then treats it as it did.
"""

from __future__ import annotations

import weakref

import numpy as np
import onnx

from ..feeds import synthetic_feeds
from .context import RuleContext
from .upstream_nodes import subgraph_session, upstream

_MAX_NODES = 200  # nodes of a subgraph evaluated for one exactly known tensor
_MAX_ELEMENTS = 1 << 20  # elements of an exactly known signal fed to it
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> {tensor: value}


def _exact_signal(ctx: RuleContext, name: str) -> np.ndarray | None:
    """The value of signal ``name`` at its static shape when its predicted variance is 0 at
    every element; None otherwise."""
    m = (ctx.known or {}).get(name)
    shape = ctx.graph.shape(name)
    if m is None or shape is None or not all(isinstance(d, (int, np.integer)) and d > 0
                                             for d in shape):
        return None
    if int(np.prod(shape, dtype=np.int64)) > _MAX_ELEMENTS or m.rows is not None:
        return None
    if not (np.all(m.var == 0) and np.all(~np.isnan(m.mean)) and np.all(~np.isposinf(m.mean))):
        return None
    try:
        return np.broadcast_to(m.mean, tuple(int(d) for d in shape))
    except ValueError:
        return None


def _subgraph(ctx: RuleContext, tensor: str):
    """(nodes in order, exactly known signals, graph inputs) computing ``tensor``; None when
    a signal of nonzero variance, token ids, a float graph input or too many nodes enter, or
    no signal does (constants and attention masks alone: :func:`.masks.input_derived`)."""
    leaves = {}

    def known(name: str) -> bool:
        value = _exact_signal(ctx, name)
        if value is not None:
            leaves[name] = value
        return value is not None

    found = upstream(ctx.graph, tensor, leaf=known, max_nodes=_MAX_NODES)
    if found is None or not leaves:
        return None
    order, inputs = found
    return order, leaves, inputs


def _run(ctx: RuleContext, found, tensor: str) -> np.ndarray | None:
    order, leaves, inputs = found
    graph = ctx.graph
    feeds = {n: v.astype(onnx.helper.tensor_dtype_to_np_dtype(graph.dtypes[n]))
             for n, v in leaves.items()}
    if inputs:
        synthetic = synthetic_feeds(graph, seed=ctx.settings.seed)
        feeds.update({n: synthetic[n] for n in inputs})
    described = ([(n, list(np.shape(v))) for n, v in sorted(leaves.items())]
                 + [(n, graph.input_shapes[n]) for n in sorted(inputs)])
    try:
        with np.errstate(over="ignore"):
            return subgraph_session(graph, order, described, [tensor]).run(None, feeds)[0]
    except Exception:  # noqa: BLE001 - a subgraph onnxruntime cannot run alone: unknown
        return None


def exact_tensor(ctx: RuleContext, tensor: str) -> np.ndarray | None:
    """The value of the non-signal (integer or boolean) ``tensor`` computed from constants and
    signals of variance 0 at every element (the module docstring), evaluated by onnxruntime on
    their predicted values; None when it is not known so."""
    graph = ctx.graph
    if not tensor or graph.is_signal(tensor) or graph.is_constant(tensor):
        return None
    found = _subgraph(ctx, tensor)
    if found is None:
        return None
    # the leaves' values are part of the key: another analysis of the graph may predict others
    key = (tensor, tuple((n, hash(np.ascontiguousarray(v).tobytes()))
                         for n, v in sorted(found[1].items())), ctx.settings.seed)
    cache = _CACHE.setdefault(graph, {})
    if key not in cache:
        cache[key] = _run(ctx, found, tensor)
    return cache[key]


__all__ = ["exact_tensor"]
