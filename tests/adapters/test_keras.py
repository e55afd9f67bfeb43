"""The Keras adapter on a Dense model (skipped without keras; any Keras 3 backend)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from onnxinit.rescale import rescale
from onnxinit.weights import MappingError

from .onnx_mlp import dense_mlp
from .torch_roundtrip import ort_outputs

os.environ.setdefault("KERAS_BACKEND", "jax")
keras = pytest.importorskip("keras")
from onnxinit.adapters.keras import load_into


def _model(seed, hidden=16):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(hidden, activation="tanh"),
                             keras.layers.Dense(4)])


def _export(model, path):
    """The model as tf2onnx lays it out (MatMul with the [in, out] kernel, then Add)."""
    layers = [tuple(np.asarray(w) for w in layer.get_weights()) for layer in model.layers]
    onnx.save(dense_mlp(layers), str(path))
    return path


def test_keras_round_trip_matches_onnxruntime(tmp_path):
    model = _model(0)
    original = _export(model, tmp_path / "k.onnx")
    rescaled = rescale(original, "autoinit", output=tmp_path / "k.r.onnx").output
    report = load_into(model, rescaled, original)
    assert report.unmapped == [] and report.missing == []
    assert sorted(report.mapped.values()) == sorted(v.path for v in model.weights)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x)), ort_outputs(rescaled, {"x": x}),
                               rtol=1e-4, atol=1e-4)


def test_keras_mismatch_is_refused_and_left_unchanged(tmp_path):
    original = _export(_model(1), tmp_path / "k.onnx")
    rescaled = rescale(original, "autoinit", output=tmp_path / "k.r.onnx").output
    other = _model(2, hidden=12)
    before = [np.asarray(w).copy() for w in other.get_weights()]
    with pytest.raises(MappingError, match="nothing was loaded"):
        load_into(other, rescaled, original)
    assert all(np.array_equal(a, b) for a, b in zip(before, other.get_weights()))
