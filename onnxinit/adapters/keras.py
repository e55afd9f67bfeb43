"""Keras adapter: rescaled ONNX weights into a Keras model's variables, in place.

Names are the variables' paths (Keras 3 ``dense/kernel``; Keras 2 ``dense/kernel:0``);
non-trainable variables (BatchNormalization moving statistics) are optional like torch buffers.
Keras kernels are ``[in, out]``, as ONNX ``MatMul`` weights are, so they map by value directly;
``Gemm(transB=1)`` layouts map transposed.
"""

from __future__ import annotations

import numpy as np

from ..weights import MappingReport
from . import as_float, is_float, plan_values


def model_variables(model) -> tuple[dict, dict[str, np.ndarray], set[str]]:
    """(name -> variable, name -> current values, names of non-trainable variables), each
    variable once (a shared layer's variables are listed once by Keras)."""
    import keras

    variables, values, optional = {}, {}, set()
    seen = set()
    for variable in model.weights:
        if id(variable) in seen:
            continue
        seen.add(id(variable))
        name = getattr(variable, "path", None) or variable.name
        if name in variables:
            name = f"{name}#{len(variables)}"
        array = np.asarray(keras.ops.convert_to_numpy(variable))
        if not is_float(array):
            continue
        variables[name], values[name] = variable, array
        if not variable.trainable:
            optional.add(name)
    return variables, values, optional


def load_into(model, rescaled, original=None, *, strict: bool = False) -> MappingReport:
    """Assign the rescaled values to ``model``'s variables (checked first, nothing assigned on
    a mismatch: :class:`onnxinit.weights.MappingError`); return the report."""
    variables, values, optional = model_variables(model)
    new, report = plan_values(values, optional, rescaled, original, strict)
    for name, value in new.items():
        variable = variables[name]
        variable.assign(as_float(value).astype(values[name].dtype))
    return report
