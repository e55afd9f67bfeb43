"""Element-wise chains whose steps add no function (:mod:`.sample_energy`).

tf2onnx writes a Keras ``ZeroPadding2D`` before a strided depthwise conv as a ``Pad`` and an
``Identity`` after it. The Pad's moments keep the source of ``f(z)`` (the ReLU or HardSwish
before it), and the chain search (:func:`.kurtosis.chain_start`) stops at the Pad, so the
Identity reads as ``f`` of the Pad's output: its record grew through f once more (Keras
MobileNetV3Small at 96x96: eta 0.0093 -> 0.0183 at the Identity after a ReLU's Pad, 0.056 ->
0.099 after a HardSwish's, onnxruntime 0.0015 and 0.0062 at both, energy about each
position's mean).
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments


def same_function(base: Moments, m: Moments) -> bool:
    """m is the same element-wise function of the same Gaussian as ``base`` (its chain
    start): the steps between are identities (an Identity after a Pad of ``f(z)``, whose
    moments keep f's source). The chain's rule would apply f to base's record a second time
    (base's record already grew through f): ``eta_f = mean(beta)^2 eta_z`` twice, 2x at a
    ReLU's (tf2onnx's explicit ZeroPadding2D before a strided depthwise conv)."""
    a, b = base.source, m.source
    if a is None or b is None or not a.chain or len(a.chain) != len(b.chain):
        return False
    if any(f.key != g.key for f, g in zip(a.chain, b.chain)):
        return False
    return a is b or (np.array_equal(np.asarray(a.mean), np.asarray(b.mean))
                      and np.array_equal(np.asarray(a.var), np.asarray(b.var)))


__all__ = ["same_function"]
