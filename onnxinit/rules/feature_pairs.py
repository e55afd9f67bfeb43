"""Correlation between the features of one row (the elements along a tensor's last axis that
share every other index: the features of one token), carried beside the moments.

The rules treat a row's features as independent, which is right for their variances but not
for a statistic over the row: a mean over features of squares (RMSNorm's and LayerNorm's mean
square) has ``Var[mean_d z_d] = (1/D^2) (sum_d Var z_d + sum_{d!=e} Cov(z_d, z_e))``. A dense
layer ``y = W^T x`` makes its outputs correlated even for independent inputs, ``C_y = W^T C_x
W``, with correlations of order ``1/sqrt(K)`` and random sign: the signed mean over pairs stays
near 0, but the squares add up, and for a Gaussian ``Cov(y_d^2, y_e^2) = 2 C_de^2``. Over a
row of D features these ``D^2`` squared correlations of ``1/K`` double the variance of the mean
square of a square layer's output (a transformer's attention and MLP outputs, the residual
stream built from them: Llama's RMSNorm mean square 0.7-0.9x of measured without them).

:class:`Pairs` keeps two numbers per tensor: ``signed``, the mean of ``Corr(x_d, x_e)`` over
pairs ``d != e`` of a row, and ``squared``, the mean of its square. :func:`carry` maps them
through each node after its rule (absent: independent features, 0 and 0):

* dense layers (MatMul/Gemm with a constant 2-D weight ``W[K, N]``): ``C_y = W^T C_x W`` with
  ``C_x`` described by its normalised traces ``a_1 = tr C_x / K``, ``a_2 = tr C_x^2 / K`` and
  ``B = W W^T`` by ``b_1, b_2`` likewise; ``C_x`` and ``B`` in generic position (free):
  ``tr C_y^2 = K (a_2 b_1^2 + a_1^2 b_2 - a_1^2 b_1^2)``, whose off-diagonal part gives
  ``squared``; ``signed`` from ``1^T C_y 1 = u^T C_x u``, ``u = W 1``;
* a Conv's output with its channels moved last (tf2onnx's NHWC Transpose, a Conv1D's Squeeze
  before it): a dense layer of the window's taps, taken as independent, ``W`` the kernel as
  [Cin kh kw, Cout], each tap with its channel's variance (:mod:`.conv_rows`);
* layout ops (Reshape, Transpose keeping the last axis, Slice, Gather, Concat, Split, Expand,
  Squeeze, Unsqueeze), per-feature affine maps (a constant added, multiplied, divided by),
  products by a per-row scalar (RMSNorm's ``x * 1/rms``) and products ``P V`` (the row is V's)
  keep them;
* a sum of two independent signals: ``C = C_a + C_b``: ``signed = (s_a v_a + s_b v_b) / (v_a +
  v_b)``, ``squared = (q_a v_a^2 + q_b v_b^2 + 2 s_a s_b v_a v_b) / (v_a + v_b)^2`` (v the mean
  variance of each);
* an element-wise function f of one signal (Pow, Sqrt, 1/x, GELU, SiLU...), Mehler:
  ``Cov(f(x_d), f(x_e)) = sum_n c_n^2 rho^n`` with the Hermite coefficients of f at the pooled
  moments, so ``signed = (c_1^2 s + c_2^2 q) / Var f`` and ``squared = (c_1^4 q + 3 c_2^4 q^2)
  / Var f^2``;
* a product of two independent signals ``a b``: ``Cov = C_a C_b + C_a mu_b^2 + C_b mu_a^2``;
* rows centred on their own mean (``x - mean(x)``, TensorFlow's folded LayerNorm ``x * s + (c -
  mean(x) * s)``; :mod:`.centred_rows`) get the ``signed`` that makes their row mean constant,
  and are normalised when ``s`` comes from the mean square of the centred x;
* a LayerNorm reads its input's covariance field where it has one over the last axis
  (:mod:`.channel_covariance`: a patch embedding of few inputs) for ``signed`` and ``squared``
  before it sets the excess (:func:`_from_field`); a constant Pad that leaves the last axis
  keeps them (its rows are the input's and rows of constants);
* ReduceL2/ReduceSumSquare over the last axis alone (the norm of a head's query or key in
  cosine attention) read ``squared`` (per head from the field where the input has one) and
  ``excess``: ``Var S = 2 tr C^2 + excess (tr C)^2 + 4 sum mu^2 nu`` (``reduce.row_energy``).
  Swin V2's rows are a LayerNorm's or a sum of them, of fixed or nearly fixed energy: the
  independent-features law read 0.71-1.48x on HF Swin V2's ReduceL2 (16 batches), this
  0.78-1.18x;
* ReduceMean/ReduceSum over the last axis alone (and GlobalAveragePool of an [N, T, D] tensor,
  which averages D: tf2onnx writes a Keras mean over features so) reads ``signed``: the rule's
  variance times
  ``1 + signed ((sum_d sqrt(V_d))^2 - sum_d V_d) / sum_d V_d``; a mean of the squares of a
  residual sum ``h + f`` (or of its centred rows) whose h is a LayerNorm's output of fixed
  energy takes that energy exactly instead (:mod:`.fixed_energy_rows`: the law's cancelling
  terms left a remainder 40-1400x the measured variance in post-norm transformers at opset 14).

Every other op ends them (independent features).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..moments import Moments
from .centred_rows import centred, centred_input, reduces_last_alone
from .correlated_means import summed_row
from .channel_covariance import covariance
from .covariance_readers import squared_correlation
from .context import RuleContext, RuleError
from .conv_rows import conv_channels_last
from .fixed_energy_rows import fixed_row_statistic
from .shifted_row_mean import shifted_row_mean
from .folded_norm import fixed_row_energy
from .fusion import fused_function
from .gram import correlated_gram
from .pair_readers import ENERGIES, MEANS, pairs_read
from .pair_origin import aligned
from .pair_algebra import (NONE, Pairs, concentration, dense, independent_sum, mixed_excess,
                           normalised, product, row_mean_factor, scale_kurtosis, shifted, square,
                           through_function)
from .marginal_shape import shaped_square, table_pairs
from .normalised_square_sum import normalised_square_sum
from .reduce import row_energy
from .token_excess import token_sum
from .row_mean_field import field_row_mean
from .row_norm import normalisation_degree, normalisation_tokens, without_casts
from .repeated_heads import copies, with_copies
from .square_sum_field import feature_covariance
from .shared_row_pairs import mean_square_aligned, mean_square_diagonal, shared_row_product
from .shared_row_pairs import squared_row


_NORMS = frozenset(("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization"))
_LAYOUT = frozenset(("Reshape", "Slice", "Gather", "Concat", "Split", "Expand", "Squeeze",
                     "Unsqueeze", "Identity", "Dropout", "Cast", "CastLike", "Neg", "Tile", "Pad"))


def _weight(ctx: RuleContext, inputs) -> np.ndarray | None:
    """W [K, N] of a dense layer over the last axis of its one signal input (input 0), or None."""
    op = ctx.node.op_type
    if inputs[0] is None or (len(inputs) > 1 and inputs[1] is not None):
        return None
    w = ctx.const(1)
    if w is None or np.ndim(w) != 2:
        return None
    if op == "Gemm":
        if ctx.attr("transA", 0):
            return None
        w = w.T if ctx.attr("transB", 0) else w
    return w


def _last_dim(ctx: RuleContext, i: int, out: bool = False) -> int | None:
    try:
        shape = ctx.out_shape(i) if out else ctx.in_shape(i)
    except RuleError:
        return None
    return shape[-1] if shape else None


def _keeps_rows(ctx: RuleContext) -> bool:
    """A layout op whose output rows are pieces or unions of the input's rows."""
    op = ctx.node.op_type
    a, b = _last_dim(ctx, 0), _last_dim(ctx, 0, out=True)
    if a is None or b is None:
        return False
    if op == "Transpose":
        perm = ctx.attr("perm")
        rank = len(ctx.in_shape(0))
        return perm is not None and list(perm)[-1] == rank - 1
    if op in ("Gather", "Split", "Slice", "Concat", "Expand", "Tile"):
        return True
    if op == "Pad":  # rows added (constants) or none, the features untouched
        return a == b and ctx.attr("mode", "constant") == "constant"
    return a % b == 0 or b % a == 0


def _reduced_last(ctx: RuleContext) -> int | None:
    """D when the node reduces its input's last axis (size D > 1) and nothing else."""
    try:
        x, y = ctx.in_shape(0), ctx.out_shape(0)
    except RuleError:
        return None
    if not x or x[-1] <= 1:
        return None
    if len(y) == len(x):
        return x[-1] if y[-1] == 1 and tuple(y[:-1]) == tuple(x[:-1]) else None
    return x[-1] if tuple(y) == tuple(x[:-1]) else None


_MEANS, _ENERGIES = MEANS, ENERGIES  # over the last axis: read the pairs
def carry(ctx: RuleContext, inputs: list, outputs: list, table: dict) -> tuple[list, list]:
    """(outputs, their Pairs) after the node's rule: ``table`` holds the Pairs known so far
    (by tensor; absent: independent features). A mean over the last axis has its variance
    corrected. Variances so large that their squares overflow a float (a network whose signal
    explodes past 1e154) carry no Pairs: the outputs are the rule's."""
    try:
        with np.errstate(over="raise"):
            outputs, found = _carry(ctx, inputs, outputs, table)
            xp = table.get(ctx.node.input[0]) if ctx.node.input else None
            if found and found[0] is not None and xp is not None and inputs[0] is not None:
                squared = squared_row(ctx, inputs[0], xp, outputs[0], found[0])
                if squared is not None:
                    outputs, found = [squared[0]] + outputs[1:], [squared[1]] + found[1:]
                shaped = shaped_square(ctx, inputs[0], xp, outputs[0])
                if shaped is not None:  # the square's covariances kept: signed rescaled
                    ratio = float(np.mean(outputs[0].var)) / float(np.mean(shaped.var))
                    found = [replace(found[0], signed=found[0].signed * ratio)] + found[1:]
                    outputs = [shaped] + outputs[1:]
            return outputs, found
    except (OverflowError, FloatingPointError):
        return outputs, [None] * len(outputs)


def _carry(ctx: RuleContext, inputs: list, outputs: list, table: dict) -> tuple[list, list]:
    if not pairs_read(ctx.graph):
        return outputs, [None] * len(outputs)
    known = [table.get(name) if name else None for name in ctx.node.input]
    node = ctx.node
    op = node.op_type if node.domain in ("", "ai.onnx") else None
    none = [None] * len(outputs)
    signals = [i for i, m in enumerate(inputs) if m is not None]
    pairs = [p if p is not None else NONE for p in known]
    if op == "Gather" and outputs[0] is not None and (found := table_pairs(ctx)) is not None:
        return outputs, [found] + none[1:]
    if op is None or not signals or outputs[0] is None:
        return outputs, none
    first = signals[0]
    p0, m0 = pairs[first], inputs[first]
    if op in _ENERGIES | _MEANS and _reads_normalised_rows(ctx):
        return outputs, none  # the reduce rule's law has the rows' whole covariance
    if op in _ENERGIES:
        d = _reduced_last(ctx) if reduces_last_alone(ctx) else None
        field = squared_correlation(ctx, node.input[0]) if d is not None else None
        squared = p0.squared if field is None else field  # the field's, per head: exact
        if d is not None and p0.excess == 0.0 and feature_covariance(
                ctx, m0, ctx.in_shape(0), (len(ctx.in_shape(0)) - 1,)) is not None:
            return outputs, none  # the reduce rule used the features' whole covariance
        if d is not None and (np.any(squared != 0.0) or p0.excess != 0.0):
            rank = len(ctx.in_shape(0))
            law = row_energy(m0, rank, d, bool(ctx.attr("keepdims", 1)), op, squared,
                             p0.excess)
            if law is not None:
                outputs = [law] + outputs[1:]
        return outputs, none
    if op in _MEANS:  # (a mean the reduce rule took with the features' covariance: not read)
        d = _reduced_last(ctx) if reduces_last_alone(ctx) else None
        fixed = fixed_row_statistic(ctx, outputs[0], table, d) if d else None  # exact: first
        fixed = shifted_row_mean(ctx, outputs[0], table, d) if d and fixed is None else fixed
        if fixed is not None:
            return [fixed] + outputs[1:], none
        if d is not None and not summed_row(ctx) and not _table_law(outputs[0]):
            m = outputs[0]
            field = field_row_mean(ctx, m, d)
            if field is not None:
                return [field] + outputs[1:], none
            if p0.signed != 0.0:
                m = replace(m, var=m.var * row_mean_factor(p0, m0, d), source=None, mixture=None)
                m = mean_square_diagonal(ctx, m, table, d)
            outputs = [mean_square_aligned(ctx, m, table, d)] + outputs[1:]
        return outputs, none
    if op in ("MatMul", "Gemm"):
        if len(signals) == 2 and (scores := correlated_gram(ctx, m0, p0.squared, outputs[0])):
            return [scores] + outputs[1:], none  # A A^T of correlated features: tr C^2
        if len(signals) == 2:  # P V: the rows are the right operand's, averaged over tokens
            excess = mixed_excess(inputs[0], inputs[1], pairs[1].excess)
            q = concentration(pairs[1].squared, _last_dim(ctx, 0, out=True) or 0)
            found = replace(pairs[1], excess=excess, skew=0.0, token_excess=(),
                            kurtosis=scale_kurtosis(excess, q))
            return outputs, [found if found != NONE else None] + none[1:]
        w = _weight(ctx, inputs)
        if w is None or signals != [0]:
            return outputs, none
        return outputs, [dense(p0, m0, w, outputs[0])] + none[1:]
    if op in ("Mul", "Div") and len(signals) == 2 and _normalises(ctx):
        x = pairs[0] if _last_dim(ctx, 0) != 1 else pairs[1]
        kept = normalisation_degree(ctx) or 0.0
        tokens = normalisation_tokens(ctx)
        return outputs, [normalised(x, outputs[0], _last_dim(ctx, 0, out=True), kept,
                                    tokens[1:] if tokens else None)]
    if op in _NORMS:
        p_in = _from_field(ctx, p0)
        return outputs, [normalised(p_in, outputs[0], _last_dim(ctx, 0, out=True))] + none[1:]
    if op in ("Sub", "Add") and len(signals) == 2:
        x = centred_input(ctx)
        if x is not None:
            found, fixed = _centred_pairs(ctx, x, table, outputs[0])
            return [fixed] + outputs[1:], [found] + none[1:]
    if op == "Transpose":
        conv = conv_channels_last(ctx)
        if conv is not None:
            return outputs, [dense(NONE, conv[1], conv[0], outputs[0])]
    f = ctx.fusion
    if f is not None and len(signals) == 2 and op in ("Add", "Sub", "Mul", "Div", "Pow"):
        t = table.get(f.tensor) or NONE
        found = through_function(t, f.moments, ctx, fused_function(op, f.chain_a, f.chain_b))
        return outputs, [found] + none[1:]
    if op == "Mul" and len(signals) == 2:
        found = product(pairs[0], inputs[0], pairs[1], inputs[1])
        shared = shared_row_product(ctx, inputs, outputs[0], table, found)
        if shared is not None:
            return [shared[0]] + outputs[1:], [shared[1]]
    if all(p == NONE for p in pairs):
        return outputs, none
    if op in _LAYOUT or op == "Transpose":
        if not _keeps_rows(ctx):
            return outputs, none
        if op == "Concat" and len(signals) > 1:
            a, b = signals[0], signals[1]
            p0 = independent_sum(pairs[a], inputs[a], pairs[b], inputs[b])
        if op == "Reshape" and (g := copies(ctx)) > 1:  # repeated key/value heads merged
            p0 = with_copies(p0, _last_dim(ctx, 0, out=True), g)
        return outputs, [p0] * len(outputs)
    if op in ("Add", "Sub", "Mul", "Div") and len(signals) == 2:
        a, b = inputs[0], inputs[1]
        da, db = _last_dim(ctx, 0), _last_dim(ctx, 1)
        if node.input[0] == node.input[1]:
            found = through_function(p0, m0, ctx) if op == "Mul" else None
            return outputs, [found if found is not None else square(p0, m0)]
        if op in ("Add", "Sub"):
            one = aligned(ctx.graph, node.input[0], node.input[1])  # V + P V: one pattern
            return outputs, [token_sum(independent_sum(pairs[0], a, pairs[1], b, one),
                                       pairs[0], a, pairs[1], b)]
        if db == 1 and (da or 0) > 1:  # times / by a per-row scalar: correlations kept
            return outputs, [pairs[0]]
        if da == 1 and (db or 0) > 1 and op == "Mul":
            return outputs, [pairs[1]]
        if op == "Mul":
            return outputs, [product(pairs[0], a, pairs[1], b)]
        return outputs, none
    if op in ("Add", "Sub", "Mul") or (op == "Div" and first == 0):  # per-feature affine
        return outputs, [shifted(p0, m0, outputs[0]) if op in ("Add", "Sub") else p0]
    found = through_function(p0, m0, ctx)
    if found is not None:
        return outputs, [found] + none[1:]
    return outputs, none


def _from_field(ctx: RuleContext, p: Pairs) -> Pairs:
    """``p`` with its correlations read from the covariance field of the node's input where it
    carries one over its last axis (:mod:`.channel_covariance`: a patch embedding of few inputs,
    whose features' correlations are of low rank): ``signed`` and ``squared`` the mean
    correlation of two distinct features and its mean square, ``R = S / sqrt(diag S diag S^T)``."""
    shape = ctx.graph.shape(ctx.node.input[0])
    f = covariance(ctx, ctx.node.input[0])
    if f is None or not shape or f.axis != len(shape) - 1 or f.head_axis is not None:
        return p
    d = np.sqrt(np.maximum(np.diag(f.cov), 1e-300))
    r = f.cov / np.outer(d, d)
    n = r.shape[0]
    if n < 2:
        return p
    off = r[~np.eye(n, dtype=bool)]
    return replace(p, signed=float(off.mean()), squared=float(np.mean(off**2)))


def _reads_normalised_rows(ctx: RuleContext) -> bool:
    """The reduce sums the squares of a dense layer of a LayerNorm's rows, which its rule
    integrates as a ratio of quadratic forms (:mod:`.normalised_square_sum`)."""
    rank = len(ctx.graph.shape(ctx.node.input[0]) or ())  # None: shapes left unknown
    if not rank or not reduces_last_alone(ctx):
        return False
    return normalised_square_sum(ctx, (rank - 1,), rank, bool(ctx.attr("keepdims", 1))) is not None


def _table_law(m: Moments | None) -> bool:
    """``m`` is a mean square's exact law over a table's rows (:mod:`.table_rows`): the
    features' correlations are in it already."""
    chain = m.source.chain if m is not None and m.source is not None else ()
    return bool(chain) and chain[0].key[0] == "TableRows"


def _centred_pairs(ctx: RuleContext, x: str, table: dict, y: Moments) -> tuple[Pairs, Moments]:
    """The Pairs of x's rows centred (:mod:`.centred_rows`), and normalised when the node is
    TensorFlow's folded LayerNorm, whose per-row scale comes from the mean square of the
    centred x; then its rows' fixed energy (:mod:`.folded_norm`) sets y's moments."""
    d = _last_dim(ctx, 0, out=True)
    found = centred(table.get(x) or NONE, y, d)
    for i, shift in ((0, 1), (1, 0)):
        for s in _producer_inputs(ctx, ctx.node.input[i]):
            base = _mean_square_base(ctx, s)
            node_id = ctx.graph.producer.get(base) if base else None
            if node_id and centred_input(ctx.for_node(node_id)) == x:
                fixed = fixed_row_energy(ctx, y, s, ctx.node.input[shift])
                return normalised(found, y, d), y if fixed is None else fixed
    return found, y


def _producer_inputs(ctx: RuleContext, name: str) -> list[str]:
    node_id = ctx.graph.producer.get(name)
    return list(ctx.graph.node(node_id).input) if node_id else []


def _normalises(ctx: RuleContext) -> bool:
    """The node is ``x * s`` or ``x / s`` with ``s`` a function of the mean over the last axis
    of ``x^2`` alone (RMSNorm and LayerNorm written out: ``x / sqrt(mean(x^2) + eps)``)."""
    x_name, s_name = ctx.node.input[0], ctx.node.input[1]
    if ctx.node.op_type == "Mul" and _last_dim(ctx, 0) == 1:
        x_name, s_name = s_name, x_name
    x = without_casts(ctx, x_name)
    return _mean_square_base(ctx, s_name) == x


def _mean_square_base(ctx: RuleContext, name: str) -> str | None:
    """b when ``name`` is a function of the mean over the last axis of ``b^2`` alone, walking
    up through nodes of one signal input; else None."""
    graph = ctx.graph
    for _ in range(8):
        node_id = graph.producer.get(name)
        if not node_id:
            return None
        node = graph.node(node_id)
        signals = [n for n in node.input if n and graph.is_signal(n)]
        if len(signals) != 1 and not (len(signals) == 2 and signals[0] == signals[1]):
            return None
        if node.op_type in _MEANS:
            sq_id = graph.producer.get(signals[0])
            # over the last axis alone: a mean of squares over the tokens of [N, T, D] is
            # not a row's, even when T == D gives it the same shape
            if not sq_id or not reduces_last_alone(ctx.for_node(node_id)):
                return None
            sq = graph.node(sq_id)
            if sq.op_type == "Pow" or (sq.op_type == "Mul" and sq.input[0] == sq.input[1]):
                return without_casts(ctx, sq.input[0])
            return None
        name = signals[0]
    return None


__all__ = ["Pairs", "carry"]
