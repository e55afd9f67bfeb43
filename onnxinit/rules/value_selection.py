"""Attention that selects the values it is correlated with: ``O = P V`` where the keys that set
P and the values V are linear maps of the same tokens (``k = W_k^T x``, ``v = W_v^T x``).

The P V rule (attention.py) takes P and V as independent. But given the query q, a key's logit
``a_j = s q . k_j`` and its value ``v_j`` share the token x_j: ``c_d = Cov(v_jd, a_j | q) =
s sum_e q_e C_de`` with ``C = W_v^T S W_k`` per head (S the covariance of x's features: their
field where x is a dense layer's output, else ``diag(nu_x)``). Write
``v_j = mu + (c / sigma^2) a~_j + eps_j`` (``a~_j`` the logit less its mean, ``sigma^2 =
Var(a_j | q)``, eps independent of the logits, variance ``nu - c^2 / sigma^2``); then, for
Gaussian keys and values, exactly::

    E[(O_d - mu_d)^2 | q] = nu_d S_2 + c_d^2 (E[(sum_j p_j z_j)^2] - S_2) / sigma^2

with ``z_j = a~_j / sigma`` and ``S_2 = E[sum_j p_j^2]`` (the first term is the rule's). Over
the queries ``c_d^2 / sigma^2`` is ``sum_e E[q_e^2] C_de^2 / sum_e E[q_e^2] nu_ke``, taken as
``R_d = sum_e C_de^2 / sum_e nu_ke`` (q's features of equal power), so the rule's variance gains::

    Var_sel = G R,   G = E[(sum_j p_j z_j)^2] - E[sum_j p_j^2],   R = mean_{h,d} R_hd

G is sampled from the softmax's input (its rows' means: position biases, masks; the row's mean
variance; a mask computed from the token ids: rows of its samples, id_masks.py), ``G ~ sigma^2`` for small logits and G ~ 1 at sigma^2 ~ 1 (T5's unscaled logits: the
selected values' mean moves with the query by ``c``; P V 16% low without this). sigma^2 is the
spread of a row's logits given the query: the part of the logits' variance common to a row's
keys (their token field's mean off-diagonal, as the Softmax rule removes it: a key bias
``q . b_k``, a component every token of a sample shares) moves no probability (with the whole
variance, P V read 1.10-1.38x on keys of a common bias, 1.11x on Keras' ViT). The scale of the
logits cancels (it is in both c and sigma), so only the key and value projections are read: a
MatMul (or Gemm) with a constant weight, a bias Add, then layout ops (Reshape into heads,
Transpose, the Unsqueeze/Expand of grouped-query attention, a scalar Mul or Div: keys scaled
before Q K^T) to K^T [.., H, d_k, n] and V [.., H, n, d_v], heads splitting the projection's
columns head-major, or one head without a split (a plain 3-D MatMul of the tokens: Keras'
``Attention`` over Dense projections; P V 0.84-0.90x without the term); a fused projection picked by a Gather after a Reshape that splits its
columns (Swin's ``qkv[i]``; torch's packed ``in_proj``, through Unsqueeze, Transpose and
Squeeze: ``nn.MultiheadAttention``'s P V 0.68x -> 0.99x with tied keys and values).

Additive scores ``sum_d w_d tanh(q_d + k_d)`` whose keys are the values: R from
:func:`.additive_scores.additive_ratio`, the same G.

Not modelled: keys rotated per position (rotary embeddings: no term), projections fused and
split by a Split (no term), q's features of unequal power or correlated (keys of low rank and
logits of variance ~1 with tied keys and values: up to 1.25x high), the query's own key,
non-Gaussian tokens beyond this: where the keys are a dense layer of a LayerNorm's rows
(:mod:`.normalised_keys`), G's draws follow the same cosine law as the Softmax's (the
regression of v on the logit stays linear for rows on a sphere), but the residual eps is
taken independent of the logit (on a sphere it shrinks where the logit is large), and
RMS-normalised tokens keep Gaussian draws (the term then a few percent high).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..moments import Moments
from .additive_scores import additive_ratio
from .channel_covariance import row_covariance
from .context import RuleContext
from .head_projections import head_blocks, keys_first, projection
from .id_masks import affine
from .logit_law import cosine_deviates, cosine_of
from .logit_path import qk_matmul as _qk_matmul
from .normalised_keys import keys_dim
from .softmax import MASK_GAP, shared_part
from .token_field import token_axes

_ROWS = 16  # softmax rows sampled for G
_DRAWS = 1024  # draws per row (of 8 keys; fewer for wider rows, at least _MIN_DRAWS:
_KEY_DRAWS = 8 * _DRAWS  # a draw's weighted mean over k keys varies as 1/k, so its error
_MIN_DRAWS = 128  # stays as it is at 8 keys, and BERT's rows of 128 cost 1/8)


def selection_ratio(wk: np.ndarray, wv: np.ndarray, nu_x: np.ndarray) -> float:
    """``R = mean_{h,d} sum_e C_de^2 / sum_e nu_ke``, ``C = W_v,h^T S W_k,h``,
    ``nu_ke = (W_k,h^T S W_k,h)_ee``, ``S = diag(nu_x)`` for a vector ``nu_x`` [D] (x's
    features independent), else the features' covariance ``nu_x`` [D, D] (x a dense layer's
    output: its field); wk [H, D, d_k], wv [H, D, d_v]."""
    # as batched matrix products (einsum's own loop over three operands was 10 ms a head set)
    if np.ndim(nu_x) == 2:
        c = np.swapaxes(wv, 1, 2) @ (nu_x @ wk)
        nu_k = np.einsum("hie,hie->h", wk, nu_x @ wk)
    else:
        c = np.swapaxes(wv * nu_x[None, :, None], 1, 2) @ wk
        nu_k = (wk * wk).sum(axis=2) @ nu_x
    return float(np.mean((c**2).sum(axis=-1) / np.maximum(nu_k[:, None], 1e-300)))


def _key_covariance(logits: Moments, shape, axis: int) -> np.ndarray | None:
    """The logits' token covariance along the keys' ``axis`` (per unit of variance), if any."""
    t = logits.tokens
    if t is None or token_axes(t, len(shape)) != [axis] or shape[axis] != t.n:
        return None
    return t.cov


def selection_gain(logits: Moments, shape, rng: np.random.Generator,
                   keys_first: bool = False, cosine: int | None = None) -> float:
    """``G = E[(sum_j p_j z_j)^2] - E[sum_j p_j^2]``, p the softmax of ``m_j + sigma z_j``,
    z standard normal (``cosine``: of the cosine law of d, keys of normalized rows,
    :mod:`.normalised_keys`), averaged over up to ``_ROWS`` rows of the logits (each row's
    means and mean unmasked variance; ``keys_first``: the keys on the logits' axis -2).
    ``(mean_j z_j)^2`` (expectation 1/n over n unmasked keys) is the control variate."""
    shape = tuple(shape)
    mean = np.broadcast_to(np.asarray(logits.mean, dtype=np.float64), shape)
    var = np.broadcast_to(np.asarray(logits.var, dtype=np.float64), shape)
    cov = _key_covariance(logits, shape, len(shape) - (2 if keys_first else 1))
    if keys_first:
        mean, var = np.swapaxes(mean, -1, -2), np.swapaxes(var, -1, -2)
        shape = mean.shape
    n = shape[-1]
    lead = shape[:-1]
    rows = int(np.prod(lead)) if lead else 1
    pick = np.unique(np.linspace(0, rows - 1, min(_ROWS, rows)).astype(np.int64))
    index = np.unravel_index(pick, lead) if lead else ()
    mean, var = mean[index], var[index]
    mean, var = mean.reshape(-1, n), var.reshape(-1, n)
    if cov is not None:  # the part common to a row's logits moves no probability
        var = var * np.diag(cov)
        var = np.maximum(var - shared_part(mean, var, cov)[:, None], 0.0)
    gains = []
    for m, v in zip(mean, var):
        finite = np.isfinite(m)
        if not finite.any():
            continue
        keep = finite & (m >= np.max(m[finite]) - MASK_GAP)
        k = int(keep.sum())
        if k < 2:
            continue
        sigma = float(np.sqrt(np.mean(v[keep])))
        z = rng.standard_normal((min(_DRAWS, max(_MIN_DRAWS, _KEY_DRAWS // k)), k))
        if cosine is not None:
            z = cosine_of(z, cosine_deviates(cosine))
        # in place where it computes the same values (each temporary is a fresh megabyte)
        p = np.multiply(z, sigma)
        p += m[keep]
        p -= p.max(axis=1, keepdims=True)
        np.exp(p, out=p)
        p /= p.sum(axis=1, keepdims=True)
        z_mean = z.mean(axis=1)
        weighted = np.multiply(p, z, out=z).sum(axis=1)
        gains.append(np.mean(weighted**2 - z_mean**2) + 1.0 / k
                     - np.mean(np.multiply(p, p, out=p).sum(axis=1)))
    return max(float(np.mean(gains)), 0.0) if gains else 0.0


def _keys_law(ctx: RuleContext, softmax) -> int | None:
    """d of the cosine law of the keys of ``softmax`` (:func:`.normalised_keys.keys_dim`)."""
    node_id = ctx.graph.producer.get(softmax.output[0])
    return None if node_id is None else keys_dim(replace(ctx.for_node(node_id), known=ctx.known))


def selection_variance(ctx: RuleContext, softmax) -> float:
    """``Var_sel = G R`` (module docstring) for the P V node of ``ctx`` whose P is the Softmax
    node ``softmax`` of logits from Q K^T; 0 when the keys and values are not found to be
    linear maps of one tensor with known moments."""
    graph, known = ctx.graph, ctx.known
    if known is None:
        return 0.0
    logits_name = softmax.input[0]
    qk = _qk_matmul(graph, logits_name)
    if qk is None and logits_name in known:  # additive scores whose keys are the values
        ratio = additive_ratio(ctx, logits_name, ctx.node.input[1])
        shape = graph.shape(logits_name)
        return 0.0 if ratio is None or not shape else ratio * selection_gain(
            known[logits_name], shape, ctx.rng())
    if qk is None or logits_name not in known:
        return 0.0
    logit_shape = graph.shape(logits_name)
    first = keys_first(softmax, logit_shape)  # tf2onnx's K Q^T, the softmax over axis -2
    if first is None:
        return 0.0
    k_name = qk.input[0] if first else qk.input[1]
    k_shape, v_shape = graph.shape(k_name), graph.shape(ctx.node.input[1])
    key, value = projection(ctx, k_name), projection(ctx, ctx.node.input[1])
    if not k_shape or not v_shape or key is None or value is None or key[0] != value[0]:
        return 0.0
    x = known.get(key[0])
    wk = head_blocks(key[1], k_shape[-1] if first else k_shape[-2])
    wv = head_blocks(value[1], v_shape[-1])
    if x is None or wk is None or wv is None or wk.shape[:2] != wv.shape[:2]:
        return 0.0
    x_shape = graph.shape(key[0])
    if not x_shape or x_shape[-1] != wk.shape[1]:
        return 0.0
    try:
        nu = np.broadcast_to(np.asarray(x.var, dtype=np.float64), x_shape)
    except ValueError:  # statistics laid out otherwise (rows, a higher rank)
        return 0.0
    nu_x = nu.reshape(-1, x_shape[-1]).mean(axis=0)
    field = row_covariance(ctx, key[0])  # x's features correlated (a dense layer's output)
    if (field is not None and field.axis == len(x_shape) - 1 and field.head_axis is None
            and field.cov.shape == (x_shape[-1],) * 2):
        nu_x = field.cov
    ratio = selection_ratio(wk, wv, nu_x)
    if ratio <= 0:
        return 0.0
    logits, rows_shape = known[logits_name], logit_shape
    mixed = affine(ctx, logits_name)  # masked by the token ids: each sample's rows (id_masks)
    if mixed is not None and mixed[1].shape[1:] == tuple(logit_shape[1:]):
        logits, rows_shape = Moments(mixed[1], mixed[2]), mixed[1].shape
    try:
        gain = selection_gain(logits, rows_shape, ctx.rng(), first, _keys_law(ctx, softmax))
    except ValueError:  # statistics laid out otherwise (per-window rows)
        return 0.0
    return ratio * gain


__all__ = ["selection_gain", "selection_ratio", "selection_variance"]
