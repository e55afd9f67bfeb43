"""The roles of a tensor's axes for :mod:`.position_share`: ``b`` batch, ``c`` channel, ``p``
position, ``1`` a unit axis, ``x`` a mix, followed through the layout ops and the maps over
channels that keep a sample's position share ``phi`` (a field is ``(roles, phi)``; None where
an op mixes positions into channels or takes positions apart)."""

from __future__ import annotations

import numpy as np

CONST_MAPS = {"Add", "Sub", "Mul", "Div"}


def reshape_roles(in_shape, roles, out_shape) -> tuple | None:
    """The output axes' roles of a row-major reshape: consecutive groups of axes with equal
    products map onto each other; a group whose input axes (of size > 1) share one role gives
    it to its output axes, a mixed group gives ``x``."""
    ins = [(int(s), r) for s, r in zip(in_shape, roles) if s != 1]
    outs = [i for i, s in enumerate(out_shape) if s != 1]
    result = ["1"] * len(out_shape)
    i = j = 0
    while i < len(ins):
        if j >= len(outs):
            return None
        size, kinds, group = ins[i][0], {ins[i][1]}, [outs[j]]
        target = int(out_shape[outs[j]])
        i, j = i + 1, j + 1
        while size != target:
            if size < target and i < len(ins):
                size, i = size * ins[i][0], i + 1
                kinds.add(ins[i - 1][1])
            elif size > target and j < len(outs):
                target, j = target * int(out_shape[outs[j]]), j + 1
                group.append(outs[j - 1])
            else:
                return None
        role = kinds.pop() if len(kinds) == 1 else "x"
        for g in group:
            result[g] = role
    return tuple(result) if j == len(outs) else None


def layout_roles(ctx, op, field, in_shape, out_shape):
    roles, phi = field
    if op == "Transpose":
        perm = list(ctx.attr("perm", list(range(len(roles)))[::-1]))
        return tuple(roles[p] for p in perm), phi
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        new = reshape_roles(in_shape, roles, out_shape)
        return None if new is None else (new, phi)
    return roles, phi


def channels_taken(field, in_shape, out_shape):
    """Slice or Split of channels or samples only (q, k and v from one projection; the two
    frames of one batch): phi kept."""
    roles, phi = field
    if in_shape is None or len(in_shape) != len(out_shape) or len(roles) != len(out_shape):
        return None
    cut = [r for r, a, b in zip(roles, in_shape, out_shape) if a != b]
    return (roles, phi) if all(r in ("c", "b") for r in cut) else None


def channel_map_roles(ctx, op, field, in_shape, out_shape):
    """A map over the channels alone keeps phi."""
    roles, phi = field
    rank = len(roles)
    if op == "BatchNormalization":
        return (roles, phi) if rank > 1 and roles[1] == "c" else None
    if op == "LayerNormalization":
        axis = int(ctx.attr("axis", -1)) % rank
        return (roles, phi) if all(r in ("c", "1") for r in roles[axis:]) else None
    if op in ("MatMul", "Gemm") and ctx.const(1) is not None and np.ndim(ctx.const(1)) == 2:
        if roles[-1] != "c" or len(out_shape) != rank:
            return None
        return roles, phi
    if op in CONST_MAPS and tuple(out_shape) == tuple(in_shape):
        const = next((ctx.const(i) for i in range(2) if ctx.const(i) is not None), None)
        if const is None:
            return None
        c = (1,) * (rank - np.ndim(const)) + tuple(np.shape(const))
        if op in ("Mul", "Div") and any(s > 1 and r == "p" for s, r in zip(c, roles)):
            return None
        return roles, phi
    return None


__all__ = ["CONST_MAPS", "channel_map_roles", "channels_taken", "layout_roles", "reshape_roles"]
