"""The channel covariance field (:mod:`.channel_covariance`) of a Concat: along another axis
(:func:`token_concat`: a class token put before the patches), or along the field's axis, the
channels (:func:`channel_concat`): branches put side by side (a fire module's two expand convs, an Inception
block's branches), read by the next 1x1 Conv, which mixes channels of every branch.

The concatenated field is the block matrix ``S_y = [[S_1, C_12, ...], [C_21, S_2, ...], ...]``:
each part's own field on the diagonal (a part without one: its channels' within-position
variances), and between two parts the cross block ``C_ab``, 0 (independent parts, as a sum's
operands) except between *siblings*: parts that are each a chain of per-channel maps of a Conv
(one group, a constant weight) of one shared tensor ``s`` (SqueezeNet's expand 1x1 and 3x3
convs, both of the squeeze's ReLU). The chain's steps: BatchNormalization, Mul, Div, Add or
Sub by a constant per channel, an element-wise function of one signal, Identity, Dropout.
Before the chains, the two Convs' outputs at one position covary through ``s``:

    C_ab = sum_{t_a, t_b at one input offset} f_t W_a,t S_s W_b,t^T

the taps of the two kernels that read the same input position (a 1x1 and a padded 3x3's centre
tap; ``f_t`` the share of output positions where it reads inside; the input positions taken as
independent, as the same-tap sum of a kxk Conv's own field), taken as a correlation ``C_ab /
sqrt(D_a D_b^T)`` (``D`` each Conv's same-tap diagonal, ``sum_t f_t diag(W_t S_s W_t^T)``) and
scaled to the Convs' within-position variances. Then through the chains, step by step:

- a per-channel affine map ``y_c = k_c x_c + b_c`` on one side scales its rows (columns) by
  ``sign(k_c) sqrt(nu_y / nu_x)``;
- element-wise functions ``f`` and ``g`` on both sides at once, Mehler's formula for the
  pair: ``Cov(f(x_i), g(z_k)) = a_1^i b_1^k rho_ik + a_2^i b_2^k rho_ik^2`` (each side's
  Hermite amplitudes at its channel's mean and within-position variance, as
  :func:`.covariance_maps.mehler`);
- a function on one side when the other chain has none left: its first order,
  ``a_1^i rho_ik`` (the other side linear: only the first Hermite order covaries with it).

Measured on SqueezeNet 1.0 (224x224, one batch of 8, onnxruntime): the squeeze convs read their
concat with the channels independent at 0.97-1.14x the measured per-channel variance (median;
correlation 0.19-0.57), with the blocks alone (cross blocks 0) at 0.95-1.02x, with the measured
covariance exactly; docs/accuracy.md, "SqueezeNet 1.0: the fire modules' concat".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .context import RuleContext
from .covariance_layout import Field, attr, conv_share, variances, within
from .elementwise import UNARY, elementwise
from .hermite import coefficients
from .row_field_maps import MAX_CHANNELS, MAX_WORK

_STEPS = 8  # per-channel maps walked back from a part to its Conv
_AFFINE = ("BatchNormalization", "Mul", "Div", "Add", "Sub")
_PASS = ("Identity", "Dropout")


@dataclass(frozen=True)
class Step:
    """One per-channel map of a chain: ``x -> y`` by node ``node_id``; ``sign`` (per channel)
    for an affine map, None for an element-wise function."""

    node_id: str
    x: str
    y: str
    sign: np.ndarray | None


@dataclass(frozen=True)
class Chain:
    """A part ``conv(source)`` then ``steps`` (from the Conv's output ``out`` on)."""

    conv: str
    source: str
    out: str
    steps: tuple[Step, ...]


def _signals(graph, node) -> list[str]:
    return [n for n in node.input if n and not graph.is_constant(n)]


def _affine_sign(ctx: RuleContext, node, x: str, channels: int) -> np.ndarray | None:
    """Per channel, the sign of an affine map's scale; None where ``node`` is no per-channel
    affine map of ``x`` (a constant varying along another axis, a constant divided by x)."""
    graph = ctx.graph
    shape = graph.shape(x)
    if not shape or graph.shape(node.output[0]) != shape:
        return None
    if node.op_type == "BatchNormalization":
        scale = graph.value(node.input[1]) if len(node.input) > 1 else None
        if scale is None or np.size(scale) not in (1, channels):
            return None
        return np.broadcast_to(np.sign(np.asarray(scale, np.float64)).reshape(-1), (channels,))
    const_name = next((n for n in node.input[:2] if n and n != x), None)
    const = graph.value(const_name) if const_name else None
    if const is None:
        return None
    const = np.asarray(const, np.float64)
    if const.ndim > len(shape):
        return None
    const = const.reshape((1,) * (len(shape) - const.ndim) + const.shape)
    if any(k != 1 for i, k in enumerate(const.shape) if i != 1) or const.shape[1] not in (
            1, channels):
        return None
    if node.op_type in ("Add", "Sub"):
        flipped = node.op_type == "Sub" and node.input[0] != x  # c - x
        return np.full(channels, -1.0 if flipped else 1.0)
    if node.op_type == "Div" and node.input[0] != x:  # c / x: not affine
        return None
    return np.broadcast_to(np.sign(const.reshape(-1)), (channels,)).astype(np.float64)


def chain(ctx: RuleContext, tensor: str) -> Chain | None:
    """``tensor`` as per-channel maps of a one-group Conv with a constant weight, else None."""
    graph = ctx.graph
    steps: list[Step] = []
    name = tensor
    for _ in range(_STEPS + 1):
        node_id = graph.producer.get(name)
        if node_id is None:
            return None
        node = graph.node(node_id)
        signals = _signals(graph, node)
        shape = graph.shape(name)
        if len(signals) != 1 or not shape or len(shape) < 3 or node.output[0] != name:
            return None
        x = signals[0]
        if node.op_type == "Conv":
            w = graph.value(node.input[1]) if len(node.input) > 1 else None
            if x != node.input[0] or w is None or (attr(node, "group") or 1) != 1:
                return None
            return Chain(node_id, x, name, tuple(reversed(steps)))
        if node.op_type in _PASS:
            sign = np.ones(shape[1])
        elif node.op_type in _AFFINE:
            sign = _affine_sign(ctx, node, x, shape[1])
            if sign is None:
                return None
        elif node.op_type in UNARY or node.op_type == "Pow":
            if elementwise(node, ctx) is None:
                return None
            sign = None
        else:
            return None
        steps.append(Step(node_id, x, name, sign))
        name = x
    return None


def shared_sources(ctx: RuleContext, node) -> list[str]:
    """The tensors that the Convs of two or more parts of the Concat ``node`` read (their
    fields are needed for the cross blocks; none for a Concat along another axis or past
    :data:`MAX_CHANNELS`)."""
    shape = ctx.graph.shape(node.output[0])
    if (not shape or len(shape) < 3 or (attr(node, "axis") or 0) % len(shape) != 1
            or shape[1] > MAX_CHANNELS):
        return []
    sources: dict[str, int] = {}
    for part in node.input:
        found = chain(ctx, part) if part and part in ctx.known else None
        if found is not None and found.source in ctx.known:
            sources[found.source] = sources.get(found.source, 0) + 1
    return [s for s, count in sources.items() if count > 1]


def _taps(node, w: np.ndarray) -> list[tuple[int, ...]]:
    """Each tap's input offset relative to ``output position * stride`` (C order)."""
    n = w.ndim - 2
    begins = list(attr(node, "pads") or [0] * 2 * n)[:n]
    dilations = attr(node, "dilations") or [1] * n
    grid = np.indices(w.shape[2:]).reshape(n, -1).T
    return [tuple(int(t[d]) * dilations[d] - begins[d] for d in range(n)) for t in grid]


def _geometry_matches(graph, a, b) -> bool:
    """Both Convs map output position p to input ``p * stride`` (same strides, same output
    positions, explicit pads)."""
    for name in ("auto_pad",):
        for node in (a, b):
            if (attr(node, name) or b"NOTSET") not in (b"NOTSET", b"VALID", b""):
                return False
    n = np.ndim(graph.value(a.input[1])) - 2
    strides = [attr(node, "strides") or [1] * n for node in (a, b)]
    shapes = [graph.shape(node.output[0]) for node in (a, b)]
    return strides[0] == strides[1] and bool(shapes[0]) and shapes[0][2:] == shapes[1][2:]


def conv_cross(ctx: RuleContext, a: Chain, b: Chain, s_s: np.ndarray) -> np.ndarray | None:
    """``C_ab`` between the two Convs' outputs (module docstring), scaled to their
    within-position variances; None where their geometries differ or it is too much work."""
    graph = ctx.graph
    na, nb = graph.node(a.conv), graph.node(b.conv)
    if not _geometry_matches(graph, na, nb):
        return None
    wa = np.asarray(graph.value(na.input[1]), np.float64)
    wb = np.asarray(graph.value(nb.input[1]), np.float64)
    c_s = s_s.shape[0]
    if wa.ndim != wb.ndim or wa.shape[1] != c_s or wb.shape[1] != c_s:
        return None
    shape_s = graph.shape(a.source)
    share_a = conv_share(graph, na, wa, shape_s, graph.shape(a.out))
    share_b = conv_share(graph, nb, wb, shape_s, graph.shape(b.out))
    if share_a is None or share_b is None:
        return None
    taps_a, taps_b = _taps(na, wa), _taps(nb, wb)
    index_b = {offset: t for t, offset in enumerate(taps_b)}
    pairs = [(t, index_b[o]) for t, o in enumerate(taps_a) if o in index_b]
    work = c_s * c_s * (wa.shape[0] * len(taps_a) + wb.shape[0] * len(taps_b))
    if not pairs or work + len(pairs) * wa.shape[0] * c_s * wb.shape[0] > MAX_WORK:
        return None
    ka = wa.reshape(wa.shape[0], c_s, -1).astype(np.float32)  # float32 products, as the field
    kb = wb.reshape(wb.shape[0], c_s, -1).astype(np.float32)
    s32 = s_s.astype(np.float32)
    mixed_a = [ka[:, :, t] @ s32 for t in range(ka.shape[2])]  # [C_a, C_s] per tap
    d_a = sum(share_a[t] * (mixed_a[t] * ka[:, :, t]).sum(axis=1, dtype=np.float64)
              for t in range(ka.shape[2]))
    d_b = sum(share_b[t] * ((kb[:, :, t] @ s32) * kb[:, :, t]).sum(axis=1, dtype=np.float64)
              for t in range(kb.shape[2]))
    cross = sum(share_a[ta] * (mixed_a[ta] @ kb[:, :, tb].T).astype(np.float64)
                for ta, tb in pairs)
    scale_a = _inverse_sd(d_a) * np.sqrt(within(ctx.known[a.out], graph.shape(a.out)))
    scale_b = _inverse_sd(d_b) * np.sqrt(within(ctx.known[b.out], graph.shape(b.out)))
    return cross * scale_a[:, None] * scale_b[None, :]


def _inverse_sd(d: np.ndarray) -> np.ndarray:
    varying = d > 1e-300
    return np.where(varying, 1.0 / np.sqrt(np.where(varying, d, 1.0)), 0.0)


def _affine_scale(ctx: RuleContext, step: Step) -> np.ndarray:
    """``sign sqrt(nu_y / nu_x)`` per channel of an affine step."""
    graph, known = ctx.graph, ctx.known
    nu_x = within(known[step.x], graph.shape(step.x))
    nu_y = within(known[step.y], graph.shape(step.y))
    return step.sign * np.sqrt(np.maximum(nu_y, 0.0)) * _inverse_sd(nu_x)


def _orders(ctx: RuleContext, step: Step | None, channels: int):
    """(first, second) per channel: ``a_1 / sd`` and ``a_2 / sd^2`` of the step's function at
    its input's channel means and within-position variances; identity for None."""
    if step is None:
        return np.ones(channels), np.zeros(channels)
    graph, known = ctx.graph, ctx.known
    shape = graph.shape(step.x)
    f = elementwise(graph.node(step.node_id), ctx)
    mean = known[step.x].values_along(1, shape[1])[0]
    var = within(known[step.x], shape)
    a, _ = coefficients(f.fn, mean, var, remainder=False)
    inv = _inverse_sd(var)
    return a[1] * inv, a[2] * inv * inv


def through_chains(ctx: RuleContext, cross: np.ndarray, a: Chain, b: Chain) -> np.ndarray:
    """``C_ab`` mapped through both chains' steps (module docstring): affine steps as they
    come, functions paired in their order, one left alone by its first order."""
    ia = ib = 0
    while ia < len(a.steps) or ib < len(b.steps):
        sa = a.steps[ia] if ia < len(a.steps) else None
        sb = b.steps[ib] if ib < len(b.steps) else None
        if sa is not None and sa.sign is not None:
            cross = cross * _affine_scale(ctx, sa)[:, None]
            ia += 1
            continue
        if sb is not None and sb.sign is not None:
            cross = cross * _affine_scale(ctx, sb)[None, :]
            ib += 1
            continue
        first_a, second_a = _orders(ctx, sa, cross.shape[0])
        first_b, second_b = _orders(ctx, sb, cross.shape[1])
        cross = (cross * first_a[:, None] * first_b[None, :]
                 + cross * cross * second_a[:, None] * second_b[None, :])
        ia, ib = ia + (sa is not None), ib + (sb is not None)
    return cross


def token_concat(ctx: RuleContext, node, signals: list[str], y: str,
                 field_of) -> Field | None:
    """Concat along another axis than the field's, of one part with a field and single
    positions without one (a class token put before a patch embedding's tokens): the
    within-position covariance pooled over the positions, each part's by its share of them (a
    token without a field: its variances; constants: none). Two parts with a field (Swin's
    roll: slices of one map put back in another order) end it, as before: their pooled field,
    read by the value selection, took Swin V2's rolled-back windows to 1.10-1.12x
    (tests/real/test_sequence_models.py)."""
    fields = {n: field_of(n) for n in signals}
    present = [f for f in fields.values() if f is not None]
    shape, axis = ctx.graph.shape(y), int(ctx.attr("axis", 0))
    if not present or not shape or any(f.axis != present[0].axis or f.head_axis is not None
                                        for f in present):
        return None
    tokens = [n for n, f in fields.items() if f is None]
    if len(present) > 1 or any((ctx.graph.shape(n) or (0,) * len(shape))[axis % len(shape)] != 1
                               for n in tokens):
        return None
    field_axis, axis = present[0].axis, axis % len(shape)
    if axis == field_axis:
        return None
    total = np.zeros((shape[field_axis],) * 2)
    for n in node.input:
        part = ctx.graph.shape(n)
        if not part or len(part) != len(shape) or part[field_axis] != shape[field_axis]:
            return None
        if n in fields:  # (a constant part adds no covariance)
            f = fields[n]
            cov = f.cov if f is not None else np.diag(variances(ctx.known[n], part, field_axis))
            total += cov * (part[axis] / shape[axis])
    return Field(field_axis, total)


def channel_concat(ctx: RuleContext, node, y: str, field_of, channels_of) -> Field | None:
    """The field of ``y``, a Concat of ``node``'s parts along axis 1 (module docstring);
    ``channels_of(name)`` the covariance across a tensor's channels (its field, or its
    variances), for the siblings' shared input. None past :data:`MAX_CHANNELS`, where a part
    is a constant or has a field along another axis, and where neither a part's field nor a
    cross block is carried (channels independent)."""
    graph, known = ctx.graph, ctx.known
    shape = graph.shape(y)
    parts = [n for n in node.input if n]
    if (not shape or len(shape) < 2 or (attr(node, "axis") or 0) % len(shape) != 1
            or shape[1] > MAX_CHANNELS or any(n not in known for n in parts)):
        return None
    blocks, carried = [], False
    for n in parts:
        part = graph.shape(n)
        if not part or len(part) != len(shape):
            return None
        f = field_of(n)
        if f is not None and (f.axis != 1 or f.head_axis is not None):
            return None
        blocks.append(f.cov if f is not None else np.diag(within(known[n], part)))
        carried = carried or f is not None
    begins = np.cumsum([0] + [b.shape[0] for b in blocks])
    if begins[-1] != shape[1]:
        return None
    cov = np.zeros((shape[1], shape[1]))
    for i, block in enumerate(blocks):
        cov[begins[i]:begins[i + 1], begins[i]:begins[i + 1]] = block
    chains = [chain(ctx, n) for n in parts]
    for i, ci in enumerate(chains):
        for j in range(i + 1, len(parts)):
            cj = chains[j]
            if ci is None or cj is None or ci.source != cj.source:
                continue
            s_s = channels_of(ci.source)
            cross = conv_cross(ctx, ci, cj, s_s) if s_s is not None else None
            if cross is None:
                continue
            cross = through_chains(ctx, cross, ci, cj)
            cov[begins[i]:begins[i + 1], begins[j]:begins[j + 1]] = cross
            cov[begins[j]:begins[j + 1], begins[i]:begins[i + 1]] = cross.T
            carried = True
    return Field(1, cov) if carried else None


__all__ = ["Chain", "chain", "channel_concat", "conv_cross", "shared_sources", "through_chains",
           "token_concat"]
