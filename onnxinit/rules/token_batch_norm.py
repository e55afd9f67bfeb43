"""Token-field carrier of BatchNormalization (training semantics: batch statistics), for a
token field on axes other than the channel axis 1: a ``BatchNorm1d`` over the rows of
``[N*T, F]`` (a dense layer's output flattened to batch-times-tokens rows and normalised per
feature, as LeViT's ``Linear`` + ``BatchNorm1d`` export), or a ``BatchNorm2d`` over tokens laid
out on a map.

Per channel the node subtracts the mean ``m`` of its ``M`` elements (N samples times the other
axes) and divides by their root mean square ``sqrt(Q / M)``, ``Q = sum (x - m)^2``. With ``n``
tokens per group, the ``K = M / n`` groups independent (the samples: the field says nothing
across them) and Gaussian, ``x_g ~ N(0, C)``: the centred values ``y`` split into the ``K - 1``
contrasts between groups (covariance ``C`` each) and the groups' common part, whose token mean
the batch mean removes (``C0 = P C P``, ``P = I - 11^T / n``). With ``1/Q = int_0^inf e^{-uQ}
du`` and ``E[y y^T e^{-u y^T y}] = det(I + 2u S)^{-1/2} S (I + 2u S)^{-1}``:

    C'  ~  int_0^inf D(u) [(K-1)/K  C (I + 2uC)^{-1}  +  1/K  C0 (I + 2uC0)^{-1}] du,
    D(u) = det(I + 2uC)^{-(K-1)/2} det(I + 2uC0)^{-1/2}

(eigenvalues of ``C`` and ``C0``; one integral over ``u``). Without the division's
randomness this is ``C - r 1^T - 1 r^T + Var m`` (``r_s = sum_u C[s, u] / M``): a per-sample
component shared by every token loses ``1/K`` of its variance to the batch mean; the division
takes a further share where that component dominates ``Q`` (few samples: ``Q`` then moves with
it), which a constant divisor misses (LeViT's stage 1, 4 tokens of batch 8: the token-specific
share 1.3x after each such node, measured). An input already centred over the same elements (:func:`centred_over_batch`: linear maps,
layout ops and sums of earlier BatchNormalization outputs, a residual stream of them in LeViT)
makes the samples dependent: its field ``C_in = C - (C - C0) / K`` lost the common part's
token mean already, so the law reads the independent groups' ``C = (K C_in - P C_in P) / (K -
1)`` and the batch mean removes nothing twice. What is not modelled: ``eps`` in the divisor,
the channels' different ``C`` (one field per tensor, as everywhere), tokens correlated across
samples, and an input centred only in part (an element-wise function of a centred tensor:
taken as independent samples).
"""

from __future__ import annotations

import numpy as np

from .token_carriers import carrier
from .token_field import attach, sigma, token_axes, without


def _centred_weights(eigenvalues: np.ndarray, mean_eigenvalues: np.ndarray, groups: int):
    """``int D(u) lambda / (1 + 2u lambda) du`` for the contrasts' and the common part's
    eigenvalues (module docstring), on a log grid of ``u`` scaled to ``E[Q]``."""
    total = (groups - 1) * eigenvalues.sum() + mean_eigenvalues.sum()
    u = np.logspace(-6.0, 8.0, 1401) / total
    two_u = 2.0 * u[:, None]
    log_d = (-(groups - 1) / 2 * np.log1p(two_u * eigenvalues).sum(axis=1)
             - 0.5 * np.log1p(two_u * mean_eigenvalues).sum(axis=1))
    d = np.exp(log_d) * u  # du = u dlog(u)
    step = np.log(u[1] / u[0])

    def integral(lam):
        f = d[:, None] * lam / (1.0 + two_u * lam)
        return (f[1:] + f[:-1]).sum(axis=0) * step / 2

    return integral(eigenvalues), integral(mean_eigenvalues)


def batch_normalized(cov: np.ndarray, groups: int) -> np.ndarray:
    """The token covariance (up to scale) of ``n`` tokens of one of ``K = groups`` independent
    Gaussian groups after the mean over all ``K n`` elements is subtracted and they are divided
    by their root mean square (module docstring)."""
    n = cov.shape[0]
    cov = (cov + cov.T) / 2
    centre = np.eye(n) - 1.0 / n
    common = centre @ cov @ centre
    lam, vec = np.linalg.eigh(cov)
    lam0, vec0 = np.linalg.eigh(common)
    lam, lam0 = np.maximum(lam, 0.0), np.maximum(lam0, 0.0)
    w, w0 = _centred_weights(lam, lam0, groups)
    return ((groups - 1) / groups) * (vec * w) @ vec.T + (vec0 * w0) @ vec0.T / groups


# ops whose output is centred over the batch (per channel, over every other axis) when their
# signal inputs are: layout ops and maps that mix or scale features linearly
_KEEPS_CENTRING = {"Identity", "Dropout", "Cast", "Reshape", "Flatten", "Transpose", "Squeeze",
                   "Unsqueeze", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Neg"}
_MAX_DEPTH = 400


def centred_over_batch(graph, tensor: str) -> bool:
    """Whether ``tensor``'s mean over the batch and every axis but its features is exactly 0
    for every batch (up to a constant): it is a training-mode BatchNormalization's output (a
    BatchNorm2d's over N, H, W as well), or reached from such outputs only through layout ops,
    products with constants over the features (MatMul, Gemm, Mul, Div), sums of such tensors
    and constants. A Split, Slice or Gather (a subset of the elements), a product of two
    signals or any other op: not centred."""
    memo: dict[str, bool] = {}

    def walk(name: str, depth: int) -> bool:
        if name in memo:
            return memo[name]
        node_id = graph.producer.get(name)
        if node_id is None or depth > _MAX_DEPTH:
            return False
        node = graph.node(node_id)
        op = node.op_type if node.domain in ("", "ai.onnx") else None
        if op == "BatchNormalization":
            found = name == node.output[0]
        elif op in _KEEPS_CENTRING:
            ins = [i for i in node.input if i]
            ins = ins[:1] if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze") else ins
            signals = [i for i in ins if graph.value(i) is None]
            linear = bool(signals) and (
                op not in ("Mul", "Div", "MatMul", "Gemm") or len(signals) == 1) and (
                op != "Div" or signals[0] == ins[0])  # a product with a constant, x / c
            found = linear and all(walk(i, depth + 1) for i in signals)
        else:
            found = False
        memo[name] = found
        return found

    return walk(tensor, 0)


@carrier("BatchNormalization")
def _batch_norm(ctx, inputs, outputs):
    """The field through the batch-statistics normalisation (module docstring); dropped when
    a token axis is the channel axis. The running statistics carry none."""
    x = inputs[0]
    rest = [without(m) for m in outputs[1:]]
    if x is None or x.tokens is None:
        return [without(outputs[0])] + rest
    shape = ctx.in_shape(0)
    rank = len(shape)
    axes = token_axes(x.tokens, rank)
    if axes is None or rank < 2 or 1 in axes:
        return [without(outputs[0])] + rest
    n, stride = x.tokens.n, x.tokens.stride
    sig = sigma(x, shape, axes, n, stride)
    elements = int(np.prod(shape, dtype=np.int64)) // int(shape[1])
    if sig is None or elements % n:
        return [without(outputs[0])] + rest
    groups = elements // n
    if groups > 1 and centred_over_batch(ctx.graph, ctx.node.input[0]):
        centre = np.eye(n) - 1.0 / n
        sig = (groups * sig - centre @ sig @ centre) / (groups - 1)
    out = attach(outputs[0], ctx.out_shape(0), axes, batch_normalized(sig, groups), stride)
    return [out] + rest


__all__ = ["batch_normalized", "centred_over_batch"]
