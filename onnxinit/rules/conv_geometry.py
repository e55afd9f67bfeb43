"""Where a convolution's windows start: the begin pads per spatial axis."""

from __future__ import annotations

from .context import RuleContext


def begin_pads(ctx: RuleContext, in_sizes, out_sizes, kernel, strides, dilations,
               transpose=False):
    """Begin pads per spatial axis, with auto_pad resolved from the static shapes.

    ConvTranspose with ``output_shape`` (ONNX spec): total_i = stride_i * (in_i - 1) +
    output_padding_i + ((k_i - 1) * dilation_i + 1) - out_i; begin_i = total_i // 2 for
    SAME_UPPER, else (SAME_LOWER, and NOTSET with output_shape) total_i - total_i // 2.
    """
    n = len(kernel)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    from_output_shape = transpose and ctx.attr("output_shape") is not None
    if auto_pad in ("NOTSET", "") and not from_output_shape:
        return list(ctx.attr("pads", [0] * 2 * n))[:n]
    if auto_pad == "VALID":
        return [0] * n
    begins = []
    for i in range(n):
        extent = (kernel[i] - 1) * dilations[i] + 1
        if transpose:
            out_pad = ctx.attr("output_padding", [0] * n)[i]
            total = max(0, strides[i] * (in_sizes[i] - 1) + out_pad + extent - out_sizes[i])
            begins.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
        else:
            total = max(0, (out_sizes[i] - 1) * strides[i] + extent - in_sizes[i])
            begins.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
    return begins


__all__ = ["begin_pads"]
