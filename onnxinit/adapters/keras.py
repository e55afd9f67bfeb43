"""Keras adapter: rescaled ONNX weights into a Keras model's variables, in place.

Works with Keras 3 (any backend) and with Keras 2 (``tf.keras`` of TensorFlow 2.12-2.15); it
uses only what both have (``model.weights``, ``variable.numpy()``/``assign``, the layers'
inbound nodes). Names are the variables' paths (Keras 3 ``dense/kernel``; Keras 2
``dense/kernel:0``); non-trainable variables (BatchNormalization moving statistics) are optional
like torch buffers. Kernels map in whatever layout the exporter wrote (tf2onnx and Keras 3's
TensorFlow export write Conv kernels ``[out, in, kH, kW]``, Keras holds ``[kH, kW, in, out]``:
see :mod:`onnxinit.weights.layouts`); a BatchNormalization the export folded into the Conv before
it is un-folded with the model's own BatchNormalization state, paired by the model's graph.
"""

from __future__ import annotations

import numpy as np

from ..weights import MappingReport
from . import as_float, is_float, plan_values


def variable_name(variable) -> str:
    """Keras 3's ``path`` (``conv2d/kernel``), else Keras 2's ``name`` (``conv2d/kernel:0``)."""
    return getattr(variable, "path", None) or variable.name


def model_variables(model) -> tuple[dict, dict[str, np.ndarray], set[str]]:
    """(name -> variable, name -> current values, names of non-trainable variables), each
    variable once (a shared layer's variables are listed once by Keras)."""
    variables, values, optional = {}, {}, set()
    seen = set()
    for variable in model.weights:
        if id(variable) in seen:
            continue
        seen.add(id(variable))
        name = variable_name(variable)
        if name in variables:
            name = f"{name}#{len(variables)}"
        array = np.asarray(variable.numpy())
        if not is_float(array):
            continue
        variables[name], values[name] = variable, array
        if not variable.trainable:
            optional.add(name)
    return variables, values, optional


def _previous_layers(model, layer) -> list:
    """The layers whose outputs ``layer`` reads (Keras 3 ``operation``, Keras 2 ``layer``
    of each input tensor's history); in a Sequential model, the layer before it."""
    if type(model).__name__ == "Sequential":
        layers = list(model.layers)
        index = next((i for i, other in enumerate(layers) if other is layer), 0)
        return layers[index - 1:index] if index > 0 else []
    out = []
    for node in getattr(layer, "_inbound_nodes", []) or []:
        tensors = getattr(node, "input_tensors", None)
        if tensors is None:
            continue
        for tensor in tensors if isinstance(tensors, (list, tuple)) else [tensors]:
            history = getattr(tensor, "_keras_history", None)
            previous = (getattr(history, "operation", None) or getattr(history, "layer", None)
                        if history is not None else None)
            if previous is not None:
                out.append(previous)
    return out


def batchnorm_follows(model, names: dict[int, str]) -> dict[str, str]:
    """Kernel variable name -> the gamma variable name of the BatchNormalization that reads
    that layer's output (the last kernel of the layer: a SeparableConv2D's pointwise one);
    ``names``: ``id(variable)`` -> name."""
    follows = {}
    for layer in model.layers:
        if type(layer).__name__ not in ("BatchNormalization", "SyncBatchNormalization"):
            continue
        gamma = getattr(layer, "gamma", None)
        previous = _previous_layers(model, layer)
        if gamma is None or len(previous) != 1:
            continue
        kernels = [v for v in previous[0].weights
                   if id(v) in names and len(v.shape) >= 2 and "kernel" in names[id(v)]]
        if kernels and id(gamma) in names:
            follows[names[id(kernels[-1])]] = names[id(gamma)]
    return follows


def load_into(model, rescaled, original=None, *, strict: bool = False) -> MappingReport:
    """Assign the rescaled values to ``model``'s variables (checked first, nothing assigned on
    a mismatch: :class:`onnxinit.weights.MappingError`); return the report."""
    variables, values, optional = model_variables(model)
    names = {id(v): n for n, v in variables.items()}
    new, report = plan_values(values, optional, rescaled, original, strict,
                              follows=batchnorm_follows(model, names))
    for name, value in new.items():
        variable = variables[name]
        variable.assign(as_float(value).astype(values[name].dtype))
    return report
