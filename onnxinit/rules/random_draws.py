"""Random ops: their outputs' moments are known from their attributes, without a run.

* RandomUniform(Like) on ``[low, high)``: ``E = (low + high) / 2``, ``Var = (high - low)^2 / 12``,
  described as ``low + (high - low) Phi(z)`` of a standard normal z (its law: an element-wise
  function of a draw takes its moments over it; a Gaussian of those moments leaves the interval,
  where the Gumbel noise ``-log(-log(U))`` of a Gumbel softmax has no value).
* RandomNormal(Like): ``E = mean``, ``Var = scale^2``.
* A Cast to float of a comparison of a uniform draw with a constant, ``Cast(Less(U, c))``
  (PyTorch's ``bernoulli_`` as exporters write it: the keep mask of stochastic depth, then
  divided by the keep probability and multiplied into a residual branch): a Bernoulli draw of
  ``p = P(U < c) = clip((c - low) / (high - low), 0, 1)`` (``Greater``: ``1 - p``; ``<=`` and
  ``>=`` alike, U being continuous), so ``E = p``, ``Var = p (1 - p)`` per element of c.

The empirical fallback measured each of these in hundreds of onnxruntime runs of the node
(a stochastic-depth mask ``[N, 1, 1, 1]`` has few elements per run): EfficientNet-B0 and
Swin-T ran 9,000 and 22,000 sessions for their masks.

The Bernoulli op has no rule: onnxruntime 1.32.0 (CPU) draws 1 with
probability ``1 - p`` (measured: p = 0.05 gave 0.946 over 4,000 draws), against the ONNX
specification's ``p``, and ``--measure`` runs onnxruntime; the fallback measures what it does.
"""

from __future__ import annotations

import numpy as np

from .. import special
from ..dtypes import FLOAT_TYPES
from ..moments import Elementwise, Moments, Source
from .context import RuleContext, RuleError
from .registry import rule

_UNIFORM = ("RandomUniform", "RandomUniformLike")
# comparison -> whether it is true where U is below the constant (U on the left)
_BELOW = {"Less": True, "LessOrEqual": True, "Greater": False, "GreaterOrEqual": False}


def _float_output(ctx: RuleContext) -> bool:
    """The random op's output is a float tensor (its ``dtype``, or the input's for *Like)."""
    dtype = ctx.attr("dtype")
    if dtype is None and ctx.has_input(0):  # the *Like ops: the input's type
        dtype = ctx.graph.dtypes.get(ctx.node.input[0], 1)
    return (dtype if dtype is not None else 1) in FLOAT_TYPES


def _moments(mean, var, ctx: RuleContext) -> Moments:
    """Per element of ``mean``/``var`` (constants broadcast to the output), as Moments of the
    output's rank; scalar when they are."""
    mean, var = np.broadcast_arrays(np.asarray(mean, np.float64), np.asarray(var, np.float64))
    if mean.size == 1:
        return Moments.scalar(float(mean.reshape(())), float(var.reshape(())))
    rank = len(ctx.out_shape(0))
    if mean.ndim > rank:
        raise RuleError("a probability of higher rank than the output")
    lead = (1,) * (rank - mean.ndim)
    return Moments(mean.reshape(lead + mean.shape).copy(), var.reshape(lead + var.shape).copy())


@rule(*_UNIFORM)
def random_uniform(inputs, ctx: RuleContext):
    """U ~ Uniform[low, high): E = (low + high) / 2, Var = (high - low)^2 / 12; its law
    ``U = low + (high - low) Phi(z)``, z ~ N(0, 1)."""
    if not _float_output(ctx):
        return [None]
    low, high = float(ctx.attr("low", 0.0)), float(ctx.attr("high", 1.0))
    m = Moments.scalar((low + high) / 2, (high - low) ** 2 / 12)
    return [Moments(m.mean, m.var, uniform_source(low, high, m.mean))]


def uniform_source(low: float, high: float, like: np.ndarray) -> Source:
    """``low + (high - low) Phi(z)`` with z ~ N(0, 1) laid out like ``like``."""
    width = high - low
    law = Elementwise(("Uniform", low, high), lambda z: low + width * special.ndtr(z))
    return Source(np.zeros_like(like), np.ones_like(like), (law,))


@rule("RandomNormal", "RandomNormalLike")
def random_normal(inputs, ctx: RuleContext):
    """Z ~ N(mean, scale^2): E = mean, Var = scale^2."""
    if not _float_output(ctx):
        return [None]
    return [Moments.scalar(float(ctx.attr("mean", 0.0)), float(ctx.attr("scale", 1.0)) ** 2)]


def _bernoulli(p, ctx: RuleContext) -> Moments:
    """E = p, Var = p (1 - p) of a 0/1 draw that is 1 with probability p."""
    p = np.clip(np.asarray(p, np.float64), 0.0, 1.0)
    return _moments(p, p * (1.0 - p), ctx)


def comparison_draw(ctx: RuleContext) -> Moments | None:
    """Moments of ``Cast(cmp(U, c))`` to a float type, U a RandomUniform(Like) draw and c a
    constant, cmp Less/LessOrEqual/Greater/GreaterOrEqual (either operand order): a Bernoulli
    draw of p = P(cmp(U, c)) (module docstring); None for any other Cast input."""
    graph = ctx.graph
    src = graph.producer.get(ctx.node.input[0])
    if src is None:
        return None
    cmp = graph.node(src)
    if cmp.op_type not in _BELOW or cmp.domain not in ("", "ai.onnx") or len(cmp.input) != 2:
        return None
    for u_index in (0, 1):
        draw = graph.producer.get(cmp.input[u_index])
        if draw is None or graph.node(draw).op_type not in _UNIFORM:
            continue
        c = graph.value(cmp.input[1 - u_index])
        if c is None:
            return None
        draw_ctx = ctx.for_node(draw)
        low, high = float(draw_ctx.attr("low", 0.0)), float(draw_ctx.attr("high", 1.0))
        if not high > low:
            return None
        below = np.clip((np.asarray(c, np.float64) - low) / (high - low), 0.0, 1.0)
        # U < c when U is the left operand of Less; c < U (U > c) when it is the right one
        return _bernoulli(below if _BELOW[cmp.op_type] == (u_index == 0) else 1.0 - below, ctx)
    return None


def is_keep_mask(ctx: RuleContext, tensor: str) -> bool:
    """``tensor`` is a Bernoulli draw of :func:`comparison_draw` times constants (stochastic
    depth's ``Cast(Less(U, c)) / keep``): its values are 0 and one other, per element."""
    graph = ctx.graph
    for _ in range(8):
        node_id = graph.producer.get(tensor)
        if node_id is None:
            return False
        node = graph.node(node_id)
        if node.op_type == "Cast":
            return comparison_draw(ctx.for_node(node_id)) is not None
        if node.op_type not in ("Mul", "Div") or len(node.input) != 2:
            return False
        signals = [n for n in node.input if not graph.is_constant(n)]
        if len(signals) != 1 or (node.op_type == "Div" and signals[0] != node.input[0]):
            return False
        tensor = signals[0]
    return False


__all__ = ["comparison_draw", "is_keep_mask", "random_normal", "random_uniform"]
