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

from .context import RuleContext
from .dense_rows import MAX_DIM, dense_rows_dim, participation_ratio
from .logit_path import WINDOWED, qk_matmul


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
    qk = qk_matmul(ctx.graph, ctx.node.input[0], passing=WINDOWED)
    if qk is None or ctx.known is None:
        return None
    keys = _keys_operand(ctx, qk)
    return dense_rows_dim(ctx, keys) if keys else None


__all__ = ["MAX_DIM", "keys_dim", "participation_ratio"]
