"""Corrections to onnx's reference evaluator for float64 runs: its Erf rounds through float32,
and its ConvTranspose mixes up the channel slices when ``group`` > 1."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=1)
def corrected_ops() -> list[type]:
    """The corrected op classes, for ``ReferenceEvaluator(model, new_ops=...)``."""
    # onnx.reference and scipy take longer to import than the rest of the autodiff: only a
    # float64 run that onnxruntime cannot take needs them
    from onnx.reference.ops.op_conv_transpose import ConvTranspose as ReferenceConvTranspose
    from onnx.reference.ops.op_erf import Erf as ReferenceErf
    from scipy import special

    class Erf(ReferenceErf):
        def _run(self, x):
            return (special.erf(x).astype(x.dtype),)

    class ConvTranspose(ReferenceConvTranspose):
        def _run(self, X, W, B=None, group=None, **attrs):
            group = group or 1
            if group == 1:
                return super()._run(X, W, B, group=1, **attrs)
            parts = [
                super(ConvTranspose, self)._run(x, w, None, group=1, **attrs)[0]
                for x, w in zip(np.split(X, group, axis=1), np.split(W, group, axis=0))
            ]
            out = np.concatenate(parts, axis=1)
            if B is not None:
                out = out + B.reshape([1, -1] + [1] * (out.ndim - 2))
            return (out.astype(X.dtype),)

    return [Erf, ConvTranspose]
