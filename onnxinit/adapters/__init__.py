"""Load rescaled ONNX weights back into a framework, in place.

Each adapter is imported on demand and imports its framework itself; the core never does:

- ``onnxinit.adapters.torch.load_into(module, rescaled, original=None)`` (torch.nn.Module)
- ``onnxinit.adapters.jax.apply_to(pytree, rescaled, original=None)`` (returns a new pytree) and
  ``onnxinit.adapters.jax.load_into(flat_dict, ...)`` (a flat ``{name: array}`` dict)
- ``onnxinit.adapters.keras.load_into(model, rescaled, original=None)`` (a keras Model)

``rescaled`` is a rescaled ONNX model (path or ModelProto), a weights file written by
``onnxinit export-weights`` (``.safetensors``/``.npz``) or a dict name -> array; ``original`` is
the ONNX model the framework's current parameters were exported as (values are matched against
it). Every adapter returns :class:`onnxinit.weights.MappingReport` and checks everything before it
writes anything (see :func:`onnxinit.weights.load_plan`).
"""

from __future__ import annotations

import numpy as np

from ..weights import MappingReport, load_plan, map_weights, weight_source

__all__ = ["MappingReport", "plan_values"]


def plan_values(params: dict[str, np.ndarray], buffers: set[str], rescaled, original,
                strict: bool, follows: dict[str, str] | None = None,
                ) -> tuple[dict[str, np.ndarray], MappingReport]:
    """Map and check: (parameter -> value to load, report). Raises MappingError, loads nothing.
    ``follows``: kernel -> gamma of the BatchNormalization after it (see ``map_weights``)."""
    source = weight_source(rescaled, original)
    report = map_weights(source, params, buffers=buffers, follows=follows)
    return load_plan(report, source, params, buffers=buffers, strict=strict), report


def is_float(array: np.ndarray) -> bool:
    """float16/float32/float64 or bfloat16 (ml_dtypes): the values an adapter maps."""
    return array.dtype.kind == "f" or array.dtype.name == "bfloat16"


def as_float(value: np.ndarray) -> np.ndarray:
    """float16/float32/float64 as they are; bfloat16 (ml_dtypes) exactly as float32."""
    value = np.asarray(value)
    if value.dtype.name == "bfloat16":
        return value.astype(np.float32)
    return value
