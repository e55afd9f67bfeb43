"""Backward rules of SpaceToDepth and DepthToSpace: each element moves back where it came from,
per element of one sample (the statistics tracked densely by :mod:`.shape`)."""

from __future__ import annotations

import numpy as np

from .context import GradContext
from .registry import rule
from .shape import from_per_element, per_element


def _blocks_to_space(a: np.ndarray, b: int, mode: str) -> np.ndarray:
    """ONNX DepthToSpace of an ``[N, C b^2, H, W]`` array (DCR: channel (i b + j) C + c, CRD:
    c b^2 + i b + j goes to [c, h b + i, w b + j])."""
    n, c, h, w = a.shape
    if mode == "DCR":
        t = a.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = a.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return t.reshape(n, c // (b * b), h * b, w * b)


def _space_to_blocks(a: np.ndarray, b: int) -> np.ndarray:
    """ONNX SpaceToDepth (DCR order) of an ``[N, C, H b, W b]`` array."""
    n, c, h, w = a.shape
    t = a.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return t.reshape(n, c * b * b, h // b, w // b)


@rule("SpaceToDepth", "DepthToSpace")
def depth_space(grads, ctx: GradContext):
    """Each element moves to another place (channels to b x b blocks or back): dx is dy with
    the inverse move, per element of one sample (its mean and variance, the position profile
    folded in) and back to per-channel statistics with a profile; the statistics of the whole
    tensor where dy tracks more than MAX_DENSE values."""
    g = grads[0]
    out_shape, in_shape = ctx.out_shape(), ctx.in_shape(0)
    dense = per_element(g, out_shape)
    if dense is None:
        return [g.pooled()]
    b = int(ctx.attr("blocksize"))
    if ctx.node.op_type == "SpaceToDepth":
        moved_back = [_blocks_to_space(np.ascontiguousarray(a), b, "DCR") for a in dense]
    elif ctx.attr("mode", "DCR") == "DCR":
        moved_back = [_space_to_blocks(np.ascontiguousarray(a), b) for a in dense]
    else:  # CRD: the inverse of the CRD move
        n, c, h, w = dense[0].shape
        moved_back = [np.ascontiguousarray(a).reshape(n, c, h // b, b, w // b, b)
                      .transpose(0, 1, 3, 5, 2, 4).reshape(1, *in_shape[1:])
                      for a in dense]
    return [from_per_element(*moved_back, in_shape)]
