"""The per-layer weight scales between a model and its rescaled copy.

For each parametric layer of the original model (``graph.layers``: Conv, ConvTranspose, Gemm,
MatMul with a constant weight), the scale is ``rms(W_after) / rms(W_before)``, read from the two
files' weights themselves: exactly the multiplier a rescaling method applied, and for a weight a
method replaced (IDInit's identity patterns) the ratio of their sizes. Nothing here trusts the
plan record the rescaled file carries; the tests check these scales against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidOptionError
from ..graph import ModelGraph


@dataclass(frozen=True)
class LayerScale:
    node: str  # the layer's node id
    weight: str  # its weight initializer
    output: str  # the tensor the layer outputs (after its bias)
    scale: float | None  # rms(W_after) / rms(W_before); None when W_before is all zeros


def rms(values: np.ndarray) -> float:
    """sqrt(mean(w^2)), accumulated in float64."""
    values = np.asarray(values, dtype=np.float64)
    return math.sqrt(float(np.mean(np.square(values)))) if values.size else 0.0


def same_graph(before: ModelGraph, after: ModelGraph) -> None:
    """Refuse a pair of models that are not one network with two sets of weights."""
    ops = {n: before.node(n).op_type for n in before.order}
    ops_after = {n: after.node(n).op_type for n in after.order}
    if ops != ops_after or set(before.parameters) != set(after.parameters):
        raise InvalidOptionError(
            f"{after.name} is not a rescaled copy of {before.name}: their graphs differ (the "
            "second model must have the same nodes and parameters, with other weights)")


def layer_scales(before: ModelGraph, after: ModelGraph) -> list[LayerScale]:
    """The scale of every parametric layer's weight, in topological order."""
    same_graph(before, after)
    out = []
    for layer in before.layers:
        if layer.weight is None:
            continue
        old = rms(before.value(layer.weight))
        new = rms(after.value(layer.weight))
        out.append(LayerScale(layer.node, layer.weight, layer.output,
                              new / old if old > 0 else None))
    return out
