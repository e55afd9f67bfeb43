"""The Keras loop on real exports: build, export, ``rescale --method autoinit``, ``load_into``,
and the model's own output equals onnxruntime's on the rescaled model.

Which Keras and exporter run depends on the environment (``.ci/framework_venvs`` runs all
three): Keras 2 (``tf.keras`` of TensorFlow 2.15) exported by tf2onnx; Keras 3 on the
TensorFlow backend (``model.export(format="onnx")``, tf2onnx inside); Keras 3 on the JAX
backend (``model.export``, jax2onnx inside), chosen by ``KERAS_BACKEND``. Skipped without
TensorFlow or Keras 3 (failing instead with ``ONNXINIT_REQUIRE_KERAS=1``).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from onnxinit.rescale import rescale

from .frameworks import require
from .torch_roundtrip import ort_outputs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _keras():
    """(keras module, exporter name): Keras 3 if installed, else TensorFlow's Keras 2."""
    try:
        import keras

        if int(keras.__version__.split(".")[0]) >= 3:
            return keras, f"keras3-{keras.backend.backend()}"
    except ImportError:
        pass
    tf = require("tensorflow", "keras")
    require("tf2onnx", "keras")
    return tf.keras, "keras2-tf2onnx"


keras, EXPORTER = _keras()
layers = keras.layers
SHAPE = (2, 8, 8, 3)


def dense_only(bn: bool):
    inp = keras.Input(SHAPE[1:], batch_size=SHAPE[0], name="x")
    x = layers.Dense(16, activation="tanh")(layers.Flatten()(inp))
    if bn:
        x = layers.BatchNormalization()(x)
    return keras.Model(inp, layers.Dense(4)(x))


def small_cnn(bn: bool):
    inp = keras.Input(SHAPE[1:], batch_size=SHAPE[0], name="x")
    x = layers.Conv2D(8, 3, padding="same", use_bias=not bn)(inp)
    if bn:
        x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Flatten()(x)
    return keras.Model(inp, layers.Dense(5)(x))


def residual_cnn(bn: bool):
    """A stem, two residual blocks (the second pre-activation: a BatchNormalization after the
    Add, which follows no Conv), global pooling, a Dense head."""
    def norm(x):
        return layers.BatchNormalization()(x) if bn else x

    inp = keras.Input(SHAPE[1:], batch_size=SHAPE[0], name="x")
    x = layers.ReLU()(norm(layers.Conv2D(8, 3, padding="same", use_bias=not bn)(inp)))
    for _ in range(2):
        y = layers.ReLU()(norm(layers.Conv2D(8, 3, padding="same", use_bias=not bn)(x)))
        y = norm(layers.Conv2D(8, 3, padding="same", use_bias=not bn)(y))
        x = layers.ReLU()(norm(layers.Add()([x, y])))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(4)(x))


def layout_zoo(bn: bool):
    """Every kernel layout: Conv2D, DepthwiseConv2D, SeparableConv2D, Conv1D,
    Conv2DTranspose, Dense."""
    inp = keras.Input(SHAPE[1:], batch_size=SHAPE[0], name="x")
    x = layers.Conv2D(4, 3, padding="same", use_bias=not bn)(inp)
    if bn:
        x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)
    x = layers.SeparableConv2D(5, 3, padding="same")(x)
    x = layers.Conv1D(5, 3, padding="same")(layers.Reshape((64, 5))(x))
    x = layers.Conv2DTranspose(3, 3, strides=2, padding="same")(layers.Reshape((8, 8, 5))(x))
    if bn:
        x = layers.BatchNormalization()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(2)(x))


def export(model, path):
    if EXPORTER == "keras2-tf2onnx":
        import tensorflow as tf
        import tf2onnx

        spec = [tf.TensorSpec(tuple(model.inputs[0].shape), tf.float32, name="x")]
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
        onnx.save(proto, str(path))
    else:
        model.export(str(path), format="onnx", verbose=False)
    return path


@pytest.mark.parametrize("bn", [False, True], ids=["nobn", "bn"])
@pytest.mark.parametrize("build", [dense_only, small_cnn, residual_cnn, layout_zoo])
def test_rescaled_export_loads_and_matches_onnxruntime(tmp_path, build, bn):
    keras.utils.set_random_seed(0)
    model = build(bn)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    before = np.asarray(model(x, training=False))
    original = export(model, tmp_path / "m.onnx")
    rescaled = rescale(original, "autoinit", output=tmp_path / "m.r.onnx").output
    from onnxinit.adapters.keras import load_into

    report = load_into(model, rescaled, original)
    assert report.unmapped == [] and report.missing == [], report.summary()
    if bn and EXPORTER != "keras3-jax" and build is not dense_only:  # TF exports fold BN
        assert report.folded
    expected = ort_outputs(rescaled, {onnx.load(str(rescaled)).graph.input[0].name: x})
    ours = np.asarray(model(x, training=False))
    rel = float(np.max(np.abs(ours - expected)) / np.max(np.abs(expected)))
    print(f"{EXPORTER} {build.__name__} bn={bn}: loads, rel. diff {rel:.1e}")
    assert rel <= 1e-5
    assert not np.allclose(ours, before, rtol=1e-3)  # the rescale changed the network
