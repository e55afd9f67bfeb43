"""The two numbers ``check`` judges a tensor by, relative to the input variance (the mean
variance of the float graph inputs, 1 for token-id inputs):

- ``growth``: the predicted total variance over the input's. A network *explodes* where the
  growth exceeds ``max_growth`` (or is not finite);
- ``signal``: the predicted *signal* variance, the input-dependent part (the mean over channels
  or features of the per-channel variance, :func:`onnxinit.signal_path.signal_variance`), times
  the main path's pooling factor (:attr:`onnxinit.signal_path.SignalPaths.pooling`) and its
  export-batch factor (:func:`batch_factors`), over the input's (for a token model, over its
  embedding lookups', :func:`signal_reference`). A network *vanishes* where it falls below
  ``min_var``: whatever the biases keep up, the output no longer depends on the input, and the
  gradients that reach the early layers shrink with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..analysis import Analysis
from ..rules.pooling import spatial_mean
from ..signal_path import RECURRENT_OPS, SignalPaths, main_path_products, signal_variance

# the batch of "a large batch" in batch_factors: (1 - c/N) is 1 to float precision
_LARGE_BATCH = 1 << 40


@dataclass(frozen=True)
class Scale:
    growth: float  # total variance / input variance
    signal: float  # signal variance / input variance, times the pooling factor


def scales(analysis: Analysis, paths: SignalPaths) -> dict[str, Scale]:
    """Both numbers of every analysed tensor. The signal variance is multiplied by the main
    path's pooling factor (:attr:`SignalPaths.pooling`): averaging K white-noise positions
    divides the prediction by K where correlated real inputs keep most of it; and by its
    export-batch factor (:func:`batch_factors`)."""
    moments = analysis.propagation.moments
    reference = signal_reference(analysis)
    batch = batch_factors(analysis, paths)
    out = {}
    for t in analysis.tensors:
        signal = signal_variance(moments[t.name]) / reference if t.name in moments else t.growth
        factor = paths.pooling.get(t.name, 1.0) * batch.get(t.name, 1.0)
        out[t.name] = Scale(t.growth, signal * factor)
    return out


def batch_factors(analysis: Analysis, paths: SignalPaths) -> dict[str, float]:
    """Main tensor -> product, over the spatial means above it on the main path (a global
    average pool, a ReduceMean/ReduceSum over every position), of ``S_inf / S_N``: the pooled
    signal over a large batch over the one over the export's batch N.

    After BatchNormalization in training mode each channel's N sample means are centred over
    the batch, so a spatial mean keeps ``1 - c/N`` of its variance (c: the centred fraction,
    :meth:`onnxinit.correlation.Correlation.batch_centred`, 1 straight after the BatchNorm,
    the share linear in what it fixed after an activation). At N = 1 on a small map that is
    nearly all of it (MobileNet-V3-Small exported at batch 1, 64x64: S_N 1.5e-5, S_inf 0.063):
    a property of the export's batch, not of the initialization, which the vanishing test
    judges at the batch the network trains with (about 1 for N >= 8). A mean that is exactly
    constant (S_N = 0: a pool straight after BatchNorm at N = 1) keeps factor 1: that graph's
    output does not depend on its input."""
    graph, moments = analysis.graph, analysis.propagation.moments
    factor = main_path_products(
        graph, paths.main, lambda node, _inputs, _outputs: _centring_loss(graph, moments, node))
    return {t: f for t, f in factor.items() if f != 1.0}


def _centring_loss(graph, moments, node) -> float:
    """``S_inf / S_N`` at a spatial mean (:func:`batch_factors`), 1 elsewhere."""
    if node.op_type not in ("GlobalAveragePool", "ReduceMean", "ReduceSum") or not node.input:
        return 1.0
    x, shape, out_shape = moments.get(node.input[0]), graph.shape(node.input[0]), \
        graph.shape(node.output[0])
    if x is None or x.spatial is None or x.spatial.corr is None or x.spatial.corr.centred is None \
            or shape is None or out_shape is None or len(shape) < 3 \
            or math.prod(out_shape) != shape[0] * shape[1]:  # not a mean over every position
        return 1.0
    at_n = signal_variance(spatial_mean(x, tuple(shape)))
    large = signal_variance(spatial_mean(x, (_LARGE_BATCH, *shape[1:])))
    if not (at_n > 0 and math.isfinite(at_n) and math.isfinite(large)):
        return 1.0
    return max(large / at_n, 1.0)


def embedding_lookups(analysis: Analysis) -> list[str]:
    """Outputs of the ``Gather`` nodes that read a parameter table (embedding lookups)."""
    graph = analysis.graph
    return [node.output[0] for node_id in graph.order
            if (node := graph.node(node_id)).op_type == "Gather"
            and graph.parameter_of(node.input[0]) is not None]


def has_signal_source(analysis: Analysis) -> bool:
    """Whether the signal starts somewhere its scale is known: a float input, or an embedding
    lookup. Without either (integer inputs that index nothing, which the analysis feeds as
    zeros) no variance can be judged against the input's."""
    return bool(analysis.propagation.input_stats) or bool(embedding_lookups(analysis))


def signal_reference(analysis: Analysis) -> float:
    """What the signal variance is compared with: the float inputs' variance; for a model whose
    inputs are all integers (token ids), where the signal starts at the embedding lookups, the
    largest signal variance among them (``Gather`` from a parameter table: word, position,
    token-type embeddings), so an embedding initialised with std 0.02 is the unit and not 4e-4
    of it. 1 when there is neither."""
    propagation = analysis.propagation
    if propagation.input_stats:
        return propagation.input_var
    lookups = [signal_variance(propagation.moments[out]) for out in embedding_lookups(analysis)
               if out in propagation.moments]
    return max((v for v in lookups if math.isfinite(v) and v > 0), default=1.0)


def flag(scale: Scale, max_growth: float, min_var: float) -> str | None:
    if not (math.isfinite(scale.growth) and math.isfinite(scale.signal)):
        return "exploding"
    if scale.growth > max_growth:
        return "exploding"
    if scale.signal < min_var:
        return "vanishing"
    return None


def judged(scale: Scale, kind: str) -> float:
    """The number a flag of ``kind`` judges: the growth for exploding, the signal otherwise."""
    return scale.growth if kind == "exploding" else scale.signal


def severity(scale: Scale, kind: str) -> float:
    value = judged(scale, kind)
    if not math.isfinite(value):
        return math.inf
    value = max(value, 1e-300)
    return math.log(value) if kind == "exploding" else -math.log(value)


def head_input_of(tensor: str, analysis: Analysis, paths: SignalPaths) -> str | None:
    """The main-path input of the head layer above ``tensor``."""
    graph = analysis.graph
    for layer in paths.head_layers:
        node = graph.node(layer)
        data = next((t for t in node.input if paths.is_main(t)), None)
        if data is not None and (node.output[0] == tensor or tensor in paths.head):
            return data
    return None


def starts_in_head(tensor: str, analysis: Analysis, paths: SignalPaths,
                    scale: dict[str, Scale]) -> bool:
    if tensor not in paths.head:
        return False
    head_input = head_input_of(tensor, analysis, paths)
    return head_input is not None and head_input in scale and \
        scale[head_input].signal >= analysis.min_var


def recurrent_stack(tensor: str, analysis: Analysis, paths: SignalPaths) -> tuple[str, int] | None:
    """(the stack's input, its number of recurrent layers) when ``tensor`` is the output of a
    stack of recurrent layers (LSTM, GRU, RNN) or of layout and element-wise ops after one,
    with no Conv/Gemm/MatMul between: walking up the main path from ``tensor`` through its
    data inputs (a recurrent node's X) until a parametric layer or a graph input."""
    graph = analysis.graph
    parametric = set(graph.parametric_nodes)
    layers, entry, current = 0, None, tensor
    while (producer := graph.producer.get(current)) is not None and producer not in parametric:
        node = graph.node(producer)
        data = next((t for t in node.input if t and paths.is_main(t)), None)
        if data is None:
            break
        if node.op_type in RECURRENT_OPS:
            layers, entry = layers + 1, data
        current = data
    return (entry, layers) if entry is not None else None


def starts_in_recurrent_stack(tensor: str, analysis: Analysis, paths: SignalPaths,
                              scale: dict[str, Scale]) -> bool:
    """A vanishing chain that starts inside a stack of recurrent layers whose input is above
    ``min_var``: PyTorch's default init, U(+-1/sqrt(hidden)), shrinks an LSTM's or GRU's
    input-dependent signal about 20x per layer, and such stacks train with the adaptive
    optimizer they are trained with (``benchmarks/gate_calibration.py``: 4 and 8 LSTM layers
    at 2e-7 and 2e-12, 8 GRU layers at 1.4e-7, reach 57%, 51%, 56% under AdamW): a note."""
    stack = recurrent_stack(tensor, analysis, paths)
    return stack is not None and stack[0] in scale and scale[stack[0]].signal >= analysis.min_var
