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
  factor, which is not a gradient vanishing across depth. So are the layers of a residual branch
  that ends below ``SMALL_BRANCH`` of its skip's signal variance (LayerScale with gamma = 1e-6,
  SkipInit, a zero-initialised last layer): a branch ``x + g * f(x; W)`` has
  ``dL/dW = g * (df/dW)^T dL/dy``, so its layers' update ratios are small by the branch's own
  design factor ``g``, not because the gradient vanished on its way to them;
- a weight that several nodes use (an RNN cell unrolled over the steps, ALBERT's shared
  layers) is one parameter: its update is the sum of its uses' gradients, so it counts once,
  at its first use on the body, with the ratio of that sum (all its uses' ratios, on the body
  or not, added in quadrature). Before,
  each use was a layer, and an ``nn.RNNCell`` unrolled over 32 steps failed ``check``: its
  first step's use of ``weight_ih`` (1e-10) against its last (0.29);
- :func:`depth_ratio` is the first layer's ratio over the last one's: the number ONNXINIT005
  (above a maximum) and ONNXINIT006 (below a minimum) will judge.

Rules (raised by :func:`find` when the analysis has a backward part; ``check`` runs it by
default):

- ``ONNXINIT005 exploding-gradient`` (error): the ratio is above ``max_ratio``;
- ``ONNXINIT006 vanishing-gradient`` (error): the ratio is below ``min_ratio``.

Thresholds from ``benchmarks/gate_calibration.py`` (README, 'Calibration'): on the networks
that train the ratio is 0.064 to 9.4e3 (RegNet-Y; ResNet-18 132; ConvNeXt-T 16 with its
LayerScale branches left out, 4.6e7 with them), on those that do not 1e-41 to 8.5e-5 (deep
MLPs) and 5e20 (a 48-layer transformer without LayerNorm): hence 1e-3 and 1e9.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..analysis import Analysis
from ..side_paths import BRANCH, SidePath
from ..signal_path import SignalPaths, signal_variance
from .base import Finding, RuleInfo, fmt, register

EXPLODING_GRADIENT, VANISHING_GRADIENT = "ONNXINIT005", "ONNXINIT006"
DEFAULT_MAX_RATIO = 1e9
DEFAULT_MIN_RATIO = 1e-3
# a branch below 1% of its skip's signal variance scales its layers' gradients by under 0.1
SMALL_BRANCH = 1e-2

_WHY = ("the update-to-weight ratio lr * rms(dL/dW) / rms(W) (lr = 1) predicted at "
        "initialization by the backward analysis (analyze --backward) for the first parametric "
        "layer of the network's body (main path and residual branches; the output head left "
        "out), over the same ratio for its last layer. ")
register(
    RuleInfo(EXPLODING_GRADIENT, "exploding-gradient", "error",
             "Gradients explode towards the input",
             "The ratio of " + _WHY + "Above --max-gradient-ratio, one learning rate cannot "
             "suit both ends: the rate the last layers need moves the first ones by far more "
             "than their own scale and training diverges there. Typical causes: activations "
             "driven into saturation by large weights, deep stacks whose backward gain "
             "exceeds their forward gain. What to do: onnxinit rescale MODEL --method autoinit "
             "(forward gains of 1; check again, the backward gain can differ), normalization, "
             "or a per-layer learning rate (LARS/LAMB)."),
    RuleInfo(VANISHING_GRADIENT, "vanishing-gradient", "error",
             "Gradients vanish towards the input",
             "The ratio of " + _WHY + "Below --min-gradient-ratio, the first layers do not "
             "learn at a learning rate that keeps the last ones stable. Typical causes: "
             "saturating activations (sigmoid, tanh) over many layers, weights too small for "
             "the activation. What to do: residual connections or normalization; "
             "onnxinit rescale MODEL --method autoinit fixes the forward gain, which for ReLU "
             "networks also fixes the backward one (for sigmoid it does not: its forward gain "
             "of 1 needs a backward gain below 1; check again); a ReLU-family activation."),
)


@dataclass(frozen=True)
class LayerGradient:
    node: str  # the parametric node
    weight: str  # its weight parameter
    update_ratio: float  # lr * rms(dL/dW) / rms(W)


def branch_to_skip(analysis: Analysis, side: SidePath) -> float | None:
    """A residual branch's signal variance at its Add over its skip's (None if either is not
    predicted or the skip carries no signal)."""
    moments = analysis.propagation.moments
    if side.tensor not in moments or side.carrier not in moments:
        return None
    skip = signal_variance(moments[side.carrier])
    return signal_variance(moments[side.tensor]) / skip if skip > 0 else None


def layer_gradients(analysis: Analysis, paths: SignalPaths) -> list[LayerGradient] | None:
    """The body's parametric layers in topological order with their update-to-weight ratios,
    leaving out the layers of branches below ``SMALL_BRANCH`` of their skip; None without a
    backward analysis."""
    backward = getattr(analysis, "backward", None)
    if backward is None:
        return None
    graph = analysis.graph
    head = set(paths.head_layers)
    small: dict[str, bool] = {}
    weights = {p.node: p for p in backward.parameters
               if p.role == "weight" and p.update_ratio is not None}
    square: dict[str, float] = {}  # each parameter's squared ratios over all its uses
    for p in weights.values():
        square[p.name] = square.get(p.name, 0.0) + float(p.update_ratio) ** 2
    first: dict[str, str] = {}  # each body parameter's first body node
    for node_id in graph.parametric_nodes:
        output = graph.node(node_id).output[0]
        side = paths.side.get(output)
        on_body = paths.is_main(output) or (side is not None and side.kind == BRANCH
                                            and not _small(analysis, side, small))
        if node_id in weights and node_id not in head and on_body:
            first.setdefault(weights[node_id].name, node_id)
    return [LayerGradient(node, name, math.sqrt(square[name])) for name, node in first.items()]


def _small(analysis: Analysis, side: SidePath, cache: dict[str, bool]) -> bool:
    if side.join not in cache:
        ratio = branch_to_skip(analysis, side)
        cache[side.join] = ratio is not None and ratio < SMALL_BRANCH
    return cache[side.join]


def depth_ratio(layers: list[LayerGradient]) -> float | None:
    """First layer's update-to-weight ratio over the last one's (None with fewer than 2)."""
    if len(layers) < 2:
        return None
    first, last = layers[0].update_ratio, layers[-1].update_ratio
    if last <= 0:
        return math.inf if first > 0 else 1.0
    return first / last


def find(analysis: Analysis, paths: SignalPaths, *, max_ratio: float = DEFAULT_MAX_RATIO,
         min_ratio: float = DEFAULT_MIN_RATIO) -> list[Finding]:
    """ONNXINIT005/006 from :func:`depth_ratio`; nothing without a backward analysis."""
    layers = layer_gradients(analysis, paths)
    ratio = depth_ratio(layers) if layers else None
    if ratio is None:
        return []
    first, last = layers[0], layers[-1]
    where = (f"the first layer (node '{first.node}', weight '{first.weight}', update ratio "
             f"{fmt(first.update_ratio)}) over the last (node '{last.node}', "
             f"{fmt(last.update_ratio)}) of {len(layers)} body layers")
    op = analysis.graph.node(first.node).op_type
    if ratio > max_ratio:
        message = (f"predicted gradient update ratio of {where} is {fmt(ratio)}, above "
                   f"--max-gradient-ratio {fmt(max_ratio)}. What to do: rescale (onnxinit "
                   "rescale MODEL --method autoinit), normalization, or per-layer learning "
                   "rates")
        return [Finding(EXPLODING_GRADIENT, "error", message, first.weight, first.node, op,
                        float(ratio))]
    if ratio < min_ratio:
        message = (f"predicted gradient update ratio of {where} is {fmt(ratio)}, below "
                   f"--min-gradient-ratio {fmt(min_ratio)}: the first layers will not learn. "
                   "What to do: residual connections or normalization, a ReLU-family "
                   "activation, or onnxinit rescale MODEL --method autoinit and check again")
        return [Finding(VANISHING_GRADIENT, "error", message, first.weight, first.node, op,
                        float(ratio))]
    return []
