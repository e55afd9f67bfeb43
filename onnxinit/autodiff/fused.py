"""Fused backward rules for patterns that lowering writes out as primitives.

BatchNormalization is lowered (see :mod:`.lower`) to
``y = (x - mean) * (reshape(scale) / sqrt(var + eps)) + reshape(bias)``; differentiating that
op by op costs about eight full-size element-wise passes. The sweep recognises the pattern at
its final Add and uses the closed form instead (means over the batch and spatial axes, N their
element count, c = x - mean, std = sqrt(var + eps), gain = scale / std):

    dbias  = sum(dy)
    dscale = sum(dy * c) / std
    dx     = gain * dy - gain * sum(dy) / N - c * (gain * sum(dy * c) / (N * std^2))

Only standard element-wise ops are emitted, no BatchNormalization: reverse over reverse lowers
the gradient graph again, and lowering gives every BatchNormalization batch statistics.

The forward nodes are unchanged; gradients reaching ``mean`` or ``var`` through other uses
(the running-statistic outputs) still flow through the generic rules of those nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .context import BackwardContext


@dataclass(frozen=True)
class BatchNormPattern:
    x: str
    scale: str
    bias: str
    centered: str
    std: str
    gain: str


def _is(node, op_type):
    return node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx")


def match_batch_norm(node, producers, consumers) -> tuple[BatchNormPattern, tuple] | None:
    """The lowered BN pattern ending at Add ``node``, and the inputs its rule differentiates
    (x, scale, bias), or None."""
    if not _is(node, "Add") or len(node.input) != 2:
        return None
    scaled, bias_shaped = (producers.get(name) for name in node.input)
    if not (_is(scaled, "Mul") and _is(bias_shaped, "Reshape")):
        return None
    centering, gain_node = (producers.get(name) for name in scaled.input)
    if not (_is(centering, "Sub") and _is(gain_node, "Div")):
        return None
    x, mean = centering.input
    scale_shaped, sqrt = (producers.get(name) for name in gain_node.input)
    if not (_is(scale_shaped, "Reshape") and _is(sqrt, "Sqrt")
            and _is(producers.get(mean), "ReduceMean")
            and producers[mean].input[0] == x):
        return None
    # the intermediates must feed nothing outside the pattern
    if (consumers.get(scaled.output[0], 0) != 1 or consumers.get(gain_node.output[0], 0) != 1):
        return None
    pattern = BatchNormPattern(x=x, scale=scale_shaped.input[0], bias=bias_shaped.input[0],
                               centered=centering.output[0], std=sqrt.output[0],
                               gain=gain_node.output[0])
    return pattern, (pattern.x, pattern.scale, pattern.bias)


def batch_norm_backward(ctx: BackwardContext, pattern: BatchNormPattern, g: str,
                        requires: tuple[bool, bool, bool]) -> list[str | None]:
    """Gradients for (x, scale, bias) given dy = ``g``."""
    shape = ctx.shape(pattern.x)
    rank = len(shape)
    axes = ctx.ints([0, *range(2, rank)])
    count = float(np.prod([shape[a] for a in (0, *range(2, rank))]))
    need_x, need_scale, need_bias = requires
    channels = [shape[1]]
    sum_g = ctx.emit("ReduceSum", [g, axes], keepdims=1) if (need_x or need_bias) else None
    sum_gc = None
    if need_x or need_scale:
        sum_gc = ctx.emit("ReduceSum", [ctx.emit("Mul", [g, pattern.centered]), axes],
                          keepdims=1)
    dx = dscale = dbias = None
    if need_bias:
        dbias = ctx.emit("Reshape", [sum_g, ctx.ints(channels)])
    if need_scale:
        dscale = ctx.emit("Reshape", [ctx.emit("Div", [sum_gc, pattern.std]),
                                      ctx.ints(channels)])
    if need_x:
        gain = pattern.gain
        inv_n = ctx.const(1.0 / count, like=pattern.x)
        # shift = -gain * sum(dy) / N ; slope = -gain * sum(dy c) / (N std^2)
        shift = ctx.emit("Neg", [ctx.emit("Mul", [ctx.emit("Mul", [gain, sum_g]), inv_n])])
        var_eps = ctx.emit("Mul", [pattern.std, pattern.std])
        slope = ctx.emit("Neg", [ctx.emit("Div", [
            ctx.emit("Mul", [ctx.emit("Mul", [gain, sum_gc]), inv_n]), var_eps])])
        scaled = ctx.emit("Mul", [g, gain])
        corrected = ctx.emit("Mul", [pattern.centered, slope])
        dx = ctx.emit("Add", [ctx.emit("Add", [scaled, shift]), corrected])
    return [dx, dscale, dbias]
