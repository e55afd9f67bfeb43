"""The covariance of a tensor's channels at one position (or of a token's features), from the
Conv that mixes them to the next 1x1 Conv or dense layer that reads them.

The Conv rule takes its input's channels as independent: ``Var y_j = sum_m W_jm^2 nu_m``. The
cross terms ``sum_{m != m'} W_jm W_jm' Cov(x_m, x_m')`` have mean zero over random weights, but
not for the weights at hand when the input is itself a linear map of few channels: a 1x1 Conv
``x = V u`` of ``C`` independent channels has ``Cov x = V diag(nu_u) V^T``, whose correlations
are of order ``1/sqrt(C)`` (0.3 rms for MobileNetV3-small's 16-channel projection), and a
1x1 Conv reading ``x`` directly (a linear bottleneck's projection, then the next block's
expansion: no activation between them) sums them. Measured there (64x64, batch 64), the
expansion's variance is 1.07-1.135x the independent sum on three random initializations.

Carried, per tensor, as the within-position covariance ``S`` ``[C, C]`` across one axis (the
spread of the position means excluded: the position classes hold that exactly): the channels
(axis 1) from a Conv on; layout ops move the axis (a patch embedding's channels become each
token's features, the last axis), and the transfer rules (:mod:`.covariance_maps`) are:

- 1x1 Conv, one group: ``S_y = W S_x W^T``, ``S_x = diag(nu_x)`` where x has no field;
- BatchNormalization, and Mul/Add/Sub/Div by a constant: a per-channel affine map
  ``y_c = a_c x_c + b_c``, ``S_y = D S_x D``, ``D = diag(a)`` (``|a_c| = sqrt(nu_y / nu_x)``,
  batch statistics included; its sign the scale's); InstanceNormalization likewise (each
  sample's channel divided by its own spread over the positions: the within-position
  correlation kept, rescaled to y's variances, the per-sample channel means it removes taken
  as the same for every sample);
- Add/Sub of two signals: ``S_a + S_b`` (``- S_b`` sign-free: covariances add), the operands
  taken as independent, except a residual sum's skip h and a branch computed from it row by
  row (an MLP or a self-attention, through a LayerNorm or not): ``+ K + K^T``, ``K =
  Cov(h, f)`` by Stein's lemma (:mod:`.residual_coupling`);
- a kxk Conv (any groups): the same-tap sum ``sum_t W_t S_x W_t^T`` (``W_t`` block-diagonal
  over the groups: a depthwise Conv keeps the correlation of the channels it reads; input
  positions taken as independent), as a correlation scaled to y's within-position variance;
- an element-wise function f (ReLU, Clip, Sigmoid, Pow by a constant ...): Mehler's formula,
  ``Cov(f(x_i), f(x_j)) = a_1^i a_1^j rho_ij + a_2^i a_2^j rho_ij^2`` with each channel's
  Hermite amplitudes for x taken as Gaussian with its channel mean and within-position
  variance (Gauss-Hermite nodes; Mehler's orders above 2 left out: channels correlate weakly,
  ``|rho| ~ 1/sqrt(C)``, and a ReLU's third amplitude is 0 at mean 0); a function that is
  the identity on a non-negative input (:func:`.support.identity_on_input`: the ReLU of a
  residual sum of ReLU outputs) keeps the field whole;
- Mul by a signal broadcast over the positions (a squeeze-excite gate ``[N, C, 1, 1]``, taken
  as independent of x and of the other gates): ``S_y[i, j] = E g_i E g_j S_x[i, j]``, i != j;
- Pad of the positions: the correlation, rescaled to y's within-position variances;
- Concat along another axis (a class token before the patches): the parts' covariances
  pooled by their shares of the positions (a part without a field: its variances); along
  the channels, the parts' blocks and sibling branches' cross blocks (:mod:`.concat_field`);
- Transpose, a Reshape, Squeeze or Unsqueeze that keeps the axis (its size and the product of
  the axes after it: tf2onnx's Conv1D squeezed from ``[N, C, 1, T]``), Slice (a block of S
  where it slices the axis), Dropout and Identity move or crop it;
- rows scaled to unit length (``F.normalize``, :mod:`.unit_rows`; cosine attention's queries
  and keys, per head): the correlation kept, rescaled to y's variances (each row's own norm a
  common factor of its features, as a LayerNorm's scale);
- LayerNormalization over the last axis, when that is the field's, and rows centred on their
  mean (``x - mean(x)``, TensorFlow's folded LayerNorm, :mod:`.centred_rows`): ``P S_x P``
  (for :func:`row_covariance`, of an input without a field too: ``P diag(nu_x) P``)
  (``P`` the centring across the features; the token's scale a common factor), its scale's
  signs; channels centred on their mean over the field's axis 1 likewise
  (:mod:`.channel_centring`: tf2onnx's channels-last LayerNorm moved onto an NCHW map);
- MatMul by a constant ``W [D, E]`` reading the field's axis last: ``S_y = W^T S_x W`` (a
  dense layer of a tensor without a field starts none: its correlations are ``1/sqrt(D)``;
  :func:`row_covariance` starts one, for the readers of a dense layer's own weights);
- a Loop's or Scan's output (a recurrent layer tf2onnx writes as a Loop): the covariance
  across its last axis that the empirical fallback measured (:mod:`.measured_units`);
- everything else: none (channels independent).

BatchNormalization's running variance (rules/running_statistics.py) is the spread of the
per-channel variances, so it reads them through these cross terms: on HF RegNet (32x32,
batch 8) the 1x1 Convs' per-channel variances correlate 0.77-0.96 with the measured ones
without the input's channel covariance and 1.000 with it.

A 1x1 Conv reading a tensor with a field adds the cross terms per output channel,
``Var y_j = w_j^T S_x w_j``, scaling each position class's variance by
``w_j^T S_x w_j / sum_m W_jm^2 S_x,mm``; a MatMul likewise per output feature, a LayerNorm
its per-feature variances, and the logits ``Q K^T`` per head (:mod:`.covariance_readers`; a
Reshape that splits the features into heads keeps one block per head). A patch
embedding of few inputs (FocalNet's and Swin's 2x2 patches of 3 channels: 12 values for 32
features) makes the features' covariance of low rank, and each feature's variance after the
next dense layer is then set by it (HF FocalNet's gate columns: measured variances correlate
0.53-0.72 with the independent sum, 1.000 with the cross terms). Not modelled: the cross-channel
covariance at other offsets (a kxk Conv's cross terms between taps are neither carried nor added
to its output's variance), and a gate's own covariance across channels.
"""

from __future__ import annotations

import numpy as np

from ..strict import fall_back
from . import concat_field, covariance_maps as maps
from .centred_rows import centred_input
from .channel_centring import centred_field, centred_over
from .covariance_layout import Field, conv_share, moved, variances, within
from .context import RuleContext, RuleError
from .elementwise import UNARY, elementwise
from .fusion import common_ancestor, fused_function
from .hermite import at_axis, coefficients
from .support import identity_on_input
from .on_demand import OnDemandField
from . import row_field_maps as row_maps
from .row_field_maps import MAX_CHANNELS, MAX_WORK
from .unit_rows import is_unit_rows
from . import measured_units, recurrent_units
from .residual_coupling import summed
from .merged_head_field import last_axis, merged_field

_FIELD = OnDemandField()
_ROW_FIELD = OnDemandField()  # row_covariance's: dense layers start a field
_LAYOUT = ("Pad", "Slice", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Dropout", "Identity",
           "Gather")
RECURRENT = ("LSTM", "GRU", "RNN")
_AFFINE = ("Mul", "Add", "Sub", "Div")
_PER_CHANNEL = ("BatchNormalization", "InstanceNormalization")  # scale input 1, on axis 1


def _function(op_type: str) -> bool:
    """An element-wise function of its one signal (Pow: by a constant exponent)."""
    return op_type in UNARY or op_type == "Pow"

_ONE_INPUT = ("BatchNormalization", "InstanceNormalization", "Conv", "Pad", "Transpose", "Reshape",
              "Squeeze", "Unsqueeze", "Slice", "Dropout", "Gather", "Identity",
              "LayerNormalization", "MatMul") + RECURRENT


def pointwise(ctx: RuleContext, node) -> bool:
    """A Conv with a 1x1 kernel, one group, no padding, unit strides and dilations... that
    mixes channels only (strides do not matter: each output reads one position)."""
    if node.op_type != "Conv":
        return False
    w = ctx.graph.value(node.input[1]) if len(node.input) > 1 else None
    if w is None or np.ndim(w) < 3 or any(k != 1 for k in np.shape(w)[2:]):
        return False
    attrs = {a.name: a for a in node.attribute}
    if "group" in attrs and attrs["group"].i != 1:
        return False
    pads = list(attrs["pads"].ints) if "pads" in attrs else []
    return not any(pads)


def _signals(ctx: RuleContext, node) -> list[str]:
    graph = ctx.graph
    return [n for n in node.input if n and not graph.is_constant(n)]


def _fused(ctx: RuleContext, node_id: str):
    """(T, h) for a binary node ``h(T)`` of two element-wise functions of one tensor T
    (HardSwish written ``x * Relu6(x + 3) / 6``, SiLU ``x * Sigmoid(x)``): a function of T,
    not a gate."""
    node = ctx.graph.node(node_id)
    if node.op_type not in _AFFINE or len(node.input) != 2:
        return None
    found = common_ancestor(ctx.for_node(node_id))
    if found is None or found[0] not in ctx.known:
        return None
    return found[0], fused_function(node.op_type, found[1], found[2])


def _deps(ctx: RuleContext, tensor: str) -> list[str]:
    node_id = ctx.graph.producer.get(tensor)
    if node_id is None:
        return []
    node = ctx.graph.node(node_id)
    signals = [n for n in _signals(ctx, node) if n in ctx.known]
    if node.op_type in _ONE_INPUT:
        return signals[:1] if signals and signals[0] == node.input[0] else []
    fused = _fused(ctx, node_id) if len(signals) == 2 else None
    if fused is not None:
        return [fused[0]]
    over = centred_over(ctx, node) if len(signals) == 2 else None
    if over is not None:  # channels centred on their mean: P S P (channel_centring)
        return [over[0]]
    centred = centred_input(ctx.for_node(node_id)) if len(signals) == 2 else None
    if centred is not None:  # folded rows (x * s + (c - mean * s)) read x; x - mean(x) both
        return ([] if centred not in ctx.known else
                [centred] if centred not in signals else signals)
    if node.op_type in _AFFINE and len(signals) <= 2:
        return signals
    if node.op_type == "Concat":  # and the shared input of sibling branches (concat_field)
        return signals + [s for s in concat_field.shared_sources(ctx, node) if s not in signals]
    if len(signals) == 1 and _function(node.op_type):  # element-wise (_compute)
        return signals
    return []


def covariance(ctx: RuleContext, tensor: str) -> Field | None:
    """The field of ``tensor`` (module docstring), None where its channels (features) count
    as independent (or outside propagation)."""
    known = ctx.known
    shape = ctx.graph.shape(tensor)
    if known is None or tensor not in known or not shape or len(shape) < 2:
        return None
    return _FIELD.value(ctx, tensor, lambda name: _deps(ctx, name),
                        lambda name, field_of: _compute(ctx, name, field_of))


def row_covariance(ctx: RuleContext, tensor: str) -> Field | None:
    """:func:`covariance` for a reader that needs the covariance of a row's features for the
    weights at hand (:mod:`.shared_projection`; a dense layer's cross terms, the keys' and
    values' covariance of :mod:`.value_selection` and :mod:`.mixed_values`), not only the size
    of its cross terms: a dense layer of a tensor without a field starts one, ``W^T diag(nu_x)
    W`` (``W^T S_o W`` on attention heads merged, :mod:`.merged_head_field`; an expansion's
    features are far from independent: rank D of E; a projection of a projection sums ``D^2``
    correlations of ``1/sqrt(D)``:
    ``nn.MultiheadAttention``'s keys and values from a Linear, ``kdim``/``vdim``, 0.96-1.04x
    without), and a product of two element-wise functions of one tensor (SiLU written ``x *
    sigmoid(x)``) takes Mehler's formula with their product as the function."""
    known = ctx.known
    shape = ctx.graph.shape(tensor)
    if known is None or tensor not in known or not shape or len(shape) < 2:
        return None
    return _ROW_FIELD.value(ctx, tensor, lambda name: _deps(ctx, name),
                            lambda name, field_of: _compute(ctx, name, field_of, True))


def _compute(ctx: RuleContext, tensor: str, field_of, rows: bool = False) -> Field | None:
    graph, known = ctx.graph, ctx.known
    node_id = graph.producer.get(tensor)
    shape = graph.shape(tensor)
    if node_id is None or not shape or len(shape) < 2:
        return None
    node = graph.node(node_id)
    signals = [n for n in _signals(ctx, node) if n in known]
    fused = _fused(ctx, node_id) if len(signals) == 2 else None
    deps = _deps(ctx, tensor)
    if node.op_type in ("Loop", "Scan"):  # the fallback's measured units (measured_units)
        return measured_units.field(graph, known, tensor)
    step = measured_units.step_field(graph, known, node, tensor)
    if step is not None:  # one step of a Loop's scan output: that step's units
        return step
    if fused is None and (not signals or not deps):
        return None  # an op that drops the field
    x = signals[0]
    try:
        over = centred_over(ctx, node) if fused is None and len(signals) == 2 else None
        if over is not None:
            return centred_field(ctx, over[0], over[1], tensor, field_of(over[0]))
        centred = centred_input(ctx.for_node(node_id)) if len(signals) == 2 else None
        if fused is None and centred is not None:  # x - mean(x), or folded rows
            return row_maps.centred_rows(ctx, centred, tensor, field_of, rows)
        if fused is not None:  # h(T): T's field through the fused function
            f_t = field_of(fused[0])
            if f_t is None or f_t.head_axis is not None or f_t.cov.shape[0] > MAX_CHANNELS:
                return None
            return _through(ctx, fused[1].fn, fused[0], tensor, f_t)
        if rows and node.op_type == "MatMul" and field_of(x) is None:
            shape_x = graph.shape(x)
            if not row_maps.dense_fits(ctx, node):  # before its [D, D] diagonal: D = 3072 is 75 MB
                return None
            merged = merged_field(ctx, x, lambda n: last_axis(row_covariance(ctx, n), shape_x))
            return row_maps.dense(ctx, node, x, tensor, Field(len(shape_x) - 1, np.diag(
                variances(known[x], shape_x, len(shape_x) - 1)) if merged is None else merged))
        if rows and node.op_type == "LayerNormalization" and field_of(x) is None:
            return row_maps.layer_norm_rows(ctx, node, x, tensor)  # P diag(nu_x) P
        if node.op_type == "Conv":
            return _conv(ctx, node, x, tensor, field_of)
        if node.op_type in RECURRENT:  # the units of a state share the sample's input
            return recurrent_units.output_field(
                ctx.for_node(node_id), [known.get(n) if n and graph.is_signal(n) else None
                                       for n in node.input],
                list(node.output).index(tensor), field_of(x))
        if node.op_type in ("Add", "Sub") and len(signals) == 2:
            return summed(ctx, signals, tensor, field_of, MAX_WORK)
        if node.op_type == "Concat":
            return (concat_field.token_concat(ctx, node, signals, tensor, field_of)
                    or concat_field.channel_concat(
                        ctx, node, tensor, field_of,
                        lambda n: _channels_or_diagonal(ctx, n, field_of)))
        if node.op_type == "Mul" and len(signals) == 2:
            return _gated(ctx, signals, tensor, field_of)
        f_x = field_of(x)
        if f_x is None or f_x.cov.shape[0] > MAX_CHANNELS:
            return None
        if node.op_type == "Div" and is_unit_rows(ctx.for_node(node_id)):
            return row_maps.unit_rows(ctx, tensor, f_x)
        if rows and f_x.head_axis is not None and node.op_type in _AFFINE:
            return row_maps.head_affine(ctx, node, x, tensor, f_x)
        if f_x.head_axis is not None and node.op_type not in _LAYOUT:
            return None  # per-head blocks: only moved, and read by the logits
        if node.op_type in _PER_CHANNEL + _AFFINE:
            return _affine(ctx, node, x, tensor, f_x)
        if node.op_type in _LAYOUT:
            return moved(graph, known, node, x, tensor, f_x)
        if node.op_type == "LayerNormalization":
            return row_maps.layer_norm(ctx, node, x, tensor, f_x)
        if node.op_type == "MatMul":
            return row_maps.dense(ctx, node, x, tensor, f_x)
        if identity_on_input(node, graph) and graph.shape(x) == shape:
            return f_x  # ReLU of a residual sum of ReLU outputs: the tensor itself
        if _function(node.op_type):
            f = elementwise(node, ctx)
            if f is not None:
                return _through(ctx, f.fn, x, tensor, f_x)
    except (RuleError, ValueError, TypeError, IndexError) as exc:
        fall_back(exc, (RuleError,))
        return None
    return None


def _channels_or_diagonal(ctx: RuleContext, name: str, field_of) -> np.ndarray | None:
    """The covariance across axis 1 of ``name``: its field's, or its channels' variances."""
    f = field_of(name)
    if f is not None and f.axis == 1 and f.head_axis is None:
        return f.cov
    shape = ctx.graph.shape(name)
    if not shape or len(shape) < 2 or shape[1] > MAX_CHANNELS:
        return None
    return np.diag(within(ctx.known[name], shape))


def _conv(ctx: RuleContext, node, x: str, y: str, field_of) -> Field | None:
    """1x1, one group: ``W S_x W^T``; kxk or grouped: the same-tap sum, rescaled to y."""
    graph = ctx.graph
    w = graph.value(node.input[1]) if len(node.input) > 1 else None
    shape_x, shape_y = graph.shape(x), graph.shape(y)
    if w is None or np.ndim(w) < 3 or not shape_x or not shape_y or shape_y[1] > MAX_CHANNELS:
        return None
    w = np.asarray(w, dtype=np.float64)
    c_out, c_in_group, taps = w.shape[0], w.shape[1], int(np.prod(w.shape[2:]))
    groups = shape_x[1] // c_in_group
    if groups < 1 or groups * c_in_group != shape_x[1] or c_out % groups:
        return None
    is_pointwise = pointwise(ctx, node)
    if not is_pointwise and c_out * taps * shape_x[1] * (c_in_group + c_out // groups) > MAX_WORK:
        return None
    s_x = _channels_or_diagonal(ctx, x, field_of)
    if s_x is None or s_x.shape[0] != shape_x[1]:
        return None
    if is_pointwise:  # W S_x W^T
        return Field(1, maps.pointwise_field(w, s_x))
    share = conv_share(graph, node, w, shape_x, shape_y)
    return Field(1, maps.rescaled(maps.conv_same_tap(s_x, w, groups, share),
                                  within(ctx.known[y], shape_y)))


def _gated(ctx: RuleContext, signals: list[str], y: str, field_of) -> Field | None:
    """``x * g`` with g broadcast over the positions, one per index of the axis (independent
    gates: ``E g_i E g_j S_x[i, j]``), or one for every index (a common factor: the
    correlation kept)."""
    graph = ctx.graph
    shape = graph.shape(y)
    full = [n for n in signals if graph.shape(n) == shape]
    gates = [n for n in signals if graph.shape(n) != shape]
    if len(full) != 1 or len(gates) != 1:
        return None
    f_x = field_of(full[0])
    gate_shape = graph.shape(gates[0])
    if (f_x is None or f_x.head_axis is not None or not gate_shape
            or len(gate_shape) != len(shape)):
        return None
    axis, nu = f_x.axis, variances(ctx.known[y], shape, f_x.axis)
    others = [k for i, k in enumerate(gate_shape) if i not in (0, axis)]
    if gate_shape[axis] == shape[axis] and all(k == 1 for k in others):
        g = ctx.known[gates[0]].values_along(axis, shape[axis])[0]
        return Field(axis, maps.gated(f_x.cov, g, nu))
    if gate_shape[axis] == 1:
        return Field(axis, maps.rescaled(f_x.cov, nu))
    return None


def _affine(ctx: RuleContext, node, x: str, y: str, f_x: Field) -> Field | None:
    """A per-index affine map (BatchNormalization on axis 1; a constant added, multiplied,
    divided by): the correlation kept, the scale's signs."""
    graph, axis = ctx.graph, f_x.axis
    shape = graph.shape(y)
    if graph.shape(x) != shape:
        return None
    if node.op_type in _PER_CHANNEL:
        if axis != 1:
            return None
        const = graph.value(node.input[1]) if len(node.input) > 1 else None
    elif node.op_type in ("Mul", "Div"):
        other = next((n for n in node.input if n and graph.is_constant(n)), None)
        const = graph.value(other) if other is not None else None
    else:
        const = None
    sign = None
    if const is not None:
        const = np.asarray(const, dtype=np.float64)
        if node.op_type in _PER_CHANNEL:
            const = const.reshape((-1,) + (1,) * (len(shape) - 2))
        const = const.reshape((1,) * (len(shape) - const.ndim) + const.shape)
        if any(k != 1 for i, k in enumerate(const.shape) if i != axis):
            return None
        sign = np.sign(np.broadcast_to(const.reshape(-1), (shape[axis],)))
    return Field(axis, maps.rescaled(f_x.cov, variances(ctx.known[y], shape, axis), sign))


def _through(ctx: RuleContext, fn, x: str, y: str, f_x: Field) -> Field | None:
    """An element-wise function: Mehler's formula per pair (module docstring)."""
    shape = ctx.graph.shape(y)
    if ctx.graph.shape(x) != shape:
        return None
    axis = f_x.axis
    mean = ctx.known[x].values_along(axis, shape[axis])[0]
    try:  # [ORDER + 1, n]; f varying along another axis too has no amplitude per index
        a, _ = coefficients(at_axis(fn, axis, len(shape), shape[axis]), mean, np.diag(f_x.cov),
                            remainder=False)
    except ValueError:
        return None
    return Field(axis, maps.mehler(f_x.cov, a, variances(ctx.known[y], shape, axis)))

