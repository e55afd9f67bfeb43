"""Gradient findings across depth (ONNXINIT005 exploding-gradient, ONNXINIT006 vanishing-gradient):
the plug for the backward analysis.

A network can keep its forward signal and still not train when the gradients that reach the first
layers are far larger or smaller, relative to their weights, than those of the last layers. The
backward analysis (``analyze --backward``, issue 15) predicts each parameter's update-to-weight
ratio ``lr * rms(dL/dW) / rms(W)``. This module reads it through one small interface and judges it
on the signal path:

- :func:`layer_gradients` returns, for the parametric layers along depth, a
  :class:`LayerGradient` each, or None when the analysis carries no gradients. It reads
  ``analysis.backward.parameters``: objects with ``node`` (the node that uses the parameter),
  ``role`` (``"weight"`` for a layer's weight) and ``update_ratio``. Layers off the main path and
  its residual branches (gates, attention logits, statistics) and the head layers are left out:
  a small classifier init makes the head's ratio large and every other layer's small by the same
  factor, which is not a gradient vanishing across depth;
- :func:`depth_ratio` is the first layer's ratio over the last one's: the number ONNXINIT005
  (above a maximum) and ONNXINIT006 (below a minimum) will judge.

Pending: the backward analysis is not part of onnxinit yet. ``Analysis`` has no ``backward``
part, :func:`layer_gradients` returns None, and ONNXINIT005/006 are neither registered nor
raised (``--explain`` and SARIF list only rules that can fire). When it lands, this module
registers the two rules and ``check.find`` raises them from :func:`depth_ratio`;
``benchmarks/gate_calibration.py`` records the ratio whenever an analysis has gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..analysis import Analysis
from ..signal_path import BRANCH, SignalPaths


@dataclass(frozen=True)
class LayerGradient:
    node: str  # the parametric node
    weight: str  # its weight parameter
    update_ratio: float  # lr * rms(dL/dW) / rms(W)


def layer_gradients(analysis: Analysis, paths: SignalPaths) -> list[LayerGradient] | None:
    """The body's parametric layers in topological order with their update-to-weight ratios;
    None without a backward analysis."""
    backward = getattr(analysis, "backward", None)
    if backward is None:
        return None
    graph = analysis.graph
    head = set(paths.head_layers)
    weights = {p.node: p for p in backward.parameters
               if p.role == "weight" and p.update_ratio is not None}
    out = []
    for node_id in graph.parametric_nodes:
        output = graph.node(node_id).output[0]
        side = paths.side.get(output)
        on_body = paths.is_main(output) or (side is not None and side.kind == BRANCH)
        if node_id in weights and node_id not in head and on_body:
            p = weights[node_id]
            out.append(LayerGradient(node_id, p.name, float(p.update_ratio)))
    return out


def depth_ratio(layers: list[LayerGradient]) -> float | None:
    """First layer's update-to-weight ratio over the last one's (None with fewer than 2)."""
    if len(layers) < 2:
        return None
    first, last = layers[0].update_ratio, layers[-1].update_ratio
    if last <= 0:
        return math.inf if first > 0 else 1.0
    return first / last
