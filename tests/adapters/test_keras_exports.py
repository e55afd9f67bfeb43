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


def vgg16(bn: bool, shape=(2, 32, 32, 3)):
    """VGG-16's 13 convolutions (Simonyan & Zisserman 2015, configuration D; with BatchNorm
    after each, Keras Applications' layout otherwise) at CIFAR size, with a CIFAR head (one
    512-wide Dense) instead of the two 4096-wide ones."""
    inp = keras.Input(shape[1:], batch_size=shape[0], name="x")
    x = inp
    for width, convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(convs):
            x = layers.Conv2D(width, 3, padding="same", use_bias=not bn)(x)
            if bn:
                x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Dense(512, activation="relu")(layers.Flatten()(x))
    return keras.Model(inp, layers.Dense(10)(x))


def preact_resnet(bn: bool, blocks: int = 9, shape=SHAPE):
    """He et al. 2016's pre-activation ResNet for CIFAR (6 blocks + 2 layers: ResNet-56 at 9):
    3 stages of ``blocks`` blocks (16, 32, 64 channels), a 1x1 projection where the shape
    changes, a BatchNormalization before every ReLU (after the residual Add)."""
    def norm(x):
        return layers.BatchNormalization()(x) if bn else x

    inp = keras.Input(shape[1:], batch_size=shape[0], name="x")
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(inp)
    for stage, width in enumerate((16, 32, 64)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            y = layers.ReLU()(norm(x))
            shortcut = x if stride == 1 and x.shape[-1] == width else layers.Conv2D(
                width, 1, strides=stride, use_bias=False)(y)
            y = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False)(y)
            y = layers.Conv2D(width, 3, padding="same", use_bias=False)(layers.ReLU()(norm(y)))
            x = layers.Add()([shortcut, y])
    x = layers.GlobalAveragePooling2D()(layers.ReLU()(norm(x)))
    return keras.Model(inp, layers.Dense(10)(x))


def preact_resnet20(bn: bool):
    return preact_resnet(bn, blocks=3, shape=(2, 16, 16, 3))


def seeded_weights(model, seed: int = 0) -> None:
    """Kernels drawn from numpy (``N(0, 1/fan_in)``, fan-in the product of all but the last
    axis, Keras's layout): the same network in every Keras; vectors (biases, BatchNorm state)
    kept as built."""
    rng = np.random.default_rng(seed)
    model.set_weights([
        (rng.standard_normal(w.shape) / np.sqrt(np.prod(w.shape[:-1]))).astype(np.float32)
        if w.ndim >= 2 else w for w in model.get_weights()])


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


@pytest.mark.parametrize("build", [small_cnn, residual_cnn, preact_resnet20])
def test_export_for_the_exporter_comparison(build):
    """With ``ONNXINIT_KERAS_EXPORTS=DIR``: the BatchNorm network with numpy-seeded kernels,
    exported to ``DIR/<exporter>/<network>.onnx`` for ``test_keras_exporters_agree.py``."""
    folder = os.environ.get("ONNXINIT_KERAS_EXPORTS")
    if not folder:
        pytest.skip("ONNXINIT_KERAS_EXPORTS is not set")
    model = build(True)
    seeded_weights(model)
    shape = tuple(model.inputs[0].shape)
    model(np.zeros(shape, np.float32), training=False)  # Keras 3 exports called models only
    os.makedirs(os.path.join(folder, EXPORTER), exist_ok=True)
    export(model, os.path.join(folder, EXPORTER, f"{build.__name__}.onnx"))


@pytest.mark.parametrize("bn", [False, True], ids=["nobn", "bn"])
@pytest.mark.parametrize("build", [dense_only, small_cnn, residual_cnn, layout_zoo, vgg16])
def test_rescaled_export_loads_and_matches_onnxruntime(tmp_path, build, bn, request):
    if build is vgg16 and EXPORTER == "keras3-jax":
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "jax2onnx 0.17.1 writes MaxPooling2D as a MaxPool over 4 axes (kernel_shape "
            "[1, 2, 2, 1] on an unsqueezed input), which onnxruntime refuses ('Unsupported "
            "pooling size'): the export itself does not run")))
    keras.utils.set_random_seed(0)
    model = build(bn)
    shape = tuple(model.inputs[0].shape)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
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


@pytest.mark.parametrize("layer", ["LSTM", "GRU"])
def test_recurrent_layers_load(tmp_path, layer):
    """tf2onnx writes a Keras LSTM/GRU as the ONNX op, its kernels gate-permuted into W, R, B
    (a Bidirectional layer's two directions stacked): the load was refused ("only 1 of 7
    parameters found"). The recurrent parameters are found (left as initialised by the
    rescale), the Dense is loaded, and the model computes what onnxruntime does. (Keras 3's
    export writes the GRU as a Loop whose kernels map as they are.)"""
    if EXPORTER == "keras3-jax":
        pytest.skip("not measured on jax2onnx's recurrent exports")
    keras.utils.set_random_seed(0)
    rnn = getattr(layers, layer)
    inp = keras.Input((6, 4), batch_size=2, name="x")
    h = layers.Bidirectional(rnn(8, return_sequences=True))(inp)
    model = keras.Model(inp, layers.Dense(3)(rnn(8)(h)))
    x = np.random.default_rng(0).standard_normal((2, 6, 4)).astype(np.float32)
    model(x, training=False)  # Keras 3 exports called models only
    original = export(model, tmp_path / "m.onnx")
    rescaled = rescale(original, "autoinit", output=tmp_path / "m.r.onnx").output
    from onnxinit.adapters.keras import load_into

    report = load_into(model, rescaled, original)
    assert report.missing == [], report.summary()  # Keras 3 writes its GRU as a Loop
    expected = ort_outputs(rescaled, {onnx.load(str(rescaled)).graph.input[0].name: x})
    ours = np.asarray(model(x, training=False))
    assert float(np.max(np.abs(ours - expected)) / np.max(np.abs(expected))) <= 1e-5
