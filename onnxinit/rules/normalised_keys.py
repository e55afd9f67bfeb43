"""Keys that are a dense layer of normalized rows: the law of a softmax row's logits given its
query (for the sampled softmax, ``softmax.py``).

Given the query q, a row's logits over the keys are ``a_s = u . n_s`` (``u = W q``, plus
constants), with ``n_s`` the rows of a LayerNorm (``LayerNormalization`` over the last axis,
TensorFlow's folded form ``x * s + (c - mean(x) * s)``, :func:`.centred_rows.centred_input`) or
of ``F.normalize`` (:mod:`.unit_rows`): each row has a fixed length, so its projection on a
fixed direction is bounded, a lighter tail than the Gaussian the softmax otherwise draws. For
an isotropic row of d features the standardized projection is the cosine law of
:func:`.logit_law.cosine_deviates` (excess kurtosis ``-6 / (d + 2)``); for a row whose
features are correlated (a patch embedding of 48 pixel values into 64 features, a dense layer
of 16 inputs into 64), d is taken as the participation ratio of the normalized row's feature
covariance ``S``, ``r = (tr S)^2 / tr S^2`` (its effective number of independent directions;
``d`` for independent features of equal variance).

Measured on tf2onnx's export of a Keras ViT block (65 tokens, 64 features, LayerNorm input of
participation ratio 28): with the measured queries and Gaussian keys of the measured
covariance the softmax reads 1.11x its variance, with the cosine law at d = 28 0.97-0.99x;
the measured logits' excess kurtosis within a row given the query is -0.17 (-0.20 at d = 28).

Not modelled: the direction of u relative to S (the law is taken as the isotropic one at the
participation ratio), a mean shared by the rows (it only shifts the projection), keys past a
non-linear map of the normalized rows. Rows of more than ``MAX_DIM`` effective features are
left Gaussian (their excess kurtosis is under 2.5%).
"""

from __future__ import annotations

import numpy as np

from ..strict import fall_back
from .centred_rows import centred_input
from .channel_covariance import row_covariance
from .context import RuleContext, RuleError
from .covariance_layout import variances
from .logit_path import WINDOWED, qk_matmul
from .unit_rows import is_unit_rows

MAX_DIM = 256  # effective features beyond which the keys stay Gaussian
_LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast")
_CONSTANT_MAP = ("Mul", "Div", "Add", "Sub")
MAX_STEPS = 12


def _signal_input(graph, node) -> str | None:
    """The one signal input of an element-wise op with a constant other operand, else None."""
    signals = [t for t in node.input if t and graph.value(t) is None]
    return signals[0] if len(signals) == 1 else None


def _dense_input(graph, name: str) -> str | None:
    """x where ``name`` is ``x @ W`` (W a constant matrix) through layout ops and constant
    scales and offsets, else None."""
    for _ in range(MAX_STEPS):
        node_id = graph.producer.get(name)
        if node_id is None:
            return None
        node = graph.node(node_id)
        if node.op_type in _LAYOUT:
            name = node.input[0]
        elif node.op_type in _CONSTANT_MAP:
            name = _signal_input(graph, node)
            if name is None:
                return None
        elif node.op_type == "MatMul":
            w = graph.value(node.input[1])
            return node.input[0] if w is not None and np.ndim(w) == 2 else None
        else:
            return None
    return None


def _normalised(ctx: RuleContext, name: str) -> str | None:
    """The tensor of normalized rows that ``name`` is (through layout ops and a constant
    gamma and beta): a LayerNormalization over the last axis, TensorFlow's folded LayerNorm
    or unit rows; else None."""
    graph = ctx.graph
    for _ in range(MAX_STEPS):
        node_id = graph.producer.get(name)
        if node_id is None:
            return None
        node = graph.node(node_id)
        nctx = ctx.for_node(node_id)
        if node.op_type == "LayerNormalization":
            shape = graph.shape(name)
            axis = nctx.attr("axis", -1)
            return name if shape and axis % len(shape) == len(shape) - 1 else None
        if node.op_type == "Add" and centred_input(nctx) is not None:
            return name  # x * s + (c - mean(x) * s): TensorFlow's folded LayerNorm
        if node.op_type == "Div" and is_unit_rows(nctx):
            return name
        if node.op_type in _LAYOUT:
            name = node.input[0]
        elif node.op_type in _CONSTANT_MAP:
            name = _signal_input(graph, node)
            if name is None:
                return None
        else:
            return None
    return None


def participation_ratio(cov: np.ndarray) -> float:
    """``(tr S)^2 / tr S^2`` of a covariance ``S`` (the sum of its squared entries is tr S^2)."""
    cov = np.asarray(cov, dtype=np.float64)
    square = float((cov * cov).sum())
    return float(np.trace(cov)) ** 2 / square if square > 0 else 0.0


def _row_dim(ctx: RuleContext, rows: str) -> float | None:
    """The participation ratio of the features of the normalized rows ``rows``: from their
    field, else their variances (independent features)."""
    shape = ctx.graph.shape(rows)
    if not shape or rows not in (ctx.known or {}):
        return None
    field = row_covariance(ctx, rows)
    if field is not None and field.head_axis is None and field.axis == len(shape) - 1:
        return participation_ratio(field.cov)
    nu = variances(ctx.known[rows], shape, len(shape) - 1)
    return participation_ratio(np.diag(nu))


def _keys_operand(ctx: RuleContext, qk) -> str | None:
    """The MatMul input that holds the keys of the Softmax of ``ctx``: B (``Q K^T``) for a
    softmax over the last axis, A (``K Q^T``, tf2onnx's Keras attention with dropout) over the
    one before; the reshapes between keep the last two axes (:func:`.logit_path.qk_matmul`)."""
    shape = ctx.in_shape(0)
    axis = ctx.attr("axis", -1 if ctx.opset >= 13 else 1) % len(shape)
    if axis == len(shape) - 1:
        return qk.input[1]
    return qk.input[0] if axis == len(shape) - 2 and ctx.opset >= 13 else None


def keys_dim(ctx: RuleContext) -> int | None:
    """d of the cosine law that a row's logits follow given its query (module docstring) for
    the Softmax of ``ctx``, when its keys are a dense layer of normalized rows of at most
    ``MAX_DIM`` effective features; else None."""
    graph = ctx.graph
    qk = qk_matmul(graph, ctx.node.input[0], passing=WINDOWED)
    if qk is None or ctx.known is None:
        return None
    try:
        keys = _keys_operand(ctx, qk)
        x = _dense_input(graph, keys) if keys else None
        rows = _normalised(ctx, x) if x else None
        r = _row_dim(ctx, rows) if rows else None
    except (RuleError, ValueError, IndexError) as exc:
        fall_back(exc, (RuleError,))
        return None
    if r is None or not np.isfinite(r) or r < 3 or r > MAX_DIM:
        return None
    return int(round(r))


__all__ = ["MAX_DIM", "keys_dim", "participation_ratio"]
