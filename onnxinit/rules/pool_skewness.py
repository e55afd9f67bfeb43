"""The non-Gaussian part of a global average pool of ``f(z)``, ``z`` a depthwise Conv's output.

A depthwise Conv sums few inputs per output (9 or 25 taps, fewer on a small map), and those
inputs are skewed and heavy-tailed (a ReLU or HardSwish of a Gaussian), so its output is far
from Gaussian, and not independently so at each position: neighbours share inputs, and a large
input raises the energy of every output that reads it. A squeeze-excite block then averages
``f(z)`` (HardSwish, SiLU, ReLU) over the map. The Gaussian model of ``z`` (with its exact
covariance) misses the energy correlation of the positions: measured on MobileNetV3-small at
64x64 it explains 0.72-0.92 of the pooled variance; with the first-order Edgeworth terms below
(cumulants measured) 0.96-1.02.

For ``E[f(z_p) f(z_q)]`` the first-order Edgeworth expansion adds to the Gaussian value, for
the mixed joint cumulants (the only ones that do not factor into the marginals),

    1/2 k(z_p, z_p, z_q) E f''(z_p) E f'(z_q) + 1/2 k(z_p, z_q, z_q) E f'(z_p) E f''(z_q)
    + 1/4 k(z_p, z_p, z_q, z_q) E f''(z_p) E f''(z_q),

so the variance of the mean over the K positions gains, per channel,

    dVar = E f' E f'' S3 + 1/4 (E f'')^2 S4,
    S3 = (1/K^2) sum_{p,q} k(z_p, z_p, z_q),   S4 = (1/K^2) sum_{p,q} k(z_p, z_p, z_q, z_q),

with ``E f' = E[t f(z)] / s``, ``E f'' = E[(t^2 - 1) f(z)] / s^2`` (Stein; z = m + s t) under
the Gaussian of ``z``. For ``z_p = a sum_u W_pu x_u + b`` (a Conv of kernel W per channel, then
a BatchNorm's affine map a, b) with inputs independent across positions, of cumulants k3_u,
k4_u (their distribution: the input's source, a Gaussian through its element-wise chain, per
position class, about that class's mean: a zero-padded border's pattern is the same in every
sample, no fluctuation),

    S3 = a^3 sum_u k3_u c2_u c1_u / K^2,   S4 = a^4 sum_u k4_u c2_u^2 / K^2,
    c1_u = sum_p W_pu,   c2_u = sum_p W_pu^2

(column sums of the kernel over the output positions: a transposed convolution of ones,
per axis). Closed forms, per channel: the cost is a few quadratures over channels and one
small einsum, next to nothing beside the Conv rule. Applied only where a GlobalAveragePool (or a
ReduceMean over every spatial axis: tf2onnx's Keras squeeze-excite pool) reads
``f(BatchNorm(Conv))`` or ``f(Conv)`` of a depthwise Conv (one input channel per group), ``f``
element-wise ops or a binary node fused from them (``x * Relu6(x + 3) / 6``); other pools are
unchanged.

The pairs p != q are also carried in ``f(z)``'s spatial correlation (:mod:`.pool_pairs`), so
that the layers after it see them; where the pool's input holds them
(``Correlation.energy_pairs``) the pool adds only the terms p = q, ``S3 = a^3 sum_u k3_u c3_u /
K^2``, ``S4 = a^4 sum_u k4_u c4_u / K^2`` (``c3``, ``c4``: column sums of the kernel's cubes
and fourth powers). Where a BatchNorm comes between and the depthwise Conv sums at
most :data:`.edgeworth.FEW_TERMS` inputs per output (every depthwise kernel up to 8x8), the
cells of ``f(z)`` hold the terms of each position with itself already (:mod:`.edgeworth`,
exact in the marginal density rather than first order), so the pool leaves them out: ``c2 c1
- c3`` and ``c2^2 - c4`` over every pair, nothing beyond the field's pairs. (Without the
BatchNorm, an eval-mode export, :mod:`.edgeworth` corrects the cells too and the pool still
adds them: unchanged, not measured.) Measured on EfficientNet-B0 at 64x64 (16 batches of 8),
the pools of the 4x4 maps of stage 4 read 0.925x, 0.884x with both, 0.847x, 0.823x with the
cells' terms only: there the first-order terms of a position with itself (11% of its
variance where the marginal expansion gives 5%) had made up for the covariance of distinct
positions that :mod:`.pool_pairs` leaves out (docs/design.md, branch bnedge). The energy every position of
a sample shares (a per-sample scale, growing with depth in MobileNetV3) is
:mod:`.sample_energy`'s term; its part of the carried kurtosis (``3 eta``) is
left out here. Not modelled: the inputs' other joint cumulants across positions, and the
Edgeworth terms of higher order.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from ..moments import Moments
from ..spatial import positions
from .context import RuleContext, RuleError
from .fusion import common_ancestor
from .chain_cumulants import chain_cumulants, cumulants
from .kurtosis import NODES, WEIGHTS, chain_start, chain_values, excess_kurtosis
from .linear import begin_pads
from .sample_energy import law
from .stationary import stationary
from .edgeworth import FEW_TERMS

# element-wise ops a pool's input may go through from the Conv (SiLU's Mul(z, Sigmoid(z)) too)
_ELEMENTWISE = {"Relu", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Mul", "Clip", "Elu",
                "LeakyRelu", "Gelu", "Softplus", "Mish", "Identity", "Swish"}

_T, _W = NODES, WEIGHTS
# the conv input's cumulants per position class up to this many cells (channels x classes),
# beyond it pooled per channel: the cost is ~100 quadrature nodes per cell, and on the maps
# this leaves pooled (224x224 inputs) the border's share is small. MobileNetV3-small at 224:
# 91.1% of tensors within 10% all per class, 90.4% at this budget (analyze 2.7 -> 1.4 CPU s);
# EfficientNet-B0 at 224 83.6% either way (10.0 -> 5.1 s)
CLASS_CELLS = 1 << 15
# the weighted power sums the rule needs, one matrix product: rows 1, t, t^2 - 1
_BASIS = np.stack([_W, _W * _T, _W * (_T**2 - 1)])


def _channel(m: Moments, c: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    return m.expand_rank(rank).values_along(1, c)


def _source_cumulants(source, c: int, rank: int):
    """Per channel and position class, central k3, k4 of ``f(z)``, z ~ N(m, s^2) the source's
    Gaussian and f its chain, on the 96-node rule (the conv input per position class: many
    cells); None where f is not finite."""
    mean, var, chain = source
    found = chain_cumulants(mean, var, chain, c, rank, coarse=True)
    if found is None:
        return None
    shape = np.shape(mean)[1:]
    return tuple(a.reshape(shape) for a in found[1:])


def _source_expectations(source, c: int, rank: int):
    """Per channel (and position class, :func:`_class_source`), over ``f(z)``, z ~ N(m, s^2)
    the source's Gaussian and f its chain: (E[f], E[t f], E[(t^2 - 1) f], central k2, k3, k4
    of f(z)) as ``[C, ...]`` arrays laid out like the source's statistics without the batch
    axis, t = (z - m) / s; None where f is not finite."""
    mean, var, chain = source
    y, _ = chain_values(mean, var, chain, c, rank)
    if not np.all(np.isfinite(y)):
        return None
    e, et, ett = _BASIS @ y
    shape = np.shape(mean)[1:]
    return tuple(a.reshape(shape) for a in (e, et, ett) + cumulants(y, _W))


def _input_cumulants(ctx: RuleContext, in_name: str, source, c: int, rank: int):
    """k3, k4 of the conv input ``f(u)``, its chain integrated over the scale mixture of u's
    excess kurtosis (:mod:`.kurtosis`: u is a sum of heavy-tailed values, not a Gaussian),
    less the ``3 eta`` of the scale every position of a sample shares (:mod:`.sample_energy`
    adds that one over all pairs of positions)."""
    start = chain_start(ctx.graph, in_name, ctx)
    kappa = excess_kurtosis(ctx, start)
    shared = law(ctx, start)
    if kappa is not None and shared is not None:
        kappa = kappa - 3 * shared[0]
    if kappa is None or kappa.shape != (c,) or not np.any(kappa > 0):
        return None
    found = chain_cumulants(*source, c, rank, np.maximum(kappa, 0) / 3, coarse=True)
    if found is None:
        return None
    return tuple(a.reshape(np.shape(source[0])[1:]) for a in found[1:])


def _same_operand(graph, node) -> bool:
    """A Mul of z and an element-wise function of z (SiLU's z * Sigmoid(z)), or by a constant."""
    a, b = node.input[0], node.input[1]
    if graph.is_constant(b) or graph.is_constant(a):
        return True
    for u, v in ((a, b), (b, a)):
        producer = graph.producer.get(v)
        if producer is not None and graph.node(producer).input[:1] == [u]:
            return True
    return False


def _find_conv(ctx: RuleContext, tensor: str):
    """(conv node id, BatchNorm node id or None, tensor z feeding the element-wise chain) when
    ``tensor`` is element-wise ops of [BatchNorm of] a Conv's output; else None. A binary node
    whose operands are both element-wise functions of one tensor (HardSwish written
    ``x * Relu6(x + 3) / 6``, :func:`.fusion.common_ancestor`) is a step to that tensor."""
    graph = ctx.graph
    bn, z = None, None
    for _ in range(8):
        node_id = graph.producer.get(tensor)
        if node_id is None:
            return None
        node = graph.node(node_id)
        if node.op_type == "Conv":
            return node_id, bn, z if z is not None else tensor
        if node.op_type == "Identity":  # tf2onnx's Identity after the depthwise Conv
            tensor = node.input[0]
            continue
        if node.op_type == "BatchNormalization" and bn is None:
            bn, z = node_id, tensor
            tensor = node.input[0]
            continue
        if bn is not None:
            return None
        if ((node.op_type in _ELEMENTWISE and node.op_type != "Mul")
                or (node.op_type in ("Mul", "Add", "Sub", "Div") and _same_operand(graph, node))):
            tensor = next((n for n in node.input if n and not graph.is_constant(n)),
                          node.input[0])
            continue
        found = (common_ancestor(ctx.for_node(node_id))
                 if node.op_type in ("Mul", "Add", "Sub", "Div") else None)
        if found is None:
            return None
        tensor = found[0]
    return None


def _channel_source(m: Moments, c: int, rank: int):
    """m's source Gaussian pooled per channel (law of total variance) with its chain, as
    ``[1, C, 1, ...]`` arrays; None without a source or with statistics beyond the rank."""
    src = m.source
    if src is None or not src.chain or max(np.ndim(src.mean), np.ndim(src.var)) > rank:
        return None
    mean, var = Moments(src.mean, src.var).expand_rank(rank).values_along(1, c)
    shape = (1, c) + (1,) * (rank - 2)
    return mean.reshape(shape), var.reshape(shape), src.chain


def _class_source(m: Moments, c: int, rank: int):
    """m's source Gaussian per position class, ``[1, C, K_0, ...]`` arrays, with its chain and
    the classes' maps (None: m has no position classes, or more than CLASS_CELLS cells, its
    source pooled per channel); None without a source."""
    sp = m.spatial
    src = None if sp is None else sp.cells.source
    if src is None or not src.chain or max(np.ndim(src.mean), np.ndim(src.var)) != rank:
        found = _channel_source(m, c, rank)
        return None if found is None else (*found, None)
    shape = (1, c) + tuple(sp.classes)
    if c * int(np.prod(sp.classes)) > CLASS_CELLS:
        found = _channel_source(m, c, rank)
        return None if found is None else (*found, None)
    try:
        mean, var = (np.broadcast_to(np.asarray(a, np.float64), shape)
                     for a in (src.mean, src.var))
    except ValueError:
        return None
    return mean, var, src.chain, sp.maps


def _at_positions(a: np.ndarray, maps, sizes) -> np.ndarray:
    """Per-class values ``[C, K_0, ...]`` at every position, ``[C, *sizes]``."""
    if maps is None:
        return np.broadcast_to(a, a.shape[:1] + tuple(sizes))
    for i, m in enumerate(maps):
        a = np.take(a, np.asarray(m), axis=1 + i)
    return a


def _column_sums(weight: np.ndarray, conv: RuleContext, in_sizes, out_sizes, power: int):
    """``sum_p W_pu^power`` per channel and input position u, [C, *in_sizes]."""
    kernel = list(weight.shape[2:])
    n = len(kernel)
    strides = list(conv.attr("strides", [1] * n))
    dilations = list(conv.attr("dilations", [1] * n))
    begins = begin_pads(conv, in_sizes, out_sizes, kernel, strides, dilations)
    out = weight[:, 0] ** power
    for d in range(n):  # M_d[t, i]: output positions o whose tap t lands on input i
        pos = (np.arange(out_sizes[d])[:, None] * strides[d] - begins[d]
               + np.arange(kernel[d])[None, :] * dilations[d])
        m = np.zeros((kernel[d], in_sizes[d]))
        for t in range(kernel[d]):
            inside = pos[:, t][(pos[:, t] >= 0) & (pos[:, t] < in_sizes[d])]
            np.add.at(m[t], inside, 1.0)
        # contract the tap axis 1 (the next tap axis), append the input axis at the end
        out = np.tensordot(out, m, axes=([1], [0]))  # the next tap axis is axis 1
    return out


@dataclass(frozen=True)
class Terms:
    """What the Edgeworth terms of ``f(z)`` need, ``z = a Conv(x) + b`` a depthwise conv's:
    per channel ``a`` (with the BatchNorm scale's sign), ``d1 = E f'``, ``d2 = E f''`` under
    z's Gaussian; the conv input's ``k3``, ``k4`` at every input position ``[C, P_in]``; the
    conv's context and its input and output shapes."""

    a: np.ndarray
    d1: np.ndarray
    d2: np.ndarray
    k3: np.ndarray
    k4: np.ndarray
    conv: RuleContext
    in_shape: tuple
    out_shape: tuple


def edgeworth_terms(ctx: RuleContext, tensor: str, x: Moments, x_shape,
                    per_class: bool = True) -> Terms | None:
    """:class:`Terms` for ``tensor`` (moments ``x``, shape ``x_shape``), an element-wise chain
    ``f(z)`` of a depthwise Conv's [BatchNorm'd] output; None where they do not apply (not a
    depthwise Conv's f, no source, unknown moments, a position pattern that is not
    stationary). ``per_class=False``: the conv input's cumulants from its own chain on its
    source pooled per channel (cheaper; the same at every position)."""
    known = ctx.known
    rank = len(x_shape)
    if known is None or x.source is None or rank < 3:
        return None
    found = _find_conv(ctx, tensor)
    if found is None:
        return None
    conv_id, bn_id, z_name = found
    conv = ctx.for_node(conv_id)
    weight = conv.const(1)
    c = x_shape[1]
    if weight is None or weight.ndim != rank or weight.shape[1] != 1 or weight.shape[0] != c:
        return None
    group = conv.attr("group", 1)
    if group < 2:
        return None
    y_name, in_name = conv.node.output[0], conv.node.input[0]
    if any(name not in known for name in (y_name, z_name, in_name)):
        return None
    try:
        in_shape, out_shape = conv.in_shape(0), conv.out_shape(0)
    except RuleError:
        return None
    if tuple(out_shape[2:]) != tuple(x_shape[2:]):
        return None
    if not (stationary(known[in_name], rank) and stationary(x, rank)):
        return None
    f_source = _channel_source(x, c, rank)
    if f_source is None:
        return None
    f_stats = _source_expectations(f_source, c, rank)
    if f_stats is None:
        return None
    found = _position_cumulants(ctx, in_name, in_shape, c // group, rank, per_class)
    if found is None:
        return None
    k3, k4 = found
    _, et, ett, _, _, _ = (a.reshape(c) for a in f_stats)
    _, var_y = _channel(known[y_name], c, rank)
    _, var_z = _channel(known[z_name], c, rank)
    s2 = f_source[1].reshape(c)
    # the pool's input must be f of z itself (its source's Gaussian), z an affine map of y
    if np.any(var_y <= 0) or not np.allclose(s2, var_z, rtol=1e-2, atol=1e-12):
        return None
    a = np.sqrt(var_z / var_y)
    if bn_id is not None:
        scale = ctx.for_node(bn_id).const(1)
        if scale is None:
            return None
        a = a * np.sign(np.broadcast_to(np.asarray(scale, dtype=np.float64).ravel(), (c,)))
    s = np.sqrt(np.maximum(s2, 1e-300))
    return Terms(a, et / s, ett / s**2, k3, k4, conv, tuple(in_shape), tuple(out_shape))


_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _position_cumulants(ctx: RuleContext, in_name: str, in_shape, mult: int, rank: int,
                        per_class: bool = True):
    """The conv input's k3, k4 at every input position, ``[C_in * mult, P_in]``, each about
    its own position class's mean (a border pattern is no fluctuation: pooled per channel it
    read as a fourth cumulant 15x the positions' own), memoised per propagation state (the
    element-wise nodes of one chain and its pool read the same)."""
    known = ctx.known
    memo = _MEMO.setdefault(ctx.graph, {})
    hit = memo.get((in_name, per_class))
    if hit is not None and hit[0] is known[in_name]:
        return hit[1]
    out = None
    x_source = (_class_source(known[in_name], in_shape[1], rank) if per_class else
                _channel_source(known[in_name], in_shape[1], rank))
    if x_source is not None and not per_class:
        x_source = (*x_source, None)
    if x_source is not None:
        # over the scale mixture of the input's kurtosis where that is known, else of its own
        # chain (per position class: the costly part, so only one of the two); pooled per
        # channel, its own chain only (the kurtosis is carried on demand through every layer
        # above, which a chain no pool reads has not needed)
        found = (_input_cumulants(ctx, in_name, x_source[:3], in_shape[1], rank)
                 if per_class else None)
        if found is None:
            found = _source_cumulants(x_source[:3], in_shape[1], rank)
        if found is not None:
            out = tuple(_at_positions(np.repeat(k, mult, axis=0), x_source[3],
                                      in_shape[2:]).reshape(in_shape[1] * mult, -1)
                        for k in found)
    memo[(in_name, per_class)] = (known[in_name], out)
    return out


def pooled_correction(ctx: RuleContext, x: Moments, x_shape) -> np.ndarray | None:
    """dVar per channel (module docstring) for the GlobalAveragePool of ``ctx`` reading ``x``;
    None where it does not apply. Where x's correlation already holds the covariance of
    distinct positions (:mod:`.pool_pairs`), only the terms of each position with itself, and
    of those only what x's cells do not hold (module docstring)."""
    t = edgeworth_terms(ctx, ctx.node.input[0], x, x_shape)
    if t is None:
        return None
    c = x_shape[1]
    k = int(np.prod(x_shape[2:]))
    sp = positions(x, x_shape)
    pairs = sp is not None and sp.corr is not None and sp.corr.energy_pairs
    weight = t.conv.const(1)
    found = _find_conv(ctx, ctx.node.input[0])
    # the cells hold p = q through a BatchNorm (an eval-mode f(Conv) keeps both, as before)
    marginal = found is not None and found[1] is not None and int(
        np.prod(weight.shape[1:])) <= FEW_TERMS
    if pairs and marginal:
        return None

    def column(power):
        return _column_sums(weight, t.conv, t.in_shape[2:], t.out_shape[2:], power).reshape(c, -1)

    if pairs:  # sum_p W_pu^3, sum_p W_pu^4: the pairs p = q
        c3, c4 = column(3), column(4)
    else:  # every pair, less the pairs p = q where the cells hold them
        c1, c2 = column(1), column(2)
        c3, c4 = c2 * c1, c2 * c2
        if marginal:
            c3, c4 = c3 - column(3), c4 - column(4)
    s3 = t.a**3 * (t.k3 * c3).sum(axis=1) / k**2
    s4 = t.a**4 * (t.k4 * c4).sum(axis=1) / k**2
    dvar = t.d1 * t.d2 * s3 + 0.25 * t.d2**2 * s4
    return dvar if np.all(np.isfinite(dvar)) else None
