"""Weights out of ONNX and back into a framework: export files and name mapping (numpy only).

- :func:`float_initializers` reads every float initializer of a model (float32/64/16, bfloat16).
- :func:`export_weights` writes them to safetensors (default) or ``.npz``, keyed by initializer
  name, with metadata naming the source model, the method and the scale each tensor received
  (from the ``onnxinit.plan`` record ``rescale`` stores in the model); :func:`read_weights`
  reads such a file back.
- :func:`map_weights` maps ONNX initializers to a framework's parameter names, given the
  framework's current parameters as ``{name: ndarray}``: by name, by normalised name, by value
  (exact, or transposed for 2-D tensors, e.g. PyTorch's ``onnx::MatMul_123``), by value up to
  the recorded scale, and it recognises Conv weights with BatchNormalization folded in (eval-mode
  exports). Nothing is skipped silently: the :class:`MappingReport` lists every unmapped tensor
  and every missing parameter.
- :func:`load_plan` turns a report into the new value of each parameter, checking everything
  (shapes, tied parameters that would receive different values, a module that does not match)
  before an adapter writes anything.

Modules: ``tensors`` (an ONNX model's float initializers), ``files`` (export/read weights
files), ``source`` (what to load and match against), ``values`` (name and value comparison),
``report`` (MappingReport, MappingError), ``mapper`` (the matching), ``load`` (the checked plan).
Framework adapters (``onnxinit.adapters.torch`` ...) use these; no framework is imported here.
"""

from .files import (
    FORMATS,
    META_PREFIX,
    check_target,
    default_weights_output,
    export_weights,
    format_for,
    read_weights,
    record_from_metadata,
    require_format,
    weights_metadata,
)
from .load import load_plan
from .mapper import map_weights
from .report import MappingError, MappingReport
from .source import WeightSource, weight_source
from .tensors import float_initializers, identity_aliases
from .values import normalize_name

__all__ = ["FORMATS", "META_PREFIX", "MappingError", "MappingReport", "WeightSource",
           "check_target", "default_weights_output", "export_weights", "float_initializers",
           "format_for", "identity_aliases", "load_plan", "map_weights", "normalize_name",
           "read_weights", "record_from_metadata", "require_format", "weight_source",
           "weights_metadata"]
