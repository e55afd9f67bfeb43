"""The errors a user can act on. The CLI maps every ``OnnxInitError`` to one line and exit 2."""

from __future__ import annotations


class OnnxInitError(Exception):
    """Base of every user-facing failure; the message names the file and the cause."""


class ModelLoadError(OnnxInitError):
    """The model file is missing, unreadable, truncated, or not ONNX."""


class ExternalDataError(ModelLoadError):
    """External data is missing or points outside the model's folder."""


class InvalidOptionError(OnnxInitError):
    """A command-line option or API argument is malformed or inconsistent with the model."""


class UnsupportedModelError(OnnxInitError):
    """The model is valid ONNX but a requested operation cannot handle it (dtype, quantized ops)."""


class MissingRuleError(OnnxInitError):
    """No rule (forward moments or backward gradient) exists for an op where one is required."""


class PredictionError(OnnxInitError):
    """A rule or the empirical fallback predicted a NaN or infinite mean or variance. That is a
    bug in the rule (never a property of the model): the analysis stops and names the node
    rather than report statistics it could not compute."""


class WriteError(OnnxInitError):
    """An output file could not be written."""
