"""Keras 2 export variants tf2onnx meets in practice (docs/robustness.md's Keras table), random
init (``keras.utils.set_random_seed(0)``), opset 17, dynamic batch, written to ``NAME.onnx`` in
the current folder for ``benchmarks/real_exports.py --onnx``. Run in the Keras 2 venv
(``tensorflow-cpu==2.15.1 tf2onnx==1.17.0``):

    python benchmarks/keras_variants.py channels_first custom_layers tf_module

- ``channels_first``: a CNN built with ``data_format="channels_first"`` (Conv2D, BatchNorm on
  axis 1, ReLU, MaxPooling2D, a residual Add, GlobalAveragePooling2D, Dense) on 3x32x32.
- ``custom_layers``: ``keras.layers.Layer`` subclasses of raw TensorFlow ops on a 32x32 CNN: an
  RMS norm over channels (``x * rsqrt(mean(x^2) + eps) * gamma``), a learnt per-channel scale
  before ``tf.nn.gelu`` (tanh approximation), a squeeze-excite gate (``reduce_mean`` and
  ``sigmoid``), exported through ``tf.function`` and ``tf2onnx.convert.from_function``.
- ``tf_module``: no Keras: a ``tf.Module`` MLP of ``tf.Variable`` weights (4 residual blocks of
  LayerNorm via ``tf.nn.moments``, ``tf.matmul``, ``tf.nn.silu``) over 64 features, through
  ``tf.function``.
- 1-D convolutions on 64 steps of 16 features (tf2onnx writes each as a 2-D Conv on
  ``[N, C, 1, T]`` between an Unsqueeze and a Squeeze), through ``tf.function`` (Keras 3 too):
  ``conv1d`` (Conv1D, SeparableConv1D, MaxPooling1D, a dilated Conv1D, GlobalAveragePooling1D),
  ``conv1d_bn`` (SeparableConv1D + BatchNormalization + ReLU x3, a strided Conv1D,
  GlobalMaxPooling1D), ``conv1d_ln`` (a causal Conv1D, 2 residual blocks of LayerNormalization,
  SeparableConv1D with swish and a 1x1 Conv1D), ``conv1d_lstm`` (SeparableConv1D,
  AveragePooling1D, a Bidirectional LSTM and a GRU).
"""

import sys

import numpy as np
import tensorflow as tf
import tf2onnx
from tensorflow import keras

L = keras.layers


def channels_first():
    x = keras.Input((3, 32, 32), name="x")
    h = L.Conv2D(16, 3, padding="same", data_format="channels_first", use_bias=False)(x)
    h = L.ReLU()(L.BatchNormalization(axis=1)(h))
    h = L.MaxPooling2D(2, data_format="channels_first")(h)
    y = L.Conv2D(16, 3, padding="same", data_format="channels_first", use_bias=False)(h)
    y = L.BatchNormalization(axis=1)(y)
    h = L.ReLU()(L.Add()([h, y]))
    h = L.GlobalAveragePooling2D(data_format="channels_first")(h)
    return keras.Model(x, L.Dense(10)(h)), (3, 32, 32)


class RMSNorm(L.Layer):
    def build(self, shape):
        self.gamma = self.add_weight(name="gamma", shape=(shape[-1],), initializer="ones")

    def call(self, x):
        return x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), -1, keepdims=True) + 1e-6) * self.gamma


class ScaledGelu(L.Layer):
    def build(self, shape):
        self.scale = self.add_weight(name="scale", shape=(shape[-1],),
                                     initializer=keras.initializers.Constant(1.5))

    def call(self, x):
        return tf.nn.gelu(x * self.scale, approximate=True)


class SqueezeExcite(L.Layer):
    def build(self, shape):
        c = shape[-1]
        self.w1 = self.add_weight(name="w1", shape=(c, c // 4), initializer="glorot_uniform")
        self.w2 = self.add_weight(name="w2", shape=(c // 4, c), initializer="glorot_uniform")

    def call(self, x):
        s = tf.reduce_mean(x, axis=[1, 2])
        s = tf.sigmoid(tf.matmul(tf.nn.relu(tf.matmul(s, self.w1)), self.w2))
        return x * s[:, None, None, :]


def custom_layers():
    x = keras.Input((32, 32, 3), name="x")
    h = ScaledGelu()(RMSNorm()(L.Conv2D(32, 3, padding="same")(x)))
    for _ in range(2):
        y = L.Conv2D(32, 3, padding="same")(RMSNorm()(h))
        h = L.Add()([h, SqueezeExcite()(ScaledGelu()(y))])
    return keras.Model(x, L.Dense(10)(L.GlobalAveragePooling2D()(h))), (32, 32, 3)


class MLP(tf.Module):
    def __init__(self, width=64, blocks=4):
        rng = np.random.default_rng(0)
        self.w = [tf.Variable(rng.normal(0, (1 / width) ** 0.5, (width, width)).astype(np.float32))
                  for _ in range(2 * blocks)]
        self.head = tf.Variable(rng.normal(0, (1 / width) ** 0.5, (width, 10)).astype(np.float32))

    def __call__(self, x):
        for a, b in zip(self.w[::2], self.w[1::2]):
            mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
            h = (x - mean) * tf.math.rsqrt(var + 1e-5)
            x = x + tf.matmul(tf.nn.silu(tf.matmul(h, a)), b)
        return tf.matmul(x, self.head)


def tf_module():
    return MLP(), (64,)


def conv1d():
    x = keras.Input((64, 16), name="x")
    h = L.Conv1D(32, 5, padding="same", activation="relu")(x)
    h = L.MaxPooling1D(2)(L.SeparableConv1D(32, 5, padding="same", activation="relu")(h))
    h = L.SeparableConv1D(64, 3, padding="same", activation="relu")(h)
    h = L.Conv1D(64, 3, padding="valid", activation="relu", dilation_rate=2)(h)
    return keras.Model(x, L.Dense(10)(L.GlobalAveragePooling1D()(h))), (64, 16)


def conv1d_bn():
    x = keras.Input((64, 16), name="x")
    h = x
    for width in (32, 32, 64):
        h = L.SeparableConv1D(width, 5, padding="same", use_bias=False)(h)
        h = L.ReLU()(L.BatchNormalization()(h))
    h = L.GlobalMaxPooling1D()(L.Conv1D(64, 3, strides=2, padding="same")(h))
    return keras.Model(x, L.Dense(10)(h)), (64, 16)


def conv1d_ln():
    x = keras.Input((64, 16), name="x")
    h = L.Conv1D(64, 3, padding="causal")(x)
    for _ in range(2):
        y = L.SeparableConv1D(64, 5, padding="same", activation="swish")(
            L.LayerNormalization()(h))
        h = L.Add()([h, L.Conv1D(64, 1)(y)])
    return keras.Model(x, L.Dense(10)(L.GlobalAveragePooling1D()(h))), (64, 16)


def conv1d_lstm():
    x = keras.Input((64, 16), name="x")
    h = L.AveragePooling1D(2)(L.SeparableConv1D(32, 5, padding="same", activation="relu")(x))
    h = L.GRU(32)(L.Bidirectional(L.LSTM(32, return_sequences=True))(h))
    return keras.Model(x, L.Dense(10)(h)), (64, 16)


for name in sys.argv[1:]:
    keras.utils.set_random_seed(0)
    model, shape = {"channels_first": channels_first, "custom_layers": custom_layers,
                    "tf_module": tf_module, "conv1d": conv1d, "conv1d_bn": conv1d_bn,
                    "conv1d_ln": conv1d_ln, "conv1d_lstm": conv1d_lstm}[name]()
    spec = (tf.TensorSpec((None, *shape), tf.float32, name="x"),)
    if isinstance(model, keras.Model) and name == "channels_first":
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=17,
                                   output_path=f"{name}.onnx")
    else:
        function = tf.function(lambda x, m=model: m(x, training=False) if isinstance(
            m, keras.Model) else m(x), input_signature=spec)
        tf2onnx.convert.from_function(function, input_signature=spec, opset=17,
                                      output_path=f"{name}.onnx")
    print(name, "ok", flush=True)
