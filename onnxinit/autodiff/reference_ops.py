"""Corrections to onnx's reference evaluator for float64 runs: its Erf rounds through float32,
its ConvTranspose mixes up the channel slices when ``group`` > 1 (and loops over every output
element), and its GatherElements goes through ``np.choose``, which refuses an axis longer
than 64."""

from __future__ import annotations

import functools
import itertools

import numpy as np


def conv_transpose(X, W, B, *, strides, pads, dilations, output_padding, group):
    """Y = sum over kernel taps k of X scattered at ``stride * i + dilation * k - pad_begin``
    times W[:, :, k]: one tensordot per tap and group (explicit pads)."""
    spatial = X.ndim - 2
    kernel = W.shape[2:]
    strides = list(strides or [1] * spatial)
    dilations = list(dilations or [1] * spatial)
    pads = list(pads or [0] * (2 * spatial))
    extra = list(output_padding or [0] * spatial)
    full = [s * (n - 1) + e + d * (k - 1) + 1 for s, n, e, d, k in
            zip(strides, X.shape[2:], extra, dilations, kernel)]
    per_group, inputs = W.shape[1], W.shape[0] // group
    out = np.zeros((X.shape[0], per_group * group, *full), dtype=X.dtype)
    for g in range(group):
        x, w = X[:, g * inputs:(g + 1) * inputs], W[g * inputs:(g + 1) * inputs]
        target = out[:, g * per_group:(g + 1) * per_group]
        for tap in itertools.product(*(range(k) for k in kernel)):
            window = tuple(slice(d * k, d * k + s * (n - 1) + 1, s) for d, k, s, n in
                           zip(dilations, tap, strides, X.shape[2:]))
            contribution = np.tensordot(x, w[(slice(None), slice(None), *tap)], axes=([1], [0]))
            target[(slice(None), slice(None), *window)] += np.moveaxis(contribution, -1, 1)
    crop = tuple(slice(b, f - e) for b, e, f in zip(pads[:spatial], pads[spatial:], full))
    out = out[(slice(None), slice(None), *crop)]
    if B is not None:
        out = out + B.reshape([1, -1] + [1] * spatial)
    return out.astype(X.dtype)


@functools.lru_cache(maxsize=1)
def corrected_ops() -> list[type]:
    """The corrected op classes, for ``ReferenceEvaluator(model, new_ops=...)``."""
    # onnx.reference and scipy take longer to import than the rest of the autodiff: only a
    # float64 run that onnxruntime cannot take needs them
    from onnx.reference.ops.op_conv_transpose import ConvTranspose as ReferenceConvTranspose
    from onnx.reference.ops.op_erf import Erf as ReferenceErf
    from onnx.reference.ops.op_gather_elements import GatherElements as ReferenceGatherElements
    from scipy import special

    class Erf(ReferenceErf):
        def _run(self, x):
            return (special.erf(x).astype(x.dtype),)

    class ConvTranspose(ReferenceConvTranspose):
        def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None,
                 kernel_shape=None, output_padding=None, output_shape=None, pads=None,
                 strides=None):
            if auto_pad not in (None, "NOTSET") or output_shape is not None:
                return super()._run(X, W, B, auto_pad=auto_pad, dilations=dilations,
                                    group=group, kernel_shape=kernel_shape,
                                    output_padding=output_padding, output_shape=output_shape,
                                    pads=pads, strides=strides)
            return (conv_transpose(X, W, B, strides=strides, pads=pads, dilations=dilations,
                                   output_padding=output_padding, group=group or 1),)

    class GatherElements(ReferenceGatherElements):
        def _run(self, data, indices, axis=None):
            axis = axis or 0
            indices = np.where(indices < 0, indices + data.shape[axis], indices)
            return (np.take_along_axis(data, indices, axis=axis),)

    return [Erf, ConvTranspose, GatherElements]
